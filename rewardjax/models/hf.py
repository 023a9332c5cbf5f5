"""Hugging Face checkpoints <-> rewardjax parameter trees.

Reads a local checkpoint directory (``config.json`` plus ``model.safetensors`` or a sharded
``model.safetensors.index.json``) without torch, and maps HF tensor names to the pure nested
dict of :func:`flax.nnx.state(model).to_pure_dict()`: per-layer tensors are stacked on a leading
layer axis and torch ``Linear`` weights ``[out, in]`` are transposed to kernels ``[in, out]``.
The inverse maps exist for exporting a trained model back to ``transformers``.

The safetensors reader is a few lines over ``mmap`` because the ``safetensors`` numpy backend
cannot return bfloat16, the dtype most released checkpoints use.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from typing import Any

import ml_dtypes
import numpy as np

from rewardjax.models.bert import BertConfig
from rewardjax.models.llama import LlamaConfig

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json+merges.txt")
# Files that configure a tokenizer but hold no vocabulary: alone they load as a tokenizer of
# the special tokens only, where every word is [UNK].
_TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json",
                         "added_tokens.json")

# Tensors a backbone legitimately does not use: rotary caches, buffers, task heads, poolers.
_IGNORED = re.compile(
    r"(^|\.)rotary_emb\.inv_freq$|(^|\.)position_ids$|(^|\.)pooler\.|^score\.|^classifier\.|"
    r"^cls\.|^v_head\.")


# ----------------------------------------------------------------------------- file reading


# The safetensors reference implementation's cap: a larger header is corrupt or hostile, and
# reading it would allocate that much memory before any check could run.
MAX_HEADER_BYTES = 100_000_000


class Tensors(dict):
    """Name -> array, plus ``files``: name -> the file each tensor came from (for messages)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.files: dict[str, str] = {}


def _read_header(path: str, f, size: int) -> tuple[dict, int]:
    """The parsed JSON header and its length, validated before anything is allocated."""
    if size < 8:
        raise ValueError(f"{path}: not a safetensors file ({size} bytes, shorter than the "
                         "8-byte header length)")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > size - 8:
        raise ValueError(f"{path}: not a safetensors file or truncated: header length {n} "
                         f"bytes exceeds the {size - 8} bytes after the length field")
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"{path}: safetensors header of {n} bytes exceeds the "
                         f"{MAX_HEADER_BYTES}-byte limit")
    try:
        header = json.loads(f.read(n))
    except (ValueError, RecursionError) as e:  # RecursionError: deeply nested crafted JSON
        raise ValueError(f"{path}: not a safetensors file ({e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (header is a JSON "
                         f"{type(header).__name__}, not an object)")
    return header, n


_MAX_DIM = 2 ** 62  # bound on a safetensors dimension and element count (numpy's is 2**63)


def _tensor_entry(path: str, name: str, info, data_size: int) -> tuple[np.dtype, tuple, int, int]:
    """``(dtype, shape, start, end)`` of one header entry, checked against the data section.

    Sizes are Python ints, so a crafted shape cannot overflow into a plausible byte count.
    """
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise ValueError(f"{where}: header entry is a {type(info).__name__}, not an object")
    dtype_name, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype_name, str) or dtype_name not in _ST_DTYPES:
        raise ValueError(f"{where} has unsupported dtype {dtype_name!r} "
                         f"(known: {', '.join(_ST_DTYPES)})")
    def is_count(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    if not isinstance(shape, list) or not all(is_count(d) for d in shape):
        raise ValueError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(is_count(o) for o in offsets)):
        raise ValueError(f"{where}: data_offsets {offsets!r} is not [start, end] with "
                         "non-negative integers")
    start, end = offsets
    if end < start or end > data_size:
        raise ValueError(f"{where}: data_offsets [{start}, {end}] outside the data section "
                         f"of {data_size} bytes (truncated or corrupt file)")
    dtype = np.dtype(_ST_DTYPES[dtype_name])
    if math.prod(shape) * dtype.itemsize != end - start:
        raise ValueError(f"{where}: shape {tuple(shape)} of {dtype_name} needs "
                         f"{math.prod(shape) * dtype.itemsize} bytes but data_offsets span "
                         f"{end - start}")
    # A zero-size tensor passes the byte count whatever its other dimensions; numpy refuses
    # one past intp (or a size past it) with an error naming neither file nor tensor.
    if any(d >= _MAX_DIM for d in shape) or math.prod(d for d in shape if d) >= _MAX_DIM:
        raise ValueError(f"{where}: shape {shape!r} has a dimension or element count of "
                         "2**62 or more (corrupt or crafted header)")
    return dtype, tuple(shape), start, end


def read_safetensors(path: str | os.PathLike) -> Tensors:
    """All tensors of one ``.safetensors`` file; floating tensors converted to float32.

    Raises:
      ValueError: one line naming the file (and the tensor) for a malformed or crafted file:
        a header longer than the file, unknown dtypes, offsets outside the data section, a
        shape that disagrees with its byte span.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header, n = _read_header(path, f, size)
    data_size = size - 8 - n
    entries = {name: _tensor_entry(path, name, info, data_size)
               for name, info in header.items() if name != "__metadata__"}
    # np.memmap refuses a zero-length map (a file of empty tensors only).
    data = (np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if data_size
            else np.empty(0, np.uint8))
    out = Tensors()
    for name, (dtype, shape, start, end) in entries.items():
        arr = np.frombuffer(data[start:end], dtype=dtype).reshape(shape)
        floating = header[name]["dtype"].startswith(("F", "BF"))  # ml_dtypes are not kind "f"
        out[name] = arr.astype(np.float32) if floating else np.array(arr)
        out.files[name] = path
    return out


def load_config(directory: str | os.PathLike) -> dict:
    """The checkpoint's ``config.json`` as a dict."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: no config.json (not an HF checkpoint directory)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_tensors(directory: str | os.PathLike) -> Tensors:
    """All tensors of a checkpoint directory (single file or sharded index), float32."""
    directory = os.fspath(directory)
    index = os.path.join(directory, "model.safetensors.index.json")
    single = os.path.join(directory, "model.safetensors")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        out = Tensors()
        for shard in sorted(set(weight_map.values())):
            shard_path = os.path.join(directory, shard)
            if not os.path.isfile(shard_path):
                raise FileNotFoundError(f"{index} lists shard {shard!r} which does not exist")
            tensors = read_safetensors(shard_path)
            out.update(tensors)
            out.files.update(tensors.files)
        missing = sorted(set(weight_map) - set(out))
        if missing:
            raise ValueError(f"{index}: tensors {missing[:5]} are listed but not in any shard")
        return out
    if os.path.isfile(single):
        return read_safetensors(single)
    present = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
    hint = (" (found PyTorch .bin weights: re-save them with safe_serialization=True)"
            if any(p.endswith(".bin") for p in present) else "")
    raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json"
                            f"{hint}; files present: {present[:20]}")


def tokenizer_files(directory: str | os.PathLike) -> list[str]:
    """The tokenizer files present in ``directory``, vocabulary and side files alike."""
    names = [n for f in _TOKENIZER_FILES + _TOKENIZER_SIDE_FILES for n in f.split("+")]
    return [n for n in dict.fromkeys(names) if os.path.isfile(os.path.join(directory, n))]


def has_vocabulary(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a tokenizer vocabulary (one of ``_TOKENIZER_FILES``)."""
    return any(all(os.path.isfile(os.path.join(directory, n)) for n in f.split("+"))
               for f in _TOKENIZER_FILES)


def load_tokenizer(directory: str | os.PathLike, vocab_size: int | None = None):
    """``AutoTokenizer`` from local files only, or None when the directory has no vocabulary.

    A ``tokenizer_config.json`` (or ``special_tokens_map.json``) without a vocabulary file is no
    tokenizer. With ``vocab_size`` (the checkpoint's embedding rows), a tokenizer of fewer than
    half as many tokens is a ValueError: it is not the checkpoint's (files missing or mixed up).
    """
    if not has_vocabulary(directory):
        return None
    from transformers import AutoTokenizer  # heavy import, only when needed

    tokenizer = AutoTokenizer.from_pretrained(os.fspath(directory), local_files_only=True)
    if vocab_size and len(tokenizer) < vocab_size // 2:
        raise ValueError(
            f"{os.fspath(directory)}: the tokenizer has {len(tokenizer)} tokens but the "
            f"checkpoint's config.json has vocab_size {vocab_size}; the tokenizer files "
            f"({', '.join(tokenizer_files(directory))}) do not hold the checkpoint's vocabulary "
            "(a missing or truncated vocabulary file?); copy the tokenizer files that came "
            "with the checkpoint")
    return tokenizer


def save_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray],
                     metadata: dict[str, str] | None = None) -> None:
    """Writes ``tensors`` (numpy or jax arrays) as one ``.safetensors`` file."""
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
    save_file(arrays, os.fspath(path), metadata=metadata or {"format": "pt"})


def save_checkpoint(directory: str | os.PathLike, hf_config: dict,
                    tensors: dict[str, np.ndarray]) -> None:
    """Writes ``config.json`` and ``model.safetensors`` into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2)
    save_safetensors(os.path.join(directory, "model.safetensors"), tensors)


# ----------------------------------------------------------------------------- name mapping
# An entry is (path in the pure dict, HF name suffix, transpose?, shape in our layout).


def _llama_entries(c: LlamaConfig):
    d, q, kv, m = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, \
        c.intermediate_size
    layer = [
        (("attn_norm", "scale"), "input_layernorm.weight", False, (d,)),
        (("attn", "q_proj", "kernel"), "self_attn.q_proj.weight", True, (d, q)),
        (("attn", "k_proj", "kernel"), "self_attn.k_proj.weight", True, (d, kv)),
        (("attn", "v_proj", "kernel"), "self_attn.v_proj.weight", True, (d, kv)),
        (("attn", "o_proj", "kernel"), "self_attn.o_proj.weight", True, (q, d)),
        (("mlp_norm", "scale"), "post_attention_layernorm.weight", False, (d,)),
        (("mlp", "gate_proj", "kernel"), "mlp.gate_proj.weight", True, (d, m)),
        (("mlp", "up_proj", "kernel"), "mlp.up_proj.weight", True, (d, m)),
        (("mlp", "down_proj", "kernel"), "mlp.down_proj.weight", True, (m, d)),
    ]
    if c.attention_bias:
        layer += [(("attn", f"{p}_proj", "bias"), f"self_attn.{p}_proj.bias", False, (n,))
                  for p, n in (("q", q), ("k", kv), ("v", kv))]
    if c.attention_out_bias:
        layer.append((("attn", "o_proj", "bias"), "self_attn.o_proj.bias", False, (d,)))
    if c.qk_norm:
        layer += [(("attn", f"{p}_norm", "scale"), f"self_attn.{p}_norm.weight", False,
                   (c.head_dim,)) for p in ("q", "k")]
    top = [(("embed", "embedding"), "embed_tokens.weight", False, (c.vocab_size, d)),
           (("final_norm", "scale"), "norm.weight", False, (d,))]
    return top, layer


def _bert_entries(c: BertConfig):
    d, m = c.hidden_size, c.intermediate_size
    top = [
        (("embeddings", "word", "embedding"), "embeddings.word_embeddings.weight", False,
         (c.vocab_size, d)),
        (("embeddings", "position", "embedding"), "embeddings.position_embeddings.weight",
         False, (c.max_position_embeddings, d)),
        (("embeddings", "token_type", "embedding"), "embeddings.token_type_embeddings.weight",
         False, (c.type_vocab_size, d)),
        (("embeddings", "norm", "scale"), "embeddings.LayerNorm.weight", False, (d,)),
        (("embeddings", "norm", "bias"), "embeddings.LayerNorm.bias", False, (d,)),
    ]
    layer = []
    for ours, theirs in (("q_proj", "attention.self.query"), ("k_proj", "attention.self.key"),
                         ("v_proj", "attention.self.value"),
                         ("o_proj", "attention.output.dense")):
        layer += [(("attn", ours, "kernel"), f"{theirs}.weight", True, (d, d)),
                  (("attn", ours, "bias"), f"{theirs}.bias", False, (d,))]
    layer += [
        (("attn_norm", "scale"), "attention.output.LayerNorm.weight", False, (d,)),
        (("attn_norm", "bias"), "attention.output.LayerNorm.bias", False, (d,)),
        (("up_proj", "kernel"), "intermediate.dense.weight", True, (d, m)),
        (("up_proj", "bias"), "intermediate.dense.bias", False, (m,)),
        (("down_proj", "kernel"), "output.dense.weight", True, (m, d)),
        (("down_proj", "bias"), "output.dense.bias", False, (d,)),
        (("mlp_norm", "scale"), "output.LayerNorm.weight", False, (d,)),
        (("mlp_norm", "bias"), "output.LayerNorm.bias", False, (d,)),
    ]
    return top, layer


def _find_prefix(tensors: dict, anchor: str, family: str) -> str:
    for name in tensors:
        if name == anchor or name.endswith("." + anchor):
            return name[: len(name) - len(anchor)]
    raise ValueError(f"not a {family} checkpoint: no tensor named '{anchor}' under any prefix "
                     f"(first names: {sorted(tensors)[:8]})")


def _set(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple):
    for key in path:
        if key not in tree:
            raise KeyError(f"parameter {'/'.join(path)} missing from the parameter tree")
        tree = tree[key]
    return tree


class _Taker:
    """Pops named tensors, checking presence and shape, remembering what was used."""

    def __init__(self, tensors: dict[str, np.ndarray], family: str):
        self.tensors, self.family, self.used = tensors, family, set()

    def __call__(self, name: str, transpose: bool, shape: tuple) -> np.ndarray:
        if name not in self.tensors:
            raise ValueError(f"{self.family} checkpoint is missing tensor {name!r}")
        value = np.asarray(self.tensors[name])
        if value.dtype.kind in "biu":
            # Casting would turn quantized codes or a mislabelled buffer into garbage weights
            # that load without complaint (non-parameter buffers never get here: _IGNORED).
            where = getattr(self.tensors, "files", {}).get(name)
            raise ValueError(
                f"{where + ': ' if where else ''}{self.family} checkpoint tensor {name!r} has "
                f"integer dtype {value.dtype} where a floating-point parameter is expected "
                "(quantized or corrupt checkpoint?); dequantize it to float first")
        value = value.astype(np.float32, copy=False)
        value = value.T if transpose else value
        if value.shape != tuple(shape):
            got = value.T.shape if transpose else value.shape
            want = tuple(reversed(shape)) if transpose else tuple(shape)
            raise ValueError(f"tensor {name!r} has shape {got}, expected {want} from the config")
        self.used.add(name)
        return value

    def check_unused(self, strict: bool, allowed=()) -> None:
        extra = sorted(k for k in self.tensors if k not in self.used and k not in allowed
                       and not _IGNORED.search(k))
        if extra and strict:
            raise ValueError(f"{self.family} checkpoint has {len(extra)} unexpected tensors, "
                             f"e.g. {extra[:8]} (config/checkpoint mismatch?)")


def _from_hf(top, layer, num_layers, prefix, layer_prefix, taker) -> dict:
    params: dict = {}
    for path, name, transpose, shape in top:
        _set(params, path, taker(prefix + name, transpose, shape))
    for path, name, transpose, shape in layer:
        stacked = [taker(f"{prefix}{layer_prefix}{i}.{name}", transpose, shape)
                   for i in range(num_layers)]
        _set(params, ("layers",) + path, np.stack(stacked))
    return params


def _to_hf(top, layer, num_layers, prefix, layer_prefix, params) -> dict[str, np.ndarray]:
    out = {}
    for path, name, transpose, _ in top:
        value = np.asarray(_get(params, path), dtype=np.float32)
        out[prefix + name] = np.ascontiguousarray(value.T if transpose else value)
    for path, name, transpose, _ in layer:
        stacked = np.asarray(_get(params, ("layers",) + path), dtype=np.float32)
        for i in range(num_layers):
            value = stacked[i].T if transpose else stacked[i]
            out[f"{prefix}{layer_prefix}{i}.{name}"] = np.ascontiguousarray(value)
    return out


def llama_params_from_hf(config: LlamaConfig, tensors: dict[str, np.ndarray], *,
                         strict: bool = True) -> dict:
    """HF Llama/Qwen2/Mistral tensors -> the pure parameter dict of :class:`Llama`.

    Args:
      config: the architecture the tensors must match.
      tensors: HF names (any prefix such as ``model.``) to arrays in torch layout.
      strict: raise on tensors that are neither used nor known to be irrelevant.
    """
    prefix = _find_prefix(tensors, "embed_tokens.weight", "Llama-family")
    taker = _Taker(tensors, "Llama-family")
    top, layer = _llama_entries(config)
    params = _from_hf(top, layer, config.num_layers, prefix, "layers.", taker)
    allowed = set()
    if config.tie_embeddings or not config.lm_head:
        allowed.add("lm_head.weight")  # a tied copy, or a head the model was built without
    elif "lm_head.weight" not in tensors:
        raise ValueError("checkpoint has no 'lm_head.weight' but tie_word_embeddings is false")
    else:
        _set(params, ("lm_head", "kernel"),
             taker("lm_head.weight", True, (config.hidden_size, config.vocab_size)))
    taker.check_unused(strict, allowed)
    return params


def llama_params_to_hf(config: LlamaConfig, params: dict, *, prefix: str = "model.",
                       include_lm_head: bool = True) -> dict[str, np.ndarray]:
    """Inverse of :func:`llama_params_from_hf` (float32 numpy arrays in torch layout)."""
    top, layer = _llama_entries(config)
    out = _to_hf(top, layer, config.num_layers, prefix, "layers.", params)
    if include_lm_head and config.lm_head and not config.tie_embeddings:
        out["lm_head.weight"] = np.ascontiguousarray(
            np.asarray(_get(params, ("lm_head", "kernel")), dtype=np.float32).T)
    return out


def _rename_legacy_bert(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Old TF-converted BERT checkpoints name LayerNorm parameters gamma/beta."""
    if not any(k.endswith((".gamma", ".beta")) for k in tensors):
        return tensors
    return {re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k)): v
            for k, v in tensors.items()}


def bert_params_from_hf(config: BertConfig, tensors: dict[str, np.ndarray], *,
                        strict: bool = True) -> dict:
    """HF BERT tensors (prefix ``bert.`` or none) -> the pure parameter dict of :class:`Bert`.

    The pooler, MLM/NSP heads and classifier are ignored.
    """
    tensors = _rename_legacy_bert(tensors)
    prefix = _find_prefix(tensors, "embeddings.word_embeddings.weight", "BERT")
    taker = _Taker(tensors, "BERT")
    top, layer = _bert_entries(config)
    params = _from_hf(top, layer, config.num_layers, prefix, "encoder.layer.", taker)
    taker.check_unused(strict)
    return params


def bert_params_to_hf(config: BertConfig, params: dict, *, prefix: str = "") -> dict:
    """Inverse of :func:`bert_params_from_hf` (use ``prefix="bert."`` for task models)."""
    top, layer = _bert_entries(config)
    return _to_hf(top, layer, config.num_layers, prefix, "encoder.layer.", params)


def bert_pooler_from_hf(tensors: dict[str, np.ndarray]) -> dict | None:
    """A BERT checkpoint's pretrained pooler as ``{"dense_kernel" [in, out], "dense_bias"}``
    (the :class:`~rewardjax.heads.scalar.PoolerHead` layout), or None if it has none."""
    for prefix in ("", "bert."):
        w = tensors.get(prefix + "pooler.dense.weight")
        b = tensors.get(prefix + "pooler.dense.bias")
        if w is not None and b is not None:
            return {"dense_kernel": np.ascontiguousarray(np.asarray(w, np.float32).T),
                    "dense_bias": np.asarray(b, np.float32)}
    return None


def params_from_hf(config: Any, tensors: dict[str, np.ndarray], *, strict: bool = True) -> dict:
    """Dispatches on the config type."""
    if isinstance(config, LlamaConfig):
        return llama_params_from_hf(config, tensors, strict=strict)
    if isinstance(config, BertConfig):
        return bert_params_from_hf(config, tensors, strict=strict)
    raise TypeError(f"no HF mapping for config type {type(config).__name__}")


def params_to_hf(config: Any, params: dict, **kwargs) -> dict[str, np.ndarray]:
    """Dispatches on the config type."""
    if isinstance(config, LlamaConfig):
        return llama_params_to_hf(config, params, **kwargs)
    if isinstance(config, BertConfig):
        return bert_params_to_hf(config, params, **kwargs)
    raise TypeError(f"no HF mapping for config type {type(config).__name__}")
