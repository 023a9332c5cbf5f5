"""Aggregating several groups' reward models with payments (Sun et al., mechanism design).

Setting (DESIGN §3, last bullet). G groups each report a reward model; on a finite candidate
set of N responses (for one prompt) group ``i``'s reported rewards are a row ``r_i`` of
``rewards [G, N]``. The trainer picks a distribution ``pi`` over the candidates by maximising
the *regularised social welfare*

    ASW(pi) = sum_i w_i v_i(pi) - lam * KL(pi || pi_init),   v_i(pi) = E_pi[r_i],

whose maximiser is the Gibbs distribution (the training rule)

    pi ∝ pi_init * exp(sum_i w_i r_i / lam),   max_pi ASW = lam * log E_{pi_init}[exp(S / lam)]

with ``S = sum_i w_i r_i``. Each group pays the affine-maximizer (VCG-style) payment

    p_i = ASW_{-i}(pi_{-i}) - ASW_{-i}(pi),
    ASW_{-i}(pi) = sum_{j≠i} w_j v_j(pi) - lam * KL(pi || pi_init),

where ``pi_{-i}`` is the training result without group ``i``: the welfare loss the others
suffer because group ``i`` took part. Group ``i``'s utility is ``u_i = w_i v_i(pi) - p_i``
with its TRUE rewards in ``v_i``. Plugging in the closed forms (``a = log pi_init + S / lam``):

    ASW_{-i}(pi) = lam * logsumexp(a) - w_i v_i(pi)
    p_i          = w_i v_i(pi) - lam * [logsumexp(a) - logsumexp(a_{-i})]
    u_i(truth)   = lam * log E_{pi_{-i}}[exp(w_i r_i / lam)]   >=   w_i E_{pi_{-i}}[r_i].

**Why nobody gains by lying.** Whatever the others report, for any report of group ``i``,
``u_i = W_i(pi) - ASW_{-i}(pi_{-i})`` where ``W_i`` is the regularised welfare computed with
``i``'s TRUE rewards and size and the others' reports. The second term does not depend on
``i``'s report; the first is maximised over all ``pi`` by the training rule applied to a
truthful report. So truthful reporting is a dominant strategy. ``p_i >= 0`` always (``pi_{-i}``
maximises ``ASW_{-i}``), and the last inequality (Jensen) gives ``u_i >= 0`` whenever the true
rewards are non-negative (the paper's rewards lie in [0, 1]).

**How group sizes enter.** A group of ``n_i`` people who share a reward model contributes
``n_i v_i`` to the welfare (the sum over individuals), so ``weights`` are the raw sizes
``w_i = n_i`` and ``u_i = n_i v_i - p_i`` is the whole group's utility (``p_i`` the group's
total payment). Only the product ``w_i r_i`` enters the training rule, so misreporting one's
size is the same as reporting scaled rewards and is covered by the argument above. Do NOT
normalise sizes to shares ``n_i / sum_j n_j`` before passing them: a group's size report would
then change the other groups' weights and the dominant-strategy argument would no longer cover
size reports. ``lam`` is in the units of total welfare: multiplying every size by ``c`` and
``lam`` by ``c`` gives the same ``pi`` and ``c`` times the payments.

**Shifts.** Adding a constant ``c_i`` to group ``i``'s rewards changes neither ``pi`` (a constant
in the exponent) nor any payment, only ``u_i`` by ``w_i c_i``. Reward models are only defined
up to such shifts (Bradley-Terry), so :func:`aggregate_scores` measures each group's rewards from
its worst candidate (``r - min r``, the "zero point" convention), which makes them non-negative
and so makes every truthful utility ``>= 0``.

Everything is pure ``jnp``, jit-able and vectorised over groups (no Python loop). Inputs are
promoted to at least float32; under ``jax.enable_x64`` float64 inputs stay float64.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def _float(x) -> jax.Array:
    x = jnp.asarray(x)
    return x.astype(jnp.result_type(x.dtype, jnp.float32))


def _log_init(pi_init: jax.Array) -> jax.Array:
    # Candidates outside the reference support keep probability 0 (log 0 = -inf is intended).
    return jnp.log(pi_init)


def _logits(rewards, weights, pi_init, lam) -> jax.Array:
    """``log pi_init + sum_i w_i r_i / lam``, ``[N]``."""
    total = jnp.einsum("g,gn->n", weights, rewards)  # [N]
    return _log_init(pi_init) + total / lam


def _loo_logits(rewards, weights, pi_init, lam) -> jax.Array:
    """Logits of the training rule with each group left out, ``[G, N]`` (row i: without i)."""
    total = jnp.einsum("g,gn->n", weights, rewards)  # [N]
    others = total[None, :] - weights[:, None] * rewards  # [G, N]
    return _log_init(pi_init)[None, :] + others / lam


def _args(rewards, weights, pi_init, lam):
    rewards = _float(rewards)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [groups, candidates], got shape {rewards.shape}")
    g, n = rewards.shape
    weights = _float(weights)
    if weights.shape != (g,):
        raise ValueError(f"weights must have shape ({g},), got {weights.shape}")
    pi_init = jnp.full((n,), 1.0 / n, rewards.dtype) if pi_init is None else _float(pi_init)
    if pi_init.shape != (n,):
        raise ValueError(f"pi_init must have shape ({n},), got {pi_init.shape}")
    return rewards, weights, pi_init, _float(lam)


def kl_divergence(pi: jax.Array, pi_init: jax.Array) -> jax.Array:
    """``KL(pi || pi_init)`` over candidates; terms with ``pi = 0`` count 0."""
    pi, pi_init = _float(pi), _float(pi_init)
    safe = jnp.where(pi > 0, pi, 1.0)
    return jnp.sum(jnp.where(pi > 0, pi * (jnp.log(safe) - jnp.log(pi_init)), 0.0))


def training_rule(rewards: jax.Array, weights: jax.Array, pi_init: jax.Array | None = None,
                  lam: float | jax.Array = 1.0) -> jax.Array:
    """The welfare-maximising distribution ``pi ∝ pi_init * exp(sum_i w_i r_i / lam)``.

    Args:
      rewards: reported rewards, ``[G, N]`` (group, candidate).
      weights: group weights, ``[G]``: the group sizes ``n_i`` (see the module docstring).
      pi_init: reference distribution over candidates, ``[N]``; None for uniform.
      lam: KL regularisation strength (> 0).

    Returns:
      ``pi``, ``[N]``, summing to 1.
    """
    rewards, weights, pi_init, lam = _args(rewards, weights, pi_init, lam)
    return jax.nn.softmax(_logits(rewards, weights, pi_init, lam))


def welfare(pi: jax.Array, rewards: jax.Array, weights: jax.Array,
            pi_init: jax.Array | None = None, lam: float | jax.Array = 1.0) -> jax.Array:
    """Regularised social welfare ``sum_i w_i E_pi[r_i] - lam KL(pi || pi_init)`` of any ``pi``.

    Pass a subset of groups (or zero weights) to get ``ASW_{-i}``.
    """
    rewards, weights, pi_init, lam = _args(rewards, weights, pi_init, lam)
    values = jnp.einsum("gn,n->g", rewards, _float(pi))  # [G]
    return jnp.sum(weights * values) - lam * kl_divergence(pi, pi_init)


def payments(rewards: jax.Array, weights: jax.Array, pi_init: jax.Array | None = None,
             lam: float | jax.Array = 1.0) -> jax.Array:
    """Affine-maximizer payments ``p_i = ASW_{-i}(pi_{-i}) - ASW_{-i}(pi)``, ``[G]``.

    Computed from the reports only (``rewards`` and ``weights`` are what the groups reported).
    A group without influence on ``pi`` (weight 0, or rewards equal on every candidate with
    positive ``pi_init``) pays 0.
    """
    rewards, weights, pi_init, lam = _args(rewards, weights, pi_init, lam)
    logits = _logits(rewards, weights, pi_init, lam)  # [N]
    pi = jax.nn.softmax(logits)
    values = jnp.einsum("gn,n->g", rewards, pi)  # [G]
    # ASW_{-i}(pi_{-i}) = lam * logsumexp(a_{-i}) and ASW_{-i}(pi) = lam * lse(a) - w_i v_i(pi).
    best_without = lam * jax.nn.logsumexp(_loo_logits(rewards, weights, pi_init, lam), axis=-1)
    with_i = lam * jax.nn.logsumexp(logits) - weights * values
    return best_without - with_i


def utilities(true_rewards: jax.Array, reported_rewards: jax.Array, weights: jax.Array,
              pi_init: jax.Array | None = None, lam: float | jax.Array = 1.0, *,
              true_weights: jax.Array | None = None) -> jax.Array:
    """Each group's utility ``u_i = w_i E_pi[r_i^true] - p_i`` under the reported profile.

    Args:
      true_rewards: what each group really values, ``[G, N]``.
      reported_rewards: what the groups reported (the mechanism sees only these), ``[G, N]``.
      weights: reported group sizes, ``[G]`` (enter ``pi`` and the payments).
      pi_init: reference distribution ``[N]``; None for uniform.
      lam: KL regularisation strength.
      true_weights: true group sizes (scale each group's own value); default ``weights``.

    Returns:
      ``[G]`` utilities.
    """
    reported, weights, pi_init, lam = _args(reported_rewards, weights, pi_init, lam)
    true = _float(true_rewards)
    true_w = weights if true_weights is None else _float(true_weights)
    pi = jax.nn.softmax(_logits(reported, weights, pi_init, lam))
    values = jnp.einsum("gn,n->g", true, pi)  # [G]
    return true_w * values - payments(reported, weights, pi_init, lam)


class Outcome(NamedTuple):
    """The mechanism's result for reward-model scores of candidate sets.

    Attributes:
      policy: the training rule's distribution over candidates, ``[..., N]``.
      payments: each group's payment, ``[G]`` (mean over prompts).
      values: ``E_pi[r_i]`` per group with rewards measured from the worst candidate, ``[G]``.
      utilities: truthful utilities ``w_i values_i - payments_i``, ``[G]`` (all ``>= 0``).
      welfare: the maximised regularised welfare (mean over prompts), scalar.
    """

    policy: jax.Array
    payments: jax.Array
    values: jax.Array
    utilities: jax.Array
    welfare: jax.Array


def aggregate_scores(scores: jax.Array, sizes: jax.Array, *, lam: float | jax.Array = 1.0,
                     pi_init: jax.Array | None = None) -> Outcome:
    """Training rule and payments for reward-model scores of candidate responses.

    Each prompt has its own candidate set; welfare and KL are averaged over prompts, so the
    optimum factorises per prompt and payments / values are means of per-prompt ones. Each
    group's scores are shifted so its worst candidate (per prompt) scores 0, which changes
    neither the policy nor the payments (see the module docstring) and makes truthful
    utilities non-negative.

    Args:
      scores: ``[G, N]`` (one prompt) or ``[G, P, N]`` (P prompts): group ``g``'s reward model
        on each candidate, e.g. from ``rewardjax.runtime.scoring.score_encoded``.
      sizes: group sizes ``[G]`` (raw counts, not shares).
      lam: KL regularisation strength.
      pi_init: reference distribution ``[N]`` or ``[P, N]`` (e.g. the SFT policy's normalised
        sample probabilities); None for uniform.

    Returns:
      An :class:`Outcome`.
    """
    scores = _float(scores)
    if scores.ndim not in (2, 3):
        raise ValueError(f"scores must be [groups, candidates] or [groups, prompts, candidates], "
                         f"got shape {scores.shape}")
    pi, pay, vals, wel = _aggregate(scores if scores.ndim == 3 else scores[:, None, :],
                                    _float(sizes), _float(lam),
                                    None if pi_init is None else _float(pi_init))
    return Outcome(pi[0] if scores.ndim == 2 else pi, pay, vals, _float(sizes) * vals - pay, wel)


@jax.jit
def _aggregate(scores, sizes, lam, pi_init):
    """Policy [P, N], mean payments [G], mean values [G] and mean welfare for [G, P, N]."""
    g, p, n = scores.shape
    rewards = scores - jnp.min(scores, axis=-1, keepdims=True)  # zero at the worst candidate
    init = jnp.full((p, n), 1.0 / n, scores.dtype) if pi_init is None else pi_init
    init = jnp.broadcast_to(init, (p, n))

    def one(r, q):  # r [G, N], q [N]
        pi = training_rule(r, sizes, q, lam)
        return pi, payments(r, sizes, q, lam), r @ pi, welfare(pi, r, sizes, q, lam)

    pi, pay, vals, wel = jax.vmap(one, in_axes=(1, 0))(rewards, init)  # [P, N], [P, G] ...
    return pi, jnp.mean(pay, axis=0), jnp.mean(vals, axis=0), jnp.mean(wel)
