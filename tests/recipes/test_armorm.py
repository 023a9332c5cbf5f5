"""ArmoRM: verbosity debiasing, labels from the simulator, the gate, and the whole recipe."""

import json
import os

import ml_collections
import numpy as np
import pytest

from rewardjax.data import simulator
from rewardjax.export import load_native
from rewardjax.heads import regression as ridge
from rewardjax.heads.gating import ArmoRMHead, build_gate
from rewardjax.recipes.armorm import data as armorm_data
from rewardjax.recipes.armorm import train as armorm
from tests.runtime.helpers import load_recipe


def _reference_scores(n=400, seed=0):
    rng = np.random.default_rng(seed)
    rv = rng.normal(size=n)
    return np.stack([
        0.8 * rv + rng.normal(size=n),        # length-correlated objective
        -0.5 * rv + rng.normal(size=n),       # already anti-correlated: λ = 0
        rv,                                   # r_verbose itself
        2.0 * rv + 0.1 * rng.normal(size=n),  # almost pure verbosity: λ near 2
    ], 1)


def test_debias_reaches_threshold_with_the_smallest_grid_lambda():
    r = _reference_scores()
    grid = np.round(np.arange(0.0, 5.0001, 0.01), 2)
    deb = ridge.fit_debias(r, verbose_index=2, threshold=0.03, grid=grid)
    rv = r[:, 2]
    assert deb.lambdas[2] == 0.0 and deb.lambdas[1] == 0.0 and deb.reached.all()
    assert 1.9 < deb.lambdas[3] < 2.1 and 0.4 < deb.lambdas[0] < 1.2
    after = ridge.apply_debias(r, deb.matrix)
    for i in (0, 1, 3):
        assert ridge.spearman(after[:, i], rv) <= 0.03
        assert deb.corr_after[i] == pytest.approx(ridge.spearman(after[:, i], rv))
        if deb.lambdas[i] > 0:  # the previous grid value is not enough: λ is the smallest
            prev = grid[np.searchsorted(grid, deb.lambdas[i]) - 1]
            assert ridge.spearman(r[:, i] - prev * rv, rv) > 0.03
    assert deb.corr_before[0] > 0.3 and deb.corr_after[2] == pytest.approx(1.0)
    # a grid that stops too early is reported, not hidden
    short = ridge.fit_debias(r, 2, 0.03, grid=[0.0, 0.5, 1.0])
    assert not short.reached[3] and short.lambdas[3] == 1.0 and short.reached[1]


def test_labels_come_from_pair_meta_with_missing_attributes_as_nan():
    pairs = simulator.simulate(simulator.SimulatorConfig(num_pairs=40, seed=1))
    names = armorm_data.objective_names(pairs)
    assert names == [a for a in simulator.attribute_names() if a in names]
    assert "verbosity" in names
    yc, yr = armorm_data.objective_labels(pairs, names)
    for i, p in enumerate(pairs):
        for j, a in enumerate(names):
            if a in p.meta["attrs_chosen"]:
                assert yc[i, j] == p.meta["attrs_chosen"][a]
                assert yr[i, j] == p.meta["attrs_rejected"][a]
            else:  # not an attribute of this category
                assert np.isnan(yc[i, j]) and np.isnan(yr[i, j])
    y = armorm_data.drop_labels(np.zeros((2000, 5)), 0.1, seed=0)
    assert 0.08 < np.isnan(y).mean() < 0.12
    fit, val = armorm_data.split_validation(10, 0.2, 0)
    assert len(val) == 2 and sorted(np.r_[fit, val].tolist()) == list(range(10))


def _stage2(steps, lr):
    c = ml_collections.ConfigDict(dict(steps=steps, batch_size=64, lr=lr, warmup_steps=5,
                                       schedule="cosine", weight_decay=0.0, b1=0.9, b2=0.999,
                                       eps=1e-8, clip_norm=1.0, grad_accum=1, log_every=50))
    return c


def test_gate_uses_the_prompt_where_fixed_weights_cannot():
    # Two prompt clusters; in cluster c the better response is the one higher on objective c.
    rng = np.random.default_rng(0)
    n = 512
    cluster = rng.integers(2, size=n)
    x = np.eye(2)[cluster] + 0.1 * rng.normal(size=(n, 2))
    a, b = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    a_wins = a[np.arange(n), cluster] > b[np.arange(n), cluster]
    rc, rr = np.where(a_wins[:, None], a, b), np.where(a_wins[:, None], b, a)
    gate, _ = armorm.train_gate(build_gate("gate", 2, 2, hidden=16, depth=1), x, rc, rr,
                                _stage2(150, 3e-2), seed=0)
    fixed, _ = armorm.train_gate(build_gate("fixed", 2, 2), x, rc, rr, _stage2(150, 5e-2),
                                 seed=0)

    def acc(m):
        return float(np.mean(m(x, rc)[0] > m(x, rr)[0]))

    assert acc(gate) > 0.95 and acc(fixed) < 0.8  # one weight vector: ~3/4 at best here
    g = np.asarray(gate.weights(np.eye(2)))
    assert g[0, 0] > 0.9 and g[1, 1] > 0.9  # cluster c weighs objective c


def test_end_to_end_through_main_and_the_cache_is_reused(tmp_path, monkeypatch):
    from rewardjax.main import run

    config = load_recipe("armorm", "runlocal")
    config.armorm.cache_dir = str(tmp_path / "cache")
    config.armorm.raw_ablation = False
    config.train.steps = 10  # the gate's updates
    config.data.buckets = (128,)  # one feature program to compile
    config.train.tensorboard = False
    summary = run(config, str(tmp_path / "w1"))
    assert set(summary["eval"]) == {"val", "sim:test_id", "sim:test_ood"}
    for res in summary["eval"].values():
        assert set(res) == {"uniform", "gate", "fixed"}
        assert all(0 <= m["gold_accuracy"] <= 1 for m in res.values())
    table = summary["objectives_table"]
    assert set(table) == set(summary["objectives"]) and "verbosity" in table
    for name, row in table.items():
        if name != "verbosity" and row["reached"]:
            assert row["ref_after"] <= 0.03
    # the saved model holds the debiasing matrix and reproduces the run's scores
    head = ArmoRMHead.load(str(tmp_path / "w1" / "armorm" / "gate"))
    lam = np.asarray(json.load(open(tmp_path / "w1" / "armorm" / "gate" / "model.json"))
                     ["lambdas"])
    np.testing.assert_allclose(head.debias, ridge.debias_matrix(lam, head.verbose_index))
    contrib = np.load(tmp_path / "w1" / "contributions_sim_test_id.npz")
    np.testing.assert_allclose(contrib["contributions_chosen"].sum(-1), contrib["reward_chosen"],
                               rtol=1e-4, atol=1e-4)
    assert len(os.listdir(tmp_path / "cache")) == 2 * 3  # npz + json for train, test_id, ood

    # eval / score / export read the workdir through the native export: the gated model the
    # run evaluated, to float32 rounding.
    w1 = str(tmp_path / "w1")
    config.mode = "eval"
    ev = run(config, w1)
    for name in ("sim:test_id", "sim:test_ood"):
        for key in ("accuracy", "gold_accuracy", "ece"):
            np.testing.assert_allclose(ev["eval"][name][key], summary["eval"][name]["gate"][key],
                                       atol=1e-5, err_msg=f"{name} {key}")
    inp = tmp_path / "responses.jsonl"
    texts = [("Name a colour.", "Blue."), ("Name a colour.", "A long answer: blue, maybe red.")]
    inp.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in texts))
    config.mode, config.score.input = "score", str(inp)
    scored = [json.loads(line) for line in open(run(config, w1))]
    native = load_native(os.path.join(w1, "export"))
    direct = native.score([[{"role": "user", "content": p}] for p, _ in texts],
                          [r for _, r in texts])
    np.testing.assert_allclose([s["reward"] for s in scored], direct["reward"], rtol=1e-6)
    assert [list(s["objectives"]) for s in scored] == [summary["objectives"]] * 2
    config.mode = "export"
    exported = run(config, w1)
    assert exported["format"] == "native"
    assert exported["normalisation"]["count"] == 2 * (32 + 32)  # both sides of both eval sets
    assert load_native(exported["dir"]).manifest["normalisation"] == exported["normalisation"]
    from rewardjax.data.sources import data_root

    if os.path.isdir(os.path.join(data_root(), "llmbar")):  # offline RewardBench records
        config.mode, config.rewardbench.v2_limit = "rewardbench", 4
        rb = run(config, w1)
        assert 0.0 <= rb["v1"]["sections"]["Chat Hard"] <= 1.0
    config.mode = "train"

    # Second run, new workdir: every feature comes from the cache, the backbone never runs.
    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran although the features were cached")

    monkeypatch.setattr(armorm_data, "BackboneFeatures", no_backbone)
    again = run(config, str(tmp_path / "w2"))
    assert again["eval"] == summary["eval"]  # deterministic given the seed


def test_discordant_counts_are_mcnemar_counts():
    from rewardjax.data.records import Pair

    golds = [(1.0, 0.0), (1.0, 0.0), (0.0, 1.0), (2.0, 2.0)]  # the last is a gold tie
    pairs = [Pair([], "a", "b", meta={"gold_chosen": g, "gold_rejected": b}) for g, b in golds]
    # rows: chosen rewards then rejected rewards
    r_a = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])  # > < < >
    r_b = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # > > > <
    out = armorm._discordant(pairs, r_a, r_b)
    # labels (chosen is right): a right on 0, 3; b right on 0, 1, 2
    assert out["label"] == {"only_first": 1, "only_second": 2}
    # gold (ties dropped): truth +, +, -; a: +, -, - -> right on 0, 2; b: +, +, + -> 0, 1
    assert out["gold"] == {"only_first": 1, "only_second": 1}


def test_modes_refuse_workdirs_without_one_reward_model(tmp_path):
    from rewardjax.main import run

    config = load_recipe("bon", "runlocal")
    for mode in ("eval", "score", "export"):
        config.mode = mode
        with pytest.raises(ValueError, match="bon.json"):
            run(config, str(tmp_path))
