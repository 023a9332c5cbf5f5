"""Reward = backbone + pooling + head: padding side and batch size must not change rewards."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rewardjax.data.batching import pad_rows
from rewardjax.data.tokenize import Encoded
from rewardjax.models import registry
from rewardjax.models.pooling import last_token_index, pool
from rewardjax.models.reward_model import build_reward_model

BACKBONES = [
    "random:llama?hidden_size=32&num_layers=2&num_heads=4&num_kv_heads=2&intermediate_size=64"
    "&vocab_size=101",
    "random:qwen2?hidden_size=32&num_layers=2&num_heads=4&num_kv_heads=2&intermediate_size=64"
    "&vocab_size=101",
    "random:bert?hidden_size=32&num_layers=2&num_heads=4&intermediate_size=64&vocab_size=101",
]


def _model(path, pooling="auto"):
    spec = registry.resolve(path)
    backbone = registry.create(spec, seed=1)
    return build_reward_model(
        backbone, spec.hidden_size, is_causal=spec.is_causal, pooling=pooling, seed=1
    )


def _seqs(n=5, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(3, 17))
        ids = rng.integers(5, 100, size=length).astype(np.int32)
        types = np.zeros(length, np.int32)
        types[length // 2 :] = 1
        out.append(Encoded(ids, types, length // 2))
    return out


def _score(model, seqs, length, left):
    ids, mask, types = pad_rows(seqs, length, len(seqs), pad_id=0, left=left)
    return np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), token_type_ids=jnp.asarray(types)))


@pytest.mark.parametrize(
    "path,pooling",
    [(b, "auto") for b in BACKBONES]
    + [(BACKBONES[0], p) for p in ("mean", "cls")]
    + [(BACKBONES[2], "last")],
)
def test_padding_side_and_batch_size_do_not_change_rewards(path, pooling):
    model = _model(path, pooling)
    seqs = _seqs()
    right = _score(model, seqs, 24, left=False)
    left = _score(model, seqs, 24, left=True)
    longer = _score(model, seqs, 40, left=False)  # more padding
    single = np.concatenate([_score(model, [s], 16, left=False) for s in seqs])
    np.testing.assert_allclose(left, right, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(longer, right, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(single, right, atol=2e-5, rtol=1e-5)
    assert np.std(right) > 0  # rewards actually depend on the input


def test_pooling_reads_the_mask_not_the_pad_id():
    mask = jnp.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(last_token_index(mask), [2, 4, 4])
    hidden = jnp.arange(3 * 5 * 2, dtype=jnp.float32).reshape(3, 5, 2)
    np.testing.assert_array_equal(
        pool(hidden, mask, "last"), hidden[jnp.arange(3), jnp.array([2, 4, 4])]
    )
    np.testing.assert_array_equal(
        pool(hidden, mask, "cls"), hidden[jnp.arange(3), jnp.array([0, 2, 0])]
    )
    np.testing.assert_allclose(pool(hidden, mask, "mean")[0], hidden[0, :3].mean(0))
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(hidden, mask, "max")


def test_bf16_compute_keeps_float32_params_and_rewards():
    spec = registry.resolve(BACKBONES[0])
    backbone = registry.create(spec, dtype=jnp.bfloat16, param_dtype=jnp.float32, seed=1)
    model = build_reward_model(backbone, spec.hidden_size, is_causal=True, seed=1)
    from flax import nnx

    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    r = _score(model, _seqs(), 24, left=False)
    assert r.dtype == np.float32
    ref = _score(_model(BACKBONES[0]), _seqs(), 24, left=False)
    # bf16 activations: close to float32, not equal
    np.testing.assert_allclose(r, ref, atol=0.1)
    assert not np.array_equal(r, ref)
