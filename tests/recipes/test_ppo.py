"""PPO / RLOO with Elastic Reset on a tiny random policy; the recipe end to end and its resume."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rewardjax.averaging.ema import elastic_reset
from rewardjax.eval.plots import pareto_front
from rewardjax.recipes.ppo import train as ppo
from rewardjax.recipes.ppo.rewards import length_scorer, shape_scores
from rewardjax.rl import ppo_update
from tests.runtime.helpers import load_recipe as load_config


def tiny_config(**rl):
    c = load_config("ppo", "runlocal")
    c.train.warmup_steps = 0
    c.train.lr = 1e-2
    c.rl.proxy.kind = "length"
    c.rl.gold.kind = ""
    for k, v in rl.items():
        setattr(c.rl, k, v)
    return c


@pytest.fixture(scope="module")
def setup():
    config = tiny_config()
    policy = ppo.build_policy_run(config)
    runner = ppo.Runner(config, policy, length_scorer, None)
    batch, r = runner.train_batch(policy.params, 0, jax.random.key(0))
    return config, policy, runner, batch, r


@pytest.fixture(scope="module")
def plain(setup):
    """The update without Elastic Reset, compiled once for the tests that need it."""
    config, policy, _, _, _ = setup
    tx = ppo.make_optimizer(config.train, steps=10)
    return tx, ppo_update.make_update(policy.graphdef, tx, None, config.rl)


def fresh_state(policy, tx, reset_tx=None):
    params = jax.tree.map(jnp.array, policy.params)  # the update donates its state
    return ppo_update.init_rl_state(params, tx, reset_tx, 0.05)


def test_kl_to_reference_is_zero_at_step_zero(setup):
    _, _, _, batch, r = setup
    np.testing.assert_array_equal(np.asarray(batch["old_logp"]), np.asarray(batch["ref_logp"]))
    np.testing.assert_array_equal(r["kl_k1"], 0.0)
    np.testing.assert_array_equal(r["kl_k3"], 0.0)
    assert np.all(r["lengths"] > 0) and np.all(np.asarray(batch["old_logp"])[r["mask"] > 0] < 0)


def test_one_ppo_update_decreases_the_clipped_loss_on_its_batch(setup, plain):
    config, policy, _, batch, _ = setup
    rl = config.rl
    tx, update = plain
    state = fresh_state(policy, tx)
    full, _ = ppo_update.advantages(batch, state.kl_coef, rl)
    before, aux0 = ppo_update.rl_loss(policy.graphdef, policy.frozen, state.params, full, rl)
    new, metrics = update(state, policy.frozen, batch, jax.random.key(1))
    after, aux1 = ppo_update.rl_loss(policy.graphdef, policy.frozen, new.params, full, rl)
    assert metrics["finite"] == 1.0 and int(new.step) == 1
    np.testing.assert_allclose(float(metrics["loss"]), float(before), rtol=1e-5)
    assert float(after) < float(before)
    assert float(aux1["policy_loss"]) < float(aux0["policy_loss"])
    assert float(aux1["value_loss"]) < float(aux0["value_loss"])


def test_elastic_reset_in_the_optimizer_step_pinned_by_hand():
    """SGD with momentum 0.5, lr 1, d = 0.5, reset every 2 steps (numbers in the comments)."""
    tx = optax.sgd(1.0, momentum=0.5)
    er = elastic_reset(0.5, 2)
    params = {"lora": {"w": jnp.array([1.0, 2.0])}, "value": {"v": jnp.array([0.5])}}
    grads = [{"lora": {"w": jnp.array([1.0, -1.0])}, "value": {"v": jnp.array([2.0])}},
             {"lora": {"w": jnp.array([3.0, 1.0])}, "value": {"v": jnp.array([-2.0])}},
             {"lora": {"w": jnp.array([0.0, 0.0])}, "value": {"v": jnp.array([0.0])}}]
    p, o, s = params, tx.init(params), er.init(params["lora"])
    p_plain, o_plain = params, tx.init(params)
    seen = []
    for g in grads:
        p, o, s = ppo_update.optimizer_step(p, o, s, g, tx, er)
        p_plain, o_plain, _ = ppo_update.optimizer_step(p_plain, o_plain, None, g, tx, None)
        seen.append((p, o, s, p_plain, o_plain))
    # Step 1: w = [0, 3], EMA = [0.5, 2.5]; no reset.
    np.testing.assert_allclose(seen[0][0]["lora"]["w"], [0.0, 3.0])
    np.testing.assert_allclose(seen[0][2].ema["w"], [0.5, 2.5])
    # Step 2: SGD gives w = [-3.5, 2.5]; EMA = [-1.5, 2.5]; reset: w <- EMA, EMA <- [1, 2].
    p2, o2, s2, pp2, op2 = seen[1]
    np.testing.assert_allclose(pp2["lora"]["w"], [-3.5, 2.5])
    np.testing.assert_allclose(p2["lora"]["w"], [-1.5, 2.5])
    np.testing.assert_allclose(s2.ema["w"], [1.0, 2.0])
    # The value head and the optimizer state are exactly those of the run without resets.
    np.testing.assert_allclose(p2["value"]["v"], [-0.5])
    np.testing.assert_allclose(p2["value"]["v"], pp2["value"]["v"])
    for a, b in zip(jax.tree.leaves(o2), jax.tree.leaves(op2)):
        np.testing.assert_array_equal(a, b)
    # Step 3 (g = 0, momentum only): w = [-3.25, 2.25]; the EMA restarted from the initial w.
    np.testing.assert_allclose(seen[2][0]["lora"]["w"], [-3.25, 2.25])
    np.testing.assert_allclose(seen[2][2].ema["w"], [-1.125, 2.125])
    assert int(seen[2][2].count) == 3


def test_elastic_reset_through_the_jitted_update(setup, plain):
    """d = 1 keeps the EMA at the initial policy, so a reset every iteration puts the LoRA back
    exactly, while the value head and the optimizer moments keep what they learnt."""
    config, policy, _, batch, _ = setup
    tx, plain_update = plain
    reset_tx = elastic_reset(1.0, ppo.updates_per_iteration(config.rl))
    s = ppo_update.make_update(policy.graphdef, tx, reset_tx, config.rl)(
        fresh_state(policy, tx, reset_tx), policy.frozen, batch, jax.random.key(1))[0]
    plain = plain_update(fresh_state(policy, tx), policy.frozen, batch, jax.random.key(1))[0]
    for a, b in zip(jax.tree.leaves(s.params["lora"]), jax.tree.leaves(policy.params["lora"])):
        np.testing.assert_array_equal(a, b)
    assert any(float(jnp.max(jnp.abs(a - b))) > 0 for a, b in
               zip(jax.tree.leaves(plain.params["lora"]), jax.tree.leaves(policy.params["lora"])))
    for a, b in zip(jax.tree.leaves(s.params["value"]), jax.tree.leaves(plain.params["value"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(s.opt_state), jax.tree.leaves(plain.opt_state)):
        np.testing.assert_array_equal(a, b)


def test_rloo_path_runs_and_baselines_per_prompt():
    config = tiny_config(algo="rloo", samples_per_prompt=2)
    config.train.batch_size = 1  # one prompt per update (one minibatch: one per rollout)
    policy = ppo.build_policy_run(config)
    chars = lambda prompts, texts: np.asarray([len(t) for t in texts], np.float32)  # noqa: E731
    runner = ppo.Runner(config, policy, chars, None)  # words vary in length, so scores differ
    batch, _ = runner.train_batch(policy.params, 0, jax.random.key(0))
    assert batch["mask"].shape[0] == 2  # one prompt, sampled twice
    np.testing.assert_array_equal(batch["prompt_ids"][0], batch["prompt_ids"][1])
    tx = ppo.make_optimizer(config.train, steps=10)
    new, metrics = ppo_update.make_update(policy.graphdef, tx, None, config.rl)(
        fresh_state(policy, tx), policy.frozen, batch, jax.random.key(1))
    assert metrics["finite"] == 1.0 and np.isfinite(float(metrics["loss"]))
    assert any(float(jnp.max(jnp.abs(a - b))) > 0 for a, b in
               zip(jax.tree.leaves(new.params["lora"]), jax.tree.leaves(policy.params["lora"])))
    # Two prompts x two samples, rows prompt-major: each score minus its sibling's; the KL
    # penalty (β = 0.5, per-row KL 0, 0, 2, 0) enters the sequence reward before the baseline.
    kl = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]], np.float32)
    toy = {"mask": jnp.ones((4, 2)), "old_logp": jnp.asarray(kl), "ref_logp": jnp.zeros((4, 2)),
           "scores": jnp.array([1.0, 3.0, 0.0, 2.0])}
    full, _ = ppo_update.advantages(toy, 0.5, config.rl)
    np.testing.assert_allclose(full["adv"], [-2.0, 2.0, -3.0, 3.0])


def test_shape_scores_and_pareto_front():
    np.testing.assert_allclose(shape_scores([1.0, 3.0], whiten=True), [-1.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(shape_scores([-5.0, 0.5, 5.0], clip=1.0), [-1.0, 0.5, 1.0])
    # Drift 1 / reward 1 dominates drift 2 / reward 0.5; the NaN point is never on the front.
    front = pareto_front([0.0, 1.0, 2.0, 3.0, 1.5], [0.0, 1.0, 0.5, 2.0, float("nan")])
    np.testing.assert_array_equal(front, [True, True, False, True, False])


def rows(workdir, split):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


def er_config(proxy_dir=""):
    c = load_config("ppo", "runlocal")
    c.rl.checkpoint_every = 2
    c.rl.elastic_reset.every = 2  # the reset at iteration 2 lands in checkpoint 2
    c.rl.elastic_reset.decay = 0.5
    c.rl.proxy.workdir = proxy_dir  # the resumed runs reuse the proxy the first run trained
    return c


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The recipe end to end through ``rewardjax.main.run``: a tiny simulator reward model is
    trained as the proxy first, then 3 PPO iterations with Elastic Reset (n = 2)."""
    from rewardjax.main import run

    workdir = tmp_path_factory.mktemp("uninterrupted")
    return workdir, run(er_config(), str(workdir))


def test_recipe_end_to_end_with_a_trained_proxy(uninterrupted):
    workdir, summary = uninterrupted
    assert summary["steps"] == 3 and summary["elastic_reset"]
    assert [r["step"] for r in rows(workdir, "train")] == [1, 2, 3]
    evals = rows(workdir, "eval")
    assert [r["step"] for r in evals] == [0, 2, 3] and evals[0]["kl"] == 0.0
    assert all(np.isfinite(r["proxy"]) and "gold" in r for r in evals)
    assert os.path.isfile(workdir / "proxy_rm" / "summary.json")  # the proxy RM was trained
    for name in ("rl_reward_vs_kl.png", "rl_pareto.png"):
        assert os.path.getsize(workdir / name) > 1000
        assert str(workdir / name) in summary["plots"]


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    """The uninterrupted run's workdir as a kill after iteration 2 would leave it (checkpoint 2,
    metrics up to 2), resumed: iteration 3 (after the Elastic Reset at 2) must be identical."""
    a, _ = uninterrupted
    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints" / "3")
    assert sorted(os.listdir(b / "checkpoints")) == ["2"]
    kept = [line for line in open(b / "metrics.jsonl") if json.loads(line)["step"] <= 2]
    (b / "metrics.jsonl").write_text("".join(kept))
    ppo.train_ppo(er_config(proxy_dir=str(a / "proxy_rm")), str(b))
    keys = ("loss", "grad_norm", "kl", "proxy", "gold", "policy_loss", "value_loss")
    ra, rb = rows(a, "train")[-1], rows(b, "train")[-1]
    assert rb["step"] == 3 and {k: ra[k] for k in keys} == {k: rb[k] for k in keys}
    assert rows(a, "eval")[-1] == {**rows(b, "eval")[-1], "time": rows(a, "eval")[-1]["time"]}
