"""ODIN's loss against values computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rewardjax.losses.odin import odin_loss, pearson

# Two pairs; columns are (r_Q, r_L).
RC = np.array([[1.0, 0.5], [0.0, 2.0]], np.float32)
RR = np.array([[0.2, 0.0], [1.0, 1.0]], np.float32)
LC = np.array([10.0, 30.0], np.float32)
LR = np.array([20.0, 10.0], np.float32)
WQ = np.array([1.0, 2.0], np.float32)
WL = np.array([0.5, -1.0], np.float32)

# By hand, over the four responses (chosen 0, chosen 1, rejected 0, rejected 1):
#   lengths 10, 30, 20, 10: mean 17.5, deviations -7.5, 12.5, 2.5, -7.5, variance 275/4
#   r_Q 1.0, 0.0, 0.2, 1.0: mean 0.55, deviations .45, -.55, -.35, .45, variance 0.83/4,
#       covariance (-3.375 - 6.875 - 0.875 - 3.375)/4 = -3.625
#       rho_Q = -3.625 / sqrt(68.75 * 0.2075)
#   r_L 0.5, 2.0, 0.0, 1.0: mean 0.875, deviations -.375, 1.125, -.875, .125, variance 2.1875/4,
#       covariance (2.8125 + 14.0625 - 2.1875 - 0.9375)/4 = 3.4375
#       rho_L = 3.4375 / sqrt(68.75 * 0.546875)
RHO_Q = -3.625 / np.sqrt(68.75 * 0.2075)  # -0.95976
RHO_L = 3.4375 / np.sqrt(68.75 * 0.546875)  # 0.56061
# BT on r_Q + r_L: chosen 1.5, 2.0; rejected 0.2, 2.0; gaps 1.3 and 0.
BT = (np.log1p(np.exp(-1.3)) + np.log(2.0)) / 2  # 0.46708
ORTHO = 1.5  # |1 * 0.5 + 2 * (-1)|


def test_pearson_by_hand_and_constant_is_zero():
    x = jnp.array([1.0, 0.0, 0.2, 1.0])
    y = jnp.array([10.0, 30.0, 20.0, 10.0])
    assert float(pearson(x, y)) == pytest.approx(RHO_Q, abs=1e-6)
    assert float(pearson(jnp.ones(4), y)) == 0.0
    # Weight 0 removes an entry, whatever it holds.
    xw = jnp.array([1.0, 0.0, 0.2, 1.0, jnp.nan])
    yw = jnp.array([10.0, 30.0, 20.0, 10.0, 1e6])
    w = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0])
    assert float(pearson(xw, yw, w)) == pytest.approx(RHO_Q, abs=1e-6)


def test_odin_loss_terms_by_hand():
    loss, m = odin_loss(RC, RR, LC, LR, WQ, WL, length_weight=0.5, ortho_weight=0.1)
    assert float(m["ranking_loss"]) == pytest.approx(BT, abs=1e-6)
    assert float(m["corr_quality_length"]) == pytest.approx(RHO_Q, abs=1e-6)
    assert float(m["corr_length_length"]) == pytest.approx(RHO_L, abs=1e-6)
    assert float(m["length_loss"]) == pytest.approx(abs(RHO_Q) - RHO_L, abs=1e-6)
    assert float(m["ortho_loss"]) == pytest.approx(ORTHO, abs=1e-6)
    want = BT + 0.5 * (abs(RHO_Q) - RHO_L) + 0.1 * ORTHO  # 0.81665
    assert float(loss) == pytest.approx(want, abs=1e-6)
    assert float(m["loss"]) == pytest.approx(want, abs=1e-6)
    assert float(m["accuracy"]) == 0.5  # the tie (gap 0) is not a correct ranking
    assert float(m["quality_accuracy"]) == 0.5  # r_Q alone: 1.0 > 0.2, 0.0 < 1.0


def test_padding_pairs_change_nothing_and_leak_no_nan():
    rc = np.concatenate([RC, [[np.nan, np.inf]]]).astype(np.float32)
    rr = np.concatenate([RR, [[np.nan, 3.0]]]).astype(np.float32)
    lc, lr = np.append(LC, 1e4), np.append(LR, 0.0)
    w = np.array([1.0, 1.0, 0.0], np.float32)
    base, _ = odin_loss(RC, RR, LC, LR, WQ, WL)
    padded, _ = odin_loss(rc, rr, lc, lr, WQ, WL, weights=w)
    assert float(padded) == pytest.approx(float(base), abs=1e-6)
    g = jax.grad(lambda a: odin_loss(a, rr, lc, lr, WQ, WL, weights=w)[0])(jnp.asarray(rc))
    assert np.isfinite(np.asarray(g)).all() and np.all(np.asarray(g)[2] == 0)


def test_gradients_move_length_into_the_length_head():
    """Only the length term: its gradient raises r_L on long responses and pulls r_Q's
    correlation with length toward zero."""
    def length_term(rc, rr):
        return odin_loss(rc, rr, LC, LR, WQ, WL, length_weight=1.0, ortho_weight=0.0)[1][
            "length_loss"]

    g_rc, g_rr = jax.grad(length_term, argnums=(0, 1))(jnp.asarray(RC), jnp.asarray(RR))
    # r_L of the longest response (chosen 1, 30 tokens) goes up: its loss gradient is negative.
    assert float(g_rc[1, 1]) < 0
    # r_Q is negatively correlated with length: |rho_Q| falls when the long response's r_Q rises.
    assert float(g_rc[1, 0]) < 0
    # Ortho term: d|w_Q . w_L| / d w_Q = sign(w_Q . w_L) w_L = -w_L.
    g_wq = jax.grad(lambda wq: odin_loss(RC, RR, LC, LR, wq, WL, length_weight=0.0)[0])(
        jnp.asarray(WQ))
    np.testing.assert_allclose(np.asarray(g_wq), -WL, atol=1e-6)
