"""Softmax attention that never computes the score tiles no query can see, in pure JAX.

Packed rows (several sequences per row, ``segment_ids``) and shared-prefix rows (``[prompt |
chosen | rejected]``, ``parts``) only attend inside a segment, and causal rows only below the
diagonal, yet the dense path (:func:`rewardjax.models.layers.softmax_attention`) pays for the full
``T x T`` score matrix. Here the matrix is cut into ``Bq x Bk`` tiles (``Bq = Bk = block``) and
each query block ``g`` gathers only the ``K_g`` key blocks it can see.

Layout (:func:`block_layout`, once per step, shared by every layer): for each query block the
list of its visible key blocks, the query blocks sorted by ``K_g`` (descending) and cut into
chunks of ``chunk`` query blocks, and the elementwise additive bias of each gathered tile (the
same visibility rule as :func:`rewardjax.models.layers.attention_bias`, padding queries attending
to themselves), so the result equals the dense path exactly, padding rows included.

Compute (:func:`block_attention`): for each static capacity ``c = nk .. 1`` a ``while`` loop runs
over the chunks whose largest ``K_g`` is ``c``: gather the chunk's queries ``[C, KV, G*Bq, hd]``
and its key/value blocks ``[C, KV, c*Bk, hd]``, one softmax over ``c*Bk`` keys, one matmul for the
output. The trip counts are data (any layout compiles once), the shapes are static, and the work
is ``sum_g K_g`` tiles (plus the gaps of partly filled chunks) instead of ``nq * nk``. Keys of one
query block sit side by side, so each product contracts over ``c*Bk`` keys rather than ``Bk``:
XLA:CPU runs small batched matmuls far below its peak, which is what made a plain list of visible
tiles no faster than the dense path. The backward (a ``custom_vjp``) recomputes each chunk's
probabilities from the saved log-sum-exp (flash-attention style), forms ``dQ`` directly and
scatter-adds ``dK``/``dV`` into their key blocks.

Grouped-query heads share their key/value block without copying it (query groups stacked along
the query axis, as in the dense path). Attention dropout is not supported here: the caller falls
back to the dense path when it is on.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

DEFAULT_BLOCK = 64
DEFAULT_CHUNK = 4


class BlockLayout(NamedTuple):
    """Which key blocks each query block reads (:func:`block_layout`); all arrays, so the layout
    can be closed over by a layer scan. Sizes are read back from the shapes.

    ``kblocks [G+1, nk]``: global key-block indices ``row * nk + kb`` of query block ``g``'s visible
    blocks first (ascending), then the dummy block ``R * nk``; row ``G`` is all dummy.
    ``order [Gp]``: query blocks sorted by ``K_g`` descending, padded with ``G`` to a multiple of
    the chunk. ``chunk_cap [Gp / chunk]``: the largest ``K_g`` of each chunk. ``bias [G+1, Bq,
    nk*Bk]``: additive bias (0 or the float32 minimum) of the gathered tiles in list order.
    ``counts [G]``: ``K_g``.
    """

    kblocks: jax.Array
    order: jax.Array
    chunk_cap: jax.Array
    bias: jax.Array
    counts: jax.Array

    @property
    def block(self) -> int:
        return self.bias.shape[1]

    @property
    def chunk(self) -> int:
        return self.order.shape[0] // self.chunk_cap.shape[0]


def visibility(attention_mask: jax.Array, *, causal: bool, segment_ids: jax.Array | None = None,
               parts: jax.Array | None = None) -> jax.Array:
    """``[B, T, T]`` bool: query ``i`` sees key ``j`` (the rule of ``layers.attention_bias``).

    Same segment and real, ``j <= i`` when causal, the key in the shared prompt (``parts == 0``)
    or in the query's own part; a padding query sees itself only.
    """
    mask = attention_mask.astype(bool)
    seg = jnp.where(mask, 1 if segment_ids is None else segment_ids.astype(jnp.int32), 0)
    allowed = (seg[:, :, None] == seg[:, None, :]) & mask[:, :, None]  # [B, q, k]
    t = mask.shape[-1]
    if causal:
        allowed = allowed & jnp.tril(jnp.ones((t, t), bool))[None]
    if parts is not None:
        key_part = parts[:, None, :]
        allowed = allowed & ((key_part == 0) | (key_part == parts[:, :, None]))
    return allowed | (jnp.eye(t, dtype=bool)[None] & ~mask[:, :, None])


def can_use_blocks(length: int, block: int | None = None) -> bool:
    """Rows of ``length`` split into at least two whole blocks (default: ``DEFAULT_BLOCK``)."""
    block = block or DEFAULT_BLOCK
    return length % block == 0 and length // block >= 2


def block_layout(attention_mask: jax.Array, *, causal: bool,
                 segment_ids: jax.Array | None = None, parts: jax.Array | None = None,
                 block: int | None = None, chunk: int | None = None) -> BlockLayout:
    """The :class:`BlockLayout` of a batch ``[B, T]`` (``T`` a multiple of ``block``).

    ``block`` / ``chunk`` default to the module's ``DEFAULT_BLOCK`` / ``DEFAULT_CHUNK``, read at
    call time (the backbones take the defaults; a benchmark may set them).
    """
    block, chunk = block or DEFAULT_BLOCK, chunk or DEFAULT_CHUNK
    b, t = attention_mask.shape
    if t % block:
        raise ValueError(f"row length {t} is not a multiple of the attention block {block}")
    n = t // block
    g = b * n
    allowed = visibility(attention_mask, causal=causal, segment_ids=segment_ids, parts=parts)
    tiles = allowed.reshape(g, block, n, block)  # [G, Bq, nk, Bk], G = (row, q-block)
    vis = tiles.any((1, 3))  # [G, nk]
    counts = vis.sum(-1).astype(jnp.int32)
    # Visible key blocks first, in ascending order (a stable sort of "not visible").
    listed = jnp.argsort(~vis, axis=-1, stable=True).astype(jnp.int32)  # [G, nk]
    live = jnp.arange(n)[None, :] < counts[:, None]
    row = (jnp.arange(g, dtype=jnp.int32) // n)[:, None]
    kblocks = jnp.where(live, row * n + listed, b * n)
    kblocks = jnp.concatenate([kblocks, jnp.full((1, n), b * n, jnp.int32)])
    seen = jnp.take_along_axis(tiles, listed[:, None, :, None], axis=2)  # [G, Bq, nk, Bk]
    seen = (seen & live[:, None, :, None]).reshape(g, block, t)
    seen = jnp.concatenate([seen, jnp.zeros((1, block, t), bool)])
    bias = jnp.where(seen, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    padded = -(-g // chunk) * chunk
    order = jnp.argsort(-counts, stable=True).astype(jnp.int32)
    order = jnp.concatenate([order, jnp.full((padded - g,), g, jnp.int32)])
    chunk_cap = jnp.concatenate([counts, jnp.zeros((1,), jnp.int32)])[order[::chunk]]
    return BlockLayout(kblocks, order, chunk_cap, bias, counts)


def attended_fraction(layout: BlockLayout) -> tuple[jax.Array, jax.Array]:
    """``(visible, computed)``: the fraction of the ``nq x nk`` score tiles some query can see,
    and the fraction :func:`block_attention` computes (visible plus the gaps of chunks whose
    query blocks see fewer blocks than the chunk's largest)."""
    n = layout.kblocks.shape[1]
    total = layout.counts.shape[0] * n
    visible = layout.counts.sum() / total
    computed = layout.chunk_cap.sum() * layout.chunk / total
    return visible, computed


# ----------------------------------------------------------------------------- tiling helpers


def _q_tiles(x: jax.Array, block: int, kv: int) -> jax.Array:
    """``[B, T, H, hd] -> [G+1, KV, Gq*Bq, hd]`` (query groups stacked; a zero tile appended)."""
    b, t, h, d = x.shape
    gq = h // kv
    x = x.reshape(b, t // block, block, kv, gq, d).transpose(0, 1, 3, 4, 2, 5)
    x = x.reshape(b * (t // block), kv, gq * block, d)
    return jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)])


def _q_untiles(x: jax.Array, b: int, t: int, h: int) -> jax.Array:
    """Inverse of :func:`_q_tiles` (the appended tile dropped)."""
    _, kv, gbq, d = x.shape
    block = gbq // (h // kv)
    x = x[:-1].reshape(b, t // block, kv, h // kv, block, d).transpose(0, 1, 4, 2, 3, 5)
    return x.reshape(b, t, h, d)


def _kv_tiles(x: jax.Array, block: int) -> jax.Array:
    """``[B, S, KV, hd] -> [B*nk+1, KV, Bk, hd]`` (a zero dummy block appended)."""
    b, s, kv, d = x.shape
    x = x.reshape(b * (s // block), block, kv, d).transpose(0, 2, 1, 3)
    return jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)])


def _kv_untiles(x: jax.Array, b: int, s: int) -> jax.Array:
    _, kv, block, d = x.shape
    return x[:-1].transpose(0, 2, 1, 3).reshape(b, s, kv, d)


def _gather_keys(tiles: jax.Array, idx: jax.Array) -> jax.Array:
    """``tiles [N, KV, Bk, hd]``, ``idx [C, c]`` -> ``[C, KV, c*Bk, hd]``."""
    x = tiles[idx]  # [C, c, KV, Bk, hd]
    c, n, kv, bk, d = x.shape
    return x.transpose(0, 2, 1, 3, 4).reshape(c, kv, n * bk, d)


def _scatter_keys(acc: jax.Array, idx: jax.Array, grad: jax.Array) -> jax.Array:
    """Adds ``grad [C, KV, c*Bk, hd]`` into the key blocks ``idx [C, c]`` of ``acc``."""
    c, kv, nbk, d = grad.shape
    n = idx.shape[1]
    grad = grad.reshape(c, kv, n, nbk // n, d).transpose(0, 2, 1, 3, 4)
    return acc.at[idx.reshape(-1)].add(grad.reshape(c * n, kv, nbk // n, d).astype(acc.dtype))


def _chunk_scores(qt, kt, layout: BlockLayout, j, cap: int):
    """Scores ``[C, KV, Gq*Bq, cap*Bk]`` (float32, bias added) of chunk ``j`` at capacity
    ``cap``, with the chunk's query-block ids and key-block ids."""
    size = layout.chunk
    ids = jax.lax.dynamic_slice_in_dim(layout.order, j * size, size)  # [C]
    kidx = layout.kblocks[ids, :cap]  # [C, cap]
    q, keys = qt[ids], _gather_keys(kt, kidx)
    s = jnp.matmul(q, keys.swapaxes(-1, -2), preferred_element_type=jnp.float32)
    c, kv, gbq, width = s.shape
    bias = layout.bias[ids, :, :width]  # [C, Bq, cap*Bk], shared by heads and query groups
    s = s.reshape(c, kv, gbq // layout.block, layout.block, width) + bias[:, None, None]
    return s.reshape(c, kv, gbq, width), ids, kidx, q, keys


def _levels(layout: BlockLayout):
    """``(cap, first_chunk, end_chunk)`` for every capacity: the chunks of a capacity are
    contiguous because the query blocks are sorted by ``K_g`` descending."""
    n = layout.kblocks.shape[1]
    for cap in range(n, 0, -1):
        yield cap, jnp.sum(layout.chunk_cap > cap), jnp.sum(layout.chunk_cap >= cap)


def _forward(q, k, v, layout: BlockLayout):
    b, t, h, d = q.shape
    kv = k.shape[2]
    block = layout.block
    scale = jnp.asarray(1.0 / math.sqrt(d), q.dtype)
    qt, kt, vt = _q_tiles(q * scale, block, kv), _kv_tiles(k, block), _kv_tiles(v, block)
    out = jnp.zeros(qt.shape, jnp.float32)
    lse = jnp.zeros(qt.shape[:-1], jnp.float32)
    for cap, lo, hi in _levels(layout):
        def body(j, carry, cap=cap):
            out, lse = carry
            s, ids, kidx, _, _ = _chunk_scores(qt, kt, layout, j, cap)
            m = s.max(-1, keepdims=True)
            e = jnp.exp(s - m)
            total = e.sum(-1, keepdims=True)
            p = (e / total).astype(v.dtype)
            o = jnp.matmul(p, _gather_keys(vt, kidx), preferred_element_type=jnp.float32)
            # Padding slots of a chunk all write the dropped tile G.
            return out.at[ids].set(o), lse.at[ids].set((m + jnp.log(total))[..., 0])

        out, lse = jax.lax.fori_loop(lo, hi, body, (out, lse))
    return _q_untiles(out.astype(v.dtype), b, t, h), (qt, kt, vt, out, lse, layout)


def _backward(res, d_out):
    qt, kt, vt, out, lse, layout = res
    b, t, h, d = d_out.shape
    kv = kt.shape[1]
    dot = _q_tiles(d_out, layout.block, kv)
    delta = jnp.sum(dot.astype(jnp.float32) * out, -1)  # [G+1, KV, Gq*Bq]: rowsum(dO * O)
    dq = jnp.zeros(qt.shape, jnp.float32)
    dk = jnp.zeros(kt.shape, jnp.float32)
    dv = jnp.zeros(vt.shape, jnp.float32)
    scale = jnp.asarray(1.0 / math.sqrt(d), jnp.float32)
    for cap, lo, hi in _levels(layout):
        def body(j, carry, cap=cap):
            dq, dk, dv = carry
            s, ids, kidx, q, keys = _chunk_scores(qt, kt, layout, j, cap)
            p = jnp.exp(s - lse[ids][..., None])  # [C, KV, Gq*Bq, cap*Bk]
            g = dot[ids]
            values = _gather_keys(vt, kidx)
            dv = _scatter_keys(dv, kidx, jnp.matmul(p.astype(g.dtype).swapaxes(-1, -2), g,
                                                    preferred_element_type=jnp.float32))
            dp = jnp.matmul(g, values.swapaxes(-1, -2), preferred_element_type=jnp.float32)
            ds = (p * (dp - delta[ids][..., None])).astype(q.dtype)
            dq = dq.at[ids].set(jnp.matmul(ds, keys, preferred_element_type=jnp.float32) * scale)
            dk = _scatter_keys(dk, kidx, jnp.matmul(ds.swapaxes(-1, -2), q,
                                                    preferred_element_type=jnp.float32))
            return dq, dk, dv

        dq, dk, dv = jax.lax.fori_loop(lo, hi, body, (dq, dk, dv))
    s = (kt.shape[0] - 1) // b * layout.block
    return (_q_untiles(dq.astype(qt.dtype), b, t, h), _kv_untiles(dk.astype(kt.dtype), b, s),
            _kv_untiles(dv.astype(vt.dtype), b, s), None)


@jax.custom_vjp
def block_attention(q: jax.Array, k: jax.Array, v: jax.Array, layout: BlockLayout) -> jax.Array:
    """Softmax attention over the visible tiles of ``layout``; ``q [B,T,H,hd]``, ``k, v
    [B,T,KV,hd]`` (self-attention, ``T`` a multiple of the block); float32 scores; returns
    ``[B,T,H,hd]`` in ``v``'s dtype, equal to ``softmax_attention`` with the layout's bias."""
    return _forward(q, k, v, layout)[0]


block_attention.defvjp(_forward, _backward)
