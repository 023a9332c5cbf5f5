"""Weight averaging of reward models (WARM, Ramé et al. 2024) as pytree operations.

WARM fine-tunes M reward models from one shared initialisation and averages their *weights*
(not their predictions): one model at inference cost 1 that is more robust than each member.
Averaging is only meaningful for members in one linearly connected basin, i.e. sharing the
pre-trained init; ``interpolate`` / ``interpolation_path`` trace the straight line between two
members to check that (the reward accuracy along the path should have no barrier).

Parameters are any pytree: ``flax.nnx.State`` (from ``nnx.split`` / ``nnx.state``) or nested
dicts of arrays. Two forms of an ensemble are accepted:

- **stacked** (the main form, DESIGN §2): one pytree whose every leaf has a leading member axis
  ``M``, as produced by ``stack`` or by ``jax.vmap``-ed init; this is what a vmapped ensemble
  trains and evaluates.
- **a Python ``list`` of member pytrees** (as returned by ``unstack``). A top-level ``list`` is
  always read as this form; a stacked pytree must not be a bare list (wrap it in a dict).

Non-float leaves (integer step counts, RNG counters, PRNG keys, booleans) are not averaged or
interpolated: their mean is meaningless (or not even an integer), so they are taken from member
0 (``a`` for ``interpolate``). Float leaves are accumulated in at least float32 and cast back to
the leaf's own dtype, so bf16 members average without bf16 rounding at every term.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def _is_float(x: Any) -> bool:
    # PRNG key arrays have an extended dtype that is not a subtype of inexact, so they (like
    # ints and bools) count as non-float and are copied from member 0.
    dtype = x.dtype if hasattr(x, "dtype") else jnp.asarray(x).dtype
    return jnp.issubdtype(dtype, jnp.inexact)


def _acc_dtype(x: jax.Array) -> jnp.dtype:
    # At least float32 (bf16/f16 -> f32); float64 under x64 stays float64.
    return jnp.promote_types(x.dtype, jnp.float32)


def num_members(stacked: PyTree) -> int:
    """Size M of the leading member axis, shared by every leaf of a stacked pytree.

    Args:
      stacked: a pytree whose leaves all have a leading member axis.

    Returns:
      M.

    Raises:
      ValueError: the pytree has no leaves, a leaf is a scalar, or leading sizes differ.
    """
    leaves = jax.tree_util.tree_leaves_with_path(stacked)
    if not leaves:
        raise ValueError("stacked pytree has no leaves")
    sizes = {}
    for path, leaf in leaves:
        shape = jnp.shape(leaf)
        if not shape:
            raise ValueError(
                f"leaf {jax.tree_util.keystr(path)} is a scalar: a stacked pytree needs a "
                "leading member axis on every leaf (use stack() on a list of members)"
            )
        sizes.setdefault(shape[0], jax.tree_util.keystr(path))
    if len(sizes) > 1:
        detail = ", ".join(f"{p}: {m}" for m, p in sizes.items())
        raise ValueError(f"leaves disagree on the member axis size ({detail})")
    return next(iter(sizes))


def _check_same_structure(trees: Sequence[PyTree]) -> None:
    ref = jax.tree.structure(trees[0])
    for i, tree in enumerate(trees[1:], start=1):
        if jax.tree.structure(tree) != ref:
            raise ValueError(
                f"member {i} has a different pytree structure from member 0:\n"
                f"  member 0: {ref}\n  member {i}: {jax.tree.structure(tree)}"
            )


def stack(trees: Sequence[PyTree]) -> PyTree:
    """Stacks M member pytrees into one pytree with a leading member axis on every leaf.

    Args:
      trees: non-empty sequence of pytrees with identical structure and leaf shapes.

    Returns:
      A pytree of the same type (e.g. ``nnx.State``) with leaves ``[M, ...]``.

    Raises:
      ValueError: ``trees`` is empty or the structures differ.
    """
    trees = list(trees)
    if not trees:
        raise ValueError("stack() needs at least one member")
    _check_same_structure(trees)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(stacked: PyTree, i: int) -> PyTree:
    """Member ``i`` of a stacked pytree (negative ``i`` counts from the end).

    Args:
      stacked: pytree with a leading member axis on every leaf.
      i: member index, ``-M <= i < M``.

    Returns:
      The member's pytree (leading axis removed).

    Raises:
      IndexError: ``i`` is out of range (jnp indexing would silently clamp it).
    """
    m = num_members(stacked)
    if not -m <= i < m:
        raise IndexError(f"member index {i} out of range for {m} members")
    return jax.tree.map(lambda x: x[i], stacked)


def unstack(stacked: PyTree) -> list[PyTree]:
    """Splits a stacked pytree into a list of M member pytrees (inverse of ``stack``).

    Args:
      stacked: pytree with a leading member axis on every leaf.

    Returns:
      List of M pytrees of the same type.
    """
    return [member(stacked, i) for i in range(num_members(stacked))]


def _normalised_weights(weights: jax.Array | Sequence[float], m: int) -> jax.Array:
    """Validates weights of shape ``[m]`` and scales them to sum to 1 (float32)."""
    w = jnp.asarray(weights, jnp.float32)
    if w.shape != (m,):
        raise ValueError(f"weights must have shape ({m},) for {m} members, got {w.shape}")
    try:
        w_np = np.asarray(w)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        # Traced under jit: values are unknown here, so validation is the caller's job.
        w_np = None
    if w_np is not None:
        if not np.all(np.isfinite(w_np)):
            raise ValueError(f"weights must be finite, got {w_np.tolist()}")
        if np.any(w_np < 0):
            raise ValueError(f"weights must be non-negative, got {w_np.tolist()}")
        if not np.any(w_np > 0):
            raise ValueError(f"weights must not all be zero, got {w_np.tolist()}")
    return w / jnp.sum(w)


def _weighted_leaf_stacked(x: jax.Array, w: jax.Array) -> jax.Array:
    if not _is_float(x):
        return x[0]
    acc = _acc_dtype(x)
    # Elementwise multiply + sum rather than tensordot: a dot may run at reduced (bf16-pass)
    # precision on accelerators, which would defeat the float32 accumulation.
    w = w.astype(acc).reshape((-1,) + (1,) * (x.ndim - 1))  # [M, 1, ..., 1]
    return jnp.sum(w * x.astype(acc), axis=0).astype(x.dtype)


def _weighted_leaf_list(w: jax.Array, *xs: jax.Array) -> jax.Array:
    x0 = jnp.asarray(xs[0])
    if not _is_float(x0):
        return xs[0]
    acc = _acc_dtype(x0)
    # Summing member by member avoids materialising an [M, ...] stacked copy of the model.
    total = w[0].astype(acc) * x0.astype(acc)
    for i, x in enumerate(xs[1:], start=1):
        total = total + w[i].astype(acc) * jnp.asarray(x).astype(acc)
    return total.astype(x0.dtype)


def weighted_average(
    members: PyTree | list[PyTree], weights: jax.Array | Sequence[float]
) -> PyTree:
    """Weighted average of member weights, ``Σ_i w_i θ_i / Σ_i w_i``.

    Args:
      members: a stacked pytree (leading member axis M) or a ``list`` of M member pytrees.
      weights: ``[M]`` non-negative weights, not all zero; normalised to sum to 1. Checked
        when concrete; under ``jax.jit`` with traced weights they are only normalised.

    Returns:
      One pytree of the member type: float leaves averaged (float32 accumulation, the leaf's
      dtype), non-float leaves taken from member 0.

    Raises:
      ValueError: wrong weight shape; negative, non-finite or all-zero weights; mismatched
        member structures.
    """
    if isinstance(members, list):
        if not members:
            raise ValueError("weighted_average() needs at least one member")
        _check_same_structure(members)
        w = _normalised_weights(weights, len(members))
        return jax.tree.map(lambda *xs: _weighted_leaf_list(w, *xs), *members)
    w = _normalised_weights(weights, num_members(members))
    return jax.tree.map(lambda x: _weighted_leaf_stacked(x, w), members)


def uniform_average(members: PyTree | list[PyTree]) -> PyTree:
    """WARM's final model: the uniform average of the members' weights.

    Args:
      members: a stacked pytree (leading member axis M) or a ``list`` of M member pytrees.

    Returns:
      One pytree of the member type: float leaves averaged (float32 accumulation, the leaf's
      dtype), non-float leaves taken from member 0.
    """
    m = len(members) if isinstance(members, list) else num_members(members)
    return weighted_average(members, jnp.ones((m,), jnp.float32))


def interpolate(a: PyTree, b: PyTree, t: float | jax.Array) -> PyTree:
    """Linear interpolation ``(1 - t)·a + t·b`` between two members' weights.

    Written as ``(1 - t)·a + t·b`` rather than ``a + t·(b - a)`` so both endpoints are exact:
    t = 0 returns ``a`` and t = 1 returns ``b`` bit for bit (for finite weights). ``t`` outside
    [0, 1] extrapolates; it may be a traced value.

    Args:
      a: first member pytree (e.g. ``member(stacked, 0)``).
      b: second member pytree, same structure as ``a``.
      t: position along the line.

    Returns:
      A pytree like ``a``: float leaves interpolated in float32 and cast to ``a``'s leaf dtype,
      non-float leaves taken from ``a``.

    Raises:
      ValueError: ``a`` and ``b`` have different structures.
    """
    _check_same_structure([a, b])
    t = jnp.asarray(t, jnp.float32)

    def leaf(x, y):
        x = jnp.asarray(x)
        if not _is_float(x):
            return x
        acc = _acc_dtype(x)
        tt = t.astype(acc)
        return ((1 - tt) * x.astype(acc) + tt * jnp.asarray(y).astype(acc)).astype(x.dtype)

    return jax.tree.map(leaf, a, b)


def interpolation_path(a: PyTree, b: PyTree, num: int) -> tuple[list[float], list[PyTree]]:
    """Evenly spaced points on the line from ``a`` (t = 0) to ``b`` (t = 1).

    For a linear mode-connectivity curve: evaluate each returned tree and plot against ``t``.

    Args:
      a: first member pytree.
      b: second member pytree, same structure.
      num: number of points, at least 2 (both endpoints included).

    Returns:
      ``(ts, trees)``: the ``num`` t values as Python floats and the interpolated pytrees.

    Raises:
      ValueError: ``num < 2``.
    """
    if num < 2:
        raise ValueError(f"interpolation_path needs num >= 2 (both endpoints), got {num}")
    ts = np.linspace(0.0, 1.0, num).tolist()
    return ts, [interpolate(a, b, t) for t in ts]
