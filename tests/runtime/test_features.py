"""The ArmoRM feature store: which hidden states are read, and that the cache is reused."""

import numpy as np
import pytest

from rewardjax.data.features import (
    FeatureCache,
    backbone_fingerprint,
    pair_features,
    prompt_prefix,
)
from rewardjax.data.sources import load_sets
from rewardjax.runtime.features import BackboneFeatures
from rewardjax.runtime.setup import build_run
from tests.runtime.helpers import load_recipe

LENGTH = 96  # one bucket: every batch compiles once
TINY_BERT = "random:bert?hidden_size=32&num_layers=1&num_heads=2&intermediate_size=64"


def _tiny(tmp_path, path=None, left=False):
    config = load_recipe("armorm", "runlocal")
    config.data.sim.num_train = 12
    config.model.max_length = LENGTH
    config.data.buckets = (LENGTH,)
    if path:
        config.model.path = path
    if left:
        config.data.padding_side = "left"
    pairs = load_sets("sim:train", config.data)[0][1]
    run = build_run(config, str(tmp_path), pairs)
    return config, run, pairs


def nnx_pooling(run):
    from flax import nnx

    return nnx.merge(run.graphdef, run.state.params, run.state.frozen).pooling


def _reference(run, seqs):
    """The reward model's own pooled features (``RewardModel.features``) of ``seqs`` as one
    right-padded batch: an independent path to the same numbers."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from rewardjax.data.batching import pad_rows

    ids, mask, types = pad_rows(seqs, LENGTH, len(seqs), run.tokenizer.pad_token_id)
    @jax.jit
    def features(params, frozen, ids, mask, types):
        model = nnx.merge(run.graphdef, params, frozen)
        return model.features(ids, mask, token_type_ids=types)

    return np.asarray(features(run.state.params, run.state.frozen, jnp.asarray(ids),
                               jnp.asarray(mask), jnp.asarray(types)))


@pytest.mark.parametrize("left", [False, True])
def test_causal_features_are_last_token_and_prompt_last_token(tmp_path, left):
    config, run, pairs = _tiny(tmp_path, left=left)
    ext = BackboneFeatures(run, config)
    prompts = [p.prompt for p in pairs[:5]]
    # different lengths, so left padding shifts every row by a different offset
    responses = [" ".join(p.chosen.split()[:n]) for p, n in zip(pairs, (3, 9, 20, 30, 45))]
    assert nnx_pooling(run) == "last"
    f = ext(prompts, responses)
    seqs = ext.encode(prompts, responses)
    # response: the hidden state at the last token of the whole sequence, alone and unpadded
    np.testing.assert_allclose(f["response"], _reference(run, seqs), atol=2e-5)
    # prompt: read from the same batched sequence, equals the prompt prefix run on its own
    # (causal attention), i.e. the last token of the chat-formatted prompt
    prefixes = [prompt_prefix(s) for s in seqs]
    assert all(len(p.ids) == s.response_start for p, s in zip(prefixes, seqs))
    np.testing.assert_allclose(f["prompt"], _reference(run, prefixes), atol=2e-5)
    assert not np.allclose(f["prompt"], f["response"])


def test_encoder_features_pool_the_pair_and_the_prompt_alone(tmp_path):
    config, run, pairs = _tiny(tmp_path, path=TINY_BERT)
    ext = BackboneFeatures(run, config)
    assert not ext.is_causal and nnx_pooling(run) == "mean"
    prompts = [pairs[0].prompt, pairs[1].prompt, pairs[0].prompt]  # a repeated prompt
    responses = [pairs[0].chosen, pairs[1].chosen, pairs[0].rejected]
    f = ext(prompts, responses)
    seqs = ext.encode(prompts, responses)
    np.testing.assert_allclose(f["response"], _reference(run, seqs), atol=2e-5)
    prefixes = [prompt_prefix(s) for s in seqs]
    np.testing.assert_allclose(f["prompt"], _reference(run, prefixes), atol=2e-5)
    np.testing.assert_array_equal(f["prompt"][0], f["prompt"][2])  # same prompt, same feature


def test_cache_second_call_does_not_run_the_backbone(tmp_path):
    config, run, pairs = _tiny(tmp_path)
    ext = BackboneFeatures(run, config)
    fp = backbone_fingerprint(config, run.tokenizer)
    cache = FeatureCache(str(tmp_path / "cache"))
    first = pair_features(cache, fp, pairs[:6], ext, "a")
    calls = ext.calls
    assert calls > 0 and cache.misses == 1
    again = pair_features(cache, fp, pairs[:6], ext, "a")
    assert ext.calls == calls and cache.hits == 1  # read from disk: the backbone did not run
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
    assert first["chosen"].shape == (6, 64) and first["prompt"].shape == (6, 64)
    # a fresh store over the same directory (a second run) also hits
    fresh = FeatureCache(str(tmp_path / "cache"))
    pair_features(fresh, fp, pairs[:6], lambda *_: pytest.fail("backbone ran"), "a")
    assert fresh.hits == 1
    # other texts or another backbone setting miss
    pair_features(cache, fp, pairs[1:7], ext, "b")
    pair_features(cache, dict(fp, max_length=64), pairs[:6], ext, "c")
    assert cache.misses == 3 and ext.calls > calls
