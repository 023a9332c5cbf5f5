"""Step-labelled data: TRL / PRM800K readers, step encoding and truncation, the step simulator."""

import json

import numpy as np
import pytest

from rewardjax.data import DataError, SequenceEncoder, build_wordlevel_tokenizer
from rewardjax.data.sim_steps import StepSimConfig, simulate_pools, simulate_steps
from rewardjax.data.steps import (
    StepEncoder,
    collate_steps,
    encode_step_records,
    first_error_of,
    load_steps,
    solution_pairs,
)

TRL = {"prompt": "Which is larger, 9.8 or 9.11?",
       "completions": ["11 is greater than 8.", "Hence 9.11 > 9.8."], "labels": [True, False]}


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_trl_reader_and_errors_name_file_and_line(tmp_path):
    recs = load_steps(_write(tmp_path / "a.jsonl", [TRL, TRL]))
    assert len(recs) == 2 and recs[0].steps == TRL["completions"]
    assert recs[0].labels == [True, False] and recs[0].first_error == 1
    assert recs[0].prompt == [{"role": "user", "content": TRL["prompt"]}]
    bad = dict(TRL, labels=[True])
    with pytest.raises(DataError, match=r"b\.jsonl, record 2: 'labels' must be a list with one "
                                        r"boolean per step \(2 steps, got 1\)"):
        load_steps(_write(tmp_path / "b.jsonl", [TRL, bad]))
    with pytest.raises(DataError, match=r"record 1: label 1 is 0, expected true or false"):
        load_steps(_write(tmp_path / "c.jsonl", [dict(TRL, labels=[True, 0])]))
    with pytest.raises(DataError, match=r"record 1: missing 'labels'"):
        load_steps(_write(tmp_path / "d.jsonl", [{"prompt": "p", "completions": ["a"]}]),
                   "trl_steps")
    with pytest.raises(DataError, match="not a step-labelled record"):
        load_steps(_write(tmp_path / "e.jsonl", [{"prompt": "p", "chosen": "a"}]))


PRM800K = {
    "question": {"problem": "What is 2 + 3 * 4?"},
    "label": {"steps": [
        {"completions": [{"text": "3 * 4 = 12.", "rating": 1}], "chosen_completion": 0,
         "human_completion": None},
        {"completions": [{"text": "Let us add.", "rating": 0},
                         {"text": "Add 2 first.", "rating": -1}], "chosen_completion": 0,
         "human_completion": None},
        {"completions": [{"text": "2 + 12 = 15.", "rating": -1},
                         {"text": "2 + 12 = 14.", "rating": 1}], "chosen_completion": None,
         "human_completion": None},
        {"completions": [{"text": "never reached", "rating": 1}], "chosen_completion": 0},
    ], "finish_reason": "found_error"},
}


def test_prm800k_reader_maps_ratings_and_stops_where_the_labeler_stopped(tmp_path):
    path = _write(tmp_path / "p.jsonl", [PRM800K])
    (rec,) = load_steps(path)
    # rating 1 good, 0 good (optimistic default), -1 bad; no chosen completion: the first one,
    # and the solution ends there.
    assert rec.steps == ["3 * 4 = 12.", "Let us add.", "2 + 12 = 15."]
    assert rec.labels == [True, True, False]
    (rec,) = load_steps(path, neutral="bad")
    assert rec.labels == [True, False, False]
    broken = json.loads(json.dumps(PRM800K))
    broken["label"]["steps"][1]["completions"][0]["rating"] = 2
    with pytest.raises(DataError, match=r"record 1: step 1: rating 2, expected -1, 0 or 1"):
        load_steps(_write(tmp_path / "q.jsonl", [broken]))


@pytest.fixture(scope="module")
def tok():
    return build_wordlevel_tokenizer(["alpha beta gamma delta ; question answer one two three"])


def test_label_read_at_the_separator_token(tok):
    enc = StepEncoder(SequenceEncoder(tok, 64, mode="plain"), separator=" ;", max_steps=4)
    prompt = [{"role": "user", "content": "question"}]
    e = enc.encode_steps(prompt, ["alpha beta", "gamma", "delta one two"], [True, False, False])
    semi = tok.convert_tokens_to_ids(";")
    assert [int(e.ids[i]) for i in e.step_ends] == [semi] * 3
    # each step's tokens sit just before its separator
    toks = tok.convert_ids_to_tokens([int(i) for i in e.ids])
    assert [toks[i - 1] for i in e.step_ends] == ["beta", "gamma", "two"]
    assert e.labels.tolist() == [True, False, False]
    # the separator "\n" has no token in a word-level vocabulary: the step's last token
    plain = StepEncoder(SequenceEncoder(tok, 64, mode="plain"), separator="\n")
    e2 = plain.encode(prompt, "alpha beta\ngamma\n\ndelta")  # score mode: split, empty dropped
    toks = tok.convert_ids_to_tokens([int(i) for i in e2.ids])
    assert [toks[i] for i in e2.step_ends] == ["beta", "gamma", "delta"]


def test_truncation_keeps_whole_steps_and_counts(tok):
    prompt = [{"role": "user", "content": "question"}]
    steps, labels = ["one two", "three", "alpha"], [True, True, False]
    # frame: [BOS] + "User: question" (3) + "\nAssistant: " (2) + [EOS] = 7 tokens; the steps
    # with their " ;" take 3 + 2 (+ 2 for "alpha", beyond max_steps=2)
    fits = StepEncoder(SequenceEncoder(tok, 12, mode="plain"), " ;", max_steps=2)
    e = fits.encode_steps(prompt, steps, labels)
    assert len(e.ids) == 12 and e.step_ends.tolist() == [8, 10]
    assert fits.stats.as_dict() == dict(solutions=1, prompt_truncated=0, solutions_truncated=0,
                                        steps_dropped=0, steps_over_max=1, dropped=0,
                                        tokens_removed=0)
    short = StepEncoder(SequenceEncoder(tok, 11, mode="plain"), " ;", max_steps=2)
    e = short.encode_steps(prompt, steps, labels)  # the second step no longer fits whole
    assert e.step_ends.tolist() == [8] and e.labels.tolist() == [True] and len(e.ids) == 10
    assert short.stats.as_dict() == dict(solutions=1, prompt_truncated=0, solutions_truncated=1,
                                         steps_dropped=1, steps_over_max=1, dropped=0,
                                         tokens_removed=2)
    drop = StepEncoder(SequenceEncoder(tok, 11, policy="drop", mode="plain"), " ;", 2)
    assert drop.encode_steps(prompt, steps) is None and drop.stats.dropped == 1


def test_collate_left_padding_shifts_step_positions(tok):
    enc = StepEncoder(SequenceEncoder(tok, 64, mode="plain"), separator=" ;", max_steps=3)
    prompt = [{"role": "user", "content": "question"}]
    seqs = [enc.encode_steps(prompt, ["alpha", "beta"], [True, False]),
            enc.encode_steps(prompt, ["gamma delta one"], [True])]
    for left in (False, True):
        b = collate_steps(seqs, np.array([0, 1]), 20, 3, 3, 0, left)
        for row, e in enumerate(seqs):
            k = len(e.step_ends)
            picked = b["input_ids"][row, b["step_pos"][row, :k]]
            np.testing.assert_array_equal(picked, e.ids[e.step_ends])
            assert b["step_mask"][row].tolist() == [1.0] * k + [0.0] * (3 - k)
        assert b["weights"].tolist() == [1.0, 1.0, 0.0]
        assert b["step_labels"][0, :2].tolist() == [1.0, 0.0]


def test_step_simulator_is_deterministic_with_a_gold_first_error():
    cfg = StepSimConfig(seed=3, num=200)
    a, b = simulate_steps(cfg), simulate_steps(cfg)
    assert [(r.steps, r.labels) for r in a] == [(r.steps, r.labels) for r in b]
    assert simulate_steps(StepSimConfig(seed=4, num=200))[0].steps != a[0].steps
    for r in a:
        first = r.meta["first_error"]
        assert first == first_error_of(r.labels) == r.first_error
        if first >= 0:  # every step from the first error on is bad (PRM800K convention)
            assert r.labels[first:] == [False] * (len(r.labels) - first)
        assert r.meta["gold"] == float(first < 0)
    kinds = {r.meta["error_kind"] for r in a}
    assert {"", "copy", "flip", "skip"} <= kinds
    assert 0.25 < np.mean([r.first_error < 0 for r in a]) < 0.55
    pools = simulate_pools(StepSimConfig(seed=3, num=5), pool_size=4)
    assert len(pools) == 5 and all(len(p) == 4 and len({repr(s.prompt) for s in p}) == 1
                                   for p in pools)
    pairs = solution_pairs(a)
    assert pairs and all(p.meta["gold_chosen"] > p.meta["gold_rejected"] for p in pairs)


def test_encode_step_records_counts_removed_solutions(tok):
    recs = simulate_steps(StepSimConfig(num=4))
    enc = StepEncoder(SequenceEncoder(tok, 8, policy="drop", mode="plain"))
    seqs, kept = encode_step_records(recs, enc)
    assert seqs == [] and kept == [] and enc.stats.dropped == 4
