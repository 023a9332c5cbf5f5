"""HF sequence-classification export: transformers in PyTorch scores like rewardjax."""

import json
import logging
import types

import jax
import numpy as np
import pytest
from flax import nnx

from rewardjax.config import base_config
from rewardjax.data.records import Pair
from rewardjax.data.tokenize import encode_pairs
from rewardjax.export import hf_export
from rewardjax.models import registry
from rewardjax.models.reward_model import build_reward_model
from rewardjax.runtime.scorer import ModelScorer
from rewardjax.runtime.setup import build_run

LLAMA = "random:llama?hidden_size=32&num_layers=2&num_heads=4&num_kv_heads=2&intermediate_size=48"
QWEN2 = "random:qwen2?hidden_size=32&num_layers=2&num_heads=4&num_kv_heads=2&intermediate_size=48"
BERT = "random:bert?hidden_size=32&num_layers=2&num_heads=4&intermediate_size=48"

PAIRS = [
    Pair([{"role": "user", "content": f"question {i} about the weather and {w}"}],
         f"a helpful answer about {w} " * (1 + i % 4), f"no {w}")
    for i, w in enumerate(["rain", "snow", "sun", "fog", "wind", "hail", "sleet", "cloud"])
]


def _config(path, pooling="auto", lora=False, padding="right"):
    c = base_config()
    c.model.path = path
    c.model.pooling = pooling
    c.model.max_length = 64
    c.data.padding_side = padding
    c.data.buckets = (64,)  # one bucket: one compile per scoring call
    c.eval.batch_size = 4
    c.lora.enabled = lora
    c.lora.rank = 2
    return c


def _perturbed(run, seed=0, scale=0.1):
    """The run's state with every parameter moved off its init (norms, biases, LoRA B)."""
    rng = np.random.default_rng(seed)

    def move(x):
        if not jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
            return x
        return x + scale * rng.standard_normal(x.shape).astype(np.float32)

    return run.state._replace(params=jax.tree.map(move, run.state.params),
                              frozen=jax.tree.map(move, run.state.frozen))


def _head_bias(state) -> float:
    return float(np.asarray(state.params["head"]["bias"][...])[0])


def _with_head_bias(state, value):
    """``state`` with the scalar head's bias set to ``value``."""
    def put(path, x):
        key = jax.tree_util.keystr(path)
        return x * 0 + value if "'head'" in key and "'bias'" in key else x

    return state._replace(params=jax.tree_util.tree_map_with_path(put, state.params))


def _build(tmp, config):
    run = build_run(config, str(tmp / "work"), PAIRS)
    data = encode_pairs(PAIRS, run.encoder)
    return run, data.chosen + data.rejected


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Runs built once per module: ``built(name)`` -> ``(config, run, seqs)``."""
    cache = {}
    specs = {"llama": (LLAMA, {}), "qwen2": (QWEN2, {}), "bert": (BERT, {"pooling": "cls"}),
             "lora": (LLAMA, {"lora": True})}

    def get(name):
        if name not in cache:
            path, kwargs = specs[name]
            config = _config(path, **kwargs)
            cache[name] = (config, *_build(tmp_path_factory.mktemp(name), config))
        return cache[name]

    return get


def _torch_scores(out_dir, seqs, pad_id, left=False):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out_dir).eval()
    length = max(len(s.ids) for s in seqs)
    ids = np.full((len(seqs), length), pad_id, np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for i, s in enumerate(seqs):
        sl = slice(length - len(s.ids), length) if left else slice(0, len(s.ids))
        ids[i, sl], mask[i, sl], types[i, sl] = s.ids, 1, s.type_ids
    kwargs = {}
    if model.config.model_type == "bert":
        kwargs["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **kwargs)
    return out.logits.numpy()[:, 0], model


@pytest.mark.parametrize("name", ["llama", "qwen2"])
@pytest.mark.parametrize("padding", ["right", "left"])
def test_decoder_export_matches_torch(tmp_path, built, name, padding):
    config, run, seqs = built(name)
    config = config.copy_and_resolve_references()
    config.data.padding_side = padding  # HF finds the last non-pad token on either side
    state = _perturbed(run)
    ours = ModelScorer.of(run, state).rewards(seqs)
    bias = _head_bias(state)
    assert abs(bias) > 1e-3  # the offset is actually exercised
    out = hf_export.export_hf(run, state, str(tmp_path / "hf"), drop_bias=True,
                              normalisation={"mean": 0.5, "std": 2.0, "count": 16})
    theirs, model = _torch_scores(out, seqs, run.tokenizer.pad_token_id, left=padding == "left")
    block = hf_export.read_rewardjax_block(out)
    np.testing.assert_allclose(theirs + block["logit_offset"], ours, atol=1e-4, rtol=1e-4)
    assert block["logit_offset"] == block["dropped_bias"] == pytest.approx(bias)
    assert model.config.pad_token_id == run.tokenizer.pad_token_id
    assert type(model).__name__ == hf_export.SEQ_CLS_ARCHITECTURES[run.spec.config.model_type]


def test_llama_head_bias_is_refused_not_shifted(tmp_path, built, caplog):
    """LlamaForSequenceClassification's score has no bias: refuse rather than give reward - b,
    unless drop_bias says so; a zero bias exports exactly."""
    config, run, seqs = built("llama")
    state = _with_head_bias(_perturbed(run, seed=4), 0.75)
    with pytest.raises(hf_export.NotExportable) as info:
        hf_export.export_hf(run, state, str(tmp_path / "refused"))
    message = str(info.value)
    assert "LlamaForSequenceClassification's score layer has no bias" in message
    assert "bias 0.75" in message and "export.drop_bias=True" in message
    assert not (tmp_path / "refused").exists()  # nothing half-written

    ours = ModelScorer.of(run, state).rewards(seqs)
    with caplog.at_level(logging.WARNING, logger="rewardjax.export.hf_export"):
        out = hf_export.export_hf(run, state, str(tmp_path / "dropped"), drop_bias=True)
    assert "dropping the head's bias 0.75" in caplog.text
    theirs, _ = _torch_scores(out, seqs, run.tokenizer.pad_token_id)
    np.testing.assert_allclose(theirs, ours - 0.75, atol=1e-4, rtol=1e-4)
    with open(f"{out}/config.json") as f:
        block = json.load(f)["rewardjax"]
    assert block["dropped_bias"] == pytest.approx(0.75)
    assert block["logit_offset"] == pytest.approx(0.75)

    exact = _with_head_bias(state, 0.0)
    out = hf_export.export_hf(run, exact, str(tmp_path / "exact"))  # drop_bias not needed
    theirs, _ = _torch_scores(out, seqs, run.tokenizer.pad_token_id)
    np.testing.assert_allclose(theirs, ModelScorer.of(run, exact).rewards(seqs), atol=1e-4,
                               rtol=1e-4)
    assert hf_export.read_rewardjax_block(out)["dropped_bias"] == 0.0


def test_bert_cls_export_matches_torch(tmp_path, built):
    config, run, seqs = built("bert")
    state = _perturbed(run, seed=1)
    ours = ModelScorer.of(run, state).rewards(seqs)
    out = hf_export.export_hf(run, state, str(tmp_path / "hf"))
    theirs, model = _torch_scores(out, seqs, run.tokenizer.pad_token_id)
    assert _head_bias(state) != 0.0
    block = hf_export.read_rewardjax_block(out)
    assert block["logit_offset"] == block["dropped_bias"] == 0.0  # the bias is in the pooler
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)
    assert type(model).__name__ == "BertForSequenceClassification"


def test_pooler_scale_bounds_every_layernorm_output():
    """The tanh stays in its linear range for any LayerNorm output, adversarial ones included."""
    rng = np.random.default_rng(0)
    d = 16
    w, gamma, beta = rng.normal(size=d), rng.normal(size=d) * 3, rng.normal(size=d)
    b = 0.7
    k = hf_export.pooler_scale_exponent(w, b, gamma, beta)
    # The worst case: the normalised vector aligned with w ⊙ γ (after removing its mean).
    v = w * gamma
    n = v - v.mean()
    n = n / np.sqrt(np.mean(n ** 2))
    worst = abs(float((gamma * n + beta) @ w + b))
    assert worst * 2.0 ** -k <= 2.0 ** -12
    for _ in range(100):
        x = rng.normal(size=d) * 10
        n = (x - x.mean()) / np.sqrt(x.var() + 1e-12)
        s = float((gamma * n + beta) @ w + b)
        assert abs(np.tanh(s * 2.0 ** -k) * 2.0 ** k - s) <= 1e-7 * abs(s) + 1e-12


def test_lora_merged_export_equals_unmerged_scores(tmp_path, built):
    config, run, seqs = built("lora")
    state = _perturbed(run, seed=2)  # lora_b moved off zero: the adapters change the scores
    unmerged = ModelScorer.of(run, state).rewards(seqs)
    out = hf_export.export_hf(run, state, str(tmp_path / "hf"), drop_bias=True)
    theirs, _ = _torch_scores(out, seqs, run.tokenizer.pad_token_id)
    offset = hf_export.read_rewardjax_block(out)["logit_offset"]
    np.testing.assert_allclose(theirs + offset, unmerged, atol=1e-4, rtol=1e-4)
    # The adapters matter: with B = 0 the scores differ.
    zeroed = jax.tree_util.tree_map_with_path(
        lambda p, x: x * 0 if "lora_b" in jax.tree_util.keystr(p) else x, state.params)
    base = ModelScorer.of(run, state._replace(params=zeroed)).rewards(seqs)
    assert np.max(np.abs(base - unmerged)) > 1e-3


def test_config_json_has_normalisation_and_tokenizer(tmp_path, built):
    config, run, seqs = built("llama")
    rewards = ModelScorer.of(run, run.state).rewards(seqs)
    stats = hf_export.reward_statistics(rewards, data="unit")
    out = hf_export.export_hf(run, run.state, str(tmp_path / "hf"), normalisation=stats)
    with open(f"{out}/config.json") as f:
        cfg = json.load(f)
    norm = cfg["rewardjax"]["normalisation"]
    assert norm["mean"] == pytest.approx(float(np.mean(rewards)))
    assert norm["std"] == pytest.approx(float(np.std(rewards)))
    assert norm["count"] == len(seqs) and norm["data"] == "unit"
    assert cfg["num_labels"] == 1 and cfg["architectures"] == ["LlamaForSequenceClassification"]
    assert cfg["rewardjax"]["pooling"] == "last"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.get_vocab() == run.tokenizer.get_vocab()
    with pytest.raises(ValueError, match="std > 0"):
        hf_export.export_hf(run, run.state, str(tmp_path / "bad"),
                            normalisation={"mean": 0.0, "std": 0.0})


def _abstract_run(path, pooling):
    """A run-like object (graph, abstract state, spec): refusals happen before any array."""
    spec = registry.resolve(path)
    model = build_reward_model(registry.abstract(spec), spec.hidden_size,
                               is_causal=spec.is_causal, pooling=pooling)
    graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
    state = types.SimpleNamespace(params=params, frozen=frozen, step=0)
    return types.SimpleNamespace(graphdef=graphdef, state=state, spec=spec, tokenizer=None)


@pytest.mark.parametrize("path,pooling,match", [
    (BERT, "auto", "pooling='mean'"), (BERT, "last", "pooling='last'"),
    (LLAMA, "mean", "last token"), (LLAMA, "cls", "last token")])
def test_unexportable_models_are_refused(tmp_path, path, pooling, match):
    run = _abstract_run(path, pooling)
    with pytest.raises(hf_export.NotExportable, match=match):
        hf_export.export_hf(run, run.state, str(tmp_path / "hf"))


def test_bert_pooler_export_is_a_weight_copy(tmp_path):
    """pooling=pooler is BertForSequenceClassification itself: export copies the weights."""
    config = _config(BERT, pooling="pooler")
    run, seqs = _build(tmp_path, config)
    state = _perturbed(run, seed=2)
    ours = ModelScorer.of(run, state).rewards(seqs)
    out = hf_export.export_hf(run, state, str(tmp_path / "hf"))
    theirs, model = _torch_scores(out, seqs, run.tokenizer.pad_token_id)
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=1e-5)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert hf_export.read_rewardjax_block(out)["pooling"] == "pooler"


def test_pooler_head_starts_from_the_checkpoint_pooler_and_matches_transformers(tmp_path):
    """A pretrained BERT with pooling=pooler: the head's dense layer is the checkpoint's pooler,
    so at init (same classifier) rewardjax scores equal BertForSequenceClassification's."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from rewardjax.models import hf
    from tests.models.golden_checkpoints import golden_checkpoint

    path = golden_checkpoint("bert")
    config = _config(path, pooling="pooler")
    config.model.fit_tokenizer = True  # the golden checkpoint ships no tokenizer
    config.model.max_length, config.data.buckets = 32, (32,)  # its position table
    run, seqs = _build(tmp_path, config)
    head = run.state.params["head"]
    pooler = hf.bert_pooler_from_hf(hf.load_tensors(path))
    np.testing.assert_array_equal(np.asarray(head["dense_kernel"][...]), pooler["dense_kernel"])
    np.testing.assert_array_equal(np.asarray(head["dense_bias"][...]), pooler["dense_bias"])
    ours = ModelScorer.of(run, run.state).rewards(seqs)
    model = transformers.BertForSequenceClassification.from_pretrained(path, num_labels=1).eval()
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor(np.asarray(head["out"]["kernel"][...]).T))
        model.classifier.bias.copy_(torch.tensor(np.asarray(head["out"]["bias"][...])))
    length = max(len(s.ids) for s in seqs)
    ids = np.zeros((len(seqs), length), np.int64)
    mask = np.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s.ids)], mask[i, : len(s.ids)] = s.ids, 1
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_allclose(theirs.numpy()[:, 0], ours, atol=1e-4, rtol=1e-4)


def test_pooler_on_a_checkpoint_without_one_is_a_clear_error(tmp_path):
    from tests.models.golden_checkpoints import golden_checkpoint

    config = _config(golden_checkpoint("llama"), pooling="pooler")
    config.model.fit_tokenizer = True
    with pytest.raises(ValueError, match="pooling=pooler needs a BERT checkpoint"):
        _build(tmp_path, config)
