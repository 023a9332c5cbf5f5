"""Host-side evaluation metrics for reward models: accuracy, calibration, reward statistics.

Everything is numpy in float64 and returns plain Python floats, so results go straight into
JSON reports. Rewards arrive here after ``jax.device_get``.

Calibration follows MORE (Zeng et al.; DESIGN §3): over pairs, ``p = σ(r_a - r_b)`` against the
label, 10 equal-width bins, ``ECE = Σ_b |Σ_{i∈b} p_i - Σ_{i∈b} y_i| / N``; MCE is the largest
per-bin gap ``|mean p - mean y|``; ACE is the ECE formula on equal-mass bins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


def _as_1d(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        a = a.reshape(-1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf values")
    return a


def _pair_arrays(r_chosen, r_rejected) -> tuple[np.ndarray, np.ndarray]:
    rc = _as_1d(r_chosen, "r_chosen")
    rr = _as_1d(r_rejected, "r_rejected")
    if rc.shape != rr.shape:
        raise ValueError(f"r_chosen has {rc.size} pairs but r_rejected has {rr.size}")
    return rc, rr


def pairwise_accuracy(r_chosen, r_rejected) -> float:
    """Fraction of pairs with ``r_chosen > r_rejected`` strictly; ties count as wrong.

    Ties are wrong so that a collapsed model scoring everything equal gets 0, not 1.
    Returns NaN for zero pairs.
    """
    rc, rr = _pair_arrays(r_chosen, r_rejected)
    return float(np.mean(rc > rr)) if rc.size else float("nan")


def preference_probs(r_a, r_b) -> np.ndarray:
    """Bradley-Terry probability that ``a`` is preferred: ``σ(r_a - r_b)`` (float64 array).

    Written as ``exp(-logaddexp(0, -d))`` so huge reward gaps neither overflow nor warn.
    """
    d = np.asarray(r_a, np.float64) - np.asarray(r_b, np.float64)
    return np.exp(-np.logaddexp(0.0, -d))


def _binned_errors(p: np.ndarray, y: np.ndarray, bins: Sequence[np.ndarray]):
    """Sum of per-bin ``|Σp - Σy|`` and the max per-bin ``|mean p - mean y|`` (non-empty bins)."""
    total, worst = 0.0, 0.0
    for idx in bins:
        if idx.size == 0:
            continue
        gap = abs(float(p[idx].sum() - y[idx].sum()))
        total += gap
        worst = max(worst, gap / idx.size)
    return total, worst


def _equal_mass_bins(p: np.ndarray, num_bins: int) -> list[np.ndarray]:
    """Indices of ``p`` in equal-mass bins; ties are never split across bins.

    Position ``i`` of the sorted order goes to bin ``floor(i · B / N)``, then every value takes
    the bin of its first occurrence. Without that, identical predictions would be split by
    their input order and ACE would change when the data is shuffled. Rounding keeps
    ``sorted_p`` sorted, so the merged bins are still consecutive runs.
    """
    order = np.argsort(p, kind="stable")
    sorted_p = p[order]
    pos_bin = (np.arange(p.size) * num_bins) // p.size
    # Probabilities equal to 12 decimals count as ties: σ(-d) and 1 - σ(d) differ by an ulp.
    _, first, inverse = np.unique(np.round(sorted_p, 12), return_index=True, return_inverse=True)
    sorted_bin = pos_bin[first][inverse]
    return [order[sorted_bin == b] for b in range(num_bins)]


def calibration(probs, labels, num_bins: int = 10) -> dict[str, float]:
    """Expected, adaptive and maximum calibration error of binary predictions.

    Args:
      probs: ``[N]`` predicted probabilities that the label is 1, in ``[0, 1]``.
      labels: ``[N]`` outcomes in ``[0, 1]`` (usually exactly 0 or 1).
      num_bins: number of bins for every statistic.

    Returns:
      ``{"ece", "ace", "mce"}``:
        * ``ece``: equal-width bins ``[k/B, (k+1)/B)`` (the last one closed at 1),
          ``Σ_b |Σ_{i∈b} p_i - Σ_{i∈b} y_i| / N``.
        * ``ace``: the same sum over equal-mass bins — predictions sorted by ``p`` (stable
          sort) and cut into ``num_bins`` consecutive groups of ``N / num_bins`` points,
          except that equal probabilities always share a bin (see ``_equal_mass_bins``);
          empty groups are skipped. With equal group sizes this equals the unweighted mean of
          per-bin gaps (Nixon et al.).
        * ``mce``: max over non-empty equal-width bins of ``|mean p - mean y|``.
      All NaN when ``N == 0``.
    """
    p = _as_1d(probs, "probs")
    y = _as_1d(labels, "labels")
    if p.shape != y.shape:
        raise ValueError(f"probs has {p.size} entries but labels has {y.size}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probs must lie in [0, 1]")
    if np.any((y < 0) | (y > 1)):
        raise ValueError("labels must lie in [0, 1]")
    n = p.size
    if n == 0:
        return {"ece": float("nan"), "ace": float("nan"), "mce": float("nan")}

    # p == 1.0 would land in bin `num_bins`; fold it into the last bin.
    which = np.minimum(np.floor(p * num_bins).astype(np.int64), num_bins - 1)
    width_bins = [np.flatnonzero(which == b) for b in range(num_bins)]
    ece_sum, mce = _binned_errors(p, y, width_bins)

    ace_sum, _ = _binned_errors(p, y, _equal_mass_bins(p, num_bins))
    return {"ece": ece_sum / n, "ace": ace_sum / n, "mce": mce}


def pair_calibration(
    r_chosen,
    r_rejected,
    num_bins: int = 10,
    seed: int = 0,
    *,
    orientation: str = "both",
) -> dict[str, float]:
    """Calibration of ``σ(r_chosen - r_rejected)`` on preference pairs.

    Preference data is stored with the winner first, so the naive label is ``y ≡ 1``. Then
    every bin's gap is ``Σ(1 - p)`` and ECE collapses to ``1 - mean(p)``: it measures
    confidence, not calibration — a perfectly calibrated model that is 75% sure and right 75%
    of the time scores 0.25 instead of 0. The pair's orientation is arbitrary, so we score
    calibration on labels that are not constant:

    * ``orientation="both"`` (default): each pair is scored in both orders, ``(p, y=1)`` and
      ``(1 - p, y=0)``; deterministic, symmetric, and uses every pair twice (N = 2·pairs).
    * ``orientation="random"``: each pair is flipped with probability 1/2 using ``seed``
      (MORE-style random ``(a, b)`` order); noisier, kept for comparison with such reports.

    Args:
      r_chosen: ``[N]`` rewards of the preferred responses.
      r_rejected: ``[N]`` rewards of the dispreferred responses.
      num_bins: bins for ECE / ACE / MCE.
      seed: numpy seed for ``orientation="random"`` (unused for ``"both"``).
      orientation: ``"both"`` or ``"random"``.

    Returns:
      ``{"ece", "ace", "mce"}`` as in :func:`calibration`.
    """
    rc, rr = _pair_arrays(r_chosen, r_rejected)
    p = preference_probs(rc, rr)
    if orientation == "both":
        probs = np.concatenate([p, 1.0 - p])
        labels = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    elif orientation == "random":
        flip = np.random.default_rng(seed).random(p.size) < 0.5
        probs = np.where(flip, 1.0 - p, p)
        labels = np.where(flip, 0.0, 1.0)
    else:
        raise ValueError(f"orientation must be 'both' or 'random', got {orientation!r}")
    return calibration(probs, labels, num_bins)


class RewardStats(NamedTuple):
    """Summary of a reward distribution (population std, ``ddof=0``)."""

    mean: float
    std: float
    min: float
    max: float


def reward_stats(rewards) -> RewardStats:
    """Mean, std, min and max of a set of rewards (all NaN when empty).

    A NamedTuple so it unpacks as ``mean, std, lo, hi = reward_stats(r)`` and turns into a
    dict with ``._asdict()``.
    """
    r = _as_1d(rewards, "rewards")
    if r.size == 0:
        nan = float("nan")
        return RewardStats(nan, nan, nan, nan)
    return RewardStats(float(r.mean()), float(r.std()), float(r.min()), float(r.max()))


def _summary(rc: np.ndarray, rr: np.ndarray, num_bins: int) -> dict[str, float]:
    """Accuracy, calibration and reward moments for one set of pairs."""
    stats = reward_stats(np.concatenate([rc, rr]))
    out = {"n": int(rc.size), "accuracy": pairwise_accuracy(rc, rr)}
    out.update(pair_calibration(rc, rr, num_bins))
    out["reward_margin"] = float(np.mean(rc - rr)) if rc.size else float("nan")
    out["reward_mean"] = stats.mean
    out["reward_std"] = stats.std
    return out


def pair_metrics(
    r_chosen,
    r_rejected,
    groups: Sequence[str] | None = None,
    *,
    num_bins: int = 10,
) -> dict:
    """Evaluation report for preference pairs, overall and per group.

    Args:
      r_chosen: ``[N]`` rewards of the preferred responses.
      r_rejected: ``[N]`` rewards of the dispreferred responses.
      groups: optional ``N`` group names (dataset, source or category of each pair).
      num_bins: calibration bins.

    Returns:
      ``{"n", "accuracy", "ece", "ace", "mce", "reward_margin", "reward_mean", "reward_std",
      "by_group": {name: {same keys without by_group}}}``. Calibration uses both orientations
      (:func:`pair_calibration`); reward moments pool chosen and rejected rewards. With groups
      there is also ``"macro_accuracy"``, the unweighted mean of per-group accuracies (how
      RewardBench-style reports average sections). ``by_group`` is ``{}`` without groups and
      is ordered by group name.
    """
    rc, rr = _pair_arrays(r_chosen, r_rejected)
    out = _summary(rc, rr, num_bins)
    out["by_group"] = {}
    if groups is None:
        return out
    names = np.asarray([str(g) for g in groups], dtype=object)
    if names.size != rc.size:
        raise ValueError(f"groups has {names.size} entries for {rc.size} pairs")
    for name in sorted(set(names.tolist())):
        sel = names == name
        out["by_group"][name] = _summary(rc[sel], rr[sel], num_bins)
    out["macro_accuracy"] = float(np.mean([g["accuracy"] for g in out["by_group"].values()]))
    return out
