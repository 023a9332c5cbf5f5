"""Weight averaging as optax-style ``(init, update)`` pairs of pure functions over pytrees.

Three pieces live here:

* :func:`ema` -- exponential moving average of parameters, ``θ̄ ← d·θ̄ + (1−d)·θ``, with an
  optional Adam-style bias correction.
* :func:`elastic_reset` -- Elastic Reset (Noukhovitch et al., 2023): an EMA of the policy that,
  every ``reset_every`` optimizer steps, replaces the online policy and is itself reset to the
  initial policy.

Linear interpolation of two pytrees lives in :mod:`rewardjax.ensembles.weights` (re-exported
here for convenience).

Everything works on arbitrary pytrees -- nested dicts of arrays or ``flax.nnx.State`` objects
from ``nnx.split`` -- using ``jax.tree.map`` only, so states are ordinary pytrees that can be
jitted, donated, sharded and checkpointed like parameters. No function here branches in Python
on a traced value, so a jitted step traces once and never recompiles as the count advances.

Dtypes: averages of floating leaves are kept in at least float32 (``promote_types(dtype,
float32)``), even when the parameters are bf16. With ``d ≈ 0.995`` each update moves the
average by ``0.005·(θ − θ̄)``, which is below bf16's resolution (8 bits of mantissa, relative
step 2⁻⁸ ≈ 0.004) for most weights, so a bf16 average would simply stop moving. Non-floating
leaves (integer counters, flags) are not averaged: the state carries their latest value.

Example::

    graphdef, params = nnx.split(model, nnx.Param)
    tx = elastic_reset(decay=0.995, reset_every=1000)
    er_state = tx.init(params)
    for batch in batches:
        params, opt_state = train_step(params, opt_state, batch)   # optimizer update first
        params, er_state = tx.update(params, er_state)             # then EMA / reset
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
# A decay is either a constant or a function of the number of updates applied so far.
Schedule = Callable[[jax.Array], jax.typing.ArrayLike]
ScalarOrSchedule = float | Schedule


def _avg_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """Storage dtype of an average: at least float32 for floating leaves, unchanged otherwise."""
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.promote_types(dtype, jnp.float32)
    return dtype


def _is_float(x: jax.Array) -> bool:
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def _to_avg(params: PyTree) -> PyTree:
    """Copies ``params`` into averaging precision (float leaves -> >= float32)."""
    return jax.tree.map(lambda p: jnp.asarray(p, _avg_dtype(jnp.asarray(p).dtype)), params)


def _ema_step(average: PyTree, params: PyTree, decay: jax.Array) -> PyTree:
    """One step ``θ̄ ← d·θ̄ + (1−d)·θ`` leaf by leaf, computed in the average's dtype."""

    def leaf(avg, p):
        if not _is_float(avg):
            return jnp.asarray(p, avg.dtype)  # counters etc.: carry the latest value
        d = decay.astype(avg.dtype)
        return d * avg + (1.0 - d) * jnp.asarray(p, avg.dtype)

    return jax.tree.map(leaf, average, params)


def _cast_like(tree: PyTree, like: PyTree) -> PyTree:
    """Casts every leaf of ``tree`` to the dtype of the matching leaf of ``like``."""
    return jax.tree.map(lambda x, ref: jnp.asarray(x, jnp.asarray(ref).dtype), tree, like)


# ----------------------------------------------------------------------------------------------
# EMA
# ----------------------------------------------------------------------------------------------


class EmaState(NamedTuple):
    """State of :func:`ema`.

    Attributes:
        count: int32 scalar, number of updates applied so far.
        average: the running average, same structure as the params, float leaves in at least
            float32. With ``debias=True`` this is the raw, biased accumulator (it starts at zero);
            read the average through :attr:`EmaTransform.debiased`.
    """

    count: jax.Array
    average: PyTree


class EmaTransform(NamedTuple):
    """The pure functions returned by :func:`ema`.

    Attributes:
        init: ``init(params) -> EmaState``.
        update: ``update(params, state) -> EmaState``; call it after each optimizer update.
        debiased: ``debiased(state) -> average``; the bias-corrected average when ``debias=True``,
            else simply ``state.average``. Always returns the float32 (or wider) average; cast it
            to the model's dtype yourself if needed.
    """

    init: Callable[[PyTree], EmaState]
    update: Callable[[PyTree, EmaState], EmaState]
    debiased: Callable[[EmaState], PyTree]


def _decay_at(decay: ScalarOrSchedule, count: jax.Array) -> jax.Array:
    value = decay(count) if callable(decay) else decay
    return jnp.asarray(value, jnp.float32)


def ema(decay: ScalarOrSchedule, *, debias: bool = False) -> EmaTransform:
    """Exponential moving average of a parameter pytree, ``θ̄ ← d·θ̄ + (1−d)·θ``.

    Without ``debias`` the average starts at the initial params (Polyak-style weight EMA: no
    warm-up bias, since the first params are already a sensible average). With ``debias`` it
    starts at zero like Adam's moments, and :attr:`EmaTransform.debiased` divides by
    ``1 − d^count``, so after ``t`` updates it is the exactly normalised weighted mean of the
    ``t`` params seen by ``update`` (the init params get no weight).

    Args:
        decay: ``d`` in [0, 1), or a schedule ``count -> d`` evaluated on the number of updates
            applied before this one (0 on the first update), as in optax. Schedules are the usual
            way to warm an EMA up, e.g. ``lambda t: jnp.minimum(0.999, (1 + t) / (10 + t))``.
        debias: Zero-initialise and expose an Adam-style bias-corrected average. Only supported
            for a constant decay: with a schedule the correction is ``1 − Π_i d_i``, which the
            state does not carry (and warm-up schedules already remove the bias).

    Returns:
        An :class:`EmaTransform` ``(init, update, debiased)``; all three are pure and jit-able.

    Raises:
        ValueError: if ``debias`` is set together with a schedule, or a constant decay is
            outside [0, 1].
    """
    if callable(decay):
        if debias:
            raise ValueError(
                "ema(debias=True) needs a constant decay: the bias correction 1 - prod(d_i) of a "
                "schedule is not recoverable from the count; use a warm-up schedule instead.")
    elif not 0.0 <= float(decay) <= 1.0:
        raise ValueError(f"ema decay must be in [0, 1], got {decay}")

    def init(params: PyTree) -> EmaState:
        average = _to_avg(params)
        if debias:
            # Float leaves start at zero; non-float leaves keep their value (never averaged).
            average = jax.tree.map(lambda a: jnp.zeros_like(a) if _is_float(a) else a, average)
        return EmaState(count=jnp.zeros([], jnp.int32), average=average)

    def update(params: PyTree, state: EmaState) -> EmaState:
        d = _decay_at(decay, state.count)
        return EmaState(count=state.count + 1, average=_ema_step(state.average, params, d))

    def debiased(state: EmaState) -> PyTree:
        if not debias:
            return state.average
        # 1 − d^t; at t = 0 nothing has been averaged yet, so divide by 1 (returns zeros)
        # rather than produce 0/0.
        correction = 1.0 - jnp.asarray(decay, jnp.float32) ** state.count
        correction = jnp.where(state.count > 0, correction, 1.0)
        return jax.tree.map(
            lambda a: a / correction.astype(a.dtype) if _is_float(a) else a, state.average)

    return EmaTransform(init=init, update=update, debiased=debiased)


# ----------------------------------------------------------------------------------------------
# Elastic Reset
# ----------------------------------------------------------------------------------------------


class ElasticResetState(NamedTuple):
    """State of :func:`elastic_reset`.

    Attributes:
        count: int32 scalar, optimizer steps seen so far (not reset at a reset).
        ema: EMA of the online params, float leaves in at least float32.
        initial: the initial (SFT) params, in their own dtype: the reset target of the EMA.
    """

    count: jax.Array
    ema: PyTree
    initial: PyTree


class ElasticResetTransform(NamedTuple):
    """The pure functions returned by :func:`elastic_reset`.

    Attributes:
        init: ``init(params) -> ElasticResetState``; call it on the initial policy.
        update: ``update(online_params, state) -> (online_params, state)``; call it after each
            optimizer update and continue training from the returned online params.
    """

    init: Callable[[PyTree], ElasticResetState]
    update: Callable[[PyTree, ElasticResetState], tuple[PyTree, ElasticResetState]]


def elastic_reset(decay: float, reset_every: int) -> ElasticResetTransform:
    """Elastic Reset (Noukhovitch et al., "Language Model Alignment with Elastic Reset", 2023).

    After every optimizer step the EMA is updated, ``θ̄ ← d·θ̄ + (1−d)·θ``. On every
    ``reset_every``-th step (counting from 1) the online params are set to the freshly updated
    EMA (cast back to the params' dtypes) and the EMA is set to the initial params. The online
    policy thus periodically jumps back toward a smoothed version of itself, limiting drift
    (reward hacking, language drift), while the EMA restarts from the initial model.

    What is *not* reset, by design (paper and DESIGN.md §3): the value function and the
    optimizer state (Adam moments, step count, LR schedule) are left exactly as they are -- this
    transform only ever sees and returns policy params, so the caller keeps them. The KL anchor
    (reference policy) stays the initial SFT policy; it is not this EMA nor the reset point, and
    the caller should keep its own copy of it (``state.initial`` holds the same values).

    The reset is decided with ``lax.cond`` on the traced count, so a jitted step compiles once;
    only reset steps read the initial params.

    Args:
        decay: EMA decay ``d`` in [0, 1] (paper: 0.995).
        reset_every: Reset period ``n`` in optimizer steps, >= 1.

    Returns:
        An :class:`ElasticResetTransform` ``(init, update)``; both are pure and jit-able.

    Raises:
        ValueError: for a decay outside [0, 1] or ``reset_every < 1``.
    """
    if not 0.0 <= float(decay) <= 1.0:
        raise ValueError(f"elastic_reset decay must be in [0, 1], got {decay}")
    if int(reset_every) < 1 or int(reset_every) != reset_every:
        raise ValueError(f"elastic_reset reset_every must be a positive int, got {reset_every}")
    reset_every = int(reset_every)

    def init(params: PyTree) -> ElasticResetState:
        # jnp.array copies, so the anchor survives if the caller later donates ``params``.
        initial = jax.tree.map(jnp.array, params)
        return ElasticResetState(count=jnp.zeros([], jnp.int32), ema=_to_avg(params),
                                 initial=initial)

    def update(online: PyTree,
               state: ElasticResetState) -> tuple[PyTree, ElasticResetState]:
        count = state.count + 1
        new_ema = _ema_step(state.ema, online, jnp.asarray(decay, jnp.float32))

        def reset(_):
            return _cast_like(new_ema, online), _to_avg(state.initial)

        def keep(_):
            return online, new_ema

        new_online, new_ema = jax.lax.cond(count % reset_every == 0, reset, keep, None)
        return new_online, ElasticResetState(count=count, ema=new_ema, initial=state.initial)

    return ElasticResetTransform(init=init, update=update)


# ----------------------------------------------------------------------------------------------
# Interpolation
# ----------------------------------------------------------------------------------------------
