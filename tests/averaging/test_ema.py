"""Tests for rewardjax.averaging: EMA, Elastic Reset and interpolate, numbers pinned by hand.

Decays of 0.5 and values that are small dyadic fractions keep every expected number exact in
float32, so the comparisons below are equalities, not tolerances.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardjax.averaging import (
    ElasticResetState,
    EmaState,
    elastic_reset,
    ema,
    interpolate,
)


def _f32(x):
    return jnp.asarray(x, jnp.float32)


# ----------------------------------------------------------------------------------------------
# EMA
# ----------------------------------------------------------------------------------------------


def test_ema_three_updates_scalar():
    tx = ema(0.5)
    state = tx.init({"x": _f32(2.0)})
    # Average starts at the init params: θ̄₀ = 2.
    assert float(state.average["x"]) == 2.0 and int(state.count) == 0
    expected = []
    # θ̄₁ = 0.5·2   + 0.5·4  = 3
    # θ̄₂ = 0.5·3   + 0.5·8  = 5.5
    # θ̄₃ = 0.5·5.5 + 0.5·16 = 10.75
    for theta in (4.0, 8.0, 16.0):
        state = tx.update({"x": _f32(theta)}, state)
        expected.append(float(state.average["x"]))
    assert expected == [3.0, 5.5, 10.75]
    assert int(state.count) == 3
    # Without debias the "debiased" view is just the average.
    assert float(tx.debiased(state)["x"]) == 10.75


def test_ema_debiased():
    tx = ema(0.5, debias=True)
    state = tx.init({"x": _f32(2.0)})
    # Zero-initialised accumulator; at count 0 the debiased view is 0 (no 0/0).
    assert float(state.average["x"]) == 0.0
    assert float(tx.debiased(state)["x"]) == 0.0
    raw, debiased = [], []
    for theta in (4.0, 8.0, 16.0):
        state = tx.update({"x": _f32(theta)}, state)
        raw.append(float(state.average["x"]))
        debiased.append(float(tx.debiased(state)["x"]))
    # raw:  a₁ = 0.5·0 + 0.5·4 = 2;  a₂ = 0.5·2 + 0.5·8 = 5;  a₃ = 0.5·5 + 0.5·16 = 10.5
    assert raw == [2.0, 5.0, 10.5]
    # debiased: a_t / (1 − 0.5^t):  2/0.5 = 4;  5/0.75 = 20/3;  10.5/0.875 = 12
    # (12 = (0.125·4 + 0.25·8 + 0.5·16) / 0.875, the normalised weighted mean of 4, 8, 16.)
    np.testing.assert_allclose(debiased, [4.0, 20.0 / 3.0, 12.0], rtol=1e-6)
    assert debiased[0] == 4.0 and debiased[2] == 12.0


def test_ema_schedule_running_mean():
    # d(t) = t / (t + 1) with t = updates so far: d = 0, 1/2, 2/3 -> the running mean.
    tx = ema(lambda t: t / (t + 1))
    state = tx.init({"x": _f32(100.0)})
    out = []
    for theta in (4.0, 8.0, 16.0):
        state = tx.update({"x": _f32(theta)}, state)
        out.append(float(state.average["x"]))
    # 4;  (4 + 8)/2 = 6;  (4 + 8 + 16)/3 = 28/3 — the init value 100 gets weight 0 at d = 0.
    np.testing.assert_allclose(out, [4.0, 6.0, 28.0 / 3.0], rtol=1e-6)


def test_ema_rejects_bad_arguments():
    with pytest.raises(ValueError, match="constant decay"):
        ema(lambda t: 0.9, debias=True)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ema(1.5)


def test_ema_mixed_dtype_keeps_float32_average():
    params = {"w": jnp.asarray(1.0, jnp.bfloat16), "b": _f32(0.0),
              "step": jnp.asarray(3, jnp.int32)}
    tx = ema(0.5)
    state = tx.init(params)
    assert state.average["w"].dtype == jnp.float32
    assert state.average["b"].dtype == jnp.float32
    assert state.average["step"].dtype == jnp.int32  # non-float leaves are not averaged
    # bf16 spacing at 1 is 2⁻⁷, so 1 + 2⁻⁷ = 1.0078125 is a bf16 value.
    new = {"w": jnp.asarray(1.0078125, jnp.bfloat16), "b": _f32(1.0),
           "step": jnp.asarray(4, jnp.int32)}
    state = tx.update(new, state)
    # θ̄ = 0.5·1 + 0.5·1.0078125 = 1.00390625 = 1 + 2⁻⁸: exact in float32, but halfway between
    # two bf16 values, so a bf16 average would round back to 1.0 and never move.
    assert state.average["w"].dtype == jnp.float32
    assert float(state.average["w"]) == 1.00390625
    assert float(jnp.asarray(1.00390625, jnp.bfloat16)) == 1.0  # what bf16 would have kept
    assert float(state.average["b"]) == 0.5  # 0.5·0 + 0.5·1
    assert int(state.average["step"]) == 4  # latest value carried


def test_ema_jit_traces_once():
    tx = ema(0.5)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state):
        return tx.update(params, state)

    params = {"a": jnp.ones((2,), jnp.float32), "b": {"c": jnp.zeros((), jnp.bfloat16)}}
    state = tx.init(params)
    for i in range(4):
        state = step(jax.tree.map(lambda p, i=i: p + i, params), state)
    # θ̄ for leaf a: 1 → 0.5·1+0.5·1 = 1 → 0.5·1+0.5·2 = 1.5 → 0.5·1.5+0.5·3 = 2.25
    #   → 0.5·2.25+0.5·4 = 3.125
    np.testing.assert_array_equal(state.average["a"], [3.125, 3.125])
    assert int(state.count) == 4


# ----------------------------------------------------------------------------------------------
# Elastic Reset
# ----------------------------------------------------------------------------------------------

# Dict pytree: leaf "w" = [0, 1] and leaf "b"/"c" = 10, reset_every = 2, d = 0.5. The
# "optimizer" adds 4 to every param before each Elastic Reset update. Everything is linear and
# all leaves move by the same +4, so leaf value = (value for an anchor of 0) + anchor. For an
# anchor of 0 (online θ, EMA θ̄, both starting at 0):
#   step 1: θ = 0+4 = 4;     θ̄ = 0.5·0   + 0.5·4  = 2;     no reset -> θ = 4,     θ̄ = 2
#   step 2: θ = 4+4 = 8;     θ̄ = 0.5·2   + 0.5·8  = 5;     reset    -> θ = 5,     θ̄ = 0
#   step 3: θ = 5+4 = 9;     θ̄ = 0.5·0   + 0.5·9  = 4.5;   no reset -> θ = 9,     θ̄ = 4.5
#   step 4: θ = 9+4 = 13;    θ̄ = 0.5·4.5 + 0.5·13 = 8.75;  reset    -> θ = 8.75,  θ̄ = 0
#   step 5: θ = 8.75+4=12.75; θ̄ = 0.5·0  + 0.5·12.75 = 6.375; no reset -> θ = 12.75, θ̄ = 6.375
# (After a reset the EMA is the anchor, i.e. 0 here, 1 for w[1], 10 for b/c.)
_ER_ONLINE = [4.0, 5.0, 9.0, 8.75, 12.75]
_ER_EMA = [2.0, 0.0, 4.5, 0.0, 6.375]


def _er_params():
    return {"w": jnp.asarray([0.0, 1.0], jnp.float32), "b": {"c": _f32(10.0)}}


def _check_er_step(online, state, k):
    for anchor_w, got_online, got_ema in (
            (np.array([0.0, 1.0]), online["w"], state.ema["w"]),
            (10.0, online["b"]["c"], state.ema["b"]["c"])):
        np.testing.assert_array_equal(got_online, _ER_ONLINE[k] + anchor_w, err_msg=f"step {k+1}")
        np.testing.assert_array_equal(got_ema, _ER_EMA[k] + anchor_w, err_msg=f"step {k+1}")
    assert int(state.count) == k + 1


def test_elastic_reset_five_steps():
    tx = elastic_reset(decay=0.5, reset_every=2)
    online = _er_params()
    state = tx.init(online)
    assert isinstance(state, ElasticResetState)
    for k in range(5):
        online = jax.tree.map(lambda p: p + 4.0, online)  # the "optimizer update"
        online, state = tx.update(online, state)
        _check_er_step(online, state, k)
    # The anchor is never modified.
    np.testing.assert_array_equal(state.initial["w"], [0.0, 1.0])
    assert float(state.initial["b"]["c"]) == 10.0


def test_elastic_reset_jit_traces_once():
    tx = elastic_reset(decay=0.5, reset_every=2)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def train_step(online, state):
        online = jax.tree.map(lambda p: p + 4.0, online)  # stands in for the optimizer update
        return tx.update(online, state)

    online = _er_params()
    state = tx.init(online)
    # Five steps cross two resets and three non-resets; one trace covers them all.
    for k in range(5):
        online, state = train_step(online, state)
        _check_er_step(online, state, k)


def test_elastic_reset_bf16_online_params():
    tx = elastic_reset(decay=0.5, reset_every=1)
    online = {"w": jnp.asarray(1.0, jnp.bfloat16)}
    state = tx.init(online)
    assert state.ema["w"].dtype == jnp.float32
    assert state.initial["w"].dtype == jnp.bfloat16
    # Optimizer moves w to 1 + 2⁻⁶ = 1.015625 (a bf16 value); EMA = 0.5·1 + 0.5·1.015625 =
    # 1.0078125 = 1 + 2⁻⁷, also a bf16 value; reset_every = 1 -> online = EMA, EMA = anchor 1.
    online, state = tx.update({"w": jnp.asarray(1.015625, jnp.bfloat16)}, state)
    assert online["w"].dtype == jnp.bfloat16
    assert float(online["w"]) == 1.0078125
    assert state.ema["w"].dtype == jnp.float32 and float(state.ema["w"]) == 1.0


def test_elastic_reset_rejects_bad_arguments():
    with pytest.raises(ValueError, match="reset_every"):
        elastic_reset(0.5, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        elastic_reset(-0.1, 2)


# ----------------------------------------------------------------------------------------------
# nnx.State
# ----------------------------------------------------------------------------------------------


def _linear_state():
    with nnx.use_eager_sharding(False):
        model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    return graphdef, state


def test_ema_and_elastic_reset_on_nnx_state():
    graphdef, params = _linear_state()
    kernel0 = np.asarray(params["kernel"][...])

    tx = ema(0.5)
    es = jax.jit(tx.init)(params)
    assert isinstance(es, EmaState) and isinstance(es.average, nnx.State)
    # Update with 3·θ₀: θ̄ = 0.5·θ₀ + 0.5·3θ₀ = 2θ₀ (exact: scaling by 2 and 3 is exact in fp).
    es = jax.jit(tx.update)(jax.tree.map(lambda p: 3 * p, params), es)
    np.testing.assert_array_equal(es.average["kernel"][...], 2 * kernel0)

    er = elastic_reset(0.5, reset_every=1)
    rs = er.init(params)
    online, rs = jax.jit(er.update)(jax.tree.map(lambda p: 3 * p, params), rs)
    assert isinstance(online, nnx.State)
    # Reset every step: online = EMA = 0.5·θ₀ + 0.5·3θ₀ = 2θ₀; EMA -> θ₀.
    np.testing.assert_array_equal(online["kernel"][...], 2 * kernel0)
    np.testing.assert_array_equal(rs.ema["kernel"][...], kernel0)
    # The result merges back into a module.
    model = nnx.merge(graphdef, online)
    np.testing.assert_array_equal(model.kernel[...], 2 * kernel0)


# ----------------------------------------------------------------------------------------------
# interpolate
# ----------------------------------------------------------------------------------------------


def test_interpolate():
    a = {"x": _f32(2.0), "y": {"z": jnp.asarray([0.0, 4.0], jnp.bfloat16)}}
    b = {"x": _f32(6.0), "y": {"z": jnp.asarray([8.0, 0.0], jnp.bfloat16)}}
    # t = 0 and t = 1 return the endpoints exactly.
    assert float(interpolate(a, b, 0.0)["x"]) == 2.0
    assert float(interpolate(a, b, 1.0)["x"]) == 6.0

    @jax.jit
    @chex.assert_max_traces(n=1)
    def lerp(t):
        return interpolate(a, b, t)

    # x: 0.75·2 + 0.25·6 = 3;  z: 0.75·[0, 4] + 0.25·[8, 0] = [2, 3]
    out = lerp(jnp.float32(0.25))
    assert float(out["x"]) == 3.0
    assert out["y"]["z"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(out["y"]["z"].astype(jnp.float32), [2.0, 3.0])
    # Traced t: a new value reuses the compiled program. x: 0.5·2 + 0.5·6 = 4
    assert float(lerp(jnp.float32(0.5))["x"]) == 4.0
