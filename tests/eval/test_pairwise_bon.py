"""Best-of-n by knockout and round-robin, and the position-symmetrised probability, pinned to
hand-built preference matrices and hand-computed values."""

import numpy as np
import pytest

from rewardjax.eval.pairwise_bon import (
    bracket,
    copeland,
    knockout,
    matrix_compare,
    order_report,
    preference_matrix,
    round_robin,
    round_robin_winner,
    symmetric_logit,
    symmetric_prob,
)


def matrix(upper: dict, n: int) -> np.ndarray:
    m = np.full((n, n), 0.5)
    for (i, j), p in upper.items():
        m[i, j], m[j, i] = p, 1 - p
    return m


# 0 beats 1 and 2, loses to 3; 1 beats 2, ties 3; 2 beats 3.
FOUR = matrix({(0, 1): 0.8, (0, 2): 0.6, (0, 3): 0.4, (1, 2): 0.7, (1, 3): 0.5, (2, 3): 0.9}, 4)
# Rock-paper-scissors: 0 > 1 (0.9), 1 > 2 (0.6), 2 > 0 (0.7).
CYCLE = matrix({(0, 1): 0.9, (1, 2): 0.6, (0, 2): 0.3}, 3)


def test_symmetric_probability_by_hand():
    # P(A|A,B) = σ(2) = 0.880797, P(B|B,A) = σ(-1) = 0.268941: (0.880797 + 0.731059) / 2
    assert symmetric_prob(2.0, -1.0) == pytest.approx(0.8059278283039435, abs=1e-12)
    assert symmetric_logit(2.0, -1.0) == pytest.approx(1.423764086516958, abs=1e-12)
    z = np.array([3.0, -7.0, 0.0, 80.0, -400.0])
    w = np.array([1.0, 2.0, 0.0, 90.0, 300.0])
    s = symmetric_logit(z, w)
    np.testing.assert_array_equal(symmetric_logit(w, z), -s)  # odd in the swap, exactly
    assert np.all(np.isfinite(s))  # no overflow for huge logits
    assert symmetric_logit(1.5, 1.5) == 0.0  # both orders say "the first": no preference


def test_order_report_by_hand():
    # pair 0: both orders right; pair 1: only chosen-first right (a flip); pair 2: both wrong
    r = order_report([2.0, 1.0, -1.0], [-1.0, 3.0, 1.0])
    assert r["accuracy_chosen_first"] == pytest.approx(2 / 3)
    assert r["accuracy_chosen_second"] == pytest.approx(1 / 3)
    assert r["accuracy_one_order"] == pytest.approx(0.5)
    assert r["flip_rate"] == pytest.approx(1 / 3)
    # pair 1: σ(1) + σ(-3) < 1, so P_sym(chosen) < 0.5: wrong after symmetrising
    assert r["accuracy_symmetrised"] == pytest.approx(1 / 3)
    sig = lambda z: 1 / (1 + np.exp(-np.asarray(z)))  # noqa: E731
    bias = np.mean((sig([2.0, 1.0, -1.0]) + sig([-1.0, 3.0, 1.0])) / 2) - 0.5
    assert r["first_position_bias"] == pytest.approx(bias)


def test_preference_matrix_asks_each_unordered_pair_once():
    calls = []

    def compare(pairs):
        calls.append(list(pairs))
        return [FOUR[i, j] for i, j in pairs]

    m = preference_matrix(compare, 4)
    assert calls == [[(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]]
    np.testing.assert_allclose(m, FOUR)


def test_round_robin_copeland_by_hand():
    np.testing.assert_allclose(copeland(FOUR), [2.0, 1.5, 1.0, 1.5])
    winner, m = round_robin(matrix_compare(FOUR), 4)
    assert winner == 0
    # a Copeland tie (1 win each) goes to the higher mean P: 0 (0.60) > 2 (0.55) > 1 (0.35)
    np.testing.assert_allclose(copeland(CYCLE), [1.0, 1.0, 1.0])
    assert round_robin_winner(CYCLE) == 0
    # all equal: the lowest index
    assert round_robin_winner(np.full((3, 3), 0.5)) == 0


def test_knockout_bracket_decides_on_a_cycle():
    winner, matches = knockout(matrix_compare(CYCLE), 3)  # (0, 1) -> 0; bye 2; (0, 2) -> 2
    assert winner == 2
    assert matches == [(0, 1, pytest.approx(0.9)), (0, 2, pytest.approx(0.3))]
    winner, matches = knockout(matrix_compare(CYCLE), 3, order=[1, 2, 0])  # 1; bye 0; 0
    assert winner == 0
    assert matches == [(1, 2, pytest.approx(0.6)), (1, 0, pytest.approx(0.1))]


def test_knockout_rounds_batched_ties_to_the_earlier_position_and_n_minus_1_matches():
    calls = []

    def compare(pairs):
        calls.append(len(pairs))
        return [FOUR[i, j] for i, j in pairs]

    winner, matches = knockout(compare, 4)  # (0,1) -> 0, (2,3) -> 2; (0,2) -> 0
    assert (winner, calls, len(matches)) == (0, [2, 1], 3)
    tie = matrix({(0, 1): 0.5}, 2)
    assert knockout(matrix_compare(tie), 2)[0] == 0
    assert knockout(matrix_compare(tie), 2, order=[1, 0])[0] == 1
    assert knockout(matrix_compare(tie), 1)[0] == 0  # a pool of one: no match


def test_bracket_is_deterministic_and_bad_compares_are_errors():
    assert bracket(4) == [0, 1, 2, 3]
    assert bracket(6, seed=3) == bracket(6, seed=3)
    assert sorted(bracket(6, seed=3)) == list(range(6))
    with pytest.raises(ValueError, match="returned"):
        preference_matrix(lambda pairs: [0.5], 3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        knockout(lambda pairs: [1.5] * len(pairs), 2)
    with pytest.raises(ValueError, match="empty pool"):
        knockout(matrix_compare(FOUR), 0)
