"""Linear-probe head initialisation and Baklava (checkpoint) member initialisation."""

import jax
import numpy as np
import pytest

from rewardjax.recipes.warm.baklava import init_members_from_checkpoints
from rewardjax.runtime.checkpoint import Checkpointer
from rewardjax.runtime.members import member_params
from rewardjax.runtime.probe import fit_linear_probe, init_head_by_probe, pair_features
from rewardjax.runtime.scorer import ModelScorer
from rewardjax.runtime.state import path_str
from tests.runtime.helpers import load_recipe, tiny_run


def _leaves(tree) -> dict:
    return {path_str(p).removesuffix("/value"): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("probe"))


def test_fit_linear_probe_recovers_the_direction_of_separable_features():
    rng = np.random.default_rng(0)
    n, d = 512, 16
    w_true = rng.normal(size=d)
    w_true /= np.linalg.norm(w_true)
    z_a, z_b = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    better = (z_a - z_b) @ w_true > 0  # the pair is separable by w_true
    z_c = np.where(better[:, None], z_a, z_b) + 3.0  # an offset the BT difference cancels
    z_r = np.where(better[:, None], z_b, z_a) + 3.0
    kernel, bias = fit_linear_probe(z_c, z_r, l2=1e-3, steps=500)
    assert kernel.shape == (d, 1) and kernel.dtype == np.float32
    assert bias.shape == (1,) and float(bias[0]) == 0.0
    k = np.asarray(kernel)[:, 0]
    cosine = k @ w_true / np.linalg.norm(k)
    assert cosine > 0.95, cosine
    again, _ = fit_linear_probe(z_c, z_r, l2=1e-3, steps=500)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(kernel))  # deterministic


def test_probe_head_ranks_training_pairs_better_than_the_random_head(tiny):
    config, run, data = tiny
    z_c, z_r = pair_features(run, run.state, data, config)
    d = run.spec.config.hidden_size
    assert z_c.shape == z_r.shape == (len(data), d) and z_c.dtype == np.float32

    state = init_head_by_probe(run, run.state, data, config)
    acc = {}
    for name, s in (("random", run.state), ("probe", state)):
        rc, rr, _ = ModelScorer.of(run, s).score_pairs(data.pairs)
        acc[name] = float(np.mean(rc > rr))
    assert acc["probe"] > acc["random"] and acc["probe"] >= 0.75, acc

    before, after = _leaves(run.state.params), _leaves(state.params)
    assert before.keys() == after.keys()
    for name, x in before.items():
        if name in ("head/kernel", "head/bias"):
            assert after[name].shape == x.shape and after[name].dtype == x.dtype
            assert not np.array_equal(after[name], x) or name == "head/bias"
        else:
            np.testing.assert_array_equal(after[name], x, err_msg=name)
    np.testing.assert_array_equal(after["head/bias"], 0.0)
    for old, new in zip(jax.tree.leaves(run.state.params), jax.tree.leaves(state.params)):
        assert new.sharding == old.sharding
    # The probe's reward is the head applied to the same features.
    np.testing.assert_allclose(z_c @ after["head/kernel"][:, 0],
                               ModelScorer.of(run, state).score_pairs(data.pairs)[0],
                               rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from rewardjax.recipes.bt import train

    config = load_recipe()
    config.train.steps = 4
    config.train.checkpoint_every = 2
    config.train.progress = False
    workdir = str(tmp_path_factory.mktemp("baklava"))
    train(config, workdir)
    _, run, _ = tiny_run(workdir, config)  # reuses the workdir's tokenizer
    return run, f"{workdir}/checkpoints"


def test_baklava_members_start_from_the_named_checkpoints(trained):
    run, ckpt_dir = trained
    state, hypers = init_members_from_checkpoints(run, ckpt_dir, [2, 4], lr_scale=[1.0, 0.5])
    np.testing.assert_array_equal(np.asarray(hypers.lr_scale), [1.0, 0.5])
    ckpt = Checkpointer(ckpt_dir, 0)
    refs = [ckpt.restore(run.state, s) for s in (2, 4)]
    ckpt.close()
    for i, ref in enumerate(refs):
        got, want = _leaves(member_params(state, i)), _leaves(ref.params)
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"member {i} {name}")
    # The checkpoints are distinct points of the trajectory, and neither is the fresh init.
    init = _leaves(run.state.params)
    k2, k4 = (_leaves(r.params)["head/kernel"] for r in refs)
    assert not np.array_equal(k2, k4) and not np.array_equal(k2, init["head/kernel"])
    # Fresh optimizer state and step, member sharding kept.
    assert int(state.step) == 0
    for x in jax.tree.leaves(state.opt_state):
        if np.asarray(x).dtype.kind == "f":
            np.testing.assert_array_equal(np.asarray(x), 0.0)
    for x in jax.tree.leaves(state.params):
        assert x.shape[0] == 2 and x.sharding.spec[0] is None


def test_baklava_missing_step_names_missing_and_available(trained):
    run, ckpt_dir = trained
    with pytest.raises(ValueError, match=r"steps \[3\].*available steps: \[2, 4\]"):
        init_members_from_checkpoints(run, ckpt_dir, [2, 3])
    with pytest.raises(FileNotFoundError):
        init_members_from_checkpoints(run, ckpt_dir + "-nope", [2])
