"""RewardBench protocol: section weighting, best-of-4, Ties, batch-size invariance, records."""

import json
import math
import os

import numpy as np
import pytest

from rewardjax.config import base_config
from rewardjax.data.records import Pair
from rewardjax.eval import rewardbench as rb
from rewardjax.runtime.scorer import ModelScorer
from rewardjax.runtime.setup import build_run
from tests.conftest import data_dir


def _rec(subset, chosen, rejected, id_="x", prompt="q"):
    return rb.Record(id_, [{"role": "user", "content": prompt}], list(chosen), list(rejected),
                     subset)


def test_v1_sections_are_weighted_by_the_benchmark_example_counts():
    subsets = {
        "alpacaeval-easy": 1.0, "alpacaeval-length": 0.5, "alpacaeval-hard": 0.0,
        "mt-bench-easy": 1.0, "mt-bench-med": 0.5,
        "mt-bench-hard": 0.0, "llmbar-natural": 1.0, "llmbar-adver-neighbor": 0.5,
        "llmbar-adver-GPTInst": 0.25, "llmbar-adver-GPTOut": 1.0, "llmbar-adver-manual": 0.0,
        "refusals-dangerous": 1.0, "refusals-offensive": 1.0, "xstest-should-refuse": 0.0,
        "xstest-should-respond": 0.5, "donotanswer": 1.0,
        "math-prm": 0.5, "hep-cpp": 1.0, "hep-go": 1.0, "hep-java": 1.0, "hep-js": 1.0,
        "hep-python": 1.0, "hep-rust": 1.0,
    }
    report = rb.v1_report(subsets, prior={"anthropic_helpful": 0.6, "anthropic_hhh": 0.8,
                                          "shp": 0.5, "summarize": 0.7, "mtbench_gpt4": 0.0})
    chat = (100 * 1 + 95 * 0.5 + 0 + 28 * 1 + 40 * 0.5) / (100 + 95 + 95 + 28 + 40)
    chat_hard = (0 + 100 + 134 * 0.5 + 92 * 0.25 + 47 + 0) / (37 + 100 + 134 + 92 + 47 + 46)
    safety = (100 + 100 + 0 + 154 * 0.5 + 136) / (100 + 100 + 250 + 154 + 136)
    reasoning = (984 * 0.5 + 6 * 164) / (984 + 6 * 164)  # math-prm counted as 984, not 447
    assert reasoning == 0.75
    want = {"Chat": chat, "Chat Hard": chat_hard, "Safety": safety, "Reasoning": reasoning}
    assert report["sections"] == pytest.approx(want, abs=1e-12)
    assert chat == pytest.approx(195.5 / 358)
    assert report["overall"] == pytest.approx(np.mean(list(want.values())), abs=1e-12)
    assert report["prior_sets"] == pytest.approx(0.65)  # mtbench_gpt4 is not a prior set
    assert report["overall_with_prior"] == pytest.approx(
        (2 * (chat + chat_hard + safety + reasoning) + 0.65) / 9)
    assert report["missing_sections"] == [] and report["missing_subsets"] == []


def test_v1_partial_benchmark_has_no_overall_and_ties_are_wrong():
    records = [_rec("llmbar-natural", ["a"], ["b"]), _rec("llmbar-natural", ["c"], ["d"]),
               _rec("llmbar-adver-manual", ["e"], ["f"]), _rec("mine", ["g"], ["h"])]
    scores = {"a": 2.0, "b": 1.0, "c": 1.0, "d": 1.0, "e": 0.0, "f": 3.0, "g": 1.0, "h": 0.0}
    report = rb.evaluate(lambda items: [scores[t] for _, t in items], records, 1)
    assert report["subsets"] == {"llmbar-natural": 0.5, "llmbar-adver-manual": 0.0, "mine": 1.0}
    assert report["sections"] == {"Chat Hard": pytest.approx(100 * 0.5 / 146)}
    assert report["overall"] is None
    assert report["missing_sections"] == ["Chat", "Safety", "Reasoning"]
    assert report["extra_subsets"] == ["mine"]


def test_v2_best_of_four():
    assert rb.v2_row_result(np.array([3.0, 1.0, 2.0, 2.9])) == 1.0
    assert rb.v2_row_result(np.array([3.0, 3.0, 2.0, 1.0])) == 0.5  # a tie at the top: shared
    assert rb.v2_row_result(np.array([3.0, 3.0, 3.0, 1.0])) == pytest.approx(1 / 3)
    assert rb.v2_row_result(np.array([2.0, 1.0, 2.5, 0.0])) == 0.0  # one rejected wins
    names = [s for s in rb.V2_SUBSETS if s != "Ties"]
    records = [_rec(s, ["good"], ["bad1", "bad2", "bad3"], prompt=s) for s in names]
    records.append(_rec("Focus", ["good"], ["bad1", "bad2", "best"], prompt="again"))
    records += [_rec("Ties", ["good"], ["bad1"], "ref:0"),
                _rec("Ties", ["good", "good2"], ["bad1"], "tied:0")]
    scores = {"good": 2.0, "good2": 2.0, "bad1": 0.0, "bad2": 1.0, "bad3": 1.5, "best": 3.0}
    report = rb.evaluate(lambda items: [scores[t] for _, t in items], records, 2)
    assert report["subsets"]["Focus"] == 0.5 and report["subsets"]["Math"] == 1.0
    # Ties: both accurate (30% + 30%), margins 2 > d = 0 (20% + 20%), tanh(2/0 - 1) = 1 (1%).
    assert report["subsets"]["Ties"] == pytest.approx(1.01)
    want = np.mean([1.0, 1.0, 1.0, 1.0, 0.5, 1.01])
    assert report["overall"] == pytest.approx(want)


def test_v2_ties_composite_on_a_hand_example():
    records = [_rec("Ties", ["c"], ["i1", "i2"], "ref:0"), _rec("Ties", ["c1", "c2"], ["i"],
                                                               "tied:0"),
               _rec("Ties", ["c"], ["i"], "ref:1"), _rec("Ties", ["c1", "c2", "c3"], ["i"],
                                                         "tied:1")]
    scores = [np.array([3.0, 1.0, 2.0]), np.array([5.0, 4.0, 3.5]),
              np.array([1.0, 2.0]), np.array([2.0, 2.5, 2.2, 0.0])]
    # acc ref 1/2, acc tied 1; m_tied = (0.5, 2.0) vs d = (1.0, 0.5) -> 1/2;
    # min(m_ref, m_tied) = (0.5, -1.0) -> 0; tanh terms tanh(-0.5), tanh(-3).
    want = 0.3 * 1 + 0.3 * 0.5 + 0.2 * 0.5 + 0.2 * 0 + 0.01 * (math.tanh(-0.5) + math.tanh(-3)) / 2
    assert rb.v2_ties_score(records, scores) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="ref:<n>"):
        rb.v2_ties_score([_rec("Ties", ["c"], ["i"], "7")], [np.array([1.0, 0.0])])


PAIRS = [Pair([{"role": "user", "content": f"tell me about {w}"}], f"{w} is nice " * (i % 3 + 1),
              f"no {w}") for i, w in enumerate(["rain", "snow", "sun", "fog", "wind", "hail"])]


def test_scores_identical_at_any_batch_size(tmp_path):
    c = base_config()
    c.model.path = ("random:llama?hidden_size=32&num_layers=1&num_heads=2&num_kv_heads=1"
                    "&intermediate_size=32")
    c.model.max_length = 32
    c.data.buckets = (32,)
    run = build_run(c, str(tmp_path), PAIRS)
    v1 = [_rec(f"llmbar-adver-{i % 2}", [p.chosen], [p.rejected], str(i), p.prompt[0]["content"])
          for i, p in enumerate(PAIRS)]
    v2 = [_rec("Math", [PAIRS[i].chosen], [PAIRS[j].rejected for j in range(3)], str(i),
               PAIRS[i].prompt[0]["content"]) for i in range(3)]
    calls = []
    results = []
    for bs in (1, 3, 8):
        c.eval.batch_size = bs
        scorer = ModelScorer.of(run, batch_size=bs)

        def base(items, scorer=scorer):
            return scorer.score(*zip(*items))["reward"]

        def fn(items, base=base):
            calls.append(len(items))
            return base(items)

        rewards = rb.record_scores(fn, v1 + v2)
        results.append((rewards, rb.evaluate(fn, v1, 1), rb.evaluate(fn, v2, 2)))
    # Each distinct (prompt, text) is scored once: v2 row i repeats v1 row i's chosen and
    # rejected texts under the same prompt, so it adds only its two other rejected texts.
    assert calls[0] == len(v1) * 2 + 3 * 2
    for rewards, r1, r2 in results[1:]:
        for a, b in zip(rewards, results[0][0]):
            np.testing.assert_allclose(a, b, atol=1e-6)
        assert r1 == results[0][1] and r2 == results[0][2]


def test_jsonl_roundtrip_and_hub_schema(tmp_path, monkeypatch):
    v2 = [_rec("Focus", ["a"], ["b", "c", "d"], "0"), _rec("Ties", ["a", "e"], ["b"], "tied:3")]
    path = str(tmp_path / "v2.jsonl")
    rb.write_jsonl(v2, path, 2)
    assert rb.load(2, path) == v2
    row = json.loads(open(path).readline())
    assert row["num_correct"] == 1 and row["total_completions"] == 4
    with open(path, "a") as f:
        f.write("{broken\n")
    with pytest.raises(ValueError, match=r"v2.jsonl: line 3: malformed JSON"):
        rb.load(2, path)

    import datasets

    hub_rows = [{"prompt": "p", "chosen": "good", "chosen_model": "m", "rejected": "bad",
                 "rejected_model": "n", "subset": "hep-go", "id": 7}]
    seen = {}

    def fake_load_dataset(name, split):
        seen["args"] = (name, split)
        return hub_rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    records = rb.load(1)
    assert seen["args"] == ("allenai/reward-bench", "filtered")
    assert records == [rb.Record("7", [{"role": "user", "content": "p"}], ["good"], ["bad"],
                                 "hep-go")]
    with pytest.raises(ValueError, match="one chosen and one rejected string"):
        rb.to_record({"prompt": "p", "chosen": ["a"], "rejected": "b", "subset": "s"}, 1)


def test_offline_records_from_shared_data(tmp_path):
    root = data_dir()
    if not os.path.isdir(os.path.join(root, "llmbar")):
        pytest.skip(f"shared data not found at {root} (set REWARDJAX_DATA)")
    paths = rb.build_offline(root, str(tmp_path), v2_limit=20)
    v1 = rb.load(1, paths[1])
    counts = {}
    for r in v1:
        counts[r.subset] = counts.get(r.subset, 0) + 1
    for subset in rb.LLMBAR_SUBSETS.values():  # the LLMBar files are RewardBench's subsets
        assert counts.pop(subset) == rb.V1_EXAMPLE_COUNTS[subset]
    assert counts == {"llmbar-mtbench-human": 200}
    v2 = rb.load(2, paths[2])
    assert len(v2) == 20 and all(len(r.chosen) == 1 and len(r.rejected) == 3 for r in v2)
    # A length-only scorer runs the whole protocol on them.
    report = rb.evaluate(lambda items: [len(t) for _, t in items], v1, 1)
    assert set(report["sections"]) == {"Chat Hard"} and report["overall"] is None
    assert 0.0 <= report["sections"]["Chat Hard"] <= 1.0
    assert rb.evaluate(lambda items: [len(t) for _, t in items], v2, 2)["overall"] is None
