"""Process metrics pinned to hand-computed values."""

import numpy as np
import pytest

from rewardjax.eval.process import (
    aggregate,
    best_of_n,
    first_bad,
    first_error_metrics,
    pad_steps,
    process_report,
    step_metrics,
)

NAN = np.nan
# Three solutions (3, 4 and 2 real steps): P(good) per step, NaN-padded.
PROBS = np.array([[0.9, 0.2, 0.8, NAN], [0.7, 0.6, 0.4, 0.3], [0.9, 0.9, NAN, NAN]])
LABELS = np.array([[1, 0, 0, 1], [1, 1, 1, 0], [1, 1, 0, 0]], bool)  # padding ignored


def test_step_accuracy_and_f1_on_bad_steps():
    m = step_metrics(PROBS, LABELS)
    # predicted good: TFT / TTFF / TT against TFF / TTTF / TT: 7 of 9 right
    assert m["steps"] == 9
    assert m["step_accuracy"] == pytest.approx(7 / 9)
    # bad = positive: tp 2 (row 0 step 1, row 1 step 3), fp 1 (row 1 step 2), fn 1 (row 0 step 2)
    assert m["bad_precision"] == pytest.approx(2 / 3)
    assert m["bad_recall"] == pytest.approx(2 / 3)
    assert m["step_f1"] == pytest.approx(2 / 3)


def test_first_error_localisation_processbench_f1():
    real = np.isfinite(PROBS)
    assert first_bad(LABELS, real).tolist() == [1, 3, -1]
    assert first_bad(PROBS >= 0.5, real).tolist() == [1, 2, -1]
    m = first_error_metrics([1, 2, -1], [1, 3, -1])
    # erroneous: 1 of 2 exactly right; correct: 1 of 1 predicted error-free; F1 = 2ab / (a + b)
    assert m["first_error_acc_erroneous"] == 0.5
    assert m["first_error_acc_correct"] == 1.0
    assert m["first_error_f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert first_error_metrics([-1, 0], [2, -1])["first_error_f1"] == 0.0


def test_aggregates():
    np.testing.assert_allclose(aggregate(PROBS, "min"), [0.2, 0.3, 0.9], rtol=1e-6)
    np.testing.assert_allclose(aggregate(PROBS, "last"), [0.8, 0.3, 0.9], rtol=1e-6)
    np.testing.assert_allclose(aggregate(PROBS, "product"),
                               [0.9 * 0.2 * 0.8, 0.7 * 0.6 * 0.4 * 0.3, 0.81], rtol=1e-6)
    assert np.isnan(aggregate(np.full((1, 2), NAN), "min")[0])
    with pytest.raises(ValueError, match="unknown aggregate 'mean'"):
        aggregate(PROBS, "mean")


def test_process_report_and_padding():
    r = process_report(PROBS, LABELS)
    assert r["solutions"] == 3 and r["step_accuracy"] == pytest.approx(7 / 9)
    assert r["first_error_f1"] == pytest.approx(2 / 3)
    # gold: only the last solution is error-free; min scores 0.2 / 0.3 / 0.9 all on the right
    # side of 0.5, last scores 0.8 for the first (wrong)
    assert r["solution_accuracy_min"] == 1.0
    assert r["solution_accuracy_last"] == pytest.approx(2 / 3)
    assert r["score_gap_min"] == pytest.approx(0.9 - 0.25)
    padded = pad_steps([[0.5], [0.1, 0.2]])
    assert padded.shape == (2, 2) and np.isnan(padded[0, 1])


def test_best_of_n_picks_by_score():
    scores = [[0.1, 0.9], [0.8, 0.2]]
    gold = [[0.0, 1.0], [0.0, 1.0]]
    out = best_of_n(scores, gold, ns=(1, 2))
    # n=1: a random member (gold 0.5); n=2: the higher score: gold 1 in pool 0, 0 in pool 1
    np.testing.assert_allclose(out["gold"], [0.5, 0.5])
    out = best_of_n([[0.1, 0.9]], [[0.0, 1.0]], ns=(1, 2))
    np.testing.assert_allclose(out["gold"], [0.5, 1.0])
