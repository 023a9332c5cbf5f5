"""ODIN's disentangled reward loss (Chen et al. 2024, "ODIN: Disentangled Reward Mitigates
Hacking in RLHF").

The reward model has two linear heads on shared features: ``r_Q`` (quality) and ``r_L``
(length). Per batch of pairs::

    loss = BT(r_Q + r_L)                                   # the ranking sees the sum
         + length_weight · (|ρ(r_Q, ℓ)| − ρ(r_L, ℓ))       # length goes to r_L, not r_Q
         + ortho_weight  · |w_Q · w_L|                     # the heads read different directions

where ``ρ`` is the Pearson correlation over the batch's responses (chosen and rejected
together, padding rows left out), ``ℓ`` the response lengths and ``w_Q``, ``w_L`` the heads'
weight vectors. Only ``r_Q`` is used downstream. Pure ``jnp``, float32 throughout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rewardjax.losses.bradley_terry import bradley_terry_loss

# Keeps ρ finite (and its gradient bounded) when a batch's rewards or lengths are constant.
_STD_EPS = 1e-6


def pearson(x: jax.Array, y: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Weighted Pearson correlation of ``x`` and ``y`` (same shape, flattened).

    Entries with weight 0 are replaced by the weighted mean before any arithmetic, so a NaN in
    a padding row reaches neither the value nor the gradient. A constant ``x`` or ``y`` gives 0.
    """
    x = jnp.asarray(x, jnp.float32).reshape(-1)
    y = jnp.asarray(y, jnp.float32).reshape(-1)
    w = jnp.ones_like(x) if weights is None else jnp.broadcast_to(
        jnp.asarray(weights, jnp.float32), x.shape).reshape(-1)
    keep = w > 0
    x, y = jnp.where(keep, x, 0.0), jnp.where(keep, y, 0.0)
    total = jnp.maximum(jnp.sum(w), 1e-8)
    dx = x - jnp.sum(w * x) / total
    dy = y - jnp.sum(w * y) / total
    dx, dy = jnp.where(keep, dx, 0.0), jnp.where(keep, dy, 0.0)
    cov = jnp.sum(w * dx * dy) / total
    sx = jnp.sqrt(jnp.sum(w * dx * dx) / total + _STD_EPS**2)
    sy = jnp.sqrt(jnp.sum(w * dy * dy) / total + _STD_EPS**2)
    return cov / (sx * sy)


def odin_loss(
    r_chosen: jax.Array,
    r_rejected: jax.Array,
    len_chosen: jax.Array,
    len_rejected: jax.Array,
    w_quality: jax.Array,
    w_length: jax.Array,
    *,
    length_weight: float = 1.0,
    ortho_weight: float = 1.0,
    margin: float | jax.Array = 0.0,
    center_coef: float = 0.0,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """ODIN's loss over a batch of pairs.

    Args:
      r_chosen, r_rejected: ``[B, 2]`` head outputs, column 0 ``r_Q``, column 1 ``r_L``.
      len_chosen, len_rejected: ``[B]`` response lengths.
      w_quality, w_length: ``[D]`` weight vectors of the two heads.
      length_weight, ortho_weight: the length and orthogonality terms' coefficients.
      margin, center_coef, weights: as for :func:`bradley_terry_loss` on ``r_Q + r_L``
        (``weights [B]``: 0 on padding pairs).

    Returns:
      ``(loss, metrics)``: the BT metrics of the summed reward (``bt_loss``, ``accuracy``, ...),
      ``quality_accuracy`` (``r_Q`` alone), ``corr_quality_length``, ``corr_length_length``,
      ``length_loss``, ``ortho_loss`` and the total ``loss``.
    """
    rc = jnp.asarray(r_chosen, jnp.float32)
    rr = jnp.asarray(r_rejected, jnp.float32)
    b = rc.shape[0]
    w = jnp.ones((b,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    bt, metrics = bradley_terry_loss(rc[:, 0] + rc[:, 1], rr[:, 0] + rr[:, 1], margin=margin,
                                     center_coef=center_coef, weights=w)
    lengths = jnp.concatenate([len_chosen, len_rejected]).astype(jnp.float32)  # [2B]
    w2 = jnp.concatenate([w, w])  # [2B]
    rho_q = pearson(jnp.concatenate([rc[:, 0], rr[:, 0]]), lengths, w2)
    rho_l = pearson(jnp.concatenate([rc[:, 1], rr[:, 1]]), lengths, w2)
    length_loss = jnp.abs(rho_q) - rho_l
    ortho = jnp.abs(jnp.dot(jnp.asarray(w_quality, jnp.float32),
                            jnp.asarray(w_length, jnp.float32)))
    loss = bt + length_weight * length_loss + ortho_weight * ortho
    q_diff = jnp.where(w > 0, rc[:, 0] - rr[:, 0], 0.0)
    metrics = dict(
        metrics,
        loss=loss,
        ranking_loss=bt,
        length_loss=length_loss,
        ortho_loss=ortho,
        corr_quality_length=rho_q,
        corr_length_length=rho_l,
        quality_accuracy=jnp.sum(w * (q_diff > 0)) / jnp.maximum(jnp.sum(w), 1e-8),
    )
    return loss, metrics
