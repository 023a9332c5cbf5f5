"""Putting LoRA into a model by path regex, taking it out again, and selecting what to train.

Typical use::

    model = build_reward_model(registry.create(spec), spec.hidden_size, is_causal=True)
    apply_lora(model, LoRAConfig(rank=8, alpha=16), seed=0)   # in place
    graphdef, params, frozen = split_model(model, trainable_regex_for_lora())
    ...train params...
    plain = merge_lora(model)                                  # for HF export

Paths are ``/``-joined attribute names, e.g. ``backbone/layers/attn/q_proj``; stacked decoder
layers have no index in the path (their layer axis is a leading array axis), so one match adapts
the projection of every layer.

The reward head is always trained together with the adapters and always saved with them
(:func:`lora_state`, :func:`trainable_regex_for_lora`): a LoRA expert is "adapters + its head".
"""

from __future__ import annotations

import dataclasses
import re
import zlib

import jax
from flax import nnx

from rewardjax.lora.layers import LoRALinear

# The reward model keeps its head under this attribute (RewardModel.head).
HEAD_PREFIX = "head/"


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Where and how to add adapters.

    Attributes:
      rank: inner dimension r of ``A [in, r]`` and ``B [r, out]``.
      alpha: the update is scaled by ``alpha / rank``.
      dropout: LoRA input dropout (only with an explicit rng; see :mod:`rewardjax.lora.layers`).
      targets: regex, ``re.search``-ed against module paths like ``backbone/layers/attn/q_proj``.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = r"(q_proj|v_proj)$"

    def __post_init__(self):
        if int(self.rank) <= 0:
            raise ValueError(f"lora.rank must be a positive integer, got {self.rank}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ValueError(f"lora.targets={self.targets!r} is not a valid regex: {e}") from e

    @property
    def scale(self) -> float:
        return float(self.alpha) / int(self.rank)


def _path(parts) -> str:
    return "/".join(str(p) for p in parts)


def _modules_of(model: nnx.Module, cls: type) -> list[tuple[tuple, nnx.Module]]:
    """``(path parts, module)`` for every module of type ``cls`` (each shared module once)."""
    return [(tuple(p), m) for p, m in nnx.iter_graph(model) if isinstance(m, cls)]


def linear_paths(model: nnx.Module) -> list[str]:
    """Paths of every plain ``nnx.Linear`` in ``model`` (the candidates for :func:`apply_lora`)."""
    return [_path(p) for p, _ in _modules_of(model, nnx.Linear)]


def lora_paths(model: nnx.Module) -> list[str]:
    """Paths of every :class:`LoRALinear` in ``model``."""
    return [_path(p) for p, _ in _modules_of(model, LoRALinear)]


def _parent_and_key(model: nnx.Module, parts: tuple):
    node = model
    for key in parts[:-1]:
        node = getattr(node, key) if isinstance(key, str) and isinstance(node, nnx.Module) \
            else node[key]
    return node, parts[-1]


def _replace(model: nnx.Module, parts: tuple, new: nnx.Module) -> None:
    if not parts:
        raise ValueError("the root module itself cannot be replaced in place; wrap it first")
    parent, key = _parent_and_key(model, parts)
    if isinstance(key, str) and isinstance(parent, nnx.Module):
        setattr(parent, key, new)
    else:
        parent[key] = new


def _as_key(seed) -> jax.Array:
    if isinstance(seed, jax.Array) and (jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key)
                                        or seed.shape == (2,)):
        return seed  # a typed key or a raw uint32[2] key
    return jax.random.key(int(seed))


def apply_lora(model: nnx.Module, cfg: LoRAConfig, *, seed: int | jax.Array) -> list[str]:
    """Replaces every ``nnx.Linear`` whose path matches ``cfg.targets`` by a :class:`LoRALinear`.

    Works in place and on stacked layers: a kernel ``[layers, in, out]`` gets adapters
    ``A [layers, in, r]`` and ``B [layers, r, out]``, each layer initialised independently. Each
    target's ``A`` is drawn from ``fold_in(seed, crc32(path))``, so adding or removing other
    targets does not change it. May run inside ``nnx.eval_shape`` (abstract init).

    Args:
      model: any NNX module graph (e.g. a ``RewardModel``).
      cfg: rank, alpha, dropout and the target regex.
      seed: int seed or PRNG key for ``A``.

    Returns:
      The adapted module paths, sorted.

    Raises:
      ValueError: if nothing matches (the message lists available Linear paths).
    """
    rx = re.compile(cfg.targets)
    targets = [(p, m) for p, m in _modules_of(model, nnx.Linear) if rx.search(_path(p))]
    if not targets:
        adapted = [p for p in lora_paths(model) if rx.search(p)]
        if adapted:
            raise ValueError(f"lora.targets={cfg.targets!r} only matches modules that already "
                             f"have LoRA: {adapted[:8]}")
        available = linear_paths(model)
        raise ValueError(
            f"lora.targets={cfg.targets!r} matches no nnx.Linear; available Linear paths "
            f"({len(available)}): {available[:12]}")
    key = _as_key(seed)
    with nnx.use_eager_sharding(False):  # shardings are applied at the jit boundary
        for parts, linear in targets:
            path_key = jax.random.fold_in(key, zlib.crc32(_path(parts).encode()) & 0x7FFFFFFF)
            layer = LoRALinear(linear, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout,
                               rngs=nnx.Rngs(params=path_key))
            _replace(model, parts, layer)
    return sorted(_path(p) for p, _ in targets)


def merge_lora(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` with every adapter folded into its base kernel.

    The copy has plain ``nnx.Linear`` layers at the adapted paths (kernel ``W + A @ B * scale``,
    metadata kept) and no ``nnx.LoRAParam`` left, so HF export sees the original architecture.
    ``model`` itself is not modified (unchanged arrays are shared, not copied).
    """
    out = nnx.merge(*nnx.split(model))  # new variables and modules, same arrays
    for parts, layer in _modules_of(out, LoRALinear):
        _replace(out, parts, layer.to_linear())
    return out


def is_head_path(path) -> bool:
    return _path(getattr(k, "key", k) for k in path).startswith(HEAD_PREFIX)


def lora_filter(include_head: bool = True):
    """An ``nnx`` filter selecting LoRA params and (by default) the reward head's params."""

    def f(path, value) -> bool:
        if isinstance(value, nnx.LoRAParam):
            return True
        return include_head and isinstance(value, nnx.Param) and is_head_path(path)

    return f


def trainable_regex_for_lora(include_head: bool = True) -> str:
    """Path regex for ``train.trainable`` / ``split_model``: exactly the adapters (+ head).

    ``nnx.LoRAParam`` subclasses ``nnx.Param``, so ``split_model``'s Param-only filter keeps the
    adapters; the regex then excludes every base weight.
    """
    rx = r"(^|/)lora_[ab]$"
    return rx + r"|^head/" if include_head else rx


def lora_state(model: nnx.Module, include_head: bool = True) -> nnx.State:
    """The adapters (and by default the head): what an expert checkpoint holds."""
    return nnx.state(model, lora_filter(include_head))


def split_lora(model: nnx.Module, include_head: bool = True):
    """``(graphdef, adapter_state, rest_state)``; ``nnx.merge(graphdef, a, r)`` rebuilds it."""
    return nnx.split(model, lora_filter(include_head), ...)


def load_lora_state(model: nnx.Module, state: nnx.State) -> None:
    """Writes adapter (and head) values from :func:`lora_state` back into ``model`` in place."""
    nnx.update(model, state)
