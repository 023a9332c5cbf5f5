"""DMoERM: capability labels, per-member data, the K experts in one vmapped call, phase-2 init
from the phase-1 model, and the whole recipe end to end (with and without the router)."""

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardjax.data import simulator
from rewardjax.data.records import Pair
from rewardjax.data.sources import load_train_pairs
from rewardjax.data.tokenize import encode_pairs
from rewardjax.recipes.dmoerm.data import (
    SubsetPlans,
    capabilities_of,
    capability_labels_from_ratings,
    expert_outputs,
    oriented_dataset,
    prompt_sequences,
    router_inputs,
)
from rewardjax.recipes.dmoerm.train import reseed_lora, stage_config, transplant
from rewardjax.runtime.members import init_members, member_params
from rewardjax.runtime.setup import build_run
from tests.runtime.helpers import load_recipe

K = 3


def _pair(a, b, name="x"):
    return Pair(prompt=[], chosen="c", rejected="r",
                meta={"attrs_chosen": {name: a}, "attrs_rejected": {name: b}})


def test_capability_labels_from_ratings_pinned():
    pairs = [_pair(0.75, 0.25), _pair(0.25, 0.5), _pair(0.5, 0.5), _pair(math.nan, 0.0),
             _pair(1.0, 0.0, name="other"), Pair(prompt=[], chosen="c", rejected="r")]
    np.testing.assert_array_equal(capability_labels_from_ratings(pairs, "x"),
                                  [1, -1, 0, 0, 0, 0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(config, run_full, run_lora, data)`` on 80 simulator pairs with a 1-layer Llama."""
    config = load_recipe("dmoerm", "runlocal")
    workdir = str(tmp_path_factory.mktemp("dmoerm"))
    pairs = load_train_pairs(config.data)
    run_full = build_run(stage_config(config, lora=False), workdir, pairs)
    run_lora = build_run(stage_config(config, lora=True), workdir, pairs)
    return config, run_full, run_lora, encode_pairs(pairs, run_full.encoder)


def test_simulator_capabilities_and_oriented_datasets(tiny):
    _, _, _, data = tiny
    caps = capabilities_of(data.pairs, exclude=("verbosity",))
    assert set(caps) == set(simulator.attribute_names()) - {"verbosity"}
    labels = {c: capability_labels_from_ratings(data.pairs, c) for c in caps}
    mask = np.asarray([p.category == "code" for p in data.pairs])
    code_caps = [c for c in caps if c in simulator.attribute_names("code")]
    cap_data, subsets = oriented_dataset(data, labels, code_caps, mask)
    position = {id(p): i for i, p in enumerate(data.pairs)}
    for cap, sub in zip(code_caps, subsets):
        expected = [i for i in np.flatnonzero(mask)
                    if data.pairs[i].meta["attrs_chosen"][cap]
                    != data.pairs[i].meta["attrs_rejected"][cap]]
        assert [position[id(cap_data.pairs[j])] for j in sub] == expected
        for j in sub:  # the better-rated response is always on the chosen side
            i = position[id(cap_data.pairs[j])]
            meta = data.pairs[i].meta
            better_is_chosen = meta["attrs_chosen"][cap] > meta["attrs_rejected"][cap]
            assert cap_data.chosen[j] is (data.chosen[i] if better_is_chosen
                                          else data.rejected[i])
    with pytest.raises(ValueError, match="no labelled pair"):
        oriented_dataset(data, labels, ["empathy"], mask)  # advice-only capability


def test_subset_plans_draw_each_member_from_its_own_subset():
    lengths = np.array([10, 70, 20, 90, 30, 40, 50, 60])
    subsets = [np.array([0, 2, 4]), np.array([1, 3, 5, 6, 7])]
    plans = SubsetPlans(lengths, subsets, batch_size=2, buckets=(64, 128), seeds=[0, 1])
    seen = [[], []]
    for step in range(3):  # member 0 has 2 batches per epoch, member 1 has 3
        length, idx = plans.at_step(step)
        assert length == max(64 if lengths[i].max() <= 64 else 128 for i in idx)
        for m in range(2):
            assert set(idx[m]) <= set(subsets[m])
            seen[m].extend(idx[m].tolist())
    assert sorted(seen[1]) == sorted(subsets[1].tolist())
    with pytest.raises(ValueError, match="member 1 has no training pairs"):
        SubsetPlans(lengths, [subsets[0], []], 2, (128,), [0, 1])


def _perturbed_experts(run_lora, base_params):
    """K members on a transplanted base with distinct random LoRA B matrices and heads."""
    state = transplant(base_params, run_lora.state)
    experts, _ = init_members(dataclasses.replace(run_lora, state=state), K)

    def perturb(path, x):
        name = jax.tree_util.keystr(path)
        if "lora_b" in name or "head" in name:
            key = jax.random.key(abs(hash(name)) % 1000)
            return x + 0.3 * jax.random.normal(key, x.shape, x.dtype)
        return x

    return experts._replace(params=jax.tree_util.tree_map_with_path(perturb, experts.params))


def _score_alone(graphdef, params, frozen, batch):
    model = nnx.merge(graphdef, params, frozen)
    z = model.features(batch["input_ids"], batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"])
    return np.asarray(model.head(z)), np.asarray(z)


def test_k_experts_in_one_vmapped_call_equal_a_loop_over_experts(tiny):
    config, run_full, run_lora, data = tiny
    experts = _perturbed_experts(run_lora, run_full.state.params)
    seqs = data.chosen[:5] + data.rejected[:5]
    r, z = expert_outputs(run_lora, experts.params, experts.frozen, seqs, config)
    assert r.shape == (K, 10) and z.shape == (K, 10, 32)
    assert not np.allclose(r[0], r[1])  # the experts really differ
    n = max(len(s.ids) for s in seqs)
    batch = {k: np.zeros((10, n), np.int32)
             for k in ("input_ids", "attention_mask", "token_type_ids")}
    for i, s in enumerate(seqs):
        batch["input_ids"][i, :len(s.ids)] = s.ids
        batch["attention_mask"][i, :len(s.ids)] = 1
    for k in range(K):
        rk, zk = _score_alone(run_lora.graphdef, member_params(experts, k), experts.frozen,
                              jax.tree.map(jnp.asarray, batch))
        np.testing.assert_allclose(r[k], rk, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(z[k], zk, rtol=1e-5, atol=1e-5)


def test_phase2_experts_start_as_the_phase1_model(tiny):
    config, run_full, run_lora, data = tiny

    def perturb(path, x):  # a "fine-tuned" phase-1 model: every weight moved
        key = jax.random.key(len(jax.tree_util.keystr(path)))
        return x + 0.05 * jax.random.normal(key, x.shape, x.dtype)

    phase1 = jax.tree_util.tree_map_with_path(perturb, run_full.state.params)
    state = transplant(phase1, run_lora.state)
    experts, _ = init_members(dataclasses.replace(run_lora, state=state), K)
    head = phase1["head"]
    for k in range(K):
        own = member_params(experts, k)["head"]
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(np.asarray(own[leaf][...]), np.asarray(head[leaf][...]))
    # B = 0 at init, so every expert scores exactly like the phase-1 model.
    seqs = data.chosen[:4]
    r, _ = expert_outputs(run_lora, experts.params, experts.frozen, seqs, config)
    r1, _ = expert_outputs(run_full, jax.tree.map(lambda x: x[None], phase1),
                           run_full.state.frozen, seqs, config)
    for k in range(K):
        np.testing.assert_allclose(r[k], r1[0], rtol=1e-5, atol=1e-5)


def test_reseed_lora_gives_each_member_its_own_adapter_init(tiny):
    _, run_full, run_lora, _ = tiny
    state = transplant(run_full.state.params, run_lora.state)
    experts, _ = init_members(dataclasses.replace(run_lora, state=state), K)
    params = reseed_lora(experts.params, [7, 8, 9])
    again = reseed_lora(experts.params, [7, 8, 9])
    q = params["backbone"]["layers"]["attn"]["q_proj"]
    a = np.asarray(q["lora_a"][...])  # [K, layers, in, rank]
    assert a.shape[0] == K and len({a[k].tobytes() for k in range(K)}) == K
    assert np.abs(a).max() <= 1.0 / np.sqrt(a.shape[-2])
    assert np.abs(a).max() > 0.8 / np.sqrt(a.shape[-2])  # uniform over the whole range
    np.testing.assert_array_equal(a, np.asarray(again["backbone"]["layers"]["attn"]["q_proj"]
                                                ["lora_a"][...]))
    np.testing.assert_array_equal(np.asarray(q["lora_b"][...]), 0.0)
    np.testing.assert_array_equal(np.asarray(params["head"]["kernel"][...]),
                                  np.asarray(experts.params["head"]["kernel"][...]))


def test_prompt_sequences_stop_where_the_response_starts(tiny):
    _, _, _, data = tiny
    for e, p in zip(prompt_sequences(data)[:5], data.chosen[:5]):
        assert 0 < len(e.ids) == p.response_start < len(p.ids)
        np.testing.assert_array_equal(e.ids, p.ids[:p.response_start])


def test_router_word_features_are_the_hashed_prompt_tokens(tiny):
    config, run_full, _, data = tiny
    config = config.copy_and_resolve_references()
    config.dmoerm.router_features, config.dmoerm.router_buckets = "words", 16
    x = router_inputs(run_full, data, config)
    assert x.shape == (len(data), 16)
    for row, e in zip(x[:5], data.chosen[:5]):
        np.testing.assert_array_equal(np.flatnonzero(row),
                                      np.unique(e.ids[:e.response_start] % 16))
    config.dmoerm.router_features = "tokens"
    with pytest.raises(ValueError, match="router_features"):
        router_inputs(run_full, data, config)


def test_config_variants():
    assert load_recipe("dmoerm", "runlocal,variants=no_router").dmoerm.variants == "no_router"
    assert load_recipe("dmoerm", "").dmoerm.variants == "router,no_router"
    with pytest.raises(ValueError, match="variants"):
        load_recipe("dmoerm", "variants=experts")


def test_dmoerm_end_to_end_with_and_without_router(tmp_path):
    from rewardjax.main import run

    config = load_recipe("dmoerm", "runlocal")
    config.train.progress = False
    config.dmoerm.categories = "code,story"
    # Only the two capabilities both categories share, and as many ensemble members: every
    # LoRA stage then has K = 2 members and compiles once (the test's time is mostly compiles).
    config.dmoerm.exclude_capabilities = ("verbosity,correctness,runs,efficiency,relevance,"
                                          "creativity,coherence")
    config.baselines.ensemble_size = 2
    summary = run(config, str(tmp_path))
    methods = {"single", "ens_mean", "ens_wco", "ens_uwo", "dmoerm", "dmoerm_oracle",
               "dmoerm_no_router"}
    assert set(summary["results"]) == {"sim:test_id", "sim:test_ood"}
    for res in summary["results"].values():
        assert set(res) == methods
        for m in res.values():
            assert set(m["by_category"]) == {"code", "story"}
            assert 0.0 <= m["accuracy"] <= 1.0
            assert m["n"] == sum(g["n"] for g in m["by_category"].values())
    assert summary["categories"] == ["code", "story"]
    assert set(summary["router_accuracy"]["sim:test_id"]) <= {"all", "code", "story"}
    on_disk = json.load(open(tmp_path / "dmoerm.json"))
    assert on_disk["budget"] == summary["budget"]
    rows = [json.loads(line) for line in open(tmp_path / "capability_scores.jsonl")]
    assert len(rows) == sum(res["single"]["n"] for res in summary["results"].values())
    for row in rows:
        assert set(row["capabilities"]) == {"style", "safety"}
        assert all(len(v) == 2 for v in row["capabilities"].values())
        assert len(row["dmoerm"]) == 2 and len(row["dmoerm_no_router"]) == 2
        assert set(row["capabilities_no_router"]) == set(summary["capabilities"])
    stages = set(os.listdir(tmp_path / "checkpoints"))
    assert stages == {"single", "phase1", "ensemble", "phase2_code", "phase2_story",
                      "phase2_all"}

    # The workdir's scorer (the native mixture written at the end of training) gives the
    # rewards the recipe evaluated with: routed category, its aggregator over merged experts.
    from rewardjax import recipes
    from rewardjax.data.sources import load_sets

    scorer = recipes.get("dmoerm").load_scorer(config, str(tmp_path))
    saved = np.load(tmp_path / "pair_rewards.npz")
    for name, pairs, _ in load_sets(config.data.eval, config.data):
        pairs = [p for p in pairs if p.category in ("code", "story")]
        rc, rr, _ = scorer.score_pairs(pairs)
        np.testing.assert_allclose(np.concatenate([rc, rr]), saved[f"{name}/dmoerm"],
                                   atol=1e-4, rtol=1e-4)
    config.mode = "export"
    assert run(config, str(tmp_path))["format"] == "native"
