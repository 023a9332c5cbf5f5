"""Pairwise preference model: the loss pinned by hand, training on the runtime, the symmetrised
scorer through the eval / rewardbench paths, and clear refusals where a scalar reward is needed."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from rewardjax import modes, recipes
from rewardjax.eval.rewardbench import Record, record_scores, report_scores
from rewardjax.recipes.pairwise.step import pairwise_loss
from rewardjax.runtime import Scorer
from tests.runtime.helpers import load_recipe


def test_loss_by_hand():
    # pair 0: 0.5 (softplus(-2) + softplus(-1)) = 0.2200948; pair 1: 0.5 (softplus(1) +
    # softplus(0.5)) = 1.1436693; pair 2 is filler (weight 0)
    loss, m = pairwise_loss(jnp.array([2.0, -1.0, 9.0]), jnp.array([-1.0, 0.5, 9.0]),
                            jnp.array([1.0, 1.0, 0.0]))
    assert float(loss) == pytest.approx(0.6818820925648812, rel=1e-6)
    assert float(m["accuracy"]) == pytest.approx(0.5)  # pair 0 right in both orders, 1 in none
    assert float(m["sym_accuracy"]) == pytest.approx(0.5)
    # an order-blind model (same logit both ways) learns nothing from a pair: loss log 2 at 0
    loss, m = pairwise_loss(jnp.zeros(2), jnp.zeros(2), jnp.ones(2))
    assert float(loss) == pytest.approx(np.log(2.0), rel=1e-6)
    assert float(m["sym_accuracy"]) == 0.0  # P_sym = 0.5 exactly: a tie is wrong


def _config():
    config = load_recipe("pairwise", "runlocal")
    config.data.sim.num_train, config.data.sim.num_eval = 32, 16
    config.data.eval = "sim:test_id"
    config.train.steps, config.train.progress, config.train.tensorboard = 4, False, False
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("pairwise"))
    summary = modes.run(_config(), workdir)
    return workdir, summary


def test_trains_on_the_runtime_and_reports_the_order_figures(trained):
    workdir, summary = trained
    assert summary["steps"] == 4 and summary["train_pairs"] == 32
    assert summary["encoding"]["kind"] == "pairwise" and summary["encoding"]["mode"] == "plain"
    assert summary["truncation"]["sequences"] == 64  # both orders of every pair, counted
    ev = summary["eval"]["sim:test_id"]
    assert ev["n"] == 16 and ev["accuracy"] == ev["order"]["accuracy_symmetrised"]
    assert {"ece", "ace", "mce", "gold_accuracy", "truncation"} <= set(ev)
    assert os.path.isfile(os.path.join(workdir, "summary.json"))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert any(r["split"] == "train" and "sym_accuracy" in r for r in rows)

    config = _config()
    config.mode = "eval"
    again = modes.run(config, workdir)["eval"]["sim:test_id"]
    assert again["accuracy"] == ev["accuracy"] and again["ece"] == pytest.approx(ev["ece"])


def test_scorer_is_symmetric_and_matches_evaluate(trained):
    workdir, _ = trained
    scorer = recipes.get("pairwise").scorer(_config(), workdir, "eval")
    assert scorer.pairwise and scorer.step == 4
    from rewardjax.data import load_sets

    pairs = load_sets("sim:test_id", _config().data)[0][1]
    prompts = [p.prompt for p in pairs]
    ab = scorer.compare(prompts, [p.chosen for p in pairs], [p.rejected for p in pairs])
    ba = scorer.compare(prompts, [p.rejected for p in pairs], [p.chosen for p in pairs])
    np.testing.assert_allclose(ab["p"] + ba["p"], 1.0, atol=1e-12)  # the position swap
    np.testing.assert_allclose(ab["p"], (ab["p_ab"] + 1 - ab["p_ba"]) / 2, atol=1e-12)
    np.testing.assert_array_equal(ab["logit"], -ba["logit"])
    assert scorer.evaluate(pairs)["accuracy"] == pytest.approx(np.mean(ab["p"] > 0.5))

    # RewardBench rows: log-odds against the chosen response; v1 correct iff P_sym > 0.5
    records = [Record(f"r{i}", p.prompt, [p.chosen], [p.rejected, p.chosen[::-1]], "s")
               for i, p in enumerate(pairs[:4])]
    scores = scorer.group_scores([(r.prompt, r.chosen + r.rejected) for r in records])
    np.testing.assert_allclose([s[1] for s in scores], ba["logit"][:4], atol=1e-12)
    assert all(s[0] == 0.0 and len(s) == 3 for s in scores)
    v1 = [Record(r.id, r.prompt, r.chosen, r.rejected[:1], "s") for r in records]
    acc = report_scores(v1, scorer.group_scores([(r.prompt, r.chosen + r.rejected)
                                                 for r in v1]), 1)["subsets"]["s"]
    assert acc == pytest.approx(np.mean(ab["p"][:4] > 0.5))


def test_rewardbench_mode_runs_the_pairwise_protocol(trained, shared_data, monkeypatch):
    workdir, _ = trained
    monkeypatch.setenv("REWARDJAX_DATA", shared_data)
    config = _config()
    config.mode, config.rewardbench.v2_limit = "rewardbench", 3
    rb = modes.run(config, workdir)
    assert 0.0 <= rb["v1"]["sections"]["Chat Hard"] <= 1.0
    assert set(rb["v1"]["subsets"]) >= {"llmbar-natural", "llmbar-mtbench-human"}
    assert 0.0 <= rb["v2"]["subsets"]["alpacaeval-bo4"] <= 1.0


def test_scalar_only_uses_refuse_with_a_clear_error(trained, tmp_path):
    workdir, _ = trained
    scorer = recipes.get("pairwise").scorer(_config(), workdir, "eval")
    with pytest.raises(ValueError, match="no reward to a single response"):
        scorer.score([[]], ["hello"])
    with pytest.raises(ValueError, match="score mode, PPO rewards and a reward server"):
        scorer.score_items([([], "hello")])
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"prompt": "hi", "response": "hello"}) + "\n")
    config = _config()
    config.mode, config.score.input = "score", str(inp)
    with pytest.raises(ValueError, match="pairwise preference model"):
        modes.run(config, workdir)
    config = _config()
    config.mode = "export"
    with pytest.raises(ValueError, match="no HF sequence-classification form"):
        modes.run(config, workdir)
    pytest.importorskip("uvicorn")
    from rewardjax.modes.serve import make_server

    config = _config()
    config.mode = "serve"
    with pytest.raises(ValueError, match="a reward server need a scalar reward model"):
        make_server(config, workdir)


class _LengthScorer(Scorer):
    """Rewards = response length, to check the scalar group_scores path."""

    def score_encoded(self, seqs):
        raise AssertionError("not used")

    def score(self, prompts, responses):
        self.calls = getattr(self, "calls", 0) + 1
        return {"reward": np.asarray([len(r) for r in responses], np.float32)}


def test_scalar_group_scores_equal_the_rewardbench_record_scores():
    s = _LengthScorer()
    records = [Record("a", [{"role": "user", "content": "q"}], ["long answer"], ["no"], "x"),
               Record("b", [{"role": "user", "content": "q"}], ["no"], ["long answer"], "x"),
               Record("c", [], ["abc"], ["ab", "abcd", "abc"], "y")]
    got = s.group_scores([(r.prompt, r.chosen + r.rejected) for r in records])
    want = record_scores(lambda items: s.score(*zip(*items))["reward"], records)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert report_scores(records[:2], got[:2], 1)["subsets"] == {"x": 0.5}


def test_config_keys_it_does_not_read_are_refused():
    from rewardjax.config import UnreadConfigKeys

    config = load_recipe("pairwise", "runlocal")
    assert config.recipe == "pairwise" and not config.data.packing
    modes.check_overrides(config, ["train.steps", "train.batch_size", "seed", "data.eval"])
    with pytest.raises(UnreadConfigKeys, match="Bradley-Terry settings"):
        modes.check_overrides(config, ["loss.margin"])
    with pytest.raises(UnreadConfigKeys, match="never packed"):
        modes.check_overrides(config, ["data.packing"])
