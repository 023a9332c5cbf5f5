"""K LoRA experts on one base: stacking, vmapped scoring against a loop, base held once."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from rewardjax.lora import (
    LoRAConfig,
    apply_lora,
    load_lora_state,
    lora_state,
    score_experts,
    score_experts_loop,
    split_lora,
    stack_adapters,
)
from rewardjax.models import registry
from rewardjax.sharding import logical_to_spec, make_mesh, state_shardings
from tests.lora import BERT, LLAMA, perturb_lora_b, score, tiny_batch, tiny_reward_model

K = 3


def _snapshot(state):
    """New Variable objects over the same (immutable) arrays, so later updates don't alias."""
    return jax.tree.map(lambda x: x, state)


def _experts(path=LLAMA, include_head=True, k=K):
    """A LoRA reward model and K distinct adapter states (random B and, optionally, heads)."""
    model, _ = tiny_reward_model(path)
    apply_lora(model, LoRAConfig(rank=4, alpha=8.0), seed=0)
    states = []
    for i in range(k):
        perturb_lora_b(model, seed=10 + i)
        if include_head:
            model.head.kernel[...] = jax.random.normal(jax.random.key(20 + i),
                                                       model.head.kernel.shape)
            model.head.bias[...] = jnp.full(model.head.bias.shape, float(i))
        states.append(_snapshot(lora_state(model, include_head=include_head)))
    return model, states


def test_stack_adapters_adds_a_leading_expert_axis():
    _, states = _experts()
    stacked = stack_adapters(states)
    q = stacked["backbone"]["layers"]["attn"]["q_proj"]
    assert q["lora_a"].shape == (K, 2, 32, 4)
    assert q["lora_a"].get_metadata()["out_sharding"] == ("expert", "layers", "embed", "lora_rank")
    assert stacked["head"]["kernel"].shape == (K, 32, 1)
    assert logical_to_spec(q["lora_a"].get_metadata()["out_sharding"]) == P(None, None, "fsdp")
    shardings = state_shardings(stacked, make_mesh(devices=jax.devices()[:1]))
    assert jax.tree.leaves(shardings)[0].spec == P()  # placeable; 1 device -> replicated
    np.testing.assert_array_equal(np.asarray(q["lora_b"][...][1]),
                                  np.asarray(states[1]["backbone"]["layers"]["attn"]["q_proj"]
                                             ["lora_b"][...]))


def test_stack_adapters_rejects_mismatched_states():
    _, states = _experts(k=1)
    other, _ = tiny_reward_model()
    apply_lora(other, LoRAConfig(rank=2), seed=0)
    with pytest.raises(ValueError, match="lora_a"):
        stack_adapters([states[0], lora_state(other)])
    with pytest.raises(ValueError, match="different paths"):
        stack_adapters([states[0], lora_state(other, include_head=False)])
    with pytest.raises(ValueError, match="at least one"):
        stack_adapters([])


@pytest.mark.parametrize("include_head", [True, False], ids=["own_heads", "shared_head"])
def test_score_experts_matches_the_loop_and_each_expert_alone(include_head):
    model, states = _experts(include_head=include_head)
    batch = tiny_batch(batch=2)
    graphdef, _, rest = split_lora(model)  # rest never holds adapters; the head is in `_`
    if not include_head:
        graphdef, _, rest = nnx.split(model, nnx.LoRAParam, ...)  # the head stays shared
    stacked = stack_adapters(states)
    rewards, feats = jax.jit(score_experts, static_argnums=0)(graphdef, stacked, rest, batch)
    assert rewards.shape == (K, 2) and feats.shape == (K, 2, 32)
    assert feats.dtype == jnp.float32
    ref_r, ref_z = score_experts_loop(graphdef, stacked, rest, batch)
    np.testing.assert_allclose(np.asarray(rewards), np.asarray(ref_r), atol=1e-5)
    np.testing.assert_allclose(np.asarray(feats), np.asarray(ref_z), atol=1e-5)
    for i, state in enumerate(states):  # expert i == the model with adapter i loaded
        load_lora_state(model, state)
        np.testing.assert_allclose(np.asarray(rewards[i]), np.asarray(score(model, batch)),
                                   atol=1e-5)
    assert np.abs(np.asarray(rewards[0] - rewards[1])).max() > 1e-4  # experts really differ


def test_rest_state_with_a_head_is_overridden_by_per_expert_heads():
    model, states = _experts(include_head=True)
    batch = tiny_batch(batch=2)
    graphdef, _, rest = nnx.split(model, nnx.LoRAParam, ...)  # rest holds the current head too
    stacked = stack_adapters(states)
    r, _ = score_experts(graphdef, stacked, rest, batch)
    load_lora_state(model, states[0])
    np.testing.assert_allclose(np.asarray(r[0]), np.asarray(score(model, batch)), atol=1e-5)


def test_base_weights_are_passed_once_not_stacked():
    model, states = _experts()
    batch = tiny_batch(batch=2)
    graphdef, _, rest = split_lora(model)
    stacked = stack_adapters(states)
    q_kernel = rest["backbone"]["layers"]["attn"]["q_proj"]["kernel"]
    assert q_kernel.shape == (2, 32, 32)  # [layers, in, out]: no expert axis
    jaxpr = jax.make_jaxpr(functools.partial(score_experts, graphdef))(stacked, rest, batch)
    in_shapes = [tuple(v.aval.shape) for v in jaxpr.jaxpr.invars]
    assert in_shapes == [tuple(x.shape) for x in jax.tree.leaves((stacked, rest, batch))]
    assert (2, 32, 32) in in_shapes and (K, 2, 32, 32) not in in_shapes
    # Nothing inside the program materialises a K-fold copy of a base kernel either.
    text = str(jaxpr)
    assert "f32[2,32,32]" in text
    assert f"f32[{K},2,32,32]" not in text and f"f32[{K},32,32]" not in text


def test_per_expert_dropout_keys_match_the_loop():
    path = BERT.replace("hidden_dropout=0.0", "hidden_dropout=0.2")
    assert registry.resolve(path).config.hidden_dropout == 0.2
    model, states = _experts(path, include_head=False)
    batch = tiny_batch(batch=2)
    graphdef, _, rest = nnx.split(model, nnx.LoRAParam, ...)
    stacked = stack_adapters(states)
    key = jax.random.key(5)
    r, z = score_experts(graphdef, stacked, rest, batch, dropout_rng=key)
    ref_r, ref_z = score_experts_loop(graphdef, stacked, rest, batch, dropout_rng=key)
    np.testing.assert_allclose(np.asarray(r), np.asarray(ref_r), atol=1e-5)
    np.testing.assert_allclose(np.asarray(z), np.asarray(ref_z), atol=1e-5)
    plain, _ = score_experts(graphdef, stacked, rest, batch)
    assert np.abs(np.asarray(r - plain)).max() > 1e-5  # dropout was active
