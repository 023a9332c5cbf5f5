"""Prediction-ensemble combiners against hand-computed values."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rewardjax.ensembles import (
    METHODS,
    combine,
    mean_minus_std_reward,
    mean_reward,
    median_reward,
    member_disagreement,
    min_reward,
    uwo_reward,
)

# 3 members (rows) x 4 examples (columns).
R = np.array(
    [
        [1.0, 2.0, 0.0, 4.0],
        [3.0, 2.0, 6.0, -2.0],
        [2.0, 5.0, 3.0, 1.0],
    ],
    np.float32,
)
# Per column, by hand:
#   col 0: 1, 3, 2  -> mean 2, median 2, min 1,  deviations -1, 1, 0  -> var (1+1+0)/3 = 2/3
#   col 1: 2, 2, 5  -> mean 3, median 2, min 2,  deviations -1,-1, 2  -> var (1+1+4)/3 = 2
#   col 2: 0, 6, 3  -> mean 3, median 3, min 0,  deviations -3, 3, 0  -> var (9+9+0)/3 = 6
#   col 3: 4,-2, 1  -> mean 1, median 1, min -2, deviations  3,-3, 0  -> var (9+9+0)/3 = 6
# (population variance: divide by M = 3, not M - 1 = 2.)
MEAN = [2.0, 3.0, 3.0, 1.0]
MEDIAN = [2.0, 2.0, 3.0, 1.0]
MIN = [1.0, 2.0, 0.0, -2.0]
VAR = [2.0 / 3.0, 2.0, 6.0, 6.0]
STD = [math.sqrt(2.0 / 3.0), math.sqrt(2.0), math.sqrt(6.0), math.sqrt(6.0)]
#   = [0.816497, 1.414214, 2.449490, 2.449490]
# UWO, λ = 0.5: mean - var/2 = [2 - 1/3, 3 - 1, 3 - 3, 1 - 3]
UWO_HALF = [5.0 / 3.0, 2.0, 0.0, -2.0]
# UWO, λ = 1: mean - var = [2 - 2/3, 3 - 2, 3 - 6, 1 - 6]
UWO_ONE = [4.0 / 3.0, 1.0, -3.0, -5.0]
# mean - std/2 = [2 - 0.408248, 3 - 0.707107, 3 - 1.224745, 1 - 1.224745]
MMS_HALF = [1.591752, 2.292893, 1.775255, -0.224745]

EXPECTED_HALF = {
    "mean": MEAN,
    "median": MEDIAN,
    "min": MIN,
    "uwo": UWO_HALF,
    "mean_minus_std": MMS_HALF,
}


@pytest.mark.parametrize("method", METHODS)
def test_combine_hand_values(method):
    out = combine(jnp.asarray(R), method, lam=0.5)
    assert out.shape == (4,)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, EXPECTED_HALF[method], rtol=1e-6, atol=1e-6)


def test_individual_functions_match_hand_values():
    r = jnp.asarray(R)
    np.testing.assert_allclose(mean_reward(r), MEAN, atol=1e-6)
    np.testing.assert_allclose(median_reward(r), MEDIAN, atol=1e-6)
    np.testing.assert_allclose(min_reward(r), MIN, atol=1e-6)
    np.testing.assert_allclose(uwo_reward(r), UWO_HALF, atol=1e-6)  # default λ = 0.5
    np.testing.assert_allclose(uwo_reward(r, lam=1.0), UWO_ONE, atol=1e-6)
    np.testing.assert_allclose(mean_minus_std_reward(r), MMS_HALF, atol=1e-6)
    # mean - 1·std = [2 - 0.816497, 3 - 1.414214, 3 - 2.449490, 1 - 2.449490]
    np.testing.assert_allclose(
        mean_minus_std_reward(r, lam=1.0), [1.183503, 1.585786, 0.550510, -1.449490], atol=1e-6
    )
    np.testing.assert_allclose(member_disagreement(r), STD, atol=1e-6)


def test_uwo_uses_population_variance():
    # Sample variance (ddof=1) of col 0 would be 1, giving 2 - 0.5 = 1.5 instead of 5/3.
    out = uwo_reward(jnp.asarray(R[:, :1]))
    np.testing.assert_allclose(out, [5.0 / 3.0], atol=1e-6)
    np.testing.assert_allclose(np.var(R, axis=0), VAR, atol=1e-6)


def test_median_even_number_of_members_averages_middle_two():
    # Members 1, 2, 3, 10: middle two are 2 and 3 -> 2.5 (the outlier 10 does not matter).
    out = median_reward(jnp.array([[1.0], [10.0], [3.0], [2.0]]))
    np.testing.assert_allclose(out, [2.5])


def test_single_member_has_zero_penalty():
    r = jnp.asarray(R[:1])
    for method in METHODS:
        np.testing.assert_allclose(combine(r, method, lam=3.0), R[0], atol=1e-6)
    np.testing.assert_allclose(member_disagreement(r), np.zeros(4))


@pytest.mark.parametrize("method", METHODS)
def test_axis_handling(method):
    expected = np.asarray(EXPECTED_HALF[method])
    # Members on the last axis: [4 examples, 3 members].
    rt = jnp.asarray(R.T)
    np.testing.assert_allclose(combine(rt, method, axis=1), expected, atol=1e-6)
    np.testing.assert_allclose(combine(rt, method, axis=-1), expected, atol=1e-6)
    # Extra trailing dims: [3 members, 2, 2] keeps the [2, 2] shape.
    r3 = jnp.asarray(R.reshape(3, 2, 2))
    out = combine(r3, method)
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out, expected.reshape(2, 2), atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_jit_matches_eager_and_lam_is_traceable(method):
    # The counter is keyed on the function's code, shared by every parametrized case.
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(r, lam):
        return combine(r, method, lam=lam)

    r = jnp.asarray(R)
    np.testing.assert_allclose(f(r, 0.5), EXPECTED_HALF[method], atol=1e-6)
    # A new λ value reuses the compiled program (λ is an array argument, not static).
    out = f(r, 1.0)
    if method == "uwo":
        np.testing.assert_allclose(out, UWO_ONE, atol=1e-6)


def test_jit_with_static_method_argument():
    f = jax.jit(combine, static_argnames=("method", "axis"))
    np.testing.assert_allclose(f(jnp.asarray(R.T), "uwo", lam=0.5, axis=1), UWO_HALF, atol=1e-6)


def test_bf16_input_combines_in_float32():
    out = combine(jnp.asarray(R, jnp.bfloat16), "uwo")
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, UWO_HALF, atol=1e-6)  # values exact in bf16


def test_unknown_method_names_valid_methods():
    with pytest.raises(ValueError, match="unknown ensemble method 'max'") as err:
        combine(jnp.asarray(R), "max")
    for method in METHODS:
        assert method in str(err.value)
