"""WARM weight averaging over stacked pytrees, against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardjax.ensembles import (
    interpolate,
    interpolation_path,
    member,
    num_members,
    stack,
    uniform_average,
    unstack,
    weighted_average,
)


def _stacked_dict():
    # Two members stacked on axis 0; "step" is an integer leaf (never averaged).
    return {
        "dense": {
            "kernel": jnp.array([[1.0, 2.0], [5.0, 10.0]], jnp.float32),  # [M=2, 2]
            "bias": jnp.array([0.0, 4.0], jnp.float32),  # [M=2]
        },
        "step": jnp.array([7, 9], jnp.int32),  # [M=2]
    }


def _assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class _Counted(nnx.Module):
    """A tiny member with an integer step counter next to its float parameters."""

    def __init__(self, seed: int):
        self.linear = nnx.Linear(2, 3, rngs=nnx.Rngs(seed))
        self.step = nnx.Variable(jnp.asarray(100 + seed, jnp.int32))

    def __call__(self, x):
        return self.linear(x)


def _members(n=3):
    with nnx.use_eager_sharding(False):
        return [_Counted(seed) for seed in range(n)]


# --- stacked dict pytrees --------------------------------------------------------------------


def test_uniform_average_stacked_dict():
    avg = uniform_average(_stacked_dict())
    # kernel: ([1, 2] + [5, 10]) / 2 = [3, 6]; bias: (0 + 4) / 2 = 2; step from member 0: 7.
    np.testing.assert_array_equal(avg["dense"]["kernel"], [3.0, 6.0])
    np.testing.assert_array_equal(avg["dense"]["bias"], 2.0)
    assert avg["step"].dtype == jnp.int32
    assert int(avg["step"]) == 7


def test_weighted_average_weights_1_3():
    avg = weighted_average(_stacked_dict(), jnp.array([1.0, 3.0]))
    # Normalised weights [0.25, 0.75]:
    #   kernel: 0.25·[1, 2] + 0.75·[5, 10] = [0.25 + 3.75, 0.5 + 7.5] = [4, 8]
    #   bias:   0.25·0 + 0.75·4 = 3
    #   step:   member 0 -> 7 (not 0.25·7 + 0.75·9 = 8.5)
    np.testing.assert_allclose(avg["dense"]["kernel"], [4.0, 8.0], rtol=1e-7)
    np.testing.assert_allclose(avg["dense"]["bias"], 3.0, rtol=1e-7)
    assert int(avg["step"]) == 7
    # Scaling the weights changes nothing (they are normalised).
    _assert_tree_equal(avg, weighted_average(_stacked_dict(), [10.0, 30.0]))


def test_weighted_average_zero_weight_selects_member():
    avg = weighted_average(_stacked_dict(), [0.0, 2.0])
    np.testing.assert_array_equal(avg["dense"]["kernel"], [5.0, 10.0])


def test_list_form_matches_stacked_form():
    trees = unstack(_stacked_dict())
    _assert_tree_equal(uniform_average(trees), uniform_average(_stacked_dict()))
    _assert_tree_equal(
        weighted_average(trees, [1.0, 3.0]), weighted_average(_stacked_dict(), [1.0, 3.0])
    )


def test_leaf_dtype_preserved_for_bf16():
    stacked = {"w": jnp.array([[1.0, 2.0], [2.0, 4.0]], jnp.bfloat16)}
    avg = uniform_average(stacked)
    assert avg["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(avg["w"], np.float32), [1.5, 3.0])


def test_weighted_average_under_jit_with_traced_weights():
    stacked = _stacked_dict()
    avg = jax.jit(weighted_average)(stacked, jnp.array([1.0, 3.0]))
    _assert_tree_equal(avg, weighted_average(stacked, jnp.array([1.0, 3.0])))


@pytest.mark.parametrize(
    "weights, match",
    [
        ([1.0, -1.0], "non-negative"),
        ([0.0, 0.0], "all be zero"),
        ([1.0, float("nan")], "finite"),
        ([1.0, 2.0, 3.0], r"shape \(2,\)"),
    ],
)
def test_bad_weights_raise(weights, match):
    with pytest.raises(ValueError, match=match):
        weighted_average(_stacked_dict(), weights)
    with pytest.raises(ValueError, match=match):
        weighted_average(unstack(_stacked_dict()), weights)


# --- nnx.State ---------------------------------------------------------------------------------


def test_uniform_average_of_nnx_linear_states():
    members = _members(3)
    graphdef, _ = nnx.split(members[0])
    stacked = stack([nnx.state(m) for m in members])
    assert isinstance(stacked, nnx.State)
    assert stacked["linear"]["kernel"].shape == (3, 2, 3)  # [M, in, out]
    assert num_members(stacked) == 3

    avg = uniform_average(stacked)
    assert isinstance(avg, nnx.State)
    kernels = np.stack([np.asarray(m.linear.kernel[...]) for m in members])
    np.testing.assert_allclose(avg["linear"]["kernel"][...], kernels.mean(0), rtol=1e-6)
    assert int(avg["step"][...]) == 100  # integer counter from member 0, not 101

    # A linear layer is linear in its weights: the averaged model's output equals the mean
    # of the members' outputs (the averaged model rebuilds with nnx.merge).
    x = jnp.array([[1.0, -2.0], [0.5, 3.0]])
    averaged = nnx.merge(graphdef, avg)
    expected = jnp.mean(jnp.stack([m(x) for m in members]), axis=0)
    np.testing.assert_allclose(averaged(x), expected, rtol=1e-5, atol=1e-6)

    # The list form on nnx.State gives the same result.
    avg_list = uniform_average([nnx.state(m) for m in members])
    np.testing.assert_allclose(
        avg_list["linear"]["kernel"][...], avg["linear"]["kernel"][...], rtol=1e-6
    )


def test_rng_state_taken_from_member_0():
    with nnx.use_eager_sharding(False):
        mods = [nnx.Dropout(0.1, rngs=nnx.Rngs(s)) for s in range(2)]
    stacked = stack([nnx.state(m) for m in mods])
    avg = uniform_average(stacked)
    k0 = jax.random.key_data(nnx.state(mods[0])["rngs"]["key"][...])
    np.testing.assert_array_equal(jax.random.key_data(avg["rngs"]["key"][...]), k0)


# --- stack / unstack / member ------------------------------------------------------------------


def test_stack_unstack_round_trip_dict():
    stacked = _stacked_dict()
    trees = unstack(stacked)
    assert len(trees) == 2
    np.testing.assert_array_equal(trees[1]["dense"]["kernel"], [5.0, 10.0])
    assert int(trees[1]["step"]) == 9
    _assert_tree_equal(stack(trees), stacked)
    _assert_tree_equal(member(stacked, -1), trees[1])


def test_stack_unstack_round_trip_nnx_state():
    states = [nnx.state(m) for m in _members(2)]
    back = unstack(stack(states))
    for s, b in zip(states, back):
        assert isinstance(b, nnx.State)
        _assert_tree_equal(b, s)


def test_structure_and_index_errors():
    with pytest.raises(ValueError, match="at least one"):
        stack([])
    with pytest.raises(ValueError, match="member 1 has a different pytree structure"):
        stack([{"a": jnp.zeros(2)}, {"b": jnp.zeros(2)}])
    with pytest.raises(IndexError, match="out of range for 2 members"):
        member(_stacked_dict(), 2)
    with pytest.raises(ValueError, match="disagree on the member axis"):
        num_members({"a": jnp.zeros((2, 3)), "b": jnp.zeros((3,))})
    with pytest.raises(ValueError, match="scalar"):
        num_members({"a": jnp.zeros(())})


# --- interpolation -----------------------------------------------------------------------------


def test_interpolate_endpoints_exact_and_quarter():
    ka, kb = jax.random.split(jax.random.key(0))
    a = {"w": jax.random.normal(ka, (5, 4)), "step": jnp.int32(3)}
    b = {"w": jax.random.normal(kb, (5, 4)), "step": jnp.int32(8)}
    _assert_tree_equal(interpolate(a, b, 0.0), a)  # bit for bit
    at1 = interpolate(a, b, 1.0)
    np.testing.assert_array_equal(at1["w"], b["w"])  # bit for bit
    assert int(at1["step"]) == 3  # non-float leaf from a

    # 0.75·[1, 2, -4] + 0.25·[5, 10, 8] = [0.75 + 1.25, 1.5 + 2.5, -3 + 2] = [2, 4, -1]
    q = interpolate({"w": jnp.array([1.0, 2.0, -4.0])}, {"w": jnp.array([5.0, 10.0, 8.0])}, 0.25)
    np.testing.assert_allclose(q["w"], [2.0, 4.0, -1.0], rtol=1e-7)


def test_interpolation_path():
    a = {"w": jnp.array([0.0, 4.0])}
    b = {"w": jnp.array([4.0, 0.0])}
    ts, trees = interpolation_path(a, b, 5)
    assert ts == [0.0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(
        np.stack([t["w"] for t in trees]),
        [[0.0, 4.0], [1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [4.0, 0.0]],
    )
    with pytest.raises(ValueError, match="num >= 2"):
        interpolation_path(a, b, 1)


def test_interpolate_nnx_members():
    s0, s1 = (nnx.state(m) for m in _members(2))
    mid = interpolate(s0, s1, 0.5)
    assert isinstance(mid, nnx.State)
    _assert_tree_equal(mid, uniform_average([s0, s1]))
