"""Stacked ensemble members trained as one program: equal to training each member alone."""

import dataclasses
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardjax.data.batching import BatchPlan, collate_pairs
from rewardjax.runtime.members import (
    average_members,
    init_members,
    make_member_step,
    member_params,
)
from rewardjax.runtime.members_data import (
    MemberPlans,
    collate_members,
    member_batch,
    place_members,
)
from rewardjax.runtime.optim import make_optimizer
from rewardjax.runtime.state import TrainState, count_params
from tests.runtime.helpers import ROOT, load_recipe, tiny_run

M = 3
LR_SCALE = (1.0, 0.5, 2.0)
DATA_SEEDS = (0, 1, 2)


def _config():
    config = load_recipe()
    # A pure BT loss leaves the shared reward offset to reduction noise that Adam amplifies (see
    # sharded_check.py); centering pins it so vmapped and single runs can be compared at 1e-5.
    config.loss.center_coef = 0.01
    config.train.warmup_steps = 0  # a non-zero learning rate from step 0
    config.train.weight_decay = 0.1  # so lr_scale must also scale the decoupled decay
    # Adam's step lr * g / (|g| + eps) turns float32 reduction-order noise on an element whose
    # gradient nearly cancels (a rare token's embedding) into a visible fraction of lr: the
    # vmapped step's batched [M, tokens, in] matmuls reduce in another order than the single
    # step's. As in sharded_check.py, a larger eps keeps such elements linear; a wrong member
    # update still moves parameters by O(lr).
    config.train.eps = 1e-6
    return config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(config, run, data)``; tests never donate ``run.state``, so they can share it."""
    return tiny_run(tmp_path_factory.mktemp("members"), _config())


def _host(tree):
    return jax.tree.map(np.asarray, tree)


def _assert_trees_close(a, b, atol=1e-5, rtol=1e-5):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for (path, x), y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol,
                                   err_msg=jax.tree_util.keystr(path))


def _alone_state(run, i):
    """Member i's start as a single TrainState: the run's init with rng fold_in(rng, i).

    Copied through the host so donating it leaves ``run.state`` alive."""
    state = run.state._replace(rng=jax.random.fold_in(run.state.rng, i))
    return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), state, run.shardings)


def _alone_step(run, config, scale):
    """``run.train_step`` for a member trained alone with AdamW at ``scale * lr``."""
    tcfg = config.train.copy_and_resolve_references()
    tcfg.lr = config.train.lr * scale
    return dataclasses.replace(run, tx=make_optimizer(tcfg)).train_step(dropout=False)


def test_member_plans_pad_every_member_to_the_longest_bucket(tiny):
    _, run, data = tiny
    buckets, pad = (64, 96, 128), run.tokenizer.pad_token_id
    plans = MemberPlans(data.lengths(), 4, buckets, seeds=DATA_SEEDS)
    singles = [BatchPlan(data.lengths(), 4, buckets, seed=s) for s in DATA_SEEDS]
    assert plans.num_members == M
    seen_lengths = set()
    for step in range(2 * plans.batches_per_epoch):  # crosses an epoch boundary
        length, idx = plans.at_step(step)
        own = [p.at_step(step) for p in singles]
        assert length == max(b for b, _ in own)
        seen_lengths.add(length)
        for i in range(M):
            np.testing.assert_array_equal(idx[i], own[i][1])
        if step < 4:
            batch = collate_members(data, plans, step, pad)
            assert batch["input_ids"].shape == (M, 4, 2, length)
            assert batch["weights"].shape == (M, 4)
            for i in range(M):
                ref = collate_pairs(data, own[i][1], length, 4, pad)
                for k, v in member_batch(batch, i).items():
                    np.testing.assert_array_equal(v, ref[k], err_msg=k)
    assert len(seen_lengths) > 1  # the test data does exercise several buckets
    placed = place_members(run, collate_members(data, plans, 0, pad))
    assert "index" not in placed and placed["input_ids"].shape[0] == M


def test_vmapped_and_sequential_members_equal_train_step_alone(tiny):
    config, run, data = tiny
    pad = run.tokenizer.pad_token_id
    # One bucket: every step has the same shape, so the step must trace exactly once.
    plans = MemberPlans(data.lengths(), config.train.batch_size, (128,), seeds=DATA_SEEDS)
    vm, hypers = init_members(run, M, lr_scale=LR_SCALE)
    seq, _ = init_members(run, M, lr_scale=LR_SCALE)
    vm_step = make_member_step(run, dropout=False, trace_guard=chex.assert_max_traces(n=1))
    seq_step = make_member_step(run, dropout=False, sequential=True,
                                trace_guard=chex.assert_max_traces(n=1))
    alone = [_alone_state(run, i) for i in range(M)]
    alone_steps = [_alone_step(run, config, s) for s in LR_SCALE]
    for step in range(3):
        host = collate_members(data, plans, step, pad)
        batch = place_members(run, host)
        vm, vm_metrics = vm_step(vm, batch, hypers)
        seq, seq_metrics = seq_step(seq, batch, hypers)
        assert vm_metrics["loss"].shape == (M,)
        for i in range(M):
            alone[i], m = alone_steps[i](alone[i], run.place(member_batch(host, i)))
            for got in (vm_metrics, seq_metrics):
                np.testing.assert_allclose(got["loss"][i], m["loss"], rtol=1e-5, atol=1e-6)
                assert float(got["finite"][i]) == 1.0
    assert int(vm.step) == int(seq.step) == 3
    for i in range(M):
        _assert_trees_close(member_params(vm, i), alone[i].params)
        _assert_trees_close(member_params(seq, i), alone[i].params)
        _assert_trees_close(jax.tree.map(lambda x, i=i: x[i], vm.opt_state), alone[i].opt_state)
    # Different learning rates and data orders did make the members different.
    p = jax.tree.leaves(vm.params)[0]
    assert not np.allclose(p[0], p[1]) and not np.allclose(p[1], p[2])


def test_shared_init_is_identical_and_seed_init_differs_in_the_head(tiny):
    config, run, _ = tiny
    shared, hypers = init_members(run, M)
    np.testing.assert_array_equal(hypers.lr_scale, np.ones(M, np.float32))
    np.testing.assert_array_equal(hypers.dropout_rate, np.zeros(M, np.float32))  # llama: 0
    for i in range(M):
        _assert_trees_close(member_params(shared, i), run.state.params, atol=0, rtol=0)
        np.testing.assert_array_equal(shared.rng[i], jax.random.fold_in(run.state.rng, i))
    assert shared.step.shape == () and shared.frozen is run.state.frozen

    seeded, _ = init_members(run, M, init="seed")
    heads = np.asarray(seeded.params["head"]["kernel"][...])  # [M, D, 1]
    assert heads.shape[0] == M
    for i in range(M):
        for j in range(i + 1, M):
            assert not np.allclose(heads[i], heads[j])
    # Member 0's seed is the run's own (config.seed), so it keeps the run's head.
    np.testing.assert_array_equal(heads[0], run.state.params["head"]["kernel"][...])
    # Everything but the head is shared.
    base = jax.tree.leaves(run.state.params["backbone"])
    for x, y in zip(jax.tree.leaves(seeded.params["backbone"]), base):
        for i in range(M):
            np.testing.assert_array_equal(x[i], y)
    # Stacked leaves keep their parameter spec behind a replicated member axis.
    for x, y in zip(jax.tree.leaves(seeded.params), jax.tree.leaves(run.state.params)):
        assert tuple(x.sharding.spec) == (None, *y.sharding.spec)
    other, _ = init_members(run, 2, init="seed", seeds=[7, 8])
    assert not np.allclose(other.params["head"]["kernel"][0], heads[0])
    with pytest.raises(ValueError, match="2 seeds for 3 members"):
        init_members(run, M, init="seed", seeds=[1, 2])


def test_nan_margin_skips_only_that_member(tiny):
    config, run, data = tiny
    cfg = config.copy_and_resolve_references()
    cfg.loss.use_data_margin = True
    run = dataclasses.replace(run, config=cfg)
    state, hypers = init_members(run, M)
    before = _host(state.params)
    host = collate_members(data, MemberPlans(data.lengths(), 4, (128,), DATA_SEEDS), 0,
                           run.tokenizer.pad_token_id)
    host["margin"][1] = np.nan  # member 1 only
    state, metrics = make_member_step(run, dropout=False)(state, place_members(run, host), hypers)
    np.testing.assert_array_equal(metrics["finite"], [1.0, 0.0, 1.0])
    after = _host(state.params)
    kernel = lambda t: t["head"]["kernel"]  # noqa: E731
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(x[1], y[1])  # skipped: every leaf unchanged
    assert not np.array_equal(kernel(before)[0], kernel(after)[0])
    assert not np.array_equal(kernel(before)[2], kernel(after)[2])
    assert int(state.step) == 1


def test_dropout_rate_is_per_member(tiny):
    config, run, data = tiny
    # Same data for all members; members 0 and 2 differ only in their rng, 1 in its rate.
    state, hypers = init_members(run, M, dropout_rate=[0.0, 0.5, 0.0])
    host = collate_members(data, MemberPlans(data.lengths(), 4, (128,), (0, 0, 0)), 0,
                           run.tokenizer.pad_token_id)
    _, metrics = make_member_step(run, dropout=True)(state, place_members(run, host), hypers)
    loss = np.asarray(metrics["loss"])
    np.testing.assert_allclose(loss[0], loss[2], rtol=1e-6)  # rate 0: no mask, rng irrelevant
    assert abs(loss[1] - loss[0]) > 1e-4


def test_frozen_lora_base_is_held_once(tmp_path):
    config = _config()
    config.lora.enabled = True  # trains adapters + head; the backbone is frozen
    config, run, data = tiny_run(tmp_path, config)
    state, hypers = init_members(run, 2, init="seed")
    assert state.frozen is run.state.frozen
    assert count_params(state.frozen) == count_params(run.state.frozen) > 0
    assert count_params(state.params) == 2 * count_params(run.state.params)
    for x, y in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(run.state.frozen)):
        assert x.shape == y.shape  # no member axis
    for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(run.state.params)):
        assert x.shape == (2, *y.shape)
    frozen_before = _host(run.state.frozen)
    host = collate_members(data, MemberPlans(data.lengths(), 4, (128,), (0, 1)), 0,
                           run.tokenizer.pad_token_id)
    state, metrics = make_member_step(run, dropout=False)(state, place_members(run, host), hypers)
    assert metrics["loss"].shape == (2,)
    assert state.frozen is run.state.frozen  # passed through, neither donated nor copied
    assert not any(x.is_deleted() for x in jax.tree.leaves(run.state))  # run.state not donated
    _assert_trees_close(run.state.frozen, frozen_before, atol=0, rtol=0)
    model = nnx.merge(run.graphdef, member_params(state, 1), state.frozen)
    ids = jnp.asarray(host["input_ids"][1, :, 0])  # [B, L]
    mask = jnp.asarray(host["attention_mask"][1, :, 0])
    assert model(ids, mask).shape == (4,)


def test_average_members_is_the_mean_of_member_params(tiny):
    _, run, _ = tiny
    state, _ = init_members(run, M, init="seed")
    # Make every leaf differ between members (as after training) without compiling a step.
    keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(state.params))))
    params = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(next(keys), x.shape),
                          state.params)
    state = TrainState(state.step, params, state.frozen, state.opt_state, state.rng)
    avg = average_members(state)
    assert jax.tree.structure(avg) == jax.tree.structure(run.state.params)
    for x, y in zip(jax.tree.leaves(avg), jax.tree.leaves(params)):
        np.testing.assert_allclose(x, np.mean(np.asarray(y), axis=0), rtol=1e-6, atol=1e-7)
    model = nnx.merge(run.graphdef, avg, state.frozen)
    np.testing.assert_allclose(model.head.kernel[...], np.mean(params["head"]["kernel"], 0),
                               rtol=1e-6, atol=1e-7)


def _sharded_main():
    """On 8 virtual CPU devices: members on a (2, 2, 2) mesh equal ``run.train_step`` alone on
    the same mesh (comparing across meshes would only measure Adam-amplified reduction noise)."""
    import tempfile

    assert len(jax.devices()) == 8, jax.devices()
    config = _config()
    config.mesh.shape.update({"data": 2, "fsdp": 2, "tensor": 2})
    with tempfile.TemporaryDirectory() as wd:
        config, run, data = tiny_run(wd, config)
        scales = LR_SCALE[:2]
        state, hypers = init_members(run, 2, lr_scale=scales)
        step = make_member_step(run, dropout=False)
        alone = [_alone_state(run, i) for i in range(2)]
        alone_steps = [_alone_step(run, config, s) for s in scales]
        plans = MemberPlans(data.lengths(), 8, (128,), DATA_SEEDS[:2])
        for s in range(2):
            host = collate_members(data, plans, s, run.tokenizer.pad_token_id)
            state, metrics = step(state, place_members(run, host), hypers)
            for i in range(2):
                alone[i], m = alone_steps[i](alone[i], run.place(member_batch(host, i)))
                np.testing.assert_allclose(metrics["loss"][i], m["loss"], rtol=1e-5, atol=1e-6)
        for i in range(2):
            # Partitioned (vmapped vs plain) programs reduce in different orders; on embedding
            # rows hit by one or two tokens Adam turns that noise into ~1% of a step (lr * scale
            # = 2e-3), so the sharded comparison allows 1e-4 (5% of one step).
            _assert_trees_close(member_params(state, i), alone[i].params, atol=1e-4, rtol=1e-5)
        sharded = 0
        for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(alone[0].params)):
            assert tuple(x.sharding.spec) == (None, *y.sharding.spec)
            sharded += not x.sharding.is_fully_replicated
        assert sharded > 0, "no parameter is actually sharded"
    print("OK")


def test_members_on_a_sharded_mesh_equal_train_step_alone():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "OK" in r.stdout


if __name__ == "__main__":
    _sharded_main()
