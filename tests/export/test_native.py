"""rewardjax's native export: each kind reloads and scores like the code that produced it."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardjax.config import base_config
from rewardjax.data.batching import collate_single
from rewardjax.data.tokenize import SequenceEncoder, build_wordlevel_tokenizer, encode_pairs
from rewardjax.ensembles.predictions import combine
from rewardjax.export import load_native, merged_model
from rewardjax.export import native as nx
from rewardjax.heads.gating import ArmoRMHead, build_gate
from rewardjax.heads.moe import MoEAggregator, concat_experts
from rewardjax.heads.router import Router
from rewardjax.lora import LoRAConfig, apply_lora, lora_state, split_lora, stack_adapters
from rewardjax.lora.stacked import score_experts
from rewardjax.models import registry
from rewardjax.models.reward_model import build_reward_model
from rewardjax.runtime.features import BackboneFeatures
from rewardjax.runtime.scorer import ModelScorer
from rewardjax.runtime.setup import build_run
from tests.export.test_hf_export import PAIRS

BERT = "random:bert?hidden_size=32&num_layers=2&num_heads=4&intermediate_size=48"
LLAMA = "random:llama?hidden_size=32&num_layers=2&num_heads=4&num_kv_heads=2&intermediate_size=48"
PROMPTS = [p.prompt for p in PAIRS] * 2
RESPONSES = [p.chosen for p in PAIRS] + [p.rejected for p in PAIRS]


def _numpy_fill(module, seed, std=0.2):
    """Random values for every variable (norm scales near 1), set without compiling anything."""
    rng = np.random.default_rng(seed)
    flat = []
    for path, var in nnx.to_flat_state(nnx.state(module)):
        value = std * rng.standard_normal(var.shape) + (path[-1] == "scale")
        flat.append((path, var.replace(jnp.asarray(value, var.dtype))))
    nnx.update(module, nnx.from_flat_state(flat))
    return module


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    c = base_config()
    c.model.path = BERT  # encoders pool the mean by default: no exact HF form
    c.model.max_length = 64
    c.data.buckets = (64,)
    c.eval.batch_size = 8
    run = build_run(c, str(tmp_path_factory.mktemp("bert")), PAIRS)
    data = encode_pairs(PAIRS, run.encoder)
    return c, run, data.chosen + data.rejected


def test_scalar_mean_pooled_encoder_roundtrip(tmp_path, bert_run):
    config, run, seqs = bert_run
    assert run.graphdef is not None
    out = nx.save_run(run, run.state, str(tmp_path / "native"), normalisation={"mean": 1.0})
    loaded = load_native(out)
    assert loaded.kind == "scalar" and loaded.manifest["pooling"] == "mean"
    want = ModelScorer.of(run, run.state).rewards(seqs)
    np.testing.assert_allclose(loaded.score_encoded(seqs, batch_size=3)["reward"], want,
                               atol=1e-6, rtol=1e-6)
    # From text, through the saved tokenizer and encoder settings.
    np.testing.assert_allclose(loaded.score(PROMPTS, RESPONSES)["reward"], want, atol=1e-6)
    assert loaded.manifest["normalisation"] == {"mean": 1.0}


def test_armorm_multi_objective_matches_stage_one_and_gate(tmp_path, bert_run):
    config, run, _ = bert_run
    d, k = 32, 4
    rng = np.random.default_rng(0)
    with nnx.use_eager_sharding(False):
        gate = _numpy_fill(nnx.eval_shape(lambda: build_gate(
            "gate", d, k, hidden=16, depth=2, temperature=2.0, seed=0)), seed=1, std=0.5)
    gate.beta.set_value(jnp.float32(3.0))
    lam = np.array([0.3, 0.0, 0.5, 0.0])
    debias = np.eye(k) - np.outer(lam, np.eye(k)[3])  # objective 3 is the verbosity one
    head = ArmoRMHead(["a", "b", "c", "verbose"], rng.normal(size=(d, k)), rng.normal(size=k),
                      debias, 3, gate, "gate", {"hidden": 16, "depth": 2, "temperature": 2.0})
    out = nx.save_armorm(str(tmp_path / "armorm"), run, run.state, head)
    loaded = load_native(out)
    got = loaded.score(PROMPTS, RESPONSES, batch_size=5)
    feats = BackboneFeatures(run, config)(PROMPTS, RESPONSES)  # the ArmoRM feature pipeline
    want = head.score(feats["prompt"], feats["response"])
    for key in ("objectives_raw", "objectives", "weights", "contributions", "reward"):
        np.testing.assert_allclose(got[key], want[key], atol=2e-5, rtol=1e-5, err_msg=key)
    assert loaded.manifest["objectives"] == ["a", "b", "c", "verbose"]


def test_ensemble_combines_members_and_stores_shared_tensors_once(tmp_path, bert_run):
    config, run, seqs = bert_run
    states, members = [], []
    for i in range(3):
        params = jax.tree_util.tree_map_with_path(
            lambda p, x, i=i: x + 0.5 * i * jax.random.normal(jax.random.key(i), x.shape)
            if "head" in jax.tree_util.keystr(p) else x, run.state.params)
        states.append(run.state._replace(params=params))
        members.append(merged_model(run, states[-1]))
    out = nx.save_native(str(tmp_path / "ens"), kind="ensemble", spec=run.spec,
                         tokenizer=run.tokenizer, members=members,
                         combine={"type": "ensemble", "method": "uwo", "lam": 0.5},
                         encoding=nx.encoding_of(config))
    single = nx.save_run(run, run.state, str(tmp_path / "one"))
    size = os.path.getsize(os.path.join(out, nx.TENSORS))
    assert size < 1.1 * os.path.getsize(os.path.join(single, nx.TENSORS))  # backbone once
    loaded = load_native(out)
    got = loaded.score_encoded(seqs)
    per_member = np.stack([ModelScorer.of(run, s).rewards(seqs) for s in states])
    np.testing.assert_allclose(got["members"], per_member, atol=1e-6)
    np.testing.assert_allclose(got["reward"], np.asarray(combine(per_member, "uwo", lam=0.5)),
                               atol=1e-6)
    assert np.ptp(per_member, axis=0).max() > 0.1  # the members really differ


def _lora_experts(spec, k, seed=0):
    """A LoRA reward model and K experts (own B and heads) stacked on a leading axis."""
    def build():
        model = build_reward_model(registry.create(spec, seed=seed), spec.hidden_size,
                                   is_causal=spec.is_causal)
        apply_lora(model, LoRAConfig(rank=2, alpha=4.0), seed=seed)
        return model

    with nnx.use_eager_sharding(False):
        model = _numpy_fill(nnx.eval_shape(build), seed)
    states = []
    for i in range(k):
        states.append(_numpy_fill(jax.tree.map(lambda x: x, lora_state(model)), 10 + i))
    graphdef, _, rest = split_lora(model)
    return graphdef, stack_adapters(states), rest


@pytest.mark.parametrize("feature", ["prefix_mean", "armorm"])
def test_mixture_routes_and_aggregates_like_stacked_experts(tmp_path, feature):
    tok = build_wordlevel_tokenizer([m["content"] for m in sum(PROMPTS, [])] + RESPONSES)
    spec = registry.resolve(LLAMA + f"&vocab_size={len(tok)}")
    encoder = SequenceEncoder(tok, 64)
    seqs = [encoder.encode(p, r) for p, r in zip(PROMPTS, RESPONSES)]
    graphdef, stacked, rest = _lora_experts(spec, k=4)
    experts = nx.merged_experts(graphdef, stacked, rest)
    with nnx.use_eager_sharding(False):  # the router reads a plain base model
        base_rm = _numpy_fill(nnx.eval_shape(lambda: build_reward_model(
            registry.create(spec), spec.hidden_size, is_causal=True)), seed=7)
    base_graph, base_state = nnx.split(base_rm.backbone)

    # Reference: one padded batch through the vmapped experts; the router on the base model's
    # prompt feature: the mean hidden state over the prompt tokens (the DMoERM recipe's; causal
    # attention makes it equal to a prompt-only pass) or the one at the prompt's last token
    # (ArmoRM's); each category's aggregator on its experts' features.
    length = max(len(s.ids) for s in seqs)
    batch = collate_single(seqs, np.arange(len(seqs)), length, len(seqs), tok.pad_token_id)
    inputs = {k: jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    heads, feats = jax.jit(score_experts, static_argnums=0)(
        graphdef, stacked, rest, inputs)  # [4, N], [4, N, D]
    hidden = jax.jit(lambda s, i, m: nnx.merge(base_graph, s)(i, m))(
        base_state, inputs["input_ids"], inputs["attention_mask"])  # [N, T, D]
    starts = np.array([s.response_start for s in seqs])
    if feature == "armorm":
        x = hidden[np.arange(len(seqs)), starts - 1]  # [N, D]
    else:
        in_prompt = (np.arange(hidden.shape[1])[None] < starts[:, None])[..., None]  # [N, T, 1]
        x = jnp.sum(hidden * in_prompt, 1) / starts[:, None]  # [N, D]
    with nnx.use_eager_sharding(False):
        router = nnx.eval_shape(lambda: Router(32, 2, 0, rngs=nnx.Rngs(0)))  # linear
        aggs = [_numpy_fill(nnx.eval_shape(lambda: MoEAggregator(2, 32, 8, rngs=nnx.Rngs(0))),
                            seed=4 + i) for i in range(2)]
    u = np.random.default_rng(5).standard_normal(32)
    router.shift.set_value(jnp.mean(x, 0))  # standardised like fit_router does
    router.scale.set_value(jnp.std(x, 0) + 1e-3)
    router.out.kernel.set_value(jnp.asarray(np.stack([u, -u], 1), jnp.float32))  # splits in two
    router.out.bias.set_value(jnp.zeros((2,)))
    category = np.argmax(np.asarray(router(x)), -1)
    per_cat = np.stack([np.asarray(aggs[c](concat_experts(feats[2 * c:2 * c + 2])))
                        for c in range(2)], -1)  # [N, 2]
    want = per_cat[np.arange(len(seqs)), category]

    combine_spec = {"type": "mixture", "router": "router", "router_member": 0,
                    "prompt_feature": feature,
                    "categories": [{"experts": [1, 2], "aggregator": "agg0"},
                                   {"experts": [3, 4], "aggregator": "agg1"}]}
    out = nx.save_native(str(tmp_path / "moe"), kind="mixture", spec=spec, tokenizer=tok,
                         members=[base_rm] + experts, combine=combine_spec,
                         modules={"router": router, "agg0": aggs[0], "agg1": aggs[1]},
                         encoding={"max_length": 64})
    got = load_native(out).score(PROMPTS, RESPONSES, batch_size=4)
    assert 0 < category.sum() < len(seqs)  # both categories are used
    np.testing.assert_array_equal(got["category"], category)
    np.testing.assert_allclose(got["category_rewards"], per_cat, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got["reward"], want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got["expert_rewards/1"], np.asarray(heads[2:]).T, atol=1e-5)


def test_bad_inputs_are_refused(tmp_path, bert_run):
    config, run, _ = bert_run
    graphdef, stacked, rest = _lora_experts(registry.resolve(LLAMA), k=1)
    with pytest.raises(ValueError, match="LoRA"):
        nx.save_native(str(tmp_path / "x"), kind="scalar", spec=registry.resolve(LLAMA),
                       tokenizer=None, members=[nnx.merge(graphdef, stacked, rest)],
                       combine={})
    out = nx.save_run(run, run.state, str(tmp_path / "ok"))
    path = os.path.join(out, nx.MANIFEST)
    manifest = json.load(open(path))
    json.dump({**manifest, "version": 99}, open(path, "w"))
    with pytest.raises(ValueError, match="version"):
        load_native(out)
    manifest["tensors"].pop("members/0/head/bias")
    json.dump(manifest, open(path, "w"))
    with pytest.raises(ValueError, match="head/bias"):
        load_native(out)


def test_pooler_head_roundtrip(tmp_path):
    """pooling=pooler (BERT's tanh pooler + linear head) stores and reloads like any head."""
    c = base_config()
    c.model.path, c.model.pooling, c.model.max_length = BERT, "pooler", 64
    c.data.buckets, c.eval.batch_size = (64,), 8
    run = build_run(c, str(tmp_path / "work"), PAIRS)
    data = encode_pairs(PAIRS, run.encoder)
    seqs = data.chosen + data.rejected
    out = nx.save_run(run, run.state, str(tmp_path / "native"))
    loaded = load_native(out)
    assert loaded.manifest["pooling"] == "pooler"
    np.testing.assert_allclose(loaded.score_encoded(seqs, batch_size=3)["reward"],
                               ModelScorer.of(run, run.state).rewards(seqs), atol=1e-6, rtol=1e-6)
