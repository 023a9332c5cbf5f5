"""Best-of-n with a pairwise preference model: knockout and round-robin over one pool.

Pure: the model comes in as ``compare(pairs) -> P``, where ``pairs`` is a list of candidate
index pairs ``(i, j)`` and ``P[k]`` is the (position-symmetrised) probability that candidate
``i`` beats candidate ``j``. Every function here asks for the pairs it needs in one call per
round, so a batched model sees large batches.

* :func:`round_robin`: every unordered pair once (``n (n - 1) / 2`` comparisons), then Copeland:
  a candidate scores 1 per opponent it beats (``P > 0.5``) and 1/2 per tie (``P == 0.5``); ties
  in that score go to the higher mean ``P`` against all others, then to the lower index.
* :func:`knockout`: single elimination (``n - 1`` comparisons) over a deterministic bracket:
  round 1 plays bracket positions (0, 1), (2, 3), ...; an odd one out gets a bye; a match at
  exactly ``P == 0.5`` goes to the earlier bracket position. The bracket is the input order, or a
  permutation drawn from ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

CompareFn = Callable[[Sequence[tuple[int, int]]], np.ndarray]


def _probs(compare: CompareFn, pairs: list[tuple[int, int]]) -> np.ndarray:
    p = np.asarray(compare(pairs), np.float64).reshape(-1) if pairs else np.zeros((0,))
    if p.shape != (len(pairs),):
        raise ValueError(f"compare returned {p.shape} for {len(pairs)} pairs")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("compare must return probabilities in [0, 1]")
    return p


def preference_matrix(compare: CompareFn, n: int) -> np.ndarray:
    """``M [n, n]`` with ``M[i, j] = P(i beats j)`` from one call over the pairs ``i < j``;
    ``M[j, i] = 1 - M[i, j]`` (a symmetrised comparison is antisymmetric), diagonal 0.5."""
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    p = _probs(compare, pairs)
    m = np.full((n, n), 0.5)
    for (i, j), v in zip(pairs, p):
        m[i, j], m[j, i] = v, 1.0 - v
    return m


def copeland(matrix: np.ndarray) -> np.ndarray:
    """Per candidate: wins (``M[i, j] > 0.5``) plus half the ties over the other candidates."""
    m = np.asarray(matrix, np.float64)
    off = ~np.eye(len(m), dtype=bool)
    return np.sum(((m > 0.5) + 0.5 * (m == 0.5)) * off, axis=1)


def round_robin_winner(matrix: np.ndarray) -> int:
    """The Copeland winner of a preference matrix (ties: higher mean P, then lower index)."""
    m = np.asarray(matrix, np.float64)
    n = len(m)
    if n == 0:
        raise ValueError("an empty pool has no winner")
    mean_p = (m.sum(axis=1) - np.diag(m)) / max(n - 1, 1)
    # lexsort sorts by the last key first: Copeland score, then mean P, then index (ascending)
    order = np.lexsort((np.arange(n), -mean_p, -copeland(m)))
    return int(order[0])


def round_robin(compare: CompareFn, n: int) -> tuple[int, np.ndarray]:
    """``(winner, preference matrix)`` over ``n`` candidates."""
    m = preference_matrix(compare, n)
    return round_robin_winner(m), m


def bracket(n: int, seed: int | None = None) -> list[int]:
    """Candidate indices in bracket order: ``range(n)``, or a permutation drawn from ``seed``."""
    if seed is None:
        return list(range(n))
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def knockout(compare: CompareFn, n: int, *, seed: int | None = None,
             order: Sequence[int] | None = None) -> tuple[int, list[tuple[int, int, float]]]:
    """``(winner, matches)``: single elimination; ``matches`` lists ``(i, j, P(i beats j))``
    round by round. ``order`` fixes the bracket (else :func:`bracket` of ``n`` and ``seed``)."""
    alive = list(order) if order is not None else bracket(n, seed)
    if not alive:
        raise ValueError("an empty pool has no winner")
    played: list[tuple[int, int, float]] = []
    while len(alive) > 1:
        pairs = [(alive[k], alive[k + 1]) for k in range(0, len(alive) - 1, 2)]
        p = _probs(compare, pairs)
        nxt = [i if v >= 0.5 else j for (i, j), v in zip(pairs, p)]
        played += [(i, j, float(v)) for (i, j), v in zip(pairs, p)]
        if len(alive) % 2:
            nxt.append(alive[-1])  # the bye
        alive = nxt
    return alive[0], played


def matrix_compare(matrix: np.ndarray) -> CompareFn:
    """A ``compare`` reading a precomputed preference matrix (e.g. to run a knockout on the
    matrix a round-robin already paid for)."""
    m = np.asarray(matrix, np.float64)
    return lambda pairs: np.asarray([m[i, j] for i, j in pairs], np.float64)


# ----------------------------------------------------------------------------- symmetrising


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def symmetric_logit(z_ab, z_ba) -> np.ndarray:
    """``logit P_sym(A > B)`` with ``P_sym = (σ(z_ab) + 1 - σ(z_ba)) / 2`` (float64), from the
    logits of P(A better | A shown first) and P(B better | B shown first).

    Computed in log space, so it stays finite for any logits, and odd in the swap: exchanging
    ``z_ab`` and ``z_ba`` negates it exactly, as ``P_sym(B > A) = 1 - P_sym(A > B)``.
    """
    a, b = np.asarray(z_ab, np.float64), np.asarray(z_ba, np.float64)
    log_p = np.logaddexp(_log_sigmoid(a), _log_sigmoid(-b))  # log(2 P_sym)
    log_q = np.logaddexp(_log_sigmoid(-a), _log_sigmoid(b))  # log(2 (1 - P_sym))
    return log_p - log_q


def symmetric_prob(z_ab, z_ba) -> np.ndarray:
    """``P_sym(A > B) = (σ(z_ab) + 1 - σ(z_ba)) / 2`` (float64)."""
    return np.exp(_log_sigmoid(symmetric_logit(z_ab, z_ba)))


def order_report(z_ab, z_ba) -> dict:
    """How much the presentation order matters, over pairs shown (chosen, rejected) with logit
    ``z_ab`` and (rejected, chosen) with logit ``z_ba``:

    * ``accuracy_chosen_first`` / ``accuracy_chosen_second``: one order alone is right
      (``z_ab > 0`` / ``z_ba < 0``); ``accuracy_one_order``: their mean (one random order).
    * ``accuracy_symmetrised``: ``P_sym(chosen > rejected) > 0.5`` (a tie at 0.5 is wrong).
    * ``flip_rate``: the two orders name different winners (swapping flips the verdict).
    * ``first_position_bias``: mean P(the response shown first is better) over both orders,
      minus 0.5 (> 0: the model favours position A).
    """
    a, b = np.asarray(z_ab, np.float64), np.asarray(z_ba, np.float64)
    if a.size == 0:
        nan = float("nan")
        return dict.fromkeys(("accuracy_chosen_first", "accuracy_chosen_second",
                              "accuracy_one_order", "accuracy_symmetrised", "flip_rate",
                              "first_position_bias"), nan)
    first, second = a > 0, b < 0
    sig = lambda z: np.exp(_log_sigmoid(z))  # noqa: E731
    return {
        "accuracy_chosen_first": float(np.mean(first)),
        "accuracy_chosen_second": float(np.mean(second)),
        "accuracy_one_order": float(np.mean((first + 0.0 + second) / 2)),
        "accuracy_symmetrised": float(np.mean(symmetric_logit(a, b) > 0)),
        "flip_rate": float(np.mean(first != second)),
        "first_position_bias": float(np.mean((sig(a) + sig(b)) / 2) - 0.5),
    }
