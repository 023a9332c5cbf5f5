"""Small functional pieces shared by the backbones."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rewardjax.models.block_attention import (
    BlockLayout,
    block_attention,
    block_layout,
    can_use_blocks,
)
from rewardjax.sharding import current_rules, logical_to_spec

# "auto": block-skipping attention (``models.block_attention``) for packed and shared-prefix rows
# on one device or a batch-sharded mesh (one layout per batch shard), cuDNN flash attention on a
# GPU in half precision, else the dense path;
# "xla": always the dense path (materialised scores + additive bias; any device, dropout);
# "blocks": block skipping wherever rows are packed or share a prefix; "cudnn": fused kernel.
ATTENTION_IMPLS = ("auto", "xla", "blocks", "cudnn")
HALF_DTYPES = (jnp.bfloat16, jnp.float16)


class BlockShards(NamedTuple):
    """Where a batch-sharded block layout lives: the mesh, the logical-axis rules in force and
    the mesh axes of the batch dimension (a ``PartitionSpec`` entry). Static (closed over)."""

    mesh: jax.sharding.Mesh
    rules: tuple
    batch: str | tuple[str, ...]


class AttentionMask(NamedTuple):
    """Which keys each query may see, in the form the attention implementation wants.

    ``bias`` is the materialised additive bias ``[B, 1, T, S]`` (padding, causality, packing,
    windows: anything). ``lengths`` with ``bias=None`` says the same thing for the common case of
    right-padded unpacked rows without materialising ``T x S``: a fused kernel (cuDNN flash
    attention) then skips masked blocks instead of reading a bias. ``causal`` is static.
    ``blocks`` (packed / shared-prefix rows) lists the score tiles some query can see, for
    :func:`rewardjax.models.block_attention.block_attention`; ``bias`` stays the reference (and
    the dropout path); XLA drops it when nothing reads it. ``shards`` says the layout was built
    per batch shard (:func:`batch_shards`) and must be read inside a ``shard_map`` over the same
    axes (:func:`sharded_block_attention`).
    """

    bias: jax.Array | None = None
    lengths: jax.Array | None = None
    causal: bool = False
    blocks: BlockLayout | None = None
    shards: BlockShards | None = None


def make_attention_mask(attention_mask: jax.Array, *, causal: bool,
                        segment_ids: jax.Array | None = None,
                        impl: str = "xla", parts: jax.Array | None = None) -> AttentionMask:
    """The :class:`AttentionMask` for a batch: lengths only where a fused kernel can use them
    (``impl="cudnn"``, unpacked right-padded rows), otherwise the materialised bias, plus the
    block layout of packed rows when ``impl`` skips blocks (:func:`uses_blocks`).
    ``parts`` marks shared-prefix rows (see :func:`attention_bias`)."""
    packed = segment_ids is not None or parts is not None
    if not packed and (impl == "cudnn" or (impl == "auto" and on_gpu())):
        return AttentionMask(None, attention_mask.astype(jnp.int32).sum(-1), causal=causal)
    bias = attention_bias(attention_mask, causal=causal, segment_ids=segment_ids, parts=parts)
    blocks = shards = None
    if packed and can_use_blocks(attention_mask.shape[-1]):
        shards = batch_shards(attention_mask.shape[0])
        if not uses_blocks(impl, sharded=shards is not None):
            shards = None
        elif shards is None:
            blocks = block_layout(attention_mask, causal=causal, segment_ids=segment_ids,
                                  parts=parts)
        else:
            blocks = sharded_block_layout(attention_mask, shards, causal=causal,
                                          segment_ids=segment_ids, parts=parts)
    return AttentionMask(bias, None, causal=causal, blocks=blocks, shards=shards)


def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def uses_blocks(impl: str, sharded: bool = False) -> bool:
    """Whether ``impl`` builds a block layout for packed rows. ``auto`` does on one device, and
    on a mesh whose axis rules shard the batch (``sharded``: one layout per batch shard, built
    and read inside ``shard_map``). A global layout on a multi-device mesh would sort query
    blocks across the whole batch and so gather every row onto every device: ``auto`` keeps the
    dense path there; ``blocks`` builds it anyway."""
    return impl == "blocks" or (impl == "auto" and (sharded or jax.device_count() == 1))


def batch_shards(batch: int) -> BlockShards | None:
    """The :class:`BlockShards` of a batch of ``batch`` rows when the active axis rules
    (:func:`rewardjax.sharding.axis_rules`) split it over more than one device, else ``None``."""
    ctx = current_rules()
    if ctx is None:
        return None
    mesh, rules = ctx
    spec = logical_to_spec(("batch",), rules, mesh, (batch,))
    if not spec or spec[0] is None:
        return None
    return BlockShards(mesh, rules, spec[0])


def sharded_block_layout(attention_mask: jax.Array, shards: BlockShards, *, causal: bool,
                         segment_ids: jax.Array | None = None,
                         parts: jax.Array | None = None) -> BlockLayout:
    """One :func:`block_layout` per batch shard, built on its device (``shard_map``): the
    layout's arrays are the shards' layouts stacked along their first axis, so each device
    holds, sorts and reads only its own rows' query blocks (rows never attend across rows)."""
    rows = {"mask": attention_mask, "segment_ids": segment_ids, "parts": parts}
    rows = {k: v for k, v in rows.items() if v is not None}

    def local(r):
        return block_layout(r["mask"], causal=causal, segment_ids=r.get("segment_ids"),
                            parts=r.get("parts"))

    spec = jax.sharding.PartitionSpec(shards.batch)
    return jax.shard_map(local, mesh=shards.mesh, in_specs=(spec,), out_specs=spec,
                         check_vma=False)(rows)


def sharded_block_attention(q: jax.Array, k: jax.Array, v: jax.Array, layout: BlockLayout,
                            shards: BlockShards) -> jax.Array:
    """:func:`block_attention` on each batch shard with its own layout
    (:func:`sharded_block_layout`). Heads stay split over the tensor axis when the query and
    key/value heads both divide by it (a query group and its key/value head then sit on the same
    device); otherwise the shard_map sees every head."""
    P = jax.sharding.PartitionSpec
    mesh, rules = shards.mesh, shards.rules

    def entry(spec, i):
        return spec[i] if len(spec) > i else None

    q_spec = logical_to_spec(("batch", "seq", "heads", "head_dim"), rules, mesh, q.shape)
    kv_spec = logical_to_spec(("batch", "seq", "kv_heads", "head_dim"), rules, mesh, k.shape)
    if entry(q_spec, 0) != shards.batch or entry(kv_spec, 0) != shards.batch:
        raise ValueError(f"attention inputs are sharded {q_spec} / {kv_spec}, but the block "
                         f"layout was built per batch shard over {shards.batch}")
    heads = entry(q_spec, 2) if entry(q_spec, 2) == entry(kv_spec, 2) else None
    x_spec = P(shards.batch, None, heads)
    fn = jax.shard_map(block_attention, mesh=mesh,
                       in_specs=(x_spec, x_spec, x_spec, P(shards.batch)), out_specs=x_spec,
                       check_vma=False)
    return fn(q, k, v, layout)


def uses_fused(impl: str, dtype, dropout: bool) -> bool:
    """Whether attention runs through cuDNN: asked for, or ``auto`` on a GPU in half precision
    without attention dropout."""
    return impl == "cudnn" or (impl == "auto" and on_gpu() and dtype in HALF_DTYPES
                               and not dropout)


def softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array,
                      keep: jax.Array | None = None) -> jax.Array:
    """Softmax attention with float32 scores; ``q [B,T,H,hd]``, ``k, v [B,S,KV,hd]``, additive
    ``bias [B,1,T,S]``; returns ``[B,T,H,hd]`` in ``v``'s dtype. Grouped-query heads share
    their key/value head without copying it.

    ``keep`` is an optional attention-dropout multiplier (0 or ``1/keep_prob``) shaped like the
    probabilities ``[B, KV, G*T, S]``. Heads are laid out head-major and the query groups of a
    key/value head are stacked along the query axis, so every product is one plain batched
    matmul; the hand-written backward (below) needs four matmuls and no softmax re-derivation,
    which on XLA:CPU makes attention about 3x cheaper than differentiating the einsum form.
    """
    b, t, h, d = q.shape
    s, kv = k.shape[1], k.shape[2]
    g = h // kv
    qh = q.reshape(b, t, kv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, d)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KV, S, hd]
    bias = jnp.broadcast_to(bias[:, :, None], (b, 1, g, t, s)).reshape(b, 1, g * t, s)
    out = _attention_core(qh, kh, vh, bias.astype(jnp.float32), keep)  # [B, KV, G*T, hd]
    return out.reshape(b, kv, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def _attention_forward(q, k, v, bias, keep):
    qs = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    scores = jnp.matmul(qs, k.swapaxes(-1, -2), preferred_element_type=jnp.float32) + bias
    e = jnp.exp(scores - scores.max(-1, keepdims=True))
    probs = e / e.sum(-1, keepdims=True)
    used = probs if keep is None else probs * keep
    out = jnp.matmul(used.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.astype(v.dtype), (qs, k, v, probs, keep, out)


def _attention_backward(res, d_out):
    qs, k, v, probs, keep, out = res
    used = probs if keep is None else probs * keep
    # d_v and d_k are formed transposed ([.., hd, S]) so the big [T, S] operand is read in its
    # stored layout; the swap back folds into the caller's head-major -> token-major copy.
    d_v = jnp.matmul(d_out.swapaxes(-1, -2), used.astype(v.dtype),
                     preferred_element_type=jnp.float32).swapaxes(-1, -2)
    d_used = jnp.matmul(d_out, v.swapaxes(-1, -2), preferred_element_type=jnp.float32)
    d_probs = d_used if keep is None else d_used * keep
    # Softmax backward: sum_j p_j dp_j equals sum_d dout_d out_d (out = p_used @ v).
    delta = jnp.sum(d_out.astype(jnp.float32) * out, -1, keepdims=True)
    d_scores = (probs * (d_probs - delta)).astype(qs.dtype)
    scale = jnp.asarray(1.0 / math.sqrt(qs.shape[-1]), jnp.float32)
    d_q = jnp.matmul(d_scores, k, preferred_element_type=jnp.float32) * scale
    d_k = jnp.matmul(qs.swapaxes(-1, -2), d_scores,
                     preferred_element_type=jnp.float32).swapaxes(-1, -2)
    return (d_q.astype(qs.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None, None)


@jax.custom_vjp
def _attention_core(q, k, v, bias, keep):
    return _attention_forward(q, k, v, bias, keep)[0]


_attention_core.defvjp(_attention_forward, _attention_backward)


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask) -> jax.Array:
    """cuDNN flash attention through ``jax.nn.dot_product_attention``; returns ``[B,T,H,hd]``.

    GPU only, bf16/fp16 only, no attention dropout. A materialised bias is handed over as a
    boolean mask so the kernel builds its own additive bias in the compute dtype.
    """
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attention='cudnn' needs a bfloat16/float16 compute dtype "
                         f"(model.dtype), got {q.dtype}")
    if mask.bias is not None:
        return jax.nn.dot_product_attention(q, k, v, mask=mask.bias == 0,
                                            implementation="cudnn")
    lengths = None if mask.lengths is None else mask.lengths.astype(jnp.int32)
    return jax.nn.dot_product_attention(q, k, v, is_causal=mask.causal,
                                        query_seq_lengths=lengths,
                                        key_value_seq_lengths=lengths,
                                        implementation="cudnn")


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


def lengths_mask(lengths: jax.Array, length: int) -> jax.Array:
    """``[B, T]`` int mask of right-padded rows with ``lengths`` real tokens."""
    return (jnp.arange(length)[None, :] < lengths[:, None]).astype(jnp.int32)


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
    parts: jax.Array | None = None,
) -> jax.Array:
    """Additive attention bias ``[batch, 1, q, k]`` from padding, causality and packing.

    ``parts [B, T]`` marks shared-prefix pairs ``[prompt | chosen | rejected]`` in one segment
    (0 = shared prompt, 1 = chosen, 2 = rejected): a query sees a key of its own segment only if
    the key is in the prompt or in the query's own part, so the rejected response never sees
    the chosen one. This dense bias is the reference every faster path must equal.

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
    if parts is not None:
        key_part = parts[:, None, :]  # [B, 1, k]
        allowed = allowed & ((key_part == 0) | (key_part == parts[:, :, None]))
    eye = jnp.eye(mask.shape[-1], dtype=bool)[None]
    allowed = allowed | (eye & ~mask[:, :, None])
    big_neg = jnp.finfo(dtype).min
    return jnp.where(allowed, 0.0, big_neg).astype(dtype)[:, None, :, :]
