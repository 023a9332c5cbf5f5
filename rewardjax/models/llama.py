"""Llama-family decoder (Llama 2/3, Qwen2/3, Mistral, SmolLM2) as a Flax NNX module.

One module covers the family because the members differ only in switches: grouped-query
attention, q/k/v biases (Qwen2), per-head q/k RMSNorm (Qwen3), Llama-3 rotary frequency
scaling, a sliding attention window (Mistral) and tied or untied embeddings.

The decoder layers are *stacked*: every parameter of the layer has a leading ``layers`` axis
(built by ``nnx.vmap`` over the layer constructor) and the forward pass runs one layer body under
``jax.lax.scan``, so a 30-layer model compiles as fast as a 1-layer one. Anything attached to
the stacked layer module later (for example LoRA adapters built by vmapping their constructor)
is scanned along with it. The configuration (:class:`LlamaConfig`, its HF ``config.json``
mapping and validation) is in :mod:`rewardjax.models.llama_config`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from rewardjax.models.block_attention import block_attention
from rewardjax.models.layers import (
    AttentionMask,
    attention_bias,
    dropout,
    fused_attention,
    lengths_mask,
    make_attention_mask,
    positions_from_mask,
    segment_positions,
    sharded_block_attention,
    softmax_attention,
    uses_fused,
)
from rewardjax.models.llama_config import REMAT_POLICIES, LlamaConfig
from rewardjax.sharding import constrain


def rope_inv_freq(config: LlamaConfig) -> jax.Array:
    """Inverse rotary frequencies ``[head_dim // 2]`` in float32, scaling applied."""
    d = config.head_dim
    inv = 1.0 / (config.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    scaling = config.rope_scaling_dict
    if scaling is None:
        return inv
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv / factor
    # Llama 3: long wavelengths are slowed by `factor`, short ones kept, the band in between
    # interpolated smoothly (Llama 3 paper / reference implementation).
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > old_len / low, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return jnp.where(medium, smoothed, scaled)


def rope_tables(config: LlamaConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``cos, sin`` of shape ``[batch, seq, head_dim]`` (HF convention: halves repeated)."""
    freqs = positions.astype(jnp.float32)[..., None] * rope_inv_freq(config)  # [B, T, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [B, T, hd]
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates ``x [batch, seq, heads, head_dim]`` by the "rotate half" convention, in float32."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


# ----------------------------------------------------------------------------- building blocks


def linear(din: int, dout: int, names: tuple, *, bias: bool, dtype, param_dtype, std: float,
           rngs: nnx.Rngs) -> nnx.Linear:
    """``nnx.Linear`` with a normal(std) kernel and logical sharding names on its params."""
    return nnx.Linear(
        din, dout, use_bias=bias, dtype=dtype, param_dtype=param_dtype,
        kernel_init=jax.nn.initializers.normal(std), rngs=rngs,
        kernel_metadata={"out_sharding": names}, bias_metadata={"out_sharding": names[-1:]})


def project(layer, x: jax.Array, rng: jax.Array | None, slot: int) -> jax.Array:
    """Applies a projection; a LoRA-adapted one with adapter dropout gets its own key.

    Plain ``nnx.Linear`` layers have no ``dropout`` attribute and are called as usual; keys are
    ``fold_in(rng, slot)`` so adding adapters never changes the backbone's own dropout masks.

    The matmul runs on ``x`` flattened to ``[tokens, in]``: a weight gradient then contracts one
    axis instead of (batch, sequence), which XLA:CPU otherwise lowers with a transposing copy of
    the activation gradient (a quarter of a SmolLM2 SwiGLU layer's backward; same numbers).
    """
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1]) if x.ndim > 2 else x
    if rng is not None and getattr(layer, "dropout", 0.0):
        y = layer(flat, rng=jax.random.fold_in(rng, slot))
    else:
        y = layer(flat)
    return y.reshape(*lead, y.shape[-1]) if x.ndim > 2 else y


def projection_rng(layer_rng: jax.Array | None) -> jax.Array | None:
    """The key a layer's projections draw adapter-dropout keys from (``None``: inference)."""
    return None if layer_rng is None else jax.random.fold_in(layer_rng, 0x10A)


class RMSNorm(nnx.Module):
    """``x / rms(x) * scale`` with the statistics in float32 (as HF Llama does)."""

    def __init__(self, dim: int, eps: float, *, dtype, param_dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("norm",))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class Attention(nnx.Module):
    """Multi-head / grouped-query self-attention (shared by the Llama and BERT backbones)."""

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
                 qkv_bias: bool, out_bias: bool, dtype, param_dtype, std: float,
                 rngs: nnx.Rngs, qk_norm_eps: float | None = None, impl: str = "xla"):
        kw = dict(dtype=dtype, param_dtype=param_dtype, std=std, rngs=rngs)
        self.q_proj = linear(hidden, num_heads * head_dim, ("embed", "heads"), bias=qkv_bias, **kw)
        self.k_proj = linear(hidden, num_kv_heads * head_dim, ("embed", "kv_heads"),
                             bias=qkv_bias, **kw)
        self.v_proj = linear(hidden, num_kv_heads * head_dim, ("embed", "kv_heads"),
                             bias=qkv_bias, **kw)
        self.o_proj = linear(num_heads * head_dim, hidden, ("heads", "embed"), bias=out_bias, **kw)
        if qk_norm_eps is not None:  # Qwen3: RMSNorm over each head's q and k
            self.q_norm = RMSNorm(head_dim, qk_norm_eps, dtype=dtype, param_dtype=param_dtype)
            self.k_norm = RMSNorm(head_dim, qk_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.qk_norm = qk_norm_eps is not None
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.impl = impl

    def qkv(self, x: jax.Array, rope: tuple[jax.Array, jax.Array] | None,
            rng: jax.Array | None = None):
        """Projected (and rotated) ``q [B,T,H,hd]``, ``k, v [B,T,KV,hd]``; reusable by a cache."""
        b, t, _ = x.shape
        q = project(self.q_proj, x, rng, 0).reshape(b, t, self.num_heads, self.head_dim)
        k = project(self.k_proj, x, rng, 1).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = project(self.v_proj, x, rng, 2).reshape(b, t, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array,
               mask: AttentionMask | jax.Array, drop_rate=0.0, rng: jax.Array | None = None,
               proj_rng: jax.Array | None = None) -> jax.Array:
        """Softmax attention (float32 scores); ``mask`` is an :class:`AttentionMask` or an
        additive bias ``[B,1,T,S]``. Returns ``[B,T,D]`` after the output projection."""
        b, t, h, d = q.shape
        if not isinstance(mask, AttentionMask):
            mask = AttentionMask(bias=mask)
        # The fused kernel and block skipping cover self-attention over whole rows; a KV-cache
        # decode step (T != S, rl/sampling.py) takes the materialised path.
        if uses_fused(self.impl, q.dtype, rng is not None) and t == k.shape[1]:
            if rng is not None:
                raise ValueError("attention dropout is not available with attention='cudnn'; "
                                 "set attention_dropout=0 or attention='xla'")
            out = fused_attention(q, k, v, mask)
            return project(self.o_proj, out.reshape(b, t, h * d), proj_rng, 3)
        # Block skipping has no attention dropout: with dropout on, the dense path runs.
        if mask.blocks is not None and rng is None and t == k.shape[1]:
            if mask.shards is None:
                out = block_attention(q, k, v, mask.blocks)  # [B, T, H, hd]
            else:
                out = sharded_block_attention(q, k, v, mask.blocks, mask.shards)
            return project(self.o_proj, out.reshape(b, t, h * d), proj_rng, 3)
        bias = mask.bias
        if bias is None:
            bias = attention_bias(lengths_mask(mask.lengths, t), causal=mask.causal)
        keep = None
        if rng is not None:
            kv = k.shape[2]
            ones = jnp.ones((b, kv, h // kv * t, k.shape[1]), jnp.float32)
            keep = dropout(ones, drop_rate, rng)
        out = softmax_attention(q, k, v, bias, keep)  # [B, T, H, hd]
        return project(self.o_proj, out.reshape(b, t, h * d), proj_rng, 3)

    def __call__(self, x, bias, rope=None, drop_rate=0.0, rng=None, proj_rng=None) -> jax.Array:
        q, k, v = self.qkv(x, rope, proj_rng)
        return self.attend(q, k, v, bias, drop_rate, rng, proj_rng)


class MLP(nnx.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden: int, inter: int, *, dtype, param_dtype, std, rngs):
        kw = dict(bias=False, dtype=dtype, param_dtype=param_dtype, std=std, rngs=rngs)
        self.gate_proj = linear(hidden, inter, ("embed", "mlp"), **kw)
        self.up_proj = linear(hidden, inter, ("embed", "mlp"), **kw)
        self.down_proj = linear(inter, hidden, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        h = jax.nn.silu(project(self.gate_proj, x, rng, 4)) * project(self.up_proj, x, rng, 5)
        return project(self.down_proj, constrain(h, ("batch", "seq", "mlp")), rng, 6)  # [B,T,D]


class DecoderLayer(nnx.Module):
    """Pre-norm decoder layer: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, c: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.attn_norm = RMSNorm(c.hidden_size, c.rms_norm_eps, **kw)
        self.attn = Attention(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim,
                              qkv_bias=c.attention_bias, out_bias=c.attention_out_bias,
                              std=c.initializer_range, rngs=rngs,
                              qk_norm_eps=c.rms_norm_eps if c.qk_norm else None,
                              impl=c.attention, **kw)
        self.mlp_norm = RMSNorm(c.hidden_size, c.rms_norm_eps, **kw)
        self.mlp = MLP(c.hidden_size, c.intermediate_size, std=c.initializer_range, rngs=rngs,
                       **kw)

    def __call__(self, x, bias, rope, rates, rng):
        hidden_rate, attn_rate = rates
        keys = (None,) * 3 if rng is None else tuple(jax.random.split(rng, 3))
        proj = projection_rng(rng)
        a = self.attn(self.attn_norm(x), bias, rope, attn_rate,
                      keys[0] if attn_rate is not None else None, proj)
        x = x + maybe_dropout(a, hidden_rate, keys[1])
        m = self.mlp(self.mlp_norm(x), proj)
        x = x + maybe_dropout(m, hidden_rate, keys[2])
        return constrain(x, ("batch", "seq", "embed"))


def maybe_dropout(x, rate, rng):
    return x if rate is None or rng is None else dropout(x, rate, rng)


def dropout_rates(override, hidden: float, attention: float):
    """Per-call ``(hidden, attention)`` rates; ``None`` entries skip dropout entirely.

    A traced ``override`` applies to both; a Python zero switches a dropout site off statically
    so inference-like training with rate 0 pays no random-number cost.
    """
    if override is not None:
        return override, override
    return (hidden or None), (attention or None)


def embed_lookup(embed: nnx.Embed, ids: jax.Array, dtype) -> jax.Array:
    """Row lookup ``[B, T, D]``; the table is gathered over its FSDP-sharded ``embed`` axis first.

    Gathering straight from a table split over both vocab and embed forces XLA into a full
    rematerialisation when the output is then split over the batch.
    """
    table = constrain(embed.embedding[...], ("vocab", None))
    return jnp.take(table, ids, axis=0).astype(dtype)


def stack_layers(make: Callable[[nnx.Rngs], nnx.Module], num_layers: int,
                 rngs: nnx.Rngs) -> nnx.Module:
    """Builds ``num_layers`` independent layers as one module with a leading ``layers`` axis."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def build(r):
        return make(r)

    return build(rngs)


def scan_layers(layers: nnx.Module, x: jax.Array, step: Callable, rng: jax.Array | None,
                num_layers: int, remat: str = "none", unroll: int = 1) -> jax.Array:
    """Runs ``step(layer, x, rng) -> x`` over the stacked ``layers`` with ``lax.scan``.

    The stacked module is split into a graph definition and a state with a leading layer axis;
    each scan iteration merges one slice back into a layer. Variables are read, not updated.
    """
    graphdef, state = nnx.split(layers)
    rngs = None if rng is None else jax.random.split(rng, num_layers)

    def body(h, xs):
        layer_state, key = xs
        return step(nnx.merge(graphdef, layer_state), h, key), None

    if remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)
    x, _ = jax.lax.scan(body, x, (state, rngs), unroll=max(1, min(int(unroll), num_layers)))
    return x


# ----------------------------------------------------------------------------- the model


class Llama(nnx.Module):
    """Llama-family decoder backbone following the rewardjax backbone call contract.

    Args:
      config: the architecture.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); norms and softmax stay in float32.
      param_dtype: parameter (master weight) dtype.
      rngs: initialisation randomness.
    """

    def __init__(self, config: LlamaConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        c = config
        self.config = config
        self.dtype = dtype
        self.embed = nnx.Embed(
            c.vocab_size, c.hidden_size, dtype=dtype, param_dtype=param_dtype,
            embedding_init=jax.nn.initializers.normal(c.initializer_range), rngs=rngs,
            embedding_metadata={"out_sharding": ("vocab", "embed")})
        self.layers = stack_layers(
            lambda r: DecoderLayer(c, dtype=dtype, param_dtype=param_dtype, rngs=r),
            c.num_layers, rngs)
        self.final_norm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype,
                                  param_dtype=param_dtype)
        if not c.tie_embeddings and c.lm_head:
            self.lm_head = linear(c.hidden_size, c.vocab_size, ("embed", "vocab"), bias=False,
                                  dtype=dtype, param_dtype=param_dtype,
                                  std=c.initializer_range, rngs=rngs)

    def attention_inputs(self, attention_mask, segment_ids=None, parts=None, positions=None):
        """``(positions [B,T], AttentionMask)`` for padding, packing, shared prefixes and windows.

        ``parts`` marks shared-prefix rows (``models.layers.attention_bias``); their
        ``positions`` are given by the caller (a rejected response continues from the end of
        the prompt, not from the end of the chosen one). With ``attention='cudnn'`` an unpacked,
        unwindowed batch is described by its lengths (right padding), so the fused kernel never
        sees a ``T x T`` bias.
        """
        if positions is None:
            if parts is not None:
                raise ValueError("shared-prefix rows (parts) need explicit positions")
            if segment_ids is not None:
                positions = segment_positions(segment_ids)
            else:
                positions = positions_from_mask(attention_mask)
        window = self.config.sliding_window
        if window is None:
            return positions, make_attention_mask(attention_mask, causal=True,
                                                  segment_ids=segment_ids,
                                                  impl=self.config.attention, parts=parts)
        bias = attention_bias(attention_mask, causal=True, segment_ids=segment_ids, parts=parts)
        # Position differences equal index differences inside a real sequence, so the window
        # is measured the same way for left padding and packed rows.
        dist = positions[:, :, None] - positions[:, None, :]  # [B, q, k]
        bias = jnp.where((dist >= window)[:, None], jnp.finfo(bias.dtype).min, bias)
        return positions, AttentionMask(bias, None, causal=True)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, *,
                 segment_ids: jax.Array | None = None, dropout_rng: jax.Array | None = None,
                 dropout_rate=None, parts: jax.Array | None = None,
                 positions: jax.Array | None = None) -> jax.Array:
        """Final-norm hidden states ``[batch, seq, hidden]`` in the compute dtype.

        ``parts`` / ``positions`` ``[B, T]``: shared-prefix rows (``rewardjax.data.shared_prefix``).
        """
        c = self.config
        positions, bias = self.attention_inputs(attention_mask, segment_ids, parts, positions)
        rope = rope_tables(c, positions)
        rates = dropout_rates(dropout_rate, c.hidden_dropout, c.attention_dropout)
        x = constrain(embed_lookup(self.embed, input_ids, self.dtype), ("batch", "seq", "embed"))

        def step(layer, h, key):
            return layer(h, bias, rope, rates, key)

        x = scan_layers(self.layers, x, step, dropout_rng, c.num_layers, c.remat, c.scan_unroll)
        return self.final_norm(x)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Next-token logits ``[batch, seq, vocab]`` in float32 (tied embedding or lm_head)."""
        h = hidden.astype(self.dtype)
        if self.config.tie_embeddings:
            table = self.embed.embedding[...].astype(self.dtype)
            out = jnp.einsum("btd,vd->btv", h, table, preferred_element_type=jnp.float32)
        elif not self.config.lm_head:
            raise ValueError("this backbone was built without its lm_head (reward models drop "
                             "it); load the language model itself for next-token logits")
        else:
            kernel = self.lm_head.kernel[...].astype(self.dtype)
            out = jnp.einsum("btd,dv->btv", h, kernel, preferred_element_type=jnp.float32)
        return constrain(out, ("batch", "seq", "vocab"))
