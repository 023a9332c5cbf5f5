"""Host-side eval metrics pinned to hand-computed values."""

import math

import numpy as np
import pytest

from rewardjax.eval.metrics import (
    calibration,
    pair_calibration,
    pair_metrics,
    pairwise_accuracy,
    preference_probs,
    reward_stats,
)

# Hand-made calibration set (no p on a bin edge):
#   p = .05 .15 .12 .35 .55 .85 .92 .95
#   y =  0   0   1   0   1   0   1   1
PROBS = [0.05, 0.15, 0.12, 0.35, 0.55, 0.85, 0.92, 0.95]
LABELS = [0, 0, 1, 0, 1, 0, 1, 1]


def test_ece_and_mce_equal_width_bins():
    # 10 equal-width bins; per bin |Σp - Σy| and |mean p - mean y|:
    #   bin0 {.05}/y0:        .05 , .05
    #   bin1 {.15,.12}/y0,1:  |.27 - 1| = .73 , |.135 - .5| = .365
    #   bin3 {.35}/y0:        .35 , .35
    #   bin5 {.55}/y1:        .45 , .45
    #   bin8 {.85}/y0:        .85 , .85
    #   bin9 {.92,.95}/y1,1:  |1.87 - 2| = .13 , .065
    # ECE = (.05+.73+.35+.45+.85+.13)/8 = 2.56/8 = 0.32; MCE = .85.
    out = calibration(PROBS, LABELS)
    assert out["ece"] == pytest.approx(0.32, abs=1e-12)
    assert out["mce"] == pytest.approx(0.85, abs=1e-12)


def test_ace_equal_mass_bins():
    # 4 equal-mass bins over p sorted: {.05(0), .12(1)}, {.15(0), .35(0)}, {.55(1), .85(0)},
    # {.92(1), .95(1)} -> |.17-1| + |.5-0| + |1.4-1| + |1.87-2| = .83+.5+.4+.13 = 1.86;
    # ACE = 1.86 / 8 = 0.2325.
    assert calibration(PROBS, LABELS, num_bins=4)["ace"] == pytest.approx(0.2325, abs=1e-12)
    # 10 bins over 8 points: one point per bin (2 empty, skipped) -> mean |p - y|
    # = (.05+.15+.88+.35+.45+.85+.08+.05)/8 = 2.86/8 = 0.3575.
    assert calibration(PROBS, LABELS)["ace"] == pytest.approx(0.3575, abs=1e-12)


def test_perfect_calibration_and_edges():
    # p=.75 on 4 points with 3 positives: bin7 |3 - 3| = 0. Equal p share one equal-mass bin
    # (not split by input order), so ACE is 0 too, for any bin count and any order.
    for labels in ([1, 1, 1, 0], [0, 1, 1, 1]):
        for bins in (2, 10):
            out = calibration([0.75] * 4, labels, num_bins=bins)
            assert out == pytest.approx({"ece": 0.0, "ace": 0.0, "mce": 0.0}, abs=1e-12)
    # Ties merge into the lower bin: p = .2,.2,.2,.9 in 2 bins -> {.2 x3 | y 0,0,1}, {.9 | y 1}
    # -> (|.6 - 1| + |.9 - 1|)/4 = .5/4 = .125.
    assert calibration([0.2, 0.2, 0.2, 0.9], [0, 0, 1, 1], 2)["ace"] == pytest.approx(0.125)
    # p = 1.0 falls into the last bin, p = 0.0 into the first: both exact -> 0.
    assert calibration([0.0, 1.0], [0, 1])["ece"] == pytest.approx(0.0)
    assert all(math.isnan(v) for v in calibration([], []).values())
    with pytest.raises(ValueError, match="probs"):
        calibration([1.5], [1])
    with pytest.raises(ValueError, match="entries"):
        calibration([0.5, 0.5], [1])


def test_pairwise_accuracy_ties_are_wrong():
    # (1 vs 1) tie -> wrong, (2 > 1) right, (3 < 4) wrong -> 1/3.
    assert pairwise_accuracy([1.0, 2.0, 3.0], [1.0, 1.0, 4.0]) == pytest.approx(1.0 / 3.0)
    assert pairwise_accuracy(np.zeros(5), np.zeros(5)) == 0.0


def test_preference_probs():
    # σ(0) = 1/2, σ(log 3) = 3/(3+1) = 3/4, σ(-log 3) = 1/4; huge gaps saturate without overflow.
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p = preference_probs(
            [0.0, math.log(3.0), 0.0, 1000.0, -1000.0], [0.0, 0.0, math.log(3.0), 0.0, 0.0]
        )
    np.testing.assert_allclose(p, [0.5, 0.75, 0.25, 1.0, 0.0], atol=1e-12)


def test_pair_calibration_both_orientations_vs_y_always_one():
    # 4 pairs with gaps log3, log3, log3, -log3: the model says 75% four times and is right 3/4
    # times, i.e. calibrated. Both orientations give points
    #   (.75, 1) x3, (.25, 1) x1, (.25, 0) x3, (.75, 0) x1:
    #   bin7 Σp = 3, Σy = 3; bin2 Σp = 1, Σy = 1 -> ECE = 0.
    # Naively with y ≡ 1: bin7 |2.25 - 3| = .75, bin2 |.25 - 1| = .75 -> ECE = 1.5/4 = .375.
    l3 = math.log(3.0)
    rc, rr = [l3, l3, l3, 0.0], [0.0, 0.0, 0.0, l3]
    out = pair_calibration(rc, rr)
    assert out == pytest.approx({"ece": 0.0, "ace": 0.0, "mce": 0.0}, abs=1e-12)
    naive = calibration(preference_probs(rc, rr), np.ones(4))
    assert naive["ece"] == pytest.approx(0.375, abs=1e-12)


def test_pair_calibration_random_orientation_is_seeded():
    rng = np.random.default_rng(1)
    rc, rr = rng.normal(size=50), rng.normal(size=50)
    a = pair_calibration(rc, rr, seed=3, orientation="random")
    assert a == pair_calibration(rc, rr, seed=3, orientation="random")
    assert all(0.0 <= v <= 1.0 for v in a.values())
    with pytest.raises(ValueError, match="orientation"):
        pair_calibration(rc, rr, orientation="left")


def test_reward_stats():
    # [1, 2, 3, 4]: mean 2.5, population var (2.25+.25+.25+2.25)/4 = 1.25.
    s = reward_stats([1.0, 2.0, 3.0, 4.0])
    assert s == pytest.approx((2.5, math.sqrt(1.25), 1.0, 4.0))
    mean, _, lo, hi = s
    assert (mean, lo, hi) == (2.5, 1.0, 4.0)
    assert s._asdict()["std"] == pytest.approx(math.sqrt(1.25))


def test_pair_metrics_by_group():
    # group a: (1>0), (2>1) -> acc 1; rewards {1,2,0,1}: mean 1, var (0+1+1+0)/4 = .5.
    # group b: (0=0) tie, (5<6) -> acc 0; rewards {0,5,0,6}: mean 11/4.
    rc = [1.0, 5.0, 2.0, 0.0]
    rr = [0.0, 6.0, 1.0, 0.0]
    groups = ["a", "b", "a", "b"]
    out = pair_metrics(rc, rr, groups)
    assert out["n"] == 4
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["macro_accuracy"] == pytest.approx(0.5)
    assert list(out["by_group"]) == ["a", "b"]
    a, b = out["by_group"]["a"], out["by_group"]["b"]
    assert (a["n"], b["n"]) == (2, 2)
    assert a["accuracy"] == 1.0 and b["accuracy"] == 0.0
    assert a["reward_mean"] == pytest.approx(1.0)
    assert a["reward_std"] == pytest.approx(math.sqrt(0.5))
    assert b["reward_mean"] == pytest.approx(2.75)
    assert a["reward_margin"] == pytest.approx(1.0)
    assert b["reward_margin"] == pytest.approx(-0.5)
    # Overall rewards {1,5,2,0,0,6,1,0}: mean 15/8.
    assert out["reward_mean"] == pytest.approx(15.0 / 8.0)
    for key in ("ece", "ace", "mce"):
        assert 0.0 <= out[key] <= 1.0 and key in a
    # Group b's tie: p = .5 in both orientations with labels 1 and 0 -> bin5 gap 0; the other
    # pair has gap -1: p = σ(-1), points (σ(-1), 1), (σ(1), 0) in bins 2 and 7, gaps
    # 1 - σ(-1) = σ(1) each -> ECE = 2σ(1)/4.
    sig1 = 1.0 / (1.0 + math.exp(-1.0))
    assert b["ece"] == pytest.approx(2 * sig1 / 4, abs=1e-12)
    assert b["mce"] == pytest.approx(sig1, abs=1e-12)


def test_pair_metrics_without_groups_and_errors():
    out = pair_metrics([1.0, 0.0], [0.0, 1.0])
    assert out["by_group"] == {} and out["n"] == 2
    assert out["accuracy"] == 0.5
    with pytest.raises(ValueError, match="groups"):
        pair_metrics([1.0], [0.0], ["a", "b"])
    with pytest.raises(ValueError, match="pairs"):
        pair_metrics([1.0, 2.0], [0.0])
