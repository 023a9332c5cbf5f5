"""Bradley-Terry losses pinned to hand-computed values.

Expected numbers are written from the formula -log σ(d) = log(1 + e^{-d}) with ``math``,
never by calling the code under test.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rewardjax.losses import bradley_terry_loss, ranking_loss


def nll(d: float) -> float:
    """-log σ(d) = log(1 + exp(-d)), by hand."""
    return math.log1p(math.exp(-d))


def test_single_pair_constant():
    # r⁺=1, r⁻=0: log(1 + e^-1) = 0.31326168751822286.
    loss, m = bradley_terry_loss(jnp.array([1.0]), jnp.array([0.0]))
    np.testing.assert_allclose(loss, 0.31326168751822286, rtol=1e-6)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(m["accuracy"], 1.0)
    np.testing.assert_allclose(m["reward_margin"], 1.0)
    np.testing.assert_allclose(m["center_loss"], 0.0)


def test_margin_and_centering():
    # margin 0.5: log(1 + e^-0.5) = 0.4740769841801067; centering 0.01 * (1 + 0)^2 = 0.01.
    loss, m = bradley_terry_loss(jnp.array([1.0]), jnp.array([0.0]), margin=0.5, center_coef=0.01)
    np.testing.assert_allclose(m["bt_loss"], 0.4740769841801067, rtol=1e-6)
    np.testing.assert_allclose(m["center_loss"], 0.01, rtol=1e-6)
    np.testing.assert_allclose(loss, 0.4840769841801067, rtol=1e-6)


def test_per_pair_margin_and_centering_batch():
    # Pairs (r⁺, r⁻, margin): (2, 1, 0) -> nll(1); (0.5, -0.5, 2) -> nll(1 - 2) = nll(-1).
    # Centering η=0.1: (2+1)^2 = 9, (0.5-0.5)^2 = 0 -> mean 4.5 * 0.1 = 0.45.
    loss, m = bradley_terry_loss(
        jnp.array([2.0, 0.5]), jnp.array([1.0, -0.5]), margin=jnp.array([0.0, 2.0]), center_coef=0.1
    )
    bt = (nll(1.0) + nll(-1.0)) / 2  # = (0.31326 + 1.31326) / 2 = 0.81326
    np.testing.assert_allclose(m["bt_loss"], bt, rtol=1e-6)
    np.testing.assert_allclose(m["center_loss"], 0.45, rtol=1e-6)
    np.testing.assert_allclose(loss, bt + 0.45, rtol=1e-6)


def test_batch_metrics_and_ties_count_wrong():
    # Pairs: (1, 0) d=1, (0, 0) tie d=0, (2, -1) d=3.
    loss, m = bradley_terry_loss(jnp.array([1.0, 0.0, 2.0]), jnp.array([0.0, 0.0, -1.0]))
    expected = (nll(1.0) + math.log(2.0) + nll(3.0)) / 3  # 0.3516654...
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(m["accuracy"], 2.0 / 3.0, rtol=1e-6)  # the tie is wrong
    np.testing.assert_allclose(m["reward_margin"], 4.0 / 3.0, rtol=1e-6)
    # Rewards {1, 0, 2, 0, 0, -1}: mean 2/6 = 1/3, var = (1+0+4+0+0+1)/6 - 1/9 = 8/9.
    np.testing.assert_allclose(m["reward_mean"], 1.0 / 3.0, rtol=1e-6)
    np.testing.assert_allclose(m["reward_std"], math.sqrt(8.0 / 9.0), rtol=1e-6)
    np.testing.assert_allclose(m["num_pairs"], 3.0)


def test_weights_mask_padding_rows_even_with_nan():
    # Third row is padding (w=0) and holds NaN: it must not touch loss, metrics or gradients.
    rc = jnp.array([1.0, 0.0, jnp.nan])
    rr = jnp.array([0.0, 0.0, jnp.inf])
    w = jnp.array([1.0, 1.0, 0.0])
    _, m = bradley_terry_loss(rc, rr, weights=w, center_coef=0.01)
    bt = (nll(1.0) + math.log(2.0)) / 2
    np.testing.assert_allclose(m["bt_loss"], bt, rtol=1e-6)
    np.testing.assert_allclose(m["center_loss"], 0.01 * (1.0 + 0.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(m["accuracy"], 0.5)
    # Real rewards {1, 0, 0, 0}: mean 0.25, std sqrt(0.25 - 0.0625) = sqrt(0.1875).
    np.testing.assert_allclose(m["reward_mean"], 0.25, rtol=1e-6)
    np.testing.assert_allclose(m["reward_std"], math.sqrt(0.1875), rtol=1e-6)
    np.testing.assert_allclose(m["num_pairs"], 2.0)
    g = jax.grad(lambda a, b: bradley_terry_loss(a, b, weights=w)[0], argnums=(0, 1))(rc, rr)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in g)
    np.testing.assert_allclose(g[0][2], 0.0)


def test_fractional_weights_are_weighted_mean():
    # w = (3, 1): loss = (3 nll(1) + 1 nll(-1)) / 4.
    loss, _ = bradley_terry_loss(
        jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), weights=jnp.array([3.0, 1.0])
    )
    np.testing.assert_allclose(loss, (3 * nll(1.0) + nll(-1.0)) / 4, rtol=1e-6)


def test_all_padding_gives_zero_not_nan():
    loss, m = bradley_terry_loss(jnp.ones(2), jnp.zeros(2), weights=jnp.zeros(2))
    assert float(loss) == 0.0
    assert all(bool(jnp.isfinite(v)) for v in m.values())


def test_bf16_inputs_give_float32():
    rc = jnp.array([1.0, 2.0], jnp.bfloat16)
    rr = jnp.array([0.0, 0.0], jnp.bfloat16)
    loss, m = bradley_terry_loss(rc, rr, center_coef=0.01)
    assert loss.dtype == jnp.float32
    assert all(v.dtype == jnp.float32 for v in m.values())
    # 1 and 2 are exact in bf16; center: 0.01 * (1 + 4) / 2 = 0.025.
    np.testing.assert_allclose(loss, (nll(1.0) + nll(2.0)) / 2 + 0.025, rtol=1e-6)
    loss_r, _ = ranking_loss(jnp.stack([rc, rr], axis=1), jnp.array([[0, 1], [0, 1]]))
    assert loss_r.dtype == jnp.float32


def test_jit_matches_eager():
    rc, rr = jnp.array([1.0, -2.0, 0.3]), jnp.array([0.0, 1.0, 0.3])
    w, mg = jnp.array([1.0, 0.5, 1.0]), jnp.array([0.1, 0.0, 0.2])

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(rc, rr, w, mg):
        return bradley_terry_loss(rc, rr, margin=mg, center_coef=0.01, weights=w)

    out_jit = f(rc, rr, w, mg)
    f(rc + 1.0, rr, w, mg)  # same shapes: no retrace
    chex.assert_trees_all_close(
        out_jit, bradley_terry_loss(rc, rr, margin=mg, center_coef=0.01, weights=w), rtol=1e-6
    )
    r = jnp.stack([rc, rr], 1)
    jitted = jax.jit(lambda r, k: ranking_loss(r, k, center_coef=0.01))
    chex.assert_trees_all_close(
        jitted(r, jnp.zeros((3, 2), jnp.int32).at[:, 1].set(1)),
        ranking_loss(r, jnp.zeros((3, 2), jnp.int32).at[:, 1].set(1), center_coef=0.01),
        rtol=1e-6,
    )


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_finite_grads_at_extreme_rewards(sign):
    rc = jnp.array([sign * 1e4, 0.0])
    rr = jnp.array([-sign * 1e4, 0.0])

    def f(a, b):
        return bradley_terry_loss(a, b, margin=0.5, center_coef=0.01)[0]

    loss = f(rc, rr)
    ga, gb = jax.grad(f, argnums=(0, 1))(rc, rr)
    assert bool(jnp.isfinite(loss))
    assert bool(jnp.all(jnp.isfinite(ga))) and bool(jnp.all(jnp.isfinite(gb)))
    # dBT/dr⁺ on the extreme row: -σ(-(d - m)) / B -> 0 when right (d=2e4), -1/2 when wrong.
    # Centering adds 2 η (r⁺ + r⁻) / B = 0 since r⁺ + r⁻ = 0.
    np.testing.assert_allclose(ga[0], 0.0 if sign > 0 else -0.5, atol=1e-6)
    if sign < 0:  # softplus(2e4 + 0.5) / 2 = 10000.25 plus nll(-0.5)/2 from the zero row
        np.testing.assert_allclose(loss, (2e4 + 0.5 + nll(-0.5)) / 2, rtol=1e-6)
    r = jnp.stack([rc, rr], 1)
    k = jnp.array([[0, 1], [0, 1]])
    gr = jax.grad(lambda r: ranking_loss(r, k, center_coef=0.01)[0])(r)
    assert bool(jnp.all(jnp.isfinite(gr)))


def test_ranking_three_responses_is_mean_of_pairs():
    # Ranks [0, 1, 2] (first best), rewards [2, 1, -1]:
    # pairs (0,1) d=1, (0,2) d=3, (1,2) d=2.
    loss, m = ranking_loss(jnp.array([[2.0, 1.0, -1.0]]), jnp.array([[0, 1, 2]]))
    np.testing.assert_allclose(loss, (nll(1.0) + nll(3.0) + nll(2.0)) / 3, rtol=1e-6)
    np.testing.assert_allclose(m["num_pairs"], 3.0)
    np.testing.assert_allclose(m["accuracy"], 1.0)
    np.testing.assert_allclose(m["reward_margin"], 2.0, rtol=1e-6)


def test_ranking_unordered_ranks_centering_and_margin():
    # Ranks [2, 0, 1]: order is response1 > response2 > response0. Rewards [0, 1, 3].
    # Pairs (better, worse): (1,2) d=1-3=-2, (1,0) d=1, (2,0) d=3; margin 0.5 on each.
    # Centering η=0.1 on sums: (1+3)^2=16, (1+0)^2=1, (3+0)^2=9 -> mean 26/3 * 0.1.
    loss, m = ranking_loss(
        jnp.array([[0.0, 1.0, 3.0]]), jnp.array([[2, 0, 1]]), margin=0.5, center_coef=0.1
    )
    bt = (nll(-2.5) + nll(0.5) + nll(2.5)) / 3
    np.testing.assert_allclose(m["bt_loss"], bt, rtol=1e-6)
    np.testing.assert_allclose(m["center_loss"], 2.6 / 3, rtol=1e-6)
    np.testing.assert_allclose(loss, bt + 2.6 / 3, rtol=1e-6)
    np.testing.assert_allclose(m["accuracy"], 2.0 / 3.0, rtol=1e-6)


def test_ranking_mask_and_rank_ties():
    # Row 0: response 2 masked (NaN reward) -> one pair (0,1), d=1.
    # Row 1: ranks [0, 0, 1] -> tie excluded; pairs (0,2) d=2-0=2, (1,2) d=-1-0=-1.
    rewards = jnp.array([[1.0, 0.0, jnp.nan], [2.0, -1.0, 0.0]])
    ranks = jnp.array([[0, 1, 2], [0, 0, 1]])
    mask = jnp.array([[1, 1, 0], [1, 1, 1]])
    loss, m = ranking_loss(rewards, ranks, mask=mask)
    np.testing.assert_allclose(loss, (nll(1.0) + nll(2.0) + nll(-1.0)) / 3, rtol=1e-6)
    np.testing.assert_allclose(m["num_pairs"], 3.0)
    loss_ex, _ = ranking_loss(rewards, ranks, mask=mask, normalize="examples")
    np.testing.assert_allclose(loss_ex, (nll(1.0) + (nll(2.0) + nll(-1.0)) / 2) / 2, rtol=1e-6)
    g = jax.grad(lambda r: ranking_loss(r, ranks, mask=mask)[0])(rewards)
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_allclose(g[0, 2], 0.0)


def test_ranking_k2_equals_bradley_terry():
    rng = np.random.default_rng(0)
    rc = jnp.asarray(rng.normal(size=6), jnp.float32)
    rr = jnp.asarray(rng.normal(size=6), jnp.float32)
    w = jnp.array([1.0, 1.0, 0.0, 2.0, 1.0, 0.5])
    mg = jnp.asarray(rng.uniform(size=6), jnp.float32)
    expected = bradley_terry_loss(rc, rr, margin=mg, center_coef=0.01, weights=w)
    # Chosen placed second in odd rows to check that ranks, not positions, decide.
    swap = jnp.arange(6) % 2 == 1
    rewards = jnp.stack([jnp.where(swap, rr, rc), jnp.where(swap, rc, rr)], 1)
    ranks = jnp.stack([swap.astype(jnp.int32), 1 - swap.astype(jnp.int32)], 1)
    for normalize in ("pairs", "examples"):
        got = ranking_loss(
            rewards, ranks, margin=mg, center_coef=0.01, weights=w, normalize=normalize
        )
        chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-7)


def test_ranking_bad_normalize():
    with pytest.raises(ValueError, match="normalize"):
        ranking_loss(jnp.zeros((1, 2)), jnp.array([[0, 1]]), normalize="mean")
