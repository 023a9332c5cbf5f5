"""The PRM step: one forward per solution, a logit read at every step's last token, per-step BCE.

The model is the run's reward model unchanged (backbone + linear head): the head is applied to
the hidden state at each step position instead of at one pooled position, so a PRM checkpoint
has the BT model's structure (and loads, scores and resumes through the same runtime).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rewardjax.runtime import TrainState
from rewardjax.runtime.step import guarded_update
from rewardjax.sharding import axis_rules


def gather_positions(hidden: jax.Array, positions: jax.Array) -> jax.Array:
    """``hidden [B, T, D]`` read at ``positions [B, S]`` -> ``[B, S, D]`` (float32)."""
    return jnp.take_along_axis(hidden, positions[..., None], axis=1).astype(jnp.float32)


def step_logits(model, batch: dict, dropout_rng=None) -> jax.Array:
    """Logits ``[B, S]`` of P(step is good) at ``batch["step_pos"]``."""
    hidden = model.hidden_states(batch["input_ids"], batch["attention_mask"],
                                 token_type_ids=batch["token_type_ids"],
                                 dropout_rng=dropout_rng)  # [B, T, D]
    z = gather_positions(hidden, batch["step_pos"])  # [B, S, D]
    b, s, d = z.shape
    return model.head(z.reshape(b * s, d)).reshape(b, s)  # heads take [N, D]


def step_bce(logits: jax.Array, labels: jax.Array, mask: jax.Array):
    """Mean binary cross-entropy over real steps (``mask``), in float32, and metrics.

    Args:
      logits: ``[B, S]`` logits of P(good).
      labels: ``[B, S]`` 1 for a good step.
      mask: ``[B, S]`` 1 on real steps of real solutions.
    """
    logits = logits.astype(jnp.float32)
    per = optax.sigmoid_binary_cross_entropy(logits, labels)  # [B, S]
    n = jnp.maximum(jnp.sum(mask), 1.0)
    loss = jnp.sum(per * mask) / n
    correct = ((logits >= 0) == (labels > 0.5)).astype(jnp.float32)
    return loss, {"loss": loss, "step_accuracy": jnp.sum(correct * mask) / n,
                  "steps": jnp.sum(mask)}


def make_prm_step(graphdef, tx, *, mesh, rules, state_shardings, dropout: bool = True,
                  trace_guard=None):
    """``step(state, batch) -> (state, metrics)``, jitted with donation. The rng of a step is
    ``fold_in(rng, step)`` (exact resume); a non-finite loss or gradient keeps the state and
    reports ``finite = 0``."""

    def step(state: TrainState, batch):
        with axis_rules(mesh, rules):
            key = jax.random.fold_in(state.rng, state.step)
            mask = batch["step_mask"] * batch["weights"][:, None]

            def loss_fn(p):
                model = nnx.merge(graphdef, p, state.frozen)
                logits = step_logits(model, batch, key if dropout else None)
                return step_bce(logits, batch["step_labels"], mask)

            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            grad_norm = optax.global_norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            params, opt_state = guarded_update(tx, grads, state.opt_state, state.params, finite)
            metrics = dict(metrics, grad_norm=grad_norm, finite=finite.astype(jnp.float32),
                           real_tokens=jnp.sum(batch["attention_mask"]
                                               * batch["weights"][:, None]))
            return TrainState(step=state.step + 1, params=params,
                              frozen=state.frozen, opt_state=opt_state,
                              rng=state.rng), metrics

    if trace_guard is not None:
        step = trace_guard(step)
    return jax.jit(step, in_shardings=(state_shardings, None),
                   out_shardings=(state_shardings, None), donate_argnums=(0,))


def make_prm_score_fn(graphdef, *, mesh, rules):
    """``score(params, frozen, batch) -> P(good) [B, S]``, jitted."""

    def score(params, frozen, batch):
        with axis_rules(mesh, rules):
            model = nnx.merge(graphdef, params, frozen)
            return jax.nn.sigmoid(step_logits(model, batch))

    return jax.jit(score)
