"""Combining the rewards of an ensemble of reward models (prediction ensembles).

Each function takes member rewards ``r`` with the member axis first (``[M, ...]``, e.g.
``[M, batch]``) and reduces over it; ``axis`` picks another member axis. Everything is pure
``jnp`` and jit-able; inputs are cast to float32 first so bf16 members still combine in float32
(DESIGN §2 numerics). Methods (Coste et al. 2024; Eisenstein et al. 2023):

- ``"mean"``: the plain ensemble average.
- ``"median"``: robust to one outlying member (for even M, the mean of the two middle values).
- ``"min"``: worst-case optimisation (WCO), the most pessimistic member.
- ``"uwo"``: uncertainty-weighted optimisation, ``mean - lam * var`` with the *population*
  variance (divide by M, not M - 1). Coste et al. use ``lam ≈ 0.5`` for best-of-n.
- ``"mean_minus_std"``: ``mean - lam * std`` (population std), penalty in reward units.

Members must share a reward scale. Bradley-Terry only identifies rewards up to an additive
constant per member, so two equally good members can sit at offsets that differ by more than
their signal; ``min``, ``median`` and the variance in ``uwo`` would then measure the offsets, not
the members' disagreement. Train every member with the BT centering term
(``rewardjax.losses.bradley_terry_loss(..., center_coef=0.01)``, DESIGN §3) so rewards are
centred near zero and compare like with like.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# Ordered as documented; used both for dispatch and in the error message.
METHODS = ("mean", "median", "min", "uwo", "mean_minus_std")


def _f32(rewards: jax.Array) -> jax.Array:
    return jnp.asarray(rewards).astype(jnp.float32)


def mean_reward(rewards: jax.Array, *, axis: int = 0) -> jax.Array:
    """Mean over members.

    Args:
      rewards: member rewards, ``[M, ...]`` with the member axis at ``axis``.
      axis: the member axis.

    Returns:
      float32 rewards with the member axis removed.
    """
    return jnp.mean(_f32(rewards), axis=axis)


def median_reward(rewards: jax.Array, *, axis: int = 0) -> jax.Array:
    """Median over members (mean of the two middle members when M is even).

    Args:
      rewards: member rewards, ``[M, ...]`` with the member axis at ``axis``.
      axis: the member axis.

    Returns:
      float32 rewards with the member axis removed.
    """
    return jnp.median(_f32(rewards), axis=axis)


def min_reward(rewards: jax.Array, *, axis: int = 0) -> jax.Array:
    """Worst-case optimisation (WCO): the minimum over members.

    Args:
      rewards: member rewards, ``[M, ...]`` with the member axis at ``axis``.
      axis: the member axis.

    Returns:
      float32 rewards with the member axis removed.
    """
    return jnp.min(_f32(rewards), axis=axis)


def uwo_reward(rewards: jax.Array, *, lam: float | jax.Array = 0.5, axis: int = 0) -> jax.Array:
    """Uncertainty-weighted optimisation: ``mean - lam * var`` over members.

    The variance is the population variance (``ddof=0``): the ensemble is the whole population
    whose spread we penalise, not a sample from which to estimate one, and it keeps M = 1
    finite (variance 0) instead of 0/0.

    Args:
      rewards: member rewards, ``[M, ...]`` with the member axis at ``axis``.
      lam: penalty weight λ (≈0.5 for best-of-n in Coste et al.); may be a traced value.
      axis: the member axis.

    Returns:
      float32 rewards with the member axis removed.
    """
    r = _f32(rewards)
    lam = jnp.asarray(lam, jnp.float32)
    return jnp.mean(r, axis=axis) - lam * jnp.var(r, axis=axis)


def mean_minus_std_reward(
    rewards: jax.Array, *, lam: float | jax.Array = 0.5, axis: int = 0
) -> jax.Array:
    """``mean - lam * std`` over members (population std, ``ddof=0``).

    Unlike UWO the penalty is in reward units, so λ does not have to change with the scale.

    Args:
      rewards: member rewards, ``[M, ...]`` with the member axis at ``axis``.
      lam: penalty weight λ; may be a traced value.
      axis: the member axis.

    Returns:
      float32 rewards with the member axis removed.
    """
    r = _f32(rewards)
    lam = jnp.asarray(lam, jnp.float32)
    return jnp.mean(r, axis=axis) - lam * jnp.std(r, axis=axis)


def member_disagreement(rewards: jax.Array, *, axis: int = 0) -> jax.Array:
    """Population std of the rewards across members, for reporting ensemble uncertainty.

    Args:
      rewards: member rewards, ``[M, ...]`` with the member axis at ``axis``.
      axis: the member axis.

    Returns:
      float32 std with the member axis removed (0 where all members agree).
    """
    return jnp.std(_f32(rewards), axis=axis)


def _with_lam(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    return lambda r, lam, axis: fn(r, lam=lam, axis=axis)


def _without_lam(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    # Methods with no λ accept and ignore it so ``combine`` has one signature for all.
    return lambda r, lam, axis: fn(r, axis=axis)


_DISPATCH: dict[str, Callable[..., jax.Array]] = {
    "mean": _without_lam(mean_reward),
    "median": _without_lam(median_reward),
    "min": _without_lam(min_reward),
    "uwo": _with_lam(uwo_reward),
    "mean_minus_std": _with_lam(mean_minus_std_reward),
}


def combine(
    rewards: jax.Array,
    method: str,
    *,
    lam: float | jax.Array = 0.5,
    axis: int = 0,
) -> jax.Array:
    """Combines member rewards into one reward with the named method.

    ``method`` selects Python code, so under ``jax.jit`` it must be static
    (``jax.jit(combine, static_argnames=("method", "axis"))``); ``lam`` may be traced.

    Args:
      rewards: member rewards, ``[M, ...]`` with the member axis at ``axis``.
      method: one of ``"mean"``, ``"median"``, ``"min"`` (WCO), ``"uwo"``,
        ``"mean_minus_std"``.
      lam: penalty weight λ for ``"uwo"`` and ``"mean_minus_std"``; ignored otherwise.
      axis: the member axis.

    Returns:
      float32 rewards with the member axis removed.

    Raises:
      ValueError: ``method`` is not one of the methods above.
    """
    fn = _DISPATCH.get(method)
    if fn is None:
        raise ValueError(
            f"unknown ensemble method {method!r}; valid methods: {', '.join(METHODS)}"
        )
    return fn(rewards, lam, axis)
