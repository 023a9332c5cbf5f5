"""Configuration of the Llama-family decoder: hyperparameters and HF ``config.json`` mapping.

:class:`LlamaConfig` is the hashable, frozen description of one Llama 2/3, Qwen2/3, Mistral or
SmolLM2 model (it lives in the module's static graph definition). It converts to and from HF
``config.json`` dicts (transformers 4.x and 5.x keys) and validates rotary scaling and the memory
options (``remat``, ``attention``) that every backbone config carries. The modules built from it
are in :mod:`rewardjax.models.llama`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from rewardjax.models.layers import ATTENTION_IMPLS

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
    # "auto": block skipping for packed / shared-prefix rows, cuDNN on a GPU in bf16, else "xla";
    # "xla": materialised scores + additive bias (any device, attention dropout); "blocks":
    # skip the score tiles no query sees (models.block_attention); "cudnn": fused flash
    # attention (GPU, bf16). See models.layers.ATTENTION_IMPLS.
    attention: str = "auto"
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
