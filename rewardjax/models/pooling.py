"""Reading one feature vector per sequence out of the backbone's hidden states."""

from __future__ import annotations

import jax
import jax.numpy as jnp

POOLINGS = ("last", "cls", "mean")


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
    if kind == "last" or kind == "cls":
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
