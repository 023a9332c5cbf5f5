"""Best-of-n estimator against brute-force enumeration, KL_bon, pools and the recipe."""

import gzip
import itertools
import json
import math
import os

import numpy as np
import pytest

from rewardjax.data.records import DataError
from rewardjax.eval.bon_curves import (
    bon_coefficients,
    bon_curves,
    default_ns,
    expected_best_of_n,
    kl_bon,
    reference_curves,
)
from rewardjax.eval.bon_pools import load_alpaca_pools


def brute_force(proxy, gold, n):
    """Mean over every n-subset of (max proxy, gold of the pick); tied maxima share the pick
    uniformly (the expected gold of a random tie-break)."""
    picks_p, picks_g = [], []
    for subset in itertools.combinations(range(len(proxy)), n):
        p = np.asarray([proxy[i] for i in subset])
        top = [subset[j] for j in np.flatnonzero(p == p.max())]
        picks_p.append(p.max())
        picks_g.append(np.mean([gold[i] for i in top]))
    return np.mean(picks_p), np.mean(picks_g)


@pytest.mark.parametrize("seed", [0, 1])
def test_estimator_matches_enumeration_of_all_subsets(seed):
    rng = np.random.default_rng(seed)
    proxy, gold = rng.normal(size=7), rng.normal(size=7)
    ns = list(range(1, 8))
    got_p, got_g = expected_best_of_n(proxy, gold, ns)
    for k, n in enumerate(ns):
        want_p, want_g = brute_force(proxy, gold, n)
        assert got_p[k] == pytest.approx(want_p, abs=1e-12)
        assert got_g[k] == pytest.approx(want_g, abs=1e-12)


def test_n1_is_pool_mean_and_nN_is_proxy_argmax():
    proxy = np.array([0.3, 2.0, -1.0, 0.5, 1.1])
    gold = np.array([1.0, 7.0, 3.0, 4.0, 5.0])
    p, g = expected_best_of_n(proxy, gold, [1, 5])
    assert p[0] == pytest.approx(proxy.mean()) and g[0] == pytest.approx(gold.mean())
    assert p[1] == pytest.approx(2.0) and g[1] == pytest.approx(7.0)
    # Hand value for n = 2 (N = 5): weights (i - 1) / 10 on the sorted ranks.
    # proxy order: -1.0 (g 3), 0.3 (g 1), 0.5 (g 4), 1.1 (g 5), 2.0 (g 7)
    _, g2 = expected_best_of_n(proxy, gold, [2])
    assert g2[0] == pytest.approx((0 * 3 + 1 * 1 + 2 * 4 + 3 * 5 + 4 * 7) / 10)


def test_ties_use_uniform_tie_breaking_and_ignore_input_order():
    proxy = np.array([1.0, 2.0, 2.0, 0.0, 2.0, 1.0])
    gold = np.array([0.0, 3.0, 6.0, 1.0, 9.0, 5.0])
    ns = list(range(1, 7))
    got_p, got_g = expected_best_of_n(proxy, gold, ns)
    for k, n in enumerate(ns):
        want_p, want_g = brute_force(proxy, gold, n)
        assert got_p[k] == pytest.approx(want_p) and got_g[k] == pytest.approx(want_g)
    perm = np.array([4, 2, 0, 5, 1, 3])  # reordering the pool must not change anything
    np.testing.assert_allclose(expected_best_of_n(proxy[perm], gold[perm], ns)[1], got_g)
    # All tied: random choice, the pool mean for every n.
    _, flat = expected_best_of_n(np.zeros(6), gold, ns)
    np.testing.assert_allclose(flat, gold.mean())


def test_coefficients_exact_sum_to_one_and_stable_for_large_pools():
    w = bon_coefficients(54, [1, 2, 17, 54])
    for row, n in zip(w, [1, 2, 17, 54]):
        exact = [math.comb(i - 1, n - 1) / math.comb(54, n) if i >= n else 0.0
                 for i in range(1, 55)]
        np.testing.assert_allclose(row, exact, rtol=1e-10, atol=1e-300)
    big = bon_coefficients(1000, [1, 10, 500, 999, 1000])
    assert np.all(np.isfinite(big))
    np.testing.assert_allclose(big.sum(1), 1.0, rtol=1e-9)
    np.testing.assert_allclose(big[0], 1e-3)
    assert big[-1, -1] == pytest.approx(1.0) and big[-1, :-1].sum() == 0.0
    with pytest.raises(ValueError, match="1 <= n <= N"):
        bon_coefficients(5, [6])


def test_kl_bon_values():
    np.testing.assert_allclose(kl_bon([1, 2, 4, 54]),
                               [0.0, math.log(2) - 0.5, math.log(4) - 0.75,
                                math.log(54) - 53 / 54])
    assert default_ns(54) == [1, 2, 4, 8, 16, 32, 54]
    assert default_ns(8) == [1, 2, 4, 8]


def test_oracle_bounds_every_scorer_and_random_is_the_mean():
    rng = np.random.default_rng(3)
    sizes = [9, 12, 12, 7]  # pools of different sizes are fine
    gold = [rng.uniform(1, 2, s) for s in sizes]
    ns = [1, 2, 4, 7]
    refs = reference_curves(gold, ns)
    np.testing.assert_allclose(refs["random"]["gold"], np.mean([g.mean() for g in gold]))
    for trial in range(5):
        proxy = [g + rng.normal(scale=0.5 * trial, size=g.shape) for g in gold]
        curve = bon_curves(proxy, gold, ns)
        assert np.all(curve["gold"] <= refs["oracle"]["gold"] + 1e-12)
        assert curve["gold"][0] == pytest.approx(refs["random"]["gold"][0])
    # Oracle curve is non-decreasing in n.
    assert np.all(np.diff(refs["oracle"]["gold"]) >= -1e-12)


def write_pools(path, rows):
    with gzip.open(path, "wt") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def pool_row(i, gens=("a", "b", "b", "c")):
    return {"instruction": f"question {i}?", "dataset": "t",
            "candidates": [{"generator": g, "output": "" if j == 3 else f"answer {i} " * (j + 1),
                            "preference": 1.0 + 0.25 * j} for j, g in enumerate(gens)]}


def test_load_pools_subsets_duplicate_generators_and_errors(tmp_path):
    path = str(tmp_path / "pools.jsonl.gz")
    write_pools(path, [pool_row(i) for i in range(6)])
    pools = load_alpaca_pools(path)
    assert len(pools) == 6 and len(pools[0].responses) == 4
    assert pools[0].responses[3] == ""  # empty answers stay in the pool
    np.testing.assert_allclose(pools[0].gold, [1.0, 1.25, 1.5, 1.75])
    sub = load_alpaca_pools(path, num_prompts=3, num_candidates=3, seed=1)
    assert len(sub) == 3 and all(len(p.responses) == 3 for p in sub)
    # The same candidates (by generator and occurrence) in every pool.
    assert len({tuple(p.gold) for p in sub}) == 1
    bad = pool_row(0)
    bad["candidates"][1]["preference"] = None
    write_pools(path, [pool_row(1), bad])
    with pytest.raises(DataError, match="line 2.*'b'.*preference"):
        load_alpaca_pools(path)


def test_run_bon_writes_json_and_plots(tmp_path):
    from configs.bon import get_config
    from rewardjax.recipes.bon.run import run_bon

    path = str(tmp_path / "pools.jsonl.gz")
    write_pools(path, [pool_row(i) for i in range(3)])
    config = get_config("runlocal")
    config.bon.pools = path
    config.bon.num_candidates = 0
    workdir = str(tmp_path / "run")
    summary = run_bon(config, workdir)
    with open(os.path.join(workdir, "bon.json")) as f:
        saved = json.load(f)
    assert saved["n"] == [1, 2, 4] and set(saved["scorers"]) == {"length", "init_rm"}
    # Length proxy: longest answer is index 2 (gold 1.5) in every pool.
    assert saved["scorers"]["length"]["gold"][-1] == pytest.approx(1.5)
    assert saved["oracle"]["gold"][-1] == pytest.approx(1.75)
    assert saved["random"]["gold"][0] == pytest.approx(1.375)
    scores = np.load(os.path.join(workdir, "bon_scores.npz"))
    assert scores["init_rm"].shape == (12,) and np.all(np.isfinite(scores["init_rm"]))
    if summary["plots"]:  # matplotlib installed
        assert all(os.path.getsize(p) > 1000 for p in summary["plots"])


def test_sampled_pools_from_a_tiny_policy_are_cached(tmp_path, monkeypatch):
    from configs.bon import get_config
    from rewardjax.recipes.bon import run as bon

    prompts = tmp_path / "q.jsonl"
    prompts.write_text('{"question_id": 1, "turns": ["tell me a story", "more"]}\n\n'
                       '{"question_id": 2, "turns": ["what is a cat"]}\n')
    config = get_config("runlocal,source=sampled")
    config.bon.prompts = str(prompts)
    config.bon.init_model = ""  # the length proxy is enough here
    config.bon.num_samples = 3
    config.bon.max_new_tokens = 4
    workdir = str(tmp_path / "run")
    summary = bon.run_bon(config, workdir)
    assert summary["pools"] == 2 and summary["pool_sizes"] == [3] and summary["n"] == [1, 2, 3]
    with open(os.path.join(workdir, "samples.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["prompt"] for r in rows] == ["tell me a story", "what is a cat"]
    # Without a gold reward model the gold is the length, so the length proxy is the oracle.
    np.testing.assert_allclose(summary["scorers"]["length"]["gold"], summary["oracle"]["gold"])

    def no_policy(*args):
        raise AssertionError("samples.jsonl should have been reused")

    monkeypatch.setattr(bon, "policy_and_tokenizer", no_policy)
    again = bon.run_bon(config, workdir)
    np.testing.assert_allclose(again["oracle"]["gold"], summary["oracle"]["gold"])


def test_run_config_from_config_json_over_current_defaults(tmp_path):
    from configs.bon import get_config
    from rewardjax.recipes.bon.scoring import scoring_config
    from rewardjax.runtime.load import read_run_config

    saved = {"model": {"path": "random:llama", "max_length": 512}, "data": {"truncation": "drop"},
             "old_section": {"x": 1}}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = read_run_config(str(tmp_path))
    assert config.model.path == "random:llama" and config.old_section.x == 1
    assert config.lora.enabled is False  # keys the old run did not save come from the defaults
    scored = scoring_config(config, get_config("").bon)
    assert scored.model.max_length == 256 and scored.data.truncation == "keep_end"
    assert config.model.max_length == 512  # the loaded config itself is not modified
    with pytest.raises(FileNotFoundError, match="--config.bon.warm_config=configs/warm.py"):
        read_run_config(str(tmp_path / "missing"), key="bon.warm_config")
