"""The pairwise model's loss and update: binary cross-entropy on both orders of every pair.

Its own step rather than ``runtime.step.bt_update``: that step's loss is Bradley-Terry over two
rewards, while here each of the two rows of a pair is a separate ``[prompt, A, B]`` sequence with
its own label (1 for (chosen, rejected), 0 for (rejected, chosen)). Everything around the loss
matches ``bt_update``: ``fold_in(rng, step)`` (exact resume), float32 loss, the non-finite guard
that keeps the old parameters and reports ``finite = 0``, one jit with donation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rewardjax.runtime import TrainState
from rewardjax.runtime.step import guarded_update, pair_rewards, real_tokens
from rewardjax.sharding import axis_rules


def pairwise_loss(z_ab: jax.Array, z_ba: jax.Array, weights: jax.Array):
    """Mean binary cross-entropy over both orders of the weighted pairs.

    Args:
      z_ab: ``[B]`` logits of P(first better) for (chosen, rejected): label 1.
      z_ba: ``[B]`` logits for (rejected, chosen): label 0.
      weights: ``[B]`` pair weights (0 on filler rows).

    Returns:
      ``(loss, metrics)``: ``loss = Σ_i w_i (softplus(-z_ab) + softplus(z_ba)) / (2 Σ_i w_i)``;
      ``accuracy`` (each order alone right, averaged over both) and ``sym_accuracy``
      (``P_sym(chosen > rejected) > 0.5``).
    """
    a, b = z_ab.astype(jnp.float32), z_ba.astype(jnp.float32)
    w = weights.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(w), 1.0)
    per_pair = 0.5 * (jax.nn.softplus(-a) + jax.nn.softplus(b))  # [B]
    loss = jnp.sum(w * per_pair) / n
    acc = jnp.sum(w * 0.5 * ((a > 0).astype(jnp.float32) + (b < 0).astype(jnp.float32))) / n
    p_sym = 0.5 * (jax.nn.sigmoid(a) + jax.nn.sigmoid(-b))
    sym = jnp.sum(w * (p_sym > 0.5).astype(jnp.float32)) / n
    return loss, {"loss": loss, "accuracy": acc, "sym_accuracy": sym}


def pairwise_update(graphdef, tx, *, params, opt_state, rng, batch, frozen, step,
                    dropout: bool):
    """One update on a ``collate_orders`` batch; ``(params, opt_state, metrics)``."""
    key = jax.random.fold_in(rng, step)

    def loss_fn(p):
        model = nnx.merge(graphdef, p, frozen)
        z_ab, z_ba = pair_rewards(model, batch, key if dropout else None)  # [B], [B]
        return pairwise_loss(z_ab, z_ba, batch["weights"])

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_params, new_opt = guarded_update(tx, grads, opt_state, params, finite)
    metrics = dict(metrics, grad_norm=grad_norm, finite=finite.astype(jnp.float32),
                   real_tokens=real_tokens(batch))
    return new_params, new_opt, metrics


def make_pairwise_step(run, *, dropout: bool, trace_guard=None):
    """``train_step(state, batch) -> (state, metrics)`` for ``run``, jitted with donation."""

    def step(state: TrainState, batch):
        with axis_rules(run.mesh, run.rules):
            params, opt_state, metrics = pairwise_update(
                run.graphdef, run.tx, params=state.params, opt_state=state.opt_state,
                rng=state.rng, batch=batch, frozen=state.frozen, step=state.step,
                dropout=dropout)
        return TrainState(step=state.step + 1, params=params, frozen=state.frozen,
                          opt_state=opt_state, rng=state.rng), metrics

    if trace_guard is not None:
        step = trace_guard(step)
    return jax.jit(step, in_shardings=(run.shardings, None), out_shardings=(run.shardings, None),
                   donate_argnums=(0,))
