"""The update of the ``ppo`` recipe (:mod:`rewardjax.recipes.ppo.train`, step 4 of its
iteration): the train state, the advantages (GAE for PPO, leave-one-out for RLOO), the clipped
PPO or REINFORCE loss, and one AdamW step followed by the Elastic Reset EMA, scanned over epochs
× minibatches in one jitted call. Pure functions of arrays: the rollouts and the loop stay in
``ppo``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rewardjax.rl import objectives as O
from rewardjax.rl.policy import response_stats


class RLState(NamedTuple):
    """Everything that changes during training (checkpointed as one pytree)."""

    step: jax.Array  # [] int32, iterations done
    params: Any  # {"lora": LoRA state, "value": value head state}
    opt_state: Any
    reset: Any  # ElasticResetState over params["lora"]; a dummy scalar without Elastic Reset
    kl_coef: jax.Array  # [] float32, the current β


def init_rl_state(params: dict, tx, reset_tx, kl_coef: float) -> RLState:
    # The EMA starts as the params; a copy, so that no buffer is donated twice by the update.
    reset = (reset_tx.init(jax.tree.map(jnp.copy, params["lora"])) if reset_tx is not None
             else jnp.zeros((), jnp.int32))
    return RLState(jnp.zeros((), jnp.int32), params, tx.init(params), reset,
                   jnp.asarray(kl_coef, jnp.float32))


# ----------------------------------------------------------------------------- pure pieces


def optimizer_step(params: dict, opt_state, reset_state, grads, tx, reset_tx):
    """One AdamW step on ``{lora, value}``, then (with Elastic Reset) the EMA / reset of the LoRA
    params only: the value head and the optimizer state come out of the optimizer untouched."""
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if reset_tx is not None:
        lora, reset_state = reset_tx.update(params["lora"], reset_state)
        params = {**params, "lora": lora}
    return params, opt_state, reset_state


def advantages(batch: dict, kl_coef, rl) -> tuple[dict, dict]:
    """Adds ``adv`` (and ``returns`` for PPO) to the rollout batch; returns it with stats."""
    mask = batch["mask"].astype(jnp.float32)
    kl = O.kl_per_token(batch["old_logp"], batch["ref_logp"], rl.kl_estimator) * mask  # [B, R]
    seq_kl = jnp.sum(kl, -1)  # [B]
    if rl.algo == "rloo":
        seq_reward = batch["scores"] - kl_coef * seq_kl
        k = int(rl.samples_per_prompt)
        adv = O.rloo_advantages(seq_reward.reshape(-1, k)).reshape(-1)  # rows are prompt-major
        out = {**batch, "adv": adv}
    else:
        rewards = O.token_rewards(batch["scores"], kl, mask, kl_coef)
        adv, returns = O.gae(rewards, batch["values"], mask, gamma=float(rl.gamma),
                             lam=float(rl.lam))
        if rl.whiten_advantages:
            adv = O.whiten(adv, mask)
        out = {**batch, "adv": adv, "returns": returns}
    return out, {"kl_penalty": jnp.mean(seq_kl)}


def rl_loss(graphdef, frozen, params: dict, mb: dict, rl):
    """The PPO (clipped policy + value) or RLOO (REINFORCE) loss on a minibatch."""
    st = response_stats(graphdef, params, frozen, mb["prompt_ids"], mb["prompt_mask"],
                        mb["response"], mb["mask"])
    mask = mb["mask"]
    aux = {"entropy": O.masked_mean(st.entropy, mask)}
    if rl.algo == "rloo":
        loss = O.reinforce_loss(st.logprobs, mb["adv"], mask)
        aux.update(policy_loss=loss, value_loss=jnp.zeros(()), clip_frac=jnp.zeros(()),
                   approx_kl=O.masked_mean(0.5 * jnp.square(st.logprobs - mb["old_logp"]), mask))
        return loss, aux
    pl, pstats = O.policy_loss(st.logprobs, mb["old_logp"], mb["adv"], mask,
                               clip=float(rl.cliprange))
    vl = O.value_loss(st.values, mb["values"], mb["returns"], mask,
                      clip=float(rl.cliprange_value))
    aux.update(policy_loss=pl, value_loss=vl, **pstats)
    return pl + float(rl.vf_coef) * vl, aux


def make_update(graphdef, tx, reset_tx, rl):
    """``update(state, frozen, batch, key) -> (state, metrics)``: advantages, then epochs ×
    minibatches optimizer steps in one ``lax.scan``; jitted once, state donated. The frozen base
    is an argument, never a closure: a closed-over array would be baked into the program as a
    constant (slow compiles, a second copy of the weights)."""
    n_mb, epochs = int(rl.minibatches), int(rl.epochs)

    def update(state: RLState, frozen, batch: dict, key):
        batch, stats = advantages(batch, state.kl_coef, rl)
        rows = batch["mask"].shape[0]
        perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), rows))(
            jnp.arange(epochs)).reshape(epochs * n_mb, rows // n_mb)  # [updates, mb rows]

        def one(carry, idx):
            params, opt_state, reset_state = carry
            mb = jax.tree.map(lambda x: x[idx], batch)
            grad_fn = jax.value_and_grad(lambda p: rl_loss(graphdef, frozen, p, mb, rl),
                                         has_aux=True)
            (loss, aux), grads = grad_fn(params)
            norm = optax.global_norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(norm)
            new = optimizer_step(params, opt_state, reset_state, grads, tx, reset_tx)
            # A non-finite step leaves everything as it was; the loop then stops the run.
            new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, carry)
            return new, {"loss": loss, "grad_norm": norm, "finite": finite.astype(jnp.float32),
                         **aux}

        carry = (state.params, state.opt_state, state.reset)
        (params, opt_state, reset), ms = jax.lax.scan(one, carry, perms)
        metrics = {k: jnp.mean(v) for k, v in ms.items()}
        metrics["finite"] = jnp.min(ms["finite"])
        metrics.update(stats)
        return state._replace(step=state.step + 1, params=params, opt_state=opt_state,
                              reset=reset), metrics

    if n_mb < 1 or epochs < 1:
        raise ValueError("rl.minibatches and rl.epochs must be >= 1")
    return jax.jit(update, donate_argnums=(0,))
