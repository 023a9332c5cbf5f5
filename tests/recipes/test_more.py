"""MORE training: the per-source sampler, the step's λ and gradients, and an end-to-end run."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from rewardjax.data.batching import collate_pairs
from rewardjax.data.records import DataError
from rewardjax.data.source_batches import SourceBatchPlan
from rewardjax.losses.bradley_terry import bradley_terry_loss
from rewardjax.losses.more import min_norm_weights
from rewardjax.main import run as main_run
from rewardjax.recipes.more import MoreState, init_momentum, make_more_step
from rewardjax.runtime.state import TrainState, shardings_of
from rewardjax.runtime.step import make_train_step, pair_rewards
from tests.runtime.helpers import load_recipe, tiny_run

# --------------------------------------------------------------------------- the sampler

SOURCES = ["b"] * 7 + ["a"] * 10 + ["c"] * 5  # interleaved below so indices are not contiguous
ORDERED = [SOURCES[i] for i in np.random.default_rng(0).permutation(len(SOURCES))]


def _plan(seed=0, sub=2, lengths=None, order=None):
    lengths = np.arange(10, 10 + len(ORDERED)) if lengths is None else lengths
    return SourceBatchPlan(ORDERED, lengths, sub, (16, 32, 64), seed=seed, order=order)


def test_sampler_one_sub_batch_per_source_source_major():
    plan = _plan()
    assert plan.sources == ["a", "b", "c"] and plan.batch_size == 6
    for step in range(12):
        length, idx = plan.at_step(step)
        assert idx.shape == (6,)
        got = [ORDERED[i] for i in idx]
        assert got == ["a", "a", "b", "b", "c", "c"]
        assert length == min(b for b in (16, 32, 64) if b >= max(10 + idx))


def test_sampler_epochs_cover_each_source_without_repeats():
    plan = _plan(sub=2)
    # Source "c" has 5 pairs -> 2 full sub-batches an epoch; "a" 10 -> 5; "b" 7 -> 3.
    assert plan.sub_batches_per_epoch == [5, 3, 2]
    for t, name in enumerate(plan.sources):
        per_epoch = plan.sub_batches_per_epoch[t]
        for epoch in range(3):
            steps = range(epoch * per_epoch, (epoch + 1) * per_epoch)
            seen = np.concatenate([plan.indices_at(s)[t] for s in steps])
            assert len(set(seen.tolist())) == len(seen) == per_epoch * 2  # no repeats
            assert all(ORDERED[i] == name for i in seen)
    # Over epochs, the small source's left-over pair changes (different shuffles).
    left_out = {frozenset(set(np.flatnonzero(np.asarray(ORDERED) == "c"))
                          - set(np.concatenate([plan.indices_at(s)[2] for s in (2 * e, 2 * e + 1)])
                                .tolist())) for e in range(6)}
    assert len(left_out) > 1


def test_sampler_is_a_function_of_seed_and_step():
    a, b = _plan(seed=3), _plan(seed=3)
    forward = [a.at_step(s)[1] for s in range(20)]
    backward = [b.at_step(s)[1] for s in reversed(range(20))][::-1]  # any call order (resume)
    for x, y in zip(forward, backward):
        np.testing.assert_array_equal(x, y)
    other = [_plan(seed=4).at_step(s)[1] for s in range(20)]
    assert any(not np.array_equal(x, y) for x, y in zip(forward, other))


def test_sampler_order_and_errors_name_the_source():
    plan = _plan(order=["c", "a"])
    assert plan.sources == ["c", "a"]
    assert [ORDERED[i] for i in plan.at_step(0)[1]] == ["c", "c", "a", "a"]
    with pytest.raises(DataError, match=r"source 'c' has 5 training pairs.*sub-batch of 6"):
        _plan(sub=6)
    with pytest.raises(DataError, match=r"source 'zzz' has 0 training pairs"):
        _plan(order=["a", "zzz"])


# --------------------------------------------------------------------------- the step


TINY = "random:llama?hidden_size=32&num_layers=2&num_heads=2&num_kv_heads=1&intermediate_size=64"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = load_recipe("more", "runlocal")
    config.model.path = TINY
    config.model.max_length = 64
    config.train.dropout = False
    config, run, data = tiny_run(str(tmp_path_factory.mktemp("more_step")), config)
    plan = SourceBatchPlan([p.source for p in data.pairs], data.lengths(), 2, (64,), seed=0)
    batch = collate_pairs(data, plan.at_step(0)[1], 64, plan.batch_size,
                          run.tokenizer.pad_token_id)
    return config, run, plan, batch


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)  # the steps donate their state


def _sgd_state(run, tx):
    ts = run.state
    return _copy(TrainState(ts.step, ts.params, ts.frozen, tx.init(ts.params), ts.rng))


def _more_step(run, config, plan, batch, tx, mode):
    """One MORE step from the run's fresh params: ``(new_state, metrics)``."""
    config.more.mode = mode
    state = MoreState(_sgd_state(run, tx), init_momentum(run, plan.num_sources, 0.99))
    step = make_more_step(run.graphdef, tx, config.loss, config.more, plan.num_sources, 2,
                          mesh=run.mesh, rules=run.rules, state_shardings=shardings_of(state),
                          dropout=False)
    return step(state, run.place(batch))


def test_multitask_step_equals_plain_bt_step_and_lambda_is_uniform(tiny):
    """With λ = 1/K and equal sub-batches, Σ λ_t ℓ_t is the batch-mean BT loss, so one SGD
    step must move the parameters exactly as the standard step does (this checks the
    features-vjp + head-gradient split against plain autodiff through the whole model)."""
    config, run, plan, batch = tiny
    tx = optax.sgd(1.0)
    more_state, metrics = _more_step(run, config, plan, batch, tx, "multitask")
    np.testing.assert_array_equal(metrics["lambda"], np.full(3, 1 / 3, np.float32))
    bt_state = _sgd_state(run, tx)
    bt_step = make_train_step(run.graphdef, tx, config.loss, mesh=run.mesh, rules=run.rules,
                              state_shardings=shardings_of(bt_state), dropout=False)
    bt_state, bt_metrics = bt_step(bt_state, run.place(batch))
    assert float(metrics["loss"]) == pytest.approx(float(bt_metrics["loss"]), rel=1e-5)
    moved = 0
    for a, b, p0 in zip(jax.tree.leaves(more_state.train.params), jax.tree.leaves(bt_state.params),
                        jax.tree.leaves(run.state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
        moved += int(np.any(np.asarray(a) != np.asarray(p0)))
    assert moved > 5  # backbone leaves moved too, not just the head


def test_more_lambda_is_min_norm_of_normalised_head_gradients(tiny):
    """λ from the step equals the solver applied to each source's head gradient computed
    independently by autodiff through the full model (first step: momentum = α g)."""
    config, run, plan, batch = tiny
    tx = optax.sgd(1.0)
    _, metrics = _more_step(run, config, plan, batch, tx, "more")
    k, b = plan.num_sources, 2

    @jax.jit
    def head_grad(params, rows):
        def loss(params):
            model = nnx.merge(run.graphdef, params, run.state.frozen)
            rc, rr = pair_rewards(model, rows)
            return bradley_terry_loss(rc, rr, weights=rows["weights"])[0]

        g = jax.grad(loss)(params)["head"]
        return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(g)])

    heads = []
    for t in range(k):
        rows = {key: jnp.asarray(v[t * b:(t + 1) * b]) for key, v in batch.items()
                if key != "index"}
        heads.append(head_grad(run.state.params, rows))
    heads = jnp.stack(heads)  # [K, P]
    unit = heads / jnp.linalg.norm(heads, axis=1, keepdims=True)
    expect = np.asarray(min_norm_weights(unit))
    np.testing.assert_allclose(metrics["lambda"], expect, atol=2e-4)
    np.testing.assert_allclose(metrics["minnorm_lambda"], metrics["lambda"])
    assert float(np.sum(metrics["lambda"])) == pytest.approx(1.0, abs=1e-6)
    assert not np.allclose(expect, 1 / 3, atol=1e-3)  # a real reweighting, not uniform
    gram = np.asarray(unit @ unit.T)
    off = gram[~np.eye(k, dtype=bool)].mean()
    assert float(metrics["direction_cos"]) == pytest.approx(off, abs=1e-4)


# --------------------------------------------------------------------------- end to end


def _e2e_config():
    config = load_recipe("more", "runlocal")
    config.model.path = TINY
    config.train.steps = 4
    config.train.checkpoint_every = 2
    config.train.progress = False
    config.train.tensorboard = False
    config.model.max_length = 64
    config.data.eval = "sim:test_id"
    config.data.sim.num_eval = 16
    return config


def _final_params(workdir):
    mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    step = mgr.latest_step()
    restored = mgr.restore(step, args=ocp.args.StandardRestore())
    mgr.close()
    return step, [np.asarray(x) for x in jax.tree.leaves(restored["params"])]


def _lambda_rows(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [r for r in rows if r["split"] == "lambda"]


def test_end_to_end_logs_lambda_every_step_and_resumes_exactly(tmp_path):
    wd = str(tmp_path / "run")
    summary = main_run(_e2e_config(), wd)
    sources = ["sim/annotator0", "sim/annotator1", "sim/annotator2"]
    assert summary["mode"] == "more" and summary["steps"] == 4
    assert list(summary["sources"]) == sources
    by_source = summary["eval"]["sim:test_id"]["by_group"]
    assert set(by_source) == set(sources)
    assert all("accuracy" in r and "ece" in r for r in by_source.values())
    rows = _lambda_rows(wd)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        lam = np.asarray([r[s] for s in sources])
        assert lam.min() >= 0 and lam.sum() == pytest.approx(1.0, abs=1e-5)
    assert any(abs(r[s] - 1 / 3) > 1e-3 for r in rows for s in sources)
    step, straight = _final_params(wd)
    assert step == 4

    # Lose the last checkpoint (as a kill after step 2's save would): the resumed run must
    # reproduce steps 3-4 exactly, which needs the sampler, the rng and the momentum restored.
    shutil.rmtree(os.path.join(wd, "checkpoints", "4"))
    shutil.rmtree(os.path.join(wd, "checkpoints_momentum", "4"))
    main_run(_e2e_config(), wd)
    step, resumed = _final_params(wd)
    assert step == 4
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)
    again = _lambda_rows(wd)
    assert [r["step"] for r in again] == [1, 2, 3, 4, 3, 4]
    for first, second in zip(again[2:4], again[4:]):
        assert all(first[s] == second[s] for s in sources)

