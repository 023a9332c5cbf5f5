"""BERT-style encoder (BERT, MiniLM) as a Flax NNX module.

Post-LayerNorm transformer layers over word + absolute position + token-type embeddings. The
pooler of the HF checkpoint is not part of the module: pooling (CLS, mean, last) happens in the
reward model. Positions are counted over real tokens, so left padding gives the same hidden
states as right padding. Layers are stacked and scanned exactly as in :mod:`llama`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from rewardjax.models.layers import (
    make_attention_mask,
    positions_from_mask,
    segment_positions,
)
from rewardjax.models.llama import (
    Attention,
    dropout_rates,
    embed_lookup,
    linear,
    maybe_dropout,
    project,
    projection_rng,
    scan_layers,
    stack_layers,
)
from rewardjax.models.llama_config import check_memory_options
from rewardjax.sharding import constrain

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyperparameters of a BERT-style encoder."""

    vocab_size: int = 30522
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    remat: str = "none"
    scan_unroll: int = 1  # layers per scan iteration (see LlamaConfig)
    attention: str = "auto"  # "auto" | "xla" | "blocks" | "cudnn" (see LlamaConfig)
    initializer_range: float = 0.02
    pad_token_id: int = 0

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads "
                             f"{self.num_heads}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} not supported; choose from "
                             f"{sorted(_ACTIVATIONS)}")
        check_memory_options(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> BertConfig:
        """Builds a config from an HF BERT ``config.json`` dict."""
        if hf.get("model_type", "bert") != "bert":
            raise ValueError(f"model_type {hf.get('model_type')!r} is not a BERT model")
        pos_type = hf.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ValueError(f"position_embedding_type {pos_type!r} is not supported")
        kwargs = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            hidden_act=hf.get("hidden_act", "gelu"),
            hidden_dropout=float(hf.get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(hf.get("attention_probs_dropout_prob", 0.1)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            pad_token_id=hf.get("pad_token_id") or 0,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict:
        """An HF ``config.json`` dict for ``BertModel``."""
        return {
            "model_type": "bert",
            "architectures": ["BertModel"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": self.hidden_act,
            "hidden_dropout_prob": self.hidden_dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "initializer_range": self.initializer_range,
            "pad_token_id": self.pad_token_id,
            "position_embedding_type": "absolute",
        }


class LayerNorm(nnx.Module):
    """LayerNorm with float32 statistics (two-pass variance, as PyTorch computes it)."""

    def __init__(self, dim: int, eps: float, *, dtype, param_dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("norm",))
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), out_sharding=("norm",))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...].astype(jnp.float32)
                + self.bias[...].astype(jnp.float32)).astype(self.dtype)


def _embed(num: int, dim: int, names: tuple, *, dtype, param_dtype, std, rngs) -> nnx.Embed:
    return nnx.Embed(num, dim, dtype=dtype, param_dtype=param_dtype,
                     embedding_init=jax.nn.initializers.normal(std), rngs=rngs,
                     embedding_metadata={"out_sharding": names})


class Embeddings(nnx.Module):
    """Word + position + token-type embeddings followed by LayerNorm."""

    def __init__(self, c: BertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, std=c.initializer_range, rngs=rngs)
        self.word = _embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), **kw)
        self.position = _embed(c.max_position_embeddings, c.hidden_size, (None, "embed"), **kw)
        self.token_type = _embed(c.type_vocab_size, c.hidden_size, (None, "embed"), **kw)
        self.norm = LayerNorm(c.hidden_size, c.layer_norm_eps, dtype=dtype,
                              param_dtype=param_dtype)

    def __call__(self, input_ids, positions, token_type_ids) -> jax.Array:
        x = (embed_lookup(self.word, input_ids, jnp.float32)
             + embed_lookup(self.position, positions, jnp.float32)
             + embed_lookup(self.token_type, token_type_ids, jnp.float32))
        return self.norm(x)


class EncoderLayer(nnx.Module):
    """Post-LN encoder layer: ``norm(x + attn(x))`` then ``norm(x + ffn(x))``."""

    def __init__(self, c: BertConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        std = c.initializer_range
        self.attn = Attention(c.hidden_size, c.num_heads, c.num_heads, c.head_dim, qkv_bias=True,
                              out_bias=True, std=std, rngs=rngs, impl=c.attention, **kw)
        self.attn_norm = LayerNorm(c.hidden_size, c.layer_norm_eps, **kw)
        self.up_proj = linear(c.hidden_size, c.intermediate_size, ("embed", "mlp"), bias=True,
                              std=std, rngs=rngs, **kw)
        self.down_proj = linear(c.intermediate_size, c.hidden_size, ("mlp", "embed"), bias=True,
                                std=std, rngs=rngs, **kw)
        self.mlp_norm = LayerNorm(c.hidden_size, c.layer_norm_eps, **kw)
        self.act = c.hidden_act

    def __call__(self, x, bias, rates, rng):
        hidden_rate, attn_rate = rates
        keys = (None,) * 3 if rng is None else tuple(jax.random.split(rng, 3))
        proj = projection_rng(rng)
        a = self.attn(x, bias, None, attn_rate, keys[0] if attn_rate is not None else None, proj)
        x = self.attn_norm(x + maybe_dropout(a, hidden_rate, keys[1]))
        h = _ACTIVATIONS[self.act](project(self.up_proj, x, proj, 4))  # [B, T, mlp]
        h = project(self.down_proj, constrain(h, ("batch", "seq", "mlp")), proj, 6)
        x = self.mlp_norm(x + maybe_dropout(h, hidden_rate, keys[2]))
        return constrain(x, ("batch", "seq", "embed"))


class Bert(nnx.Module):
    """BERT encoder backbone following the rewardjax backbone call contract.

    Args:
      config: the architecture.
      dtype: compute dtype; LayerNorm statistics and softmax stay in float32.
      param_dtype: parameter dtype.
      rngs: initialisation randomness.
    """

    def __init__(self, config: BertConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.embeddings = Embeddings(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layers = stack_layers(
            lambda r: EncoderLayer(config, dtype=dtype, param_dtype=param_dtype, rngs=r),
            config.num_layers, rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, *,
                 segment_ids: jax.Array | None = None, token_type_ids: jax.Array | None = None,
                 dropout_rng: jax.Array | None = None, dropout_rate=None) -> jax.Array:
        """Last-layer hidden states ``[batch, seq, hidden]`` in the compute dtype."""
        c = self.config
        if segment_ids is not None:
            positions = segment_positions(segment_ids)
        else:
            positions = positions_from_mask(attention_mask)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        bias = make_attention_mask(attention_mask, causal=False, segment_ids=segment_ids,
                                   impl=c.attention)
        rates = dropout_rates(dropout_rate, c.hidden_dropout, c.attention_dropout)
        emb_rng = layer_rng = None
        if dropout_rng is not None:
            emb_rng, layer_rng = jax.random.split(dropout_rng)
        x = self.embeddings(input_ids, positions, token_type_ids).astype(self.dtype)
        x = constrain(maybe_dropout(x, rates[0], emb_rng), ("batch", "seq", "embed"))

        def step(layer, h, key):
            return layer(h, bias, rates, key)

        return scan_layers(self.layers, x, step, layer_rng, c.num_layers, c.remat,
                           c.scan_unroll)
