"""Shared-prefix rows give every reward, the loss and every gradient of the unshared encoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardjax.data.batching import collate_pairs
from rewardjax.data.records import Pair
from rewardjax.data.shared_prefix import collate_shared_pairs, plan_prefixes
from rewardjax.data.tokenize import Encoded, EncodedPairs, TruncationStats
from rewardjax.losses.bradley_terry import bradley_terry_loss
from rewardjax.models import registry
from rewardjax.models.layers import attention_bias
from rewardjax.models.reward_model import build_reward_model
from rewardjax.runtime.step import pair_rewards, real_tokens

SMALL = "hidden_size=32&num_layers=2&num_heads=4&num_kv_heads=2&intermediate_size=64&vocab_size=101"
BACKBONES = {
    "llama": f"random:llama?{SMALL}",
    "qwen2": f"random:qwen2?{SMALL}",  # q/k/v biases, tied embeddings
    "mistral_window": f"random:mistral?{SMALL}&sliding_window=5",  # window shorter than rows
}


def test_attention_bias_with_parts_hand_computed():
    # One row: segment 1 = [p p | c c | r], segment 2 = one plain token, then padding.
    seg = jnp.array([[1, 1, 1, 1, 1, 2, 0]])
    parts = jnp.array([[0, 0, 1, 1, 2, 0, 0]])
    bias = attention_bias(seg > 0, causal=True, segment_ids=seg, parts=parts)[0, 0]
    allowed = np.asarray(bias == 0)
    want = np.zeros((7, 7), bool)
    want[0, :1] = want[1, :2] = True  # prompt: causal
    want[2, :3] = want[3, :4] = True  # chosen: prompt + itself
    want[4, [0, 1, 4]] = True  # rejected: prompt + itself, never chosen
    want[5, 5] = want[6, 6] = True  # own segment; padding sees itself only
    np.testing.assert_array_equal(allowed, want)


def _model(path):
    spec = registry.resolve(path)
    backbone = registry.create(spec, seed=1)
    return build_reward_model(backbone, spec.hidden_size, is_causal=True, pooling="last", seed=1)


def _pairs(seed=0):
    """Pairs with a common prompt (some whose responses also start alike), one whose prompts
    differ (two-sequence form) and one too long to share a row."""
    rng = np.random.default_rng(seed)
    toks = lambda n: rng.integers(5, 100, size=n).astype(np.int32)  # noqa: E731
    chosen, rejected = [], []
    for k in range(7):
        prompt = toks(int(rng.integers(3, 12)))
        a, b = toks(int(rng.integers(1, 8))), toks(int(rng.integers(1, 8)))
        if k == 2:  # responses start with the same two tokens: the prefix covers them too
            a, b = toks(5), toks(4)
            b[:2] = a[:2]
        if k == 3:  # different prompts (e.g. truncated apart): no common prompt
            other = prompt.copy()
            other[0] = (other[0] + 1) % 95 + 5
            for out, p, r in ((chosen, prompt, a), (rejected, other, b)):
                ids = np.concatenate([p, r])
                out.append(Encoded(ids, np.zeros(len(ids), np.int32), len(p)))
            continue
        if k == 4:  # long: the shared segment would exceed a 40-token row
            prompt, a, b = toks(25), toks(10), toks(9)
        for out, r in ((chosen, a), (rejected, b)):
            ids = np.concatenate([prompt, r])
            out.append(Encoded(ids, np.zeros(len(ids), np.int32), len(prompt)))
    n = len(chosen)
    pairs = [Pair([], "c", "r", margin=0.1 * i) for i in range(n)]
    return EncodedPairs(chosen, rejected, pairs, TruncationStats())


def _loss_grads(model, batch):
    graphdef, params = nnx.split(model)

    def loss_fn(p):
        rc, rr = pair_rewards(nnx.merge(graphdef, p), batch)
        loss = bradley_terry_loss(rc, rr, margin=batch["margin"], center_coef=0.01,
                                  weights=batch["weights"])[0]
        return loss, (rc, rr)

    (loss, rewards), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    return loss, rewards, grads


@pytest.mark.parametrize("name", list(BACKBONES))
def test_shared_prefix_equals_unshared(name):
    model = _model(BACKBONES[name])
    data = _pairs()
    prefix, stats = plan_prefixes(data, row_length=40)
    assert stats.prompt_differs == 1 and stats.too_long == 1 and stats.shared == 5
    idx = np.arange(len(data))
    batch_size = len(data) + 1  # one filler pair
    shared = collate_shared_pairs(data, prefix, idx, batch_size, 40, 4, 0)
    assert shared["input_ids"].shape[0] < 2 * len(data)  # several pairs per row
    assert (np.bincount(shared["segment_ids"].ravel())[1:] > 0).sum() > 1
    unpacked = collate_pairs(data, idx, 40, batch_size, 0)
    assert float(real_tokens(shared)) == float(real_tokens(unpacked))
    assert shared["attention_mask"].sum() == real_tokens(unpacked) - stats.tokens_saved

    lu, (cu, ru), gu = _loss_grads(model, unpacked)
    loss, (c, r), grads = _loss_grads(model, shared)
    n = len(data)
    np.testing.assert_allclose(np.asarray(c)[:n], np.asarray(cu)[:n], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(r)[:n], np.asarray(ru)[:n], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(loss), float(lu), rtol=1e-5, atol=1e-6)
    flat_u, flat = jax.tree.leaves(gu), jax.tree.leaves(grads)
    assert len(flat_u) == len(flat) > 0
    for a, b in zip(flat_u, flat):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


def test_shared_rows_need_positions_and_last_pooling():
    model = _model(BACKBONES["llama"])
    ids = jnp.ones((1, 6), jnp.int32)
    seg = jnp.ones((1, 6), jnp.int32)
    parts = jnp.array([[0, 0, 1, 1, 2, 2]])
    with pytest.raises(ValueError, match="explicit positions"):
        model.backbone(ids, seg, segment_ids=seg, parts=parts)
    model.pooling = "mean"
    with pytest.raises(ValueError, match="last token"):
        model.token_rewards(ids, seg, seg, parts, seg, jnp.zeros((2, 2), jnp.int32))
