"""Small functional pieces shared by the backbones."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dropout(x: jax.Array, rate, rng: jax.Array | None) -> jax.Array:
    """Inverted dropout whose ``rate`` may be a traced value.

    A traced rate lets ensemble members with different dropout rates run under one ``vmap``.
    ``rng=None`` means inference (identity).
    """
    if rng is None:
        return x
    rate = jnp.asarray(rate, jnp.float32)
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, x.shape)
    scale = jnp.where(keep > 0, 1.0 / jnp.maximum(keep, 1e-9), 0.0).astype(x.dtype)
    return jnp.where(mask, x * scale, jnp.zeros_like(x))


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Token positions counted over real tokens only: ``cumsum(mask) - 1`` clipped at 0.

    With these positions a left-padded and a right-padded sequence see identical rotary or
    absolute position embeddings, so rewards do not depend on the padding side.
    """
    mask = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Positions restarting at 0 at each new segment of a packed row (segment 0 = padding)."""
    seg = segment_ids.astype(jnp.int32)
    idx = jnp.arange(seg.shape[-1], dtype=jnp.int32)
    idx = jnp.broadcast_to(idx, seg.shape)
    start = jnp.concatenate(
        [jnp.ones_like(seg[..., :1]), (seg[..., 1:] != seg[..., :-1]).astype(jnp.int32)], -1
    )
    first = jax.lax.cummax(jnp.where(start > 0, idx, 0), axis=seg.ndim - 1)
    return jnp.where(seg > 0, idx - first, 0)


def attention_bias(
    attention_mask: jax.Array,
    *,
    causal: bool,
    segment_ids: jax.Array | None = None,
    dtype=jnp.float32,
) -> jax.Array:
    """Additive attention bias ``[batch, 1, q, k]`` from padding, causality and packing.

    Rows for padding queries attend to themselves so softmax never sees an all-masked row
    (their outputs are ignored by pooling anyway).
    """
    mask = attention_mask.astype(bool)  # [B, T]
    allowed = mask[:, None, :] & mask[:, :, None]  # [B, q, k]
    if causal:
        t = mask.shape[-1]
        allowed = allowed & jnp.tril(jnp.ones((t, t), bool))[None]
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :])
    eye = jnp.eye(mask.shape[-1], dtype=bool)[None]
    allowed = allowed | (eye & ~mask[:, :, None])
    big_neg = jnp.finfo(dtype).min
    return jnp.where(allowed, 0.0, big_neg).astype(dtype)[:, None, :, :]
