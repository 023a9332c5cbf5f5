"""Bradley-Terry preference losses for pairs and multi-response rankings.

Everything here is pure ``jnp`` and jit-able. Inputs are cast to float32 first, so a model
running in bf16 still gets a float32 loss and float32 metrics (DESIGN §2 numerics).

Per comparison (a better response with reward ``r⁺`` against a worse one with ``r⁻``)::

    l = -log σ(r⁺ - r⁻ - margin) + center_coef · (r⁺ + r⁻)²

The first term is computed as ``softplus(-(r⁺ - r⁻ - margin))`` (= ``-log_sigmoid``), which
is finite in value and gradient for any finite reward gap. The centering term (Eisenstein et
al., η≈0.01) pins the reward scale's offset so ensemble members are comparable.

Padding rows carry weight 0. Their rewards are replaced by 0 *before* any arithmetic, so a NaN
or inf in a padding row can reach neither the loss nor the gradients (a plain ``w * l`` would
give ``0 * nan = nan``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Floor for the total weight so an all-padding batch gives loss 0 instead of 0/0.
_EPS = 1e-8


def _weighted_mean(x: jax.Array, w: jax.Array) -> jax.Array:
    """``sum(w * x) / max(sum(w), eps)`` over all elements (``w`` broadcasts to ``x``)."""
    w = jnp.broadcast_to(w, x.shape)
    return jnp.sum(w * x) / jnp.maximum(jnp.sum(w), _EPS)


def _pair_terms(
    diff: jax.Array,
    total: jax.Array,
    pair_w: jax.Array,
    margin: jax.Array,
    center_coef: float | jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Loss and pair metrics from per-comparison arrays of any (shared) shape.

    Args:
      diff: ``r⁺ - r⁻`` per comparison, already zeroed where ``pair_w == 0``.
      total: ``r⁺ + r⁻`` per comparison, zeroed likewise.
      pair_w: non-negative weight per comparison (0 = not a comparison).
      margin: broadcastable to ``diff``.
      center_coef: centering strength η.

    Returns:
      ``(loss, metrics)`` with loss, bt_loss, center_loss, accuracy, reward_margin.
    """
    bt = jax.nn.softplus(-(diff - margin))  # = -log σ(diff - margin), stable for |diff| large
    center = jnp.asarray(center_coef, jnp.float32) * jnp.square(total)
    bt_loss = _weighted_mean(bt, pair_w)
    center_loss = _weighted_mean(center, pair_w)
    loss = bt_loss + center_loss
    metrics = {
        "loss": loss,
        "bt_loss": bt_loss,
        "center_loss": center_loss,
        # Strict inequality: a tie (e.g. a collapsed reward model) is not a correct ranking.
        "accuracy": _weighted_mean((diff > 0).astype(jnp.float32), pair_w),
        "reward_margin": _weighted_mean(diff, pair_w),
    }
    return loss, metrics


def _reward_moments(rewards: jax.Array, w: jax.Array) -> dict[str, jax.Array]:
    """Weighted mean / std (population) of the rewards with weight > 0."""
    mean = _weighted_mean(rewards, w)
    var = _weighted_mean(jnp.square(rewards - mean), w)
    return {"reward_mean": mean, "reward_std": jnp.sqrt(jnp.maximum(var, 0.0))}


def bradley_terry_loss(
    r_chosen: jax.Array,
    r_rejected: jax.Array,
    *,
    margin: float | jax.Array = 0.0,
    center_coef: float | jax.Array = 0.0,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted Bradley-Terry loss over a batch of preference pairs.

    Args:
      r_chosen: ``[B]`` rewards of the preferred responses (any float dtype).
      r_rejected: ``[B]`` rewards of the dispreferred responses.
      margin: scalar or ``[B]``; the chosen reward must beat the rejected one by this much.
      center_coef: η of the centering term ``η (r⁺ + r⁻)²``.
      weights: optional ``[B]`` non-negative row weights; 0 marks a padding row. The loss is
        ``sum(w · l) / max(sum(w), eps)``.

    Returns:
      ``(loss, metrics)``: float32 scalar loss and a dict of float32 scalars — ``loss``,
      ``bt_loss``, ``center_loss``, ``accuracy`` (strict ``r⁺ > r⁻``; ties count as wrong),
      ``reward_margin`` (mean ``r⁺ - r⁻``), ``reward_mean`` / ``reward_std`` (over chosen and
      rejected rewards of real rows), ``chosen_reward``, ``rejected_reward`` and
      ``num_pairs`` (rows with weight > 0). All metrics are weighted by ``weights``.
    """
    rc = jnp.asarray(r_chosen, jnp.float32)
    rr = jnp.asarray(r_rejected, jnp.float32)
    w = jnp.ones_like(rc) if weights is None else jnp.asarray(weights, jnp.float32)
    real = w > 0
    # Zero padding rows before arithmetic so NaN/inf there cannot leak into the gradients.
    rc = jnp.where(real, rc, 0.0)
    rr = jnp.where(real, rr, 0.0)
    margin = jnp.where(real, jnp.asarray(margin, jnp.float32), 0.0)

    loss, metrics = _pair_terms(rc - rr, rc + rr, w, margin, center_coef)
    metrics.update(_reward_moments(jnp.stack([rc, rr]), w[None, :]))
    metrics["chosen_reward"] = _weighted_mean(rc, w)
    metrics["rejected_reward"] = _weighted_mean(rr, w)
    metrics["num_pairs"] = jnp.sum(real.astype(jnp.float32))
    return loss, jax.lax.stop_gradient(metrics)


def ranking_loss(
    rewards: jax.Array,
    ranks: jax.Array,
    *,
    mask: jax.Array | None = None,
    margin: float | jax.Array = 0.0,
    center_coef: float | jax.Array = 0.0,
    weights: jax.Array | None = None,
    normalize: str = "pairs",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Bradley-Terry loss averaged over every ordered pair of a ranking of K responses.

    Each pair ``(i, j)`` with ``rank_i < rank_j`` (lower rank = better) and both responses
    unmasked is one Bradley-Terry comparison with ``r⁺ = rewards[i]``, ``r⁻ = rewards[j]``.
    Equal ranks are ties and give no comparison.

    Centering choice: the term is ``η (r_i + r_j)²`` *per comparison*, averaged exactly like the
    BT term, i.e. the mean of the squared summed rewards over comparisons. This is the only
    per-response form that makes K=2 reduce exactly to :func:`bradley_terry_loss` (a per-response
    ``η r_i²`` would not), and it keeps the BT and centering terms on the same footing.

    Args:
      rewards: ``[B, K]`` rewards (any float dtype).
      ranks: ``[B, K]`` integer (or float) ranks; lower is better, equal ranks are ties.
      mask: optional ``[B, K]``, 0 for absent responses (variable K per prompt).
      margin: scalar, ``[B]`` (one margin per prompt) or ``[B, K, K]`` (per pair ``(i, j)``).
      center_coef: η of the centering term.
      weights: optional ``[B]`` prompt weights; 0 marks a padding row.
      normalize: ``"pairs"`` (default) pools all comparisons of the batch, so the loss is the
        weighted mean over every ordered pair, as DESIGN §3 states; ``"examples"`` first
        averages within each prompt and then over prompts, so prompts with many responses do
        not dominate (InstructGPT-style). Both agree when every prompt has the same number of
        comparisons, in particular for K=2.

    Returns:
      ``(loss, metrics)`` with the same keys as :func:`bradley_terry_loss`; ``accuracy`` and
      ``reward_margin`` are over comparisons, reward moments over unmasked responses, and
      ``num_pairs`` counts comparisons.
    """
    r = jnp.asarray(rewards, jnp.float32)
    b, k = r.shape
    ranks = jnp.asarray(ranks)
    m = jnp.ones((b, k), bool) if mask is None else jnp.asarray(mask) > 0
    w = jnp.ones((b,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    m = m & (w[:, None] > 0)
    r = jnp.where(m, r, 0.0)

    # valid[b, i, j]: i is strictly better than j and both are present.
    valid = (ranks[:, :, None] < ranks[:, None, :]) & m[:, :, None] & m[:, None, :]  # [B, K, K]
    n_pairs = jnp.sum(valid, axis=(1, 2)).astype(jnp.float32)  # [B]
    if normalize == "pairs":
        row_scale = jnp.ones_like(n_pairs)
    elif normalize == "examples":
        row_scale = 1.0 / jnp.maximum(n_pairs, 1.0)
    else:
        raise ValueError(f"normalize must be 'pairs' or 'examples', got {normalize!r}")
    pair_w = valid.astype(jnp.float32) * (w * row_scale)[:, None, None]  # [B, K, K]

    diff = jnp.where(valid, r[:, :, None] - r[:, None, :], 0.0)  # [B, K, K]
    total = jnp.where(valid, r[:, :, None] + r[:, None, :], 0.0)  # [B, K, K]
    margin = jnp.asarray(margin, jnp.float32)
    if margin.ndim == 1:  # one margin per prompt
        margin = margin[:, None, None]
    margin = jnp.where(valid, margin, 0.0)

    loss, metrics = _pair_terms(diff, total, pair_w, margin, center_coef)
    resp_w = m.astype(jnp.float32) * w[:, None]  # [B, K]
    metrics.update(_reward_moments(r, resp_w))
    # Chosen / rejected means over comparisons: the better / worse side of each pair.
    metrics["chosen_reward"] = _weighted_mean(jnp.where(valid, r[:, :, None], 0.0), pair_w)
    metrics["rejected_reward"] = _weighted_mean(jnp.where(valid, r[:, None, :], 0.0), pair_w)
    metrics["num_pairs"] = jnp.sum(valid.astype(jnp.float32))
    return loss, jax.lax.stop_gradient(metrics)
