"""Process-reward metrics: per-step accuracy and F1, first-error localisation, solution scores.

Conventions (fixed here, used everywhere a PRM is evaluated):

* A step's prediction is the model's probability that the step is *good*; a step is predicted
  bad when that probability is below ``threshold`` (0.5).
* Ragged solutions travel as ``[N, S]`` arrays padded with NaN (probabilities) beside labels
  padded with anything; a position is real where the probability is finite.
* Step F1 takes the *bad* step as the positive class (errors are what a PRM must find).
* First-error localisation (ProcessBench): the predicted first error of a solution is its first
  step predicted bad (``-1`` when none is); accuracy on erroneous solutions is the fraction
  whose predicted index equals the labelled first error exactly, accuracy on correct solutions
  the fraction predicted to have none; their harmonic mean is the F1 ProcessBench reports.
* A solution's score aggregates its step probabilities: ``min``, ``last`` or ``product``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

AGGREGATES = ("min", "last", "product")


def pad_steps(rows: Sequence[Sequence[float]], fill: float = np.nan) -> np.ndarray:
    """Ragged per-step values -> ``[N, max steps]`` float32 padded with ``fill``."""
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), fill, np.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = np.asarray(r, np.float32)
    return out


def first_bad(good: np.ndarray, real: np.ndarray | None = None) -> np.ndarray:
    """Index of the first ``False`` of each row of ``good [N, S]`` among ``real`` positions;
    ``-1`` for a row without one."""
    good = np.asarray(good, bool)
    real = np.ones_like(good) if real is None else np.asarray(real, bool)
    bad = ~good & real
    idx = np.argmax(bad, axis=1)
    return np.where(bad.any(axis=1), idx, -1).astype(np.int64)


def aggregate(probs, how: str = "min") -> np.ndarray:
    """Solution scores ``[N]`` from step probabilities ``[N, S]`` (NaN-padded).

    ``min``: the weakest step; ``last``: the last real step; ``product``: the probability that
    every step is good if steps were independent. A row without a real step scores NaN.
    """
    p = np.asarray(probs, np.float64)
    real = np.isfinite(p)
    has = real.any(axis=1)
    if how == "min":
        out = np.min(np.where(real, p, np.inf), axis=1)
    elif how == "product":
        out = np.prod(np.where(real, p, 1.0), axis=1)
    elif how == "last":
        last = p.shape[1] - 1 - np.argmax(real[:, ::-1], axis=1) if p.shape[1] else 0
        out = p[np.arange(len(p)), last] if p.shape[1] else np.zeros(len(p))
    else:
        raise ValueError(f"unknown aggregate {how!r}; choose from {AGGREGATES}")
    return np.where(has, out, np.nan).astype(np.float32)


def step_metrics(probs, labels, threshold: float = 0.5) -> dict[str, float]:
    """Step accuracy and F1 (positive class: bad step) over the real steps.

    Args:
      probs: ``[N, S]`` P(good), NaN on padding.
      labels: ``[N, S]`` 1/True for a good step (padding ignored).
    """
    p = np.asarray(probs, np.float64)
    real = np.isfinite(p)
    y_good = np.asarray(labels, bool)[real]
    pred_good = p[real] >= threshold
    n = int(real.sum())
    tp = int(np.sum(~pred_good & ~y_good))  # bad steps found
    fp = int(np.sum(~pred_good & y_good))
    fn = int(np.sum(pred_good & ~y_good))
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = (2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else float("nan")
    return {"steps": n, "step_accuracy": float(np.mean(pred_good == y_good)) if n else float("nan"),
            "bad_precision": precision, "bad_recall": recall, "step_f1": f1}


def first_error_metrics(pred_first, gold_first) -> dict[str, float]:
    """ProcessBench's first-error localisation from predicted / labelled first-error indices
    (``-1`` = no error)."""
    pred, gold = np.asarray(pred_first), np.asarray(gold_first)
    err, ok = gold >= 0, gold < 0
    acc_err = float(np.mean(pred[err] == gold[err])) if err.any() else float("nan")
    acc_ok = float(np.mean(pred[ok] < 0)) if ok.any() else float("nan")
    f1 = (2 * acc_err * acc_ok / (acc_err + acc_ok)) if acc_err + acc_ok > 0 else 0.0
    return {"erroneous": int(err.sum()), "correct": int(ok.sum()),
            "first_error_acc_erroneous": acc_err, "first_error_acc_correct": acc_ok,
            "first_error_f1": f1 if err.any() and ok.any() else float("nan")}


def solution_accuracy(scores, gold_correct, threshold: float = 0.5) -> float:
    """Fraction of solutions whose score is on the right side of ``threshold``."""
    s, g = np.asarray(scores, np.float64), np.asarray(gold_correct, bool)
    return float(np.mean((s >= threshold) == g)) if len(s) else float("nan")


def process_report(probs, labels, threshold: float = 0.5,
                   aggregates: Sequence[str] = AGGREGATES) -> dict[str, float]:
    """Everything above for one set: step metrics, first-error F1 and, per aggregate, the
    solution-level accuracy against "no bad step" and the mean score gap between correct and
    erroneous solutions."""
    p = np.asarray(probs, np.float64)
    real = np.isfinite(p)
    y = np.asarray(labels, bool)
    out = {"solutions": int(len(p)), **step_metrics(p, y, threshold)}
    gold_first = first_bad(y, real)
    out.update(first_error_metrics(first_bad(p >= threshold, real), gold_first))
    correct = gold_first < 0
    for how in aggregates:
        s = aggregate(p, how)
        out[f"solution_accuracy_{how}"] = solution_accuracy(s, correct, threshold)
        if correct.any() and (~correct).any():
            out[f"score_gap_{how}"] = float(np.mean(s[correct]) - np.mean(s[~correct]))
    return out


def best_of_n(score_pools, gold_pools, ns=(1, 2, 4, 8)) -> dict[str, np.ndarray]:
    """Expected gold of best-of-n picked by ``score_pools`` (one pool per prompt), unbiased
    over each pool (:func:`rewardjax.eval.bon_curves.bon_curves`)."""
    from rewardjax.eval.bon_curves import bon_curves

    return bon_curves(score_pools, gold_pools, list(ns))
