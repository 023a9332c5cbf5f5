"""Reading one feature vector per sequence out of the backbone's hidden states."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# "pooler": the first token, like "cls"; the reward model's PoolerHead then applies BERT's
# pretrained tanh pooler (what BertForSequenceClassification computes).
POOLINGS = ("last", "cls", "mean", "pooler")


def last_token_index(attention_mask: jax.Array) -> jax.Array:
    """Index of the last real token of each row, from the mask alone ``[B]``.

    Works for left and right padding (and for rows with interior zeros) because it looks for
    the last 1, never for a pad token id.
    """
    t = attention_mask.shape[-1]
    flipped = jnp.flip(attention_mask.astype(jnp.int32), axis=-1)
    return (t - 1 - jnp.argmax(flipped, axis=-1)).astype(jnp.int32)


def first_token_index(attention_mask: jax.Array) -> jax.Array:
    return jnp.argmax(attention_mask.astype(jnp.int32), axis=-1).astype(jnp.int32)


def pool(hidden: jax.Array, attention_mask: jax.Array, kind: str) -> jax.Array:
    """Pools ``hidden [B, T, D]`` to ``[B, D]`` (float32).

    Args:
      kind: ``"last"`` (last real token: causal LMs), ``"cls"`` (first real token: encoders),
        ``"mean"`` (mean over real tokens).
    """
    if kind in ("last", "cls", "pooler"):
        idx = (
            last_token_index(attention_mask)
            if kind == "last"
            else first_token_index(attention_mask)
        )
        out = jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]  # [B, D]
        return out.astype(jnp.float32)
    if kind == "mean":
        m = attention_mask.astype(jnp.float32)[..., None]  # [B, T, 1]
        total = jnp.sum(hidden.astype(jnp.float32) * m, axis=1)
        return total / jnp.maximum(jnp.sum(m, axis=1), 1.0)
    raise ValueError(f"unknown pooling {kind!r}; choose from {POOLINGS}")


def segment_pool(
    hidden: jax.Array, segment_ids: jax.Array, num_segments: int, kind: str
) -> tuple[jax.Array, jax.Array]:
    """Pools each segment of packed rows: ``hidden [R, L, D]`` -> ``([R, S, D], valid [R, S])``.

    Segment ``s`` (1..S) of row ``r`` is read exactly as :func:`pool` reads an unpacked sequence:
    its last token, its first token, or the mean over its tokens (float32). Slot ``s - 1`` of the
    output belongs to segment id ``s``; slots with no tokens are zero and ``valid`` is False.
    Segment 0 is padding and never pooled.

    Args:
      hidden: packed hidden states.
      segment_ids: ``[R, L]`` int, 1..S per sequence, 0 on padding.
      num_segments: ``S``, static.
      kind: ``"last"``, ``"cls"`` or ``"mean"``.
    """
    if kind not in POOLINGS:
        raise ValueError(f"unknown pooling {kind!r}; choose from {POOLINGS}")
    t = hidden.shape[1]
    slots = jnp.arange(1, num_segments + 1, dtype=jnp.int32)
    member = segment_ids.astype(jnp.int32)[:, :, None] == slots  # [R, L, S]
    valid = jnp.any(member, axis=1)  # [R, S]
    if kind == "mean":
        w = member.astype(jnp.float32)
        # Exact float32 sums (no reduced-precision matmul passes on accelerators).
        total = jnp.einsum(
            "rls,rld->rsd", w, hidden.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
        )  # [R, S, D]
        out = total / jnp.maximum(jnp.sum(w, axis=1), 1.0)[..., None]
    else:
        pos = jnp.arange(t, dtype=jnp.int32)[None, :, None]  # [1, L, 1]
        if kind == "last":
            idx = jnp.max(jnp.where(member, pos, -1), axis=1)  # [R, S]
        else:  # cls / pooler: the segment's first token
            idx = jnp.min(jnp.where(member, pos, t), axis=1)
        idx = jnp.clip(idx, 0, t - 1)
        out = jnp.take_along_axis(hidden, idx[:, :, None], axis=1).astype(jnp.float32)
    return jnp.where(valid[..., None], out, 0.0), valid
