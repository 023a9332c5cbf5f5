"""LoRALinear numerics, regex injection into Llama/BERT reward models, merging and training."""

import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from rewardjax.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    linear_paths,
    lora_paths,
    lora_state,
    merge_lora,
    split_lora,
    trainable_regex_for_lora,
)
from rewardjax.runtime.state import path_str, split_model
from rewardjax.sharding import logical_to_spec
from tests.lora import BERT, LLAMA, perturb_lora_b, score, tiny_batch, tiny_reward_model


def _linear(din=6, dout=5, bias=True, dtype=None):
    kw = dict(use_bias=bias, dtype=dtype, rngs=nnx.Rngs(0),
              kernel_metadata={"out_sharding": ("embed", "heads")})
    with nnx.use_eager_sharding(False):
        return nnx.Linear(din, dout, **kw)


def _x(shape=(2, 3, 6), seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


def test_lora_linear_equals_base_exactly_at_init():
    base = _linear()
    x = _x()
    expected = base(x)
    with nnx.use_eager_sharding(False):
        layer = LoRALinear(base, rank=2, alpha=4.0, rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(np.asarray(layer(x)), np.asarray(expected))
    assert not np.allclose(np.asarray(layer.lora_a[...]), 0.0)  # A is random, B is zero
    np.testing.assert_array_equal(np.asarray(layer.lora_b[...]), 0.0)
    assert type(layer.kernel) is nnx.Param and type(layer.lora_a) is nnx.LoRAParam
    assert layer.lora_a.get_metadata()["out_sharding"] == ("embed", "lora_rank")
    assert layer.lora_b.get_metadata()["out_sharding"] == ("lora_rank", "heads")


@pytest.mark.parametrize("bias", [True, False])
def test_lora_linear_matches_explicit_formula(bias):
    base = _linear(bias=bias)
    with nnx.use_eager_sharding(False):
        layer = LoRALinear(base, rank=3, alpha=6.0, rngs=nnx.Rngs(1))
    layer.lora_b[...] = jax.random.normal(jax.random.key(2), layer.lora_b.shape)
    x = _x()
    w, a, b = (np.asarray(v[...], np.float64) for v in (layer.kernel, layer.lora_a, layer.lora_b))
    expected = np.asarray(x, np.float64) @ (w + a @ b * 6.0 / 3)
    if bias:
        expected = expected + np.asarray(layer.bias[...])
    np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=1e-5, rtol=1e-5)
    # Folding the update into the kernel gives the same function.
    np.testing.assert_allclose(np.asarray(layer.to_linear()(x)), np.asarray(layer(x)), atol=1e-5)


def test_lora_dropout_only_with_an_rng_and_accepts_a_traced_rate():
    base = _linear()
    with nnx.use_eager_sharding(False):
        layer = LoRALinear(base, rank=2, alpha=2.0, dropout=0.5, rngs=nnx.Rngs(1))
    layer.lora_b[...] = jnp.ones(layer.lora_b.shape)
    x = _x()
    plain = layer(x)
    np.testing.assert_array_equal(np.asarray(layer(x, rng=None)), np.asarray(plain))
    dropped = layer(x, rng=jax.random.key(0))
    assert not np.allclose(np.asarray(dropped), np.asarray(plain))
    graphdef, state = nnx.split(layer)

    @jax.jit
    def f(state, rate):
        return nnx.merge(graphdef, state)(x, rng=jax.random.key(0), dropout_rate=rate)

    np.testing.assert_allclose(np.asarray(f(state, 0.0)), np.asarray(plain), atol=1e-6)
    np.testing.assert_allclose(np.asarray(f(state, 0.5)), np.asarray(dropped), atol=1e-6)


def test_lora_computes_in_the_base_dtype():
    base = _linear(dtype=jnp.bfloat16)
    with nnx.use_eager_sharding(False):
        layer = LoRALinear(base, rank=2, alpha=2.0, rngs=nnx.Rngs(1))
    assert layer.lora_a[...].dtype == jnp.float32  # master weights stay in param_dtype
    assert layer(_x()).dtype == jnp.bfloat16


@pytest.mark.parametrize("path", [LLAMA, BERT], ids=["llama", "bert"])
def test_apply_lora_targets_q_and_v_of_every_stacked_layer(path):
    model, spec = tiny_reward_model(path)
    c = spec.config
    batch = tiny_batch()
    before = score(model, batch)
    cfg = LoRAConfig(rank=4, alpha=8.0)
    paths = apply_lora(model, cfg, seed=0)
    assert paths == ["backbone/layers/attn/q_proj", "backbone/layers/attn/v_proj"]
    assert lora_paths(model) == paths
    attn = model.backbone.layers.attn
    kv_out = getattr(c, "num_kv_heads", c.num_heads) * c.head_dim
    assert attn.q_proj.lora_a.shape == (c.num_layers, c.hidden_size, 4)
    assert attn.q_proj.lora_b.shape == (c.num_layers, 4, c.num_heads * c.head_dim)
    assert attn.v_proj.lora_b.shape == (c.num_layers, 4, kv_out)
    assert attn.q_proj.lora_a.get_metadata()["out_sharding"] == ("layers", "embed", "lora_rank")
    assert attn.v_proj.lora_b.get_metadata()["out_sharding"] == ("layers", "lora_rank", "kv_heads")
    # The default rules shard A like the kernel's input (fsdp) and B like its output (tensor).
    spec_a = logical_to_spec(attn.q_proj.lora_a.get_metadata()["out_sharding"])
    spec_b = logical_to_spec(attn.q_proj.lora_b.get_metadata()["out_sharding"])
    assert spec_a == P(None, "fsdp") and spec_b == P(None, None, "tensor")
    # Layers are initialised independently (a vmapped init would otherwise be easy to break).
    a = np.asarray(attn.q_proj.lora_a[...])
    assert not np.allclose(a[0], a[1])
    assert isinstance(attn.k_proj, nnx.Linear) and isinstance(attn.o_proj, nnx.Linear)
    # Base paths are unchanged, so checkpoint loading by path still finds every base weight.
    names = {path_str(p) for p, _ in nnx.to_flat_state(nnx.state(model))}
    assert "backbone/layers/attn/q_proj/kernel" in names
    np.testing.assert_array_equal(np.asarray(score(model, batch)), np.asarray(before))
    perturb_lora_b(model)
    assert np.abs(np.asarray(score(model, batch)) - np.asarray(before)).max() > 1e-4


def test_apply_lora_is_deterministic_per_path():
    m1, _ = tiny_reward_model()
    m2, _ = tiny_reward_model()
    m3, _ = tiny_reward_model()
    apply_lora(m1, LoRAConfig(targets=r"q_proj$"), seed=3)
    apply_lora(m2, LoRAConfig(targets=r"(q_proj|o_proj)$"), seed=np.int64(3))
    apply_lora(m3, LoRAConfig(targets=r"q_proj$"), seed=jax.random.key(3))
    for m in (m2, m3):
        np.testing.assert_array_equal(np.asarray(m1.backbone.layers.attn.q_proj.lora_a[...]),
                                      np.asarray(m.backbone.layers.attn.q_proj.lora_a[...]))


def test_unmatched_regex_names_the_regex_and_lists_linear_paths():
    model, _ = tiny_reward_model()
    with pytest.raises(ValueError) as err:
        apply_lora(model, LoRAConfig(targets=r"query$"), seed=0)
    msg = str(err.value)
    assert "'query$'" in msg and "backbone/layers/attn/q_proj" in msg
    apply_lora(model, LoRAConfig(), seed=0)
    with pytest.raises(ValueError, match="already have LoRA"):
        apply_lora(model, LoRAConfig(), seed=0)
    assert "backbone/layers/attn/q_proj" not in linear_paths(model)


@pytest.mark.parametrize("kwargs", [dict(rank=0), dict(dropout=1.0), dict(targets="(")])
def test_bad_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        LoRAConfig(**kwargs)


@pytest.mark.parametrize("path", [LLAMA, BERT], ids=["llama", "bert"])
def test_merge_lora_gives_a_plain_model_with_the_same_rewards(path):
    model, _ = tiny_reward_model(path)
    batch = tiny_batch()
    apply_lora(model, LoRAConfig(targets=r"(q_proj|v_proj|down_proj)$"), seed=0)
    perturb_lora_b(model)
    expected = score(model, batch)
    merged = merge_lora(model)
    np.testing.assert_allclose(np.asarray(score(merged, batch)), np.asarray(expected), atol=1e-5)
    assert not jax.tree.leaves(nnx.state(merged, nnx.LoRAParam))
    assert lora_paths(merged) == []
    q = merged.backbone.layers.attn.q_proj
    assert type(q) is nnx.Linear
    assert q.kernel.get_metadata()["out_sharding"] == ("layers", "embed", "heads")
    # The merged parameter tree is exactly the original architecture's.
    fresh, _ = tiny_reward_model(path)
    assert (jax.tree.map(jnp.shape, nnx.state(merged))
            == jax.tree.map(jnp.shape, nnx.state(fresh)))
    assert lora_paths(model)  # the LoRA model itself is left alone
    np.testing.assert_array_equal(np.asarray(score(model, batch)), np.asarray(expected))


def test_lora_params_split_into_their_own_state():
    assert issubclass(nnx.LoRAParam, nnx.Param)
    model, _ = tiny_reward_model()
    apply_lora(model, LoRAConfig(), seed=0)
    _, lora, rest = nnx.split(model, nnx.LoRAParam, ...)
    lora_names = sorted(path_str(p) for p, _ in nnx.to_flat_state(lora))
    assert lora_names == [f"backbone/layers/attn/{p}/lora_{m}" for p in ("q_proj", "v_proj")
                          for m in "ab"]
    rest_types = {type(v) for _, v in nnx.to_flat_state(rest)}
    assert nnx.LoRAParam not in rest_types

    # split_model (Param-only filter + path regex) selects exactly the adapters and the head.
    _, params, frozen = split_model(model, trainable_regex_for_lora())
    trained = sorted(path_str(p) for p, _ in nnx.to_flat_state(params))
    assert trained == sorted(lora_names + ["head/bias", "head/kernel"])
    frozen_names = [path_str(p) for p, _ in nnx.to_flat_state(frozen)]
    assert not any(re.search(r"lora_|^head/", n) for n in frozen_names)
    _, only_lora, _ = split_model(model, trainable_regex_for_lora(include_head=False))
    assert sorted(path_str(p) for p, _ in nnx.to_flat_state(only_lora)) == lora_names
    # lora_state / split_lora hold the same selection as the regex.
    assert sorted(path_str(p) for p, _ in nnx.to_flat_state(lora_state(model))) == trained
    _, adapters, _ = split_lora(model)
    assert sorted(path_str(p) for p, _ in nnx.to_flat_state(adapters)) == trained


def test_jitted_grad_wrt_lora_only():
    model, _ = tiny_reward_model()
    apply_lora(model, LoRAConfig(), seed=0)
    batch = tiny_batch()
    graphdef, lora, rest = nnx.split(model, nnx.LoRAParam, ...)

    @jax.jit
    def grad_fn(lora, rest):
        def loss(lora):
            return jnp.sum(score(nnx.merge(graphdef, lora, rest), batch) ** 2)

        return jax.grad(loss)(lora)

    grads = grad_fn(lora, rest)
    flat = {path_str(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}
    # Only adapter leaves are in the differentiated tree: no base weight gets a gradient.
    assert all(re.search(r"/lora_[ab]$", n) for n in flat), sorted(flat)
    for name, g in flat.items():
        if name.endswith("lora_b"):
            assert np.abs(g).max() > 0, name  # B gets signal at once
        else:
            np.testing.assert_array_equal(g, 0.0)  # dL/dA = x^T dL/dy B^T = 0 while B = 0


def test_train_step_updates_only_adapters_and_head():
    from rewardjax.runtime.state import init_state
    from rewardjax.runtime.step import make_train_step
    from rewardjax.sharding import DEFAULT_RULES, make_mesh

    def build():
        model, _ = tiny_reward_model()
        apply_lora(model, LoRAConfig(rank=2, alpha=4.0), seed=0)
        return model

    mesh = make_mesh(devices=jax.devices()[:1])
    tx = optax.adam(1e-2)
    graphdef, state, shardings = init_state(build, tx, mesh, DEFAULT_RULES, seed=0,
                                            trainable=trainable_regex_for_lora())
    loss_cfg = types.SimpleNamespace(margin=0.0, use_data_margin=False, center_coef=0.0)
    step = make_train_step(graphdef, tx, loss_cfg, mesh=mesh, rules=DEFAULT_RULES,
                           state_shardings=shardings, dropout=False)
    pairs = tiny_batch(batch=4, length=6)
    batch = {k: v.reshape(2, 2, 6) for k, v in pairs.items()}
    batch.update(weights=jnp.ones((2,)), margin=jnp.zeros((2,)))
    params0, frozen0 = jax.device_get((state.params, state.frozen))
    for _ in range(2):
        state, _ = step(state, batch)
    params1, frozen1 = jax.device_get((state.params, state.frozen))
    for a, b in zip(jax.tree.leaves(frozen0), jax.tree.leaves(frozen1)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    changed = {path_str(p) for (p, a), (_, b) in zip(nnx.to_flat_state(params0),
                                                     nnx.to_flat_state(params1))
               if not np.array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()))}
    assert "backbone/layers/attn/q_proj/lora_b" in changed and "head/kernel" in changed


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_adapter_dropout_is_active_in_the_training_forward(family):
    """The backbones hand their layer key to LoRA projections: adapter dropout applies whenever
    a dropout rng is given, and inference (no rng) is deterministic."""
    from rewardjax.lora import LoRAConfig, apply_lora
    from rewardjax.models import registry
    from rewardjax.models.reward_model import build_reward_model

    path = {"llama": "random:llama?hidden_size=32&num_layers=2&num_heads=4&num_kv_heads=2"
                     "&intermediate_size=64&vocab_size=101",
            "bert": "random:bert?hidden_size=32&num_layers=2&num_heads=4&intermediate_size=64"
                    "&vocab_size=101&hidden_dropout=0.0&attention_dropout=0.0"}[family]
    spec = registry.resolve(path)

    def build(dropout):
        m = build_reward_model(registry.create(spec, seed=0), spec.hidden_size,
                               is_causal=spec.is_causal, seed=0)
        apply_lora(m, LoRAConfig(rank=4, alpha=8.0, dropout=dropout,
                                 targets=r"(q_proj|v_proj|down_proj)$"), seed=0)
        for _, mod in m.iter_modules():
            if hasattr(mod, "lora_b"):
                mod.lora_b[...] = 0.3 * jnp.ones_like(mod.lora_b[...])
        return m

    ids = jnp.arange(2 * 7).reshape(2, 7) % 90 + 5
    mask = jnp.ones_like(ids)
    with_drop, without = build(0.5), build(0.0)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    eval_out = with_drop(ids, mask)
    np.testing.assert_array_equal(eval_out, with_drop(ids, mask))
    np.testing.assert_allclose(eval_out, without(ids, mask), rtol=1e-6, atol=1e-6)
    a, b = with_drop(ids, mask, dropout_rng=k1), with_drop(ids, mask, dropout_rng=k2)
    assert not np.allclose(a, b) and not np.allclose(a, eval_out)
    # zero adapter dropout (and no backbone dropout): a training forward equals inference
    np.testing.assert_allclose(without(ids, mask, dropout_rng=k1), eval_out, rtol=1e-5, atol=1e-5)
