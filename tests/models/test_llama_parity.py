"""Llama-family backbone: parity with transformers (PyTorch), padding/packing invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardjax.models import hf, registry
from rewardjax.models.llama import LlamaConfig
from tests.models.golden_checkpoints import golden_checkpoint

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-5)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

CASES = {
    "llama3_tied": ("llama", dict(tie_word_embeddings=True, rope_theta=10000.0,
                                  rope_scaling=LLAMA3_ROPE)),
    "llama_untied": ("llama", dict(tie_word_embeddings=False, rope_theta=500.0)),
    "qwen2_bias": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1e6)),
    "qwen3_qknorm": ("qwen3", dict(tie_word_embeddings=False, head_dim=16)),
    "mistral_window": ("mistral", dict(tie_word_embeddings=False, sliding_window=4, head_dim=8)),
}


def _batch(seed=0, b=3, t=10, vocab=96):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(b, t)).astype(np.int32)
    lengths = np.array([t, t - 3, t - 6])[:b]
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)  # right padding
    return ids * mask, mask


def _torch_model(kind, extra, seed=0):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg_cls = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config",
               "mistral": "MistralConfig"}[kind]
    model_cls = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM"}[kind]
    config = getattr(transformers, cfg_cls)(**TINY, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # HF init leaves norms at 1 and biases at 0: perturb everything
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _torch_outputs(model, ids, mask):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    output_hidden_states=True)
    return out.hidden_states[-1].numpy(), out.logits.numpy()


def _assert_real_close(a, b, mask, atol=1e-4):
    m = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(a)[m], np.asarray(b)[m], atol=atol, rtol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_transformers(case, tmp_path):
    kind, extra = CASES[case]
    torch_model = _torch_model(kind, extra)
    torch_model.save_pretrained(tmp_path)
    ids, mask = _batch()
    want_h, want_logits = _torch_outputs(torch_model, ids, mask)

    model, spec = registry.load_backbone(str(tmp_path))
    assert spec.family == "llama" and spec.is_causal
    assert spec.config.model_type == kind
    assert spec.config.tie_embeddings == extra["tie_word_embeddings"]
    hidden = model(jnp.asarray(ids), jnp.asarray(mask))
    _assert_real_close(hidden, want_h, mask)
    _assert_real_close(model.logits(hidden), want_logits, mask)


def test_sharded_checkpoint_and_export_roundtrip(tmp_path):
    torch = pytest.importorskip("torch")
    import transformers

    kind, extra = CASES["llama3_tied"]
    torch_model = _torch_model(kind, extra, seed=1)
    torch_model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ids, mask = _batch(seed=1)
    want_h, want_logits = _torch_outputs(torch_model, ids, mask)
    model, spec = registry.load_backbone(str(tmp_path / "sharded"))
    _assert_real_close(model(jnp.asarray(ids), jnp.asarray(mask)), want_h, mask)

    # Export back to HF: tensors equal the originals and torch reloads the same model.
    params = nnx.state(model, nnx.Param).to_pure_dict()
    exported = hf.llama_params_to_hf(spec.config, params)
    original = torch_model.state_dict()
    assert set(exported) == {k for k in original if k != "lm_head.weight"}
    for name, value in exported.items():
        np.testing.assert_array_equal(value, original[name].numpy(), err_msg=name)
    hf.save_checkpoint(tmp_path / "export", spec.config.to_hf(), exported)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        logits = reloaded(input_ids=torch.tensor(ids, dtype=torch.long),
                          attention_mask=torch.tensor(mask)).logits.numpy()
    _assert_real_close(logits, want_logits, mask)


def _random_model(name="random:llama?vocab_size=64&num_layers=2", **kwargs):
    return registry.create(registry.resolve(name), **kwargs)


def _jit(model):
    """The model's forward as one jitted function of ``(ids, mask, **kwargs)``."""
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda state, *args, **kw: nnx.merge(graphdef, state)(*args, **kw))
    return lambda *args, **kw: np.asarray(fn(state, *map(jnp.asarray, args), **kw), np.float32)


def test_left_and_right_padding_agree():
    forward = _jit(_random_model())
    ids, mask = _batch(seed=2, vocab=64)
    lengths = mask.sum(1)
    t = ids.shape[1]
    left_ids, left_mask = np.zeros_like(ids), np.zeros_like(mask)
    for i, n in enumerate(lengths):
        left_ids[i, t - n:], left_mask[i, t - n:] = ids[i, :n], 1
    right, left = forward(ids, mask), forward(left_ids, left_mask)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(left[i, t - n:], right[i, :n], atol=1e-5)


def test_packed_rows_match_separate_rows():
    forward = _jit(_random_model("random:mistral?vocab_size=64&sliding_window=3"))
    ids = np.random.default_rng(3).integers(1, 64, size=(2, 4)).astype(np.int32)
    packed = forward(ids.reshape(1, 8), np.ones((1, 8), np.int32),
                     segment_ids=jnp.asarray([[1] * 4 + [2] * 4]))
    alone = forward(ids, np.ones((2, 4), np.int32))
    np.testing.assert_allclose(packed.reshape(2, 4, -1), alone, atol=1e-5)


def test_remat_dropout_bf16_and_sharding_names():
    ids, mask = map(jnp.asarray, _batch(seed=4, vocab=64))
    ref = _random_model("random:qwen2?vocab_size=64")
    model = _random_model("random:qwen2?vocab_size=64&remat=dots")
    graphdef, state = nnx.split(model)

    @jax.jit
    def loss(state, rng, rate):
        hidden = nnx.merge(graphdef, state)(ids, mask, dropout_rng=rng, dropout_rate=rate)
        return jnp.mean(hidden**2), hidden

    (value, hidden), grads = jax.value_and_grad(loss, has_aux=True)(state, None, None)
    np.testing.assert_allclose(hidden, _jit(ref)(ids, mask), atol=1e-6)  # remat is exact
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    # The rate may be traced; rate 0 equals no dropout, different keys give different masks.
    # (rbg keys: threefry's bit generator alone takes seconds to compile on a busy CPU.)
    key0, key1 = jax.random.key(0, impl="rbg"), jax.random.key(1, impl="rbg")
    assert loss(state, key0, 0.0)[0] == pytest.approx(float(value), rel=1e-6)
    assert loss(state, key0, 0.3)[0] != loss(state, key1, 0.3)[0]

    bf16 = _random_model("random:qwen2?vocab_size=64", dtype=jnp.bfloat16)
    assert jax.tree.leaves(nnx.state(bf16))[0].dtype == jnp.float32
    np.testing.assert_allclose(_jit(bf16)(ids, mask), hidden, atol=0.1)

    names = {"/".join(map(str, p)): v.get_metadata()["out_sharding"]
             for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert names["layers/attn/q_proj/kernel"] == ("layers", "embed", "heads")
    assert names["layers/attn/k_proj/bias"] == ("layers", "kv_heads")
    assert names["layers/mlp/down_proj/kernel"] == ("layers", "mlp", "embed")
    assert names["embed/embedding"] == ("vocab", "embed")
    assert names["final_norm/scale"] == ("norm",)


def test_config_hf_roundtrip_and_errors():
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                      num_heads=4, num_kv_heads=2, rope_scaling=LLAMA3_ROPE)
    assert LlamaConfig.from_hf(cfg.to_hf()) == cfg
    legacy = {**cfg.to_hf(), "rope_parameters": None}  # transformers 4.x style keys only
    assert LlamaConfig.from_hf(legacy) == cfg
    with pytest.raises(ValueError, match="not supported"):
        LlamaConfig.from_hf({**cfg.to_hf(), "rope_parameters": {"rope_type": "yarn"}})
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        LlamaConfig(hidden_size=32, num_heads=4, num_kv_heads=3)

    params = nnx.state(registry.create(registry.resolve("random:llama?vocab_size=64")),
                       nnx.Param).to_pure_dict()
    small = registry.resolve("random:llama?vocab_size=64").config
    tensors = hf.llama_params_to_hf(small, params)
    bad = dict(tensors)
    bad["model.layers.1.mlp.up_proj.weight"] = bad["model.layers.1.mlp.up_proj.weight"][:, :3]
    with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj.weight"):
        hf.llama_params_from_hf(small, bad)
    del bad["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        hf.llama_params_from_hf(small, bad)
    with pytest.raises(ValueError, match="unexpected tensors"):
        hf.llama_params_from_hf(small, {**tensors, "model.layers.2.mlp.up_proj.weight": 0})
    ignored = {**tensors, "score.weight": np.zeros((1, 64)),
               "model.layers.0.self_attn.rotary_emb.inv_freq": np.zeros(4)}
    hf.llama_params_from_hf(small, ignored)  # reward heads and rotary caches are skipped


def test_golden_outputs_without_torch():
    """Pinned torch outputs (tests/models/make_golden.py), so CI without torch checks parity."""
    import os

    golden = os.path.join(os.path.dirname(__file__), "golden")
    data = np.load(os.path.join(golden, "llama_outputs.npz"))
    model, spec = registry.load_backbone(golden_checkpoint("llama"))
    assert spec.config.rope_scaling_dict["rope_type"] == "llama3"
    assert not spec.config.tie_embeddings
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, ids, mask):
        model = nnx.merge(graphdef, state)
        hidden = model(ids, mask)
        return hidden, model.logits(hidden)

    hidden, logits = forward(state, data["input_ids"], data["attention_mask"])
    _assert_real_close(hidden, data["hidden"], data["attention_mask"])
    _assert_real_close(logits, data["logits"], data["attention_mask"])
