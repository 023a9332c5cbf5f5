"""Read a GGUF checkpoint (llama.cpp's format) as an HF config, HF-named tensors and a tokenizer.

GGUF carries everything a model needs in one file: the architecture hyperparameters as metadata
keys (`llama.embedding_length`, ...), the (often quantised) weights under llama.cpp names
(`blk.0.attn_q.weight`, ...) and the tokenizer vocabulary, merges and chat template. This module
turns all three into what the rest of `rewardjax` already speaks: a `config.json`-style dict, a
`{hf_name: float32 array}` state dict in torch `Linear` layout `[out, in]`, and a
`transformers.PreTrainedTokenizerFast`, so `models/hf.py` can load a GGUF like a safetensors repo.
The tokenizer is rebuilt in `models/gguf_tokenizer.py`; this module reads the file, dequantises
the tensors and maps config and tensor names.

Two layout facts matter:
  * GGUF lists tensor dimensions innermost-first (ggml's `ne` order); the numpy view the reader
    gives is already row-major, so shapes are the reverse of `tensor.shape`.
  * llama.cpp's HF converter permutes the rows of Llama q/k projections so its rotary kernel can
    rotate adjacent pairs (GPT-J style) instead of the two halves of each head (HF's NeoX style);
    `_unpermute_rope_rows` undoes it. Qwen2/Qwen3 use NeoX rotary in llama.cpp and are not permuted.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np

from rewardjax.models.gguf_tokenizer import gguf_tokenizer

# architecture -> (HF model_type, HF class, q/k rows permuted by the converter)
_ARCHITECTURES = {
    "llama": ("llama", "LlamaForCausalLM", True),
    "qwen2": ("qwen2", "Qwen2ForCausalLM", False),
    "qwen3": ("qwen3", "Qwen3ForCausalLM", False),
}

# Per-layer llama.cpp tensor stems -> HF module paths under `model.layers.N.`.
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")


def read_gguf(
    path: str | os.PathLike, *, with_tokenizer: bool = True
) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
    """Reads a GGUF file into an HF config dict, HF-named float32 tensors and a tokenizer.

    Args:
      path: the `.gguf` file.
      with_tokenizer: build the tokenizer (a few seconds for a 50k vocabulary); when False the
        third element is None.

    Returns:
      `(hf_config, tensors, tokenizer)`: `hf_config` as a `config.json` dict (`model_type`
      "llama", "qwen2" or "qwen3"); `tensors` maps HF parameter names (`model.embed_tokens.weight`,
      `model.layers.N.self_attn.q_proj.weight`, ..., `lm_head.weight` when untied) to float32
      arrays in torch layout; `tokenizer` is a `transformers.PreTrainedTokenizerFast` carrying
      the special tokens and chat template stored in the file.

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: not a GGUF file, an unsupported architecture, tensor name, quantisation type or
        tokenizer model (the message names the offending item).
    """
    from rewardjax._optional import require

    gguf = require("gguf")  # optional dependency: only needed here

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader raises bare ValueErrors/struct errors on bad headers
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e
    meta = _metadata(reader)
    arch = meta.get("general.architecture")
    if arch not in _ARCHITECTURES:
        raise ValueError(
            f"{path}: unsupported GGUF architecture {arch!r}; supported: {sorted(_ARCHITECTURES)}"
        )
    raw = {t.name: _dequantize(path, t) for t in reader.tensors}
    try:
        config = _hf_config(meta, arch, raw)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    tensors = _hf_tensors(path, arch, config, raw)
    tokenizer = gguf_tokenizer(meta, path) if with_tokenizer else None
    return config, tensors, tokenizer


def _metadata(reader) -> dict[str, Any]:
    """All metadata key/values as Python objects (strings, numbers, lists)."""
    return {name: field.contents() for name, field in reader.fields.items()
            if not name.startswith("GGUF.")}


def _dequantize(path: str, tensor) -> np.ndarray:
    """One tensor as a float32 array in row-major (numpy / torch) shape."""
    from gguf.quants import dequantize

    try:
        values = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
        raise ValueError(
            f"{path}: tensor {tensor.name!r} has unsupported quantisation type "
            f"{tensor.tensor_type.name}"
        ) from e
    # ggml orders dims innermost-first; numpy wants outermost-first.
    shape = tuple(int(d) for d in reversed(tensor.shape))
    # Copy off the memory map so callers own writable arrays.
    return np.array(values, dtype=np.float32).reshape(shape)


def _f32(value: float) -> float:
    """The shortest decimal that round-trips a float32 (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(value)))


def _hf_config(meta: dict[str, Any], arch: str, raw: dict[str, np.ndarray]) -> dict[str, Any]:
    """A `config.json` dict from `{arch}.*` metadata keys."""
    def key(name, default=None):
        value = meta.get(f"{arch}.{name}", default)
        if value is None:
            raise ValueError(f"GGUF metadata lacks required key {arch}.{name}")
        return value

    model_type, hf_class, _ = _ARCHITECTURES[arch]
    hidden = int(key("embedding_length"))
    heads = int(key("attention.head_count"))
    if "token_embd.weight" not in raw:
        raise ValueError("GGUF file has no token_embd.weight tensor")
    config = {
        "model_type": model_type,
        "architectures": [hf_class],
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        # Absent head_count_kv means plain multi-head attention.
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": int(key("attention.key_length", hidden // heads)),
        "rope_theta": _f32(key("rope.freq_base", 10000.0)),
        "rms_norm_eps": _f32(key("attention.layer_norm_rms_epsilon", 1e-6)),
        # The embedding rows are the model's vocabulary whatever the tokenizer lists.
        "vocab_size": int(raw["token_embd.weight"].shape[0]),
        "max_position_embeddings": int(key("context_length", 2048)),
        # llama.cpp writes `output.weight` only when it is not the embedding matrix.
        "tie_word_embeddings": "output.weight" not in raw,
        "hidden_act": "silu",
        "attention_bias": "blk.0.attn_q.bias" in raw,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    for name in ("bos", "eos", "padding"):
        token_id = meta.get(f"tokenizer.ggml.{name}_token_id")
        if token_id is not None:
            config["pad_token_id" if name == "padding" else f"{name}_token_id"] = int(token_id)
    if model_type == "qwen2":
        config["use_sliding_window"] = False
    scaling = _rope_scaling(meta, arch, raw.get("rope_freqs.weight"))
    if scaling is not None:
        config["rope_scaling"] = scaling
    return config


def _rope_scaling(meta: dict[str, Any], arch: str, rope_freqs: np.ndarray | None) -> dict | None:
    """HF `rope_scaling` from `{arch}.rope.scaling.*` keys or a Llama-3 `rope_freqs` tensor."""
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    factor = meta.get(f"{arch}.rope.scaling.factor")
    original = meta.get(f"{arch}.rope.scaling.original_context_length")
    if kind in ("linear", "yarn") and factor is not None:
        scaling = {"rope_type": kind, "factor": _f32(factor)}
        if original is not None:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling
    if kind != "none":
        raise ValueError(f"unsupported {arch}.rope.scaling.type {kind!r}")
    if rope_freqs is None:
        return None
    return _llama3_scaling(rope_freqs.astype(np.float64), meta, arch, original)


def _llama3_scaling(divisors: np.ndarray, meta: dict, arch: str, original: int | None) -> dict:
    """Recovers Llama-3 `rope_scaling` from the per-frequency divisors llama.cpp precomputes.

    Llama-3 scaling divides low frequencies by `factor`, keeps high ones, and between the two
    wavelength thresholds blends with `s = (L / wavelen - low) / (high - low)`, i.e. a divisor of
    `1 / ((1 - s) / factor + s)`. `s` is affine in `1 / wavelen`, so two blended frequencies give
    its slope and intercept; only the ratios `low / L`, `high / L` are identifiable, so `L` is set
    to the stated original context (Llama 3's 8192 when absent) and `low`/`high` follow from it.
    """
    factor = float(divisors.max())
    if factor <= 1.0 + 1e-6:
        return None
    dim = 2 * divisors.size
    base = float(meta.get(f"{arch}.rope.freq_base", 10000.0))
    inv_freq = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    blended = (divisors > 1.0 + 1e-6) & (divisors < factor - 1e-6)
    if blended.sum() < 2:
        raise ValueError("rope_freqs.weight: cannot infer Llama-3 rope scaling parameters")
    s = (1.0 / divisors[blended] - 1.0 / factor) / (1.0 - 1.0 / factor)
    slope, intercept = np.polyfit(inv_freq[blended] / (2 * math.pi), s, 1)
    context = int(original or 8192)
    low = -intercept * context / slope
    high = context / slope + low
    return {
        "rope_type": "llama3",
        "factor": round(factor, 6),
        "low_freq_factor": round(float(low), 4),
        "high_freq_factor": round(float(high), 4),
        "original_max_position_embeddings": context,
    }


def _unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation (weights `[out, in]` or biases `[out]`).

    The converter views each head's `head_dim` rows as `[2 halves, head_dim // 2]` and transposes
    to `[head_dim // 2, 2]`, interleaving the two halves. Undo: view as `[pairs, 2]`, transpose.
    """
    head_dim = w.shape[0] // n_heads
    rest = w.shape[1:]
    # [heads, head_dim // 2, 2, *rest] -> [heads, 2, head_dim // 2, *rest]
    w = w.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2)
    return np.ascontiguousarray(w.reshape(n_heads * head_dim, *rest))


def _hf_tensors(
    path: str, arch: str, config: dict, raw: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Renames llama.cpp tensors to HF names and undoes the q/k rotary permutation."""
    permuted = _ARCHITECTURES[arch][2]
    out = {}
    for name, value in raw.items():
        if name == "rope_freqs.weight":  # folded into config["rope_scaling"]
            continue
        match = _LAYER_RE.match(name)
        stem, _, suffix = name.rpartition(".")
        if match:
            layer, stem, suffix = match.groups()
            if stem not in _LAYER_NAMES:
                raise ValueError(f"{path}: unknown tensor {name!r} for architecture {arch!r}")
            if permuted and stem in ("attn_q", "attn_k"):
                heads = config["num_attention_heads" if stem == "attn_q" else "num_key_value_heads"]
                value = _unpermute_rope_rows(value, heads)
            out[f"model.layers.{layer}.{_LAYER_NAMES[stem]}.{suffix}"] = value
        elif stem in _GLOBAL_NAMES:
            out[f"{_GLOBAL_NAMES[stem]}.{suffix}"] = value
        else:
            raise ValueError(f"{path}: unknown tensor {name!r} for architecture {arch!r}")
    return out
