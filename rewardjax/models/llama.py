"""Llama-family decoder (Llama 2/3, Qwen2/3, Mistral, SmolLM2) as a Flax NNX module.

One module covers the family because the members differ only in switches: grouped-query
attention, q/k/v biases (Qwen2), per-head q/k RMSNorm (Qwen3), Llama-3 rotary frequency
scaling, a sliding attention window (Mistral) and tied or untied embeddings.

The decoder layers are *stacked*: every parameter of the layer has a leading ``layers`` axis
(built by ``nnx.vmap`` over the layer constructor) and the forward pass runs one layer body under
``jax.lax.scan``, so a 30-layer model compiles as fast as a 1-layer one. Anything attached to
the stacked layer module later (for example LoRA adapters built by vmapping their constructor)
is scanned along with it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rewardjax.models.layers import (
    ATTENTION_IMPLS,
    AttentionMask,
    attention_bias,
    dropout,
    fused_attention,
    lengths_mask,
    make_attention_mask,
    positions_from_mask,
    segment_positions,
    softmax_attention,
)
from rewardjax.sharding import constrain

# Name -> jax.checkpoint policy; "none" disables rematerialisation, "full" saves nothing.
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}

_HF_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyperparameters of a Llama-family decoder.

    ``rope_scaling`` is stored as a sorted tuple of ``(key, value)`` pairs so the config stays
    hashable (it lives in the module's static graph definition); pass a dict, it is converted.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: Any = None
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    # Build the untied next-token head. Reward models read features only, so `build_run` turns
    # it off: a vocab x hidden matrix (0.5B parameters on Llama-3-8B) neither held nor trained.
    lm_head: bool = True
    attention_bias: bool = False
    attention_out_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    max_position_embeddings: int = 4096
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    remat: str = "none"
    scan_unroll: int = 1  # layers per scan iteration; unrolling helps XLA:CPU (~10% on MiniLM)
    # "xla": materialised scores + additive bias (any device, attention dropout); "cudnn": fused
    # flash attention (GPU, bf16, right padding).
    attention: str = "xla"
    initializer_range: float = 0.02
    model_type: str = "llama"

    def __post_init__(self):
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                                 f"num_heads {self.num_heads}; set head_dim explicitly")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if isinstance(self.rope_scaling, dict):
            scaling = _normalise_rope_scaling(self.rope_scaling)
            object.__setattr__(self, "rope_scaling",
                               None if scaling is None else tuple(sorted(scaling.items())))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be a multiple of "
                             f"num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        check_memory_options(self)

    @property
    def rope_scaling_dict(self) -> dict | None:
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> LlamaConfig:
        """Builds a config from an HF ``config.json`` dict (transformers 4.x or 5.x keys)."""
        model_type = hf.get("model_type", "llama")
        if model_type not in _HF_FAMILIES:
            raise ValueError(f"model_type {model_type!r} is not a Llama-family model; "
                             f"supported: {_HF_FAMILIES}")
        act = hf.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"hidden_act {act!r} is not supported (Llama family uses silu)")
        if hf.get("mlp_bias"):
            raise ValueError("mlp_bias=True is not supported")
        # transformers 5 folds rope_theta into `rope_parameters`; 4.x uses rope_theta/rope_scaling.
        rope = dict(hf.get("rope_parameters") or {})
        theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = rope or hf.get("rope_scaling")
        scaling = _normalise_rope_scaling(scaling)
        window = None
        if model_type == "mistral":
            window = hf.get("sliding_window")
        elif model_type in ("qwen2", "qwen3") and hf.get("use_sliding_window"):
            window = hf.get("sliding_window")
            if hf.get("max_window_layers", 0) < hf["num_hidden_layers"]:
                raise ValueError("per-layer sliding windows (max_window_layers < "
                                 "num_hidden_layers) are not supported")
        # Qwen2 hard-codes q/k/v biases (no o_proj bias); Llama's flag covers all four.
        if model_type == "qwen2":
            qkv_bias, out_bias = True, False
        else:
            qkv_bias = out_bias = bool(hf.get("attention_bias", False))
        kwargs = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim"),
            rope_theta=float(theta),
            rope_scaling=scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=qkv_bias,
            attention_out_bias=out_bias,
            qk_norm=model_type == "qwen3",
            sliding_window=window,
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            attention_dropout=float(hf.get("attention_dropout", 0.0)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            model_type=model_type,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict:
        """An HF ``config.json`` dict (legacy rope keys plus transformers-5 ``rope_parameters``)."""
        arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM"}[self.model_type]
        rope_params = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope_params.update(self.rope_scaling_dict)
        out = {
            "model_type": self.model_type,
            "architectures": [arch],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling_dict,
            "rope_parameters": rope_params,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_dropout": self.attention_dropout,
            "initializer_range": self.initializer_range,
        }
        if self.model_type in ("llama", "qwen3"):
            out["attention_bias"] = self.attention_bias
            out["mlp_bias"] = False
        if self.model_type == "mistral":
            out["sliding_window"] = self.sliding_window
        if self.model_type in ("qwen2", "qwen3"):
            out["use_sliding_window"] = self.sliding_window is not None
            out["sliding_window"] = self.sliding_window
            out["max_window_layers"] = self.num_layers
        return out


def check_memory_options(config) -> None:
    """Validates the ``remat`` and ``attention`` fields every backbone config carries.

    ``"remat=none"`` in an overrides string parses to ``None``; it means ``"none"``.
    """
    if config.remat is None:
        object.__setattr__(config, "remat", "none")
    if config.remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {config.remat!r}; choose from "
                         f"{sorted(REMAT_POLICIES)}")
    if config.attention not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention implementation {config.attention!r}; choose from "
                         f"{list(ATTENTION_IMPLS)}")


def _normalise_rope_scaling(scaling: dict | None) -> dict | None:
    """Validates HF rope scaling; returns None for plain rotary embeddings."""
    if not scaling:
        return None
    scaling = dict(scaling)
    kind = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    if kind == "default":
        return None
    if kind == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings")
        missing = [k for k in keys if k not in scaling]
        if missing:
            raise ValueError(f"llama3 rope_scaling is missing {missing}")
        return {"rope_type": "llama3", **{k: scaling[k] for k in keys}}
    if kind == "linear":
        return {"rope_type": "linear", "factor": scaling["factor"]}
    raise ValueError(f"rope scaling type {kind!r} is not supported (default, linear, llama3)")


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
    """
    if rng is not None and getattr(layer, "dropout", 0.0):
        return layer(x, rng=jax.random.fold_in(rng, slot))
    return layer(x)


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
        # The fused kernel covers self-attention over whole rows; a KV-cache decode step
        # (T != S, rl/sampling.py) takes the materialised path.
        if self.impl == "cudnn" and t == k.shape[1]:
            if rng is not None:
                raise ValueError("attention dropout is not available with attention='cudnn'; "
                                 "set attention_dropout=0 or attention='xla'")
            out = fused_attention(q, k, v, mask)
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

    def attention_inputs(self, attention_mask, segment_ids=None):
        """``(positions [B,T], AttentionMask)`` for padding, packing and windows.

        With ``attention='cudnn'`` an unpacked, unwindowed batch is described by its lengths
        (right padding), so the fused kernel never sees a ``T x T`` bias.
        """
        if segment_ids is not None:
            positions = segment_positions(segment_ids)
        else:
            positions = positions_from_mask(attention_mask)
        window = self.config.sliding_window
        if window is None:
            return positions, make_attention_mask(attention_mask, causal=True,
                                                  segment_ids=segment_ids,
                                                  impl=self.config.attention)
        bias = attention_bias(attention_mask, causal=True, segment_ids=segment_ids)
        # Position differences equal index differences inside a real sequence, so the window
        # is measured the same way for left padding and packed rows.
        dist = positions[:, :, None] - positions[:, None, :]  # [B, q, k]
        bias = jnp.where((dist >= window)[:, None], jnp.finfo(bias.dtype).min, bias)
        return positions, AttentionMask(bias, None, causal=True)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, *,
                 segment_ids: jax.Array | None = None, dropout_rng: jax.Array | None = None,
                 dropout_rate=None) -> jax.Array:
        """Final-norm hidden states ``[batch, seq, hidden]`` in the compute dtype."""
        c = self.config
        positions, bias = self.attention_inputs(attention_mask, segment_ids)
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
