"""Device mesh, logical axis rules and the shardings they imply.

Parameters and activations carry *logical* axis names (``batch``, ``seq``, ``embed``, ``mlp``,
``heads``, ``kv_heads``, ``vocab``, ``layers``, ``expert`` ...). A short list of rules maps each
logical name to zero or more mesh axes; the same model code then runs unsharded on a laptop and
data/FSDP/tensor-parallel on a pod, only the rules and the mesh shape change.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes. Batch is split over data *and* fsdp (FSDP is data parallel with
# sharded parameters); parameter "embed" dims are split over fsdp; tensor parallel splits the
# MLP hidden, the attention heads and the vocabulary.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("seq", None),
    ("layers", None),
    ("expert", None),
    ("member", None),
    ("head_dim", None),
    ("norm", None),
    ("lora_rank", None),
)

_local = threading.local()


def make_mesh(shape: dict[str, int] | Sequence[int] | None = None, devices=None) -> Mesh:
    """Builds a ``(data, fsdp, tensor)`` mesh.

    Args:
      shape: sizes per axis; one entry may be -1 (takes the remaining devices). ``None`` puts
        every device on ``data``.
      devices: devices to use (default: all).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if shape is None:
        sizes = [n, 1, 1]
    elif isinstance(shape, dict):
        unknown = set(shape) - set(MESH_AXES)
        if unknown:
            raise ValueError(
                f"unknown mesh axes {sorted(unknown)}; expected a subset of {MESH_AXES}"
            )
        sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    else:
        sizes = [int(s) for s in shape]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
    if -1 in sizes:
        known = int(np.prod([s for s in sizes if s != -1]))
        if n % known:
            raise ValueError(f"{n} devices cannot be split into mesh {sizes}")
        sizes[sizes.index(-1)] = n // known
    if int(np.prod(sizes)) != n:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, have {n}"
        )
    dev = np.asarray(devices).reshape(sizes)
    return Mesh(dev, MESH_AXES)


def _rules_dict(rules) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for name, axes in rules:
        if axes is None:
            out[name] = ()
        elif isinstance(axes, str):
            out[name] = (axes,)
        else:
            out[name] = tuple(axes)
    return out


def logical_to_spec(
    names: Sequence[str | None] | None,
    rules=DEFAULT_RULES,
    mesh: Mesh | None = None,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """Maps logical axis names to a ``PartitionSpec``.

    A mesh axis is used at most once (first dimension wins). With ``mesh`` and ``shape``, a
    dimension not divisible by its mesh axes' size is left replicated instead of failing, so
    odd vocabularies or head counts still run.
    """
    if names is None:
        return PartitionSpec()
    table = _rules_dict(rules)
    used: set[str] = set()
    spec = []
    for i, name in enumerate(names):
        axes = tuple(a for a in table.get(name, ()) if a not in used) if name else ()
        if mesh is not None:
            axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)
            if shape is not None and axes:
                size = int(np.prod([mesh.shape[a] for a in axes]))
                if shape[i] % size:
                    axes = ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules=DEFAULT_RULES) -> Iterator[None]:
    """Activates ``mesh`` and ``rules`` so :func:`constrain` shards activations."""
    prev = getattr(_local, "ctx", None)
    _local.ctx = (mesh, tuple(rules))
    try:
        yield
    finally:
        _local.ctx = prev


def current_rules():
    """The active ``(mesh, rules)`` pair or ``None``."""
    return getattr(_local, "ctx", None)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical names; a no-op outside :func:`axis_rules`."""
    ctx = current_rules()
    if ctx is None:
        return x
    mesh, rules = ctx
    spec = logical_to_spec(names, rules, mesh, x.shape)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _variable_names(v) -> tuple[str | None, ...] | None:
    meta = v.get_metadata() if hasattr(v, "get_metadata") else {}
    for key in ("out_sharding", "sharding_names", "sharding"):
        names = meta.get(key)
        if names is not None:
            return tuple(names)
    return None


def state_shardings(state, mesh: Mesh, rules=DEFAULT_RULES):
    """``NamedSharding`` for every leaf of an (abstract) ``nnx.State`` or pytree of arrays.

    Leaves of ``nnx.Variable`` type use their ``sharding_names`` metadata; other leaves and
    variables without names are replicated.
    """

    def one(leaf):
        if isinstance(leaf, nnx.Variable):
            names = _variable_names(leaf)
            value = leaf.get_value() if hasattr(leaf, "get_value") else leaf.value
            shape = getattr(value, "shape", ())
            if names is not None and len(names) != len(shape):
                names = None
            return leaf.replace(NamedSharding(mesh, logical_to_spec(names, rules, mesh, shape)))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
