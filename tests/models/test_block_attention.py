"""Block-skipping attention equals the dense path: outputs and gradients, on every row layout
(packed, causal, grouped-query heads, shared prefixes, padding), and end to end in tiny BERT and
Llama reward models; the computed share of the score matrix is what the layout says."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardjax.models import registry
from rewardjax.models.block_attention import (
    attended_fraction,
    block_attention,
    block_layout,
    visibility,
)
from rewardjax.models.layers import (
    ATTENTION_IMPLS,
    attention_bias,
    make_attention_mask,
    softmax_attention,
)
from rewardjax.models.llama import Attention
from rewardjax.models.reward_model import build_reward_model

T, BLOCK = 32, 8


def _segments(lengths_per_row):
    """``[R, T]`` segment ids (0 = trailing padding) from per-row segment lengths."""
    rows = []
    for lengths in lengths_per_row:
        ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(0)])
        rows.append(np.pad(ids, (0, T - len(ids))).astype(np.int32))
    return jnp.asarray(np.stack(rows))


# Segments crossing tile boundaries, trailing padding, a row that is one full segment, an empty
# (all padding) row, a row of one-token segments.
PACKED = [[5, 11, 3, 9], [T], [13, 6], [], [1, 1, 1, 1, 20]]


def _shared_prefix_parts(seg):
    """Each segment split as [prompt | chosen | rejected] (parts 0 / 1 / 2) in thirds."""
    seg = np.asarray(seg)
    parts = np.zeros_like(seg)
    for r in range(seg.shape[0]):
        for s in set(seg[r].tolist()) - {0}:
            idx = np.nonzero(seg[r] == s)[0]
            n = len(idx)
            parts[r, idx[n // 3: 2 * n // 3]] = 1
            parts[r, idx[2 * n // 3:]] = 2
    return jnp.asarray(parts)


LAYOUTS = {
    "packed": dict(causal=False),
    "packed_causal": dict(causal=True),
    "shared_prefix": dict(causal=True, parts=True),
    "shared_prefix_bidirectional": dict(causal=False, parts=True),
}


def _inputs(name):
    seg = _segments(PACKED)
    mask = (seg > 0).astype(jnp.int32)
    parts = _shared_prefix_parts(seg) if LAYOUTS[name].get("parts") else None
    return mask, seg, parts, LAYOUTS[name]["causal"]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_visibility_is_the_dense_bias(name):
    mask, seg, parts, causal = _inputs(name)
    bias = attention_bias(mask, causal=causal, segment_ids=seg, parts=parts)
    allowed = visibility(mask, causal=causal, segment_ids=seg, parts=parts)
    np.testing.assert_array_equal(np.asarray(bias[:, 0] == 0), np.asarray(allowed))


@pytest.mark.parametrize("name,heads,kv_heads,chunk", [
    ("packed", 4, 4, 2), ("packed_causal", 4, 2, 3), ("shared_prefix", 6, 2, 1),
])
def test_values_and_gradients_equal_dense(name, heads, kv_heads, chunk):
    mask, seg, parts, causal = _inputs(name)
    keys = jax.random.split(jax.random.key(0), 4)
    b, d = seg.shape[0], 8
    q = jax.random.normal(keys[0], (b, T, heads, d))
    k = jax.random.normal(keys[1], (b, T, kv_heads, d))
    v = jax.random.normal(keys[2], (b, T, kv_heads, d))
    w = jax.random.normal(keys[3], (b, T, heads, d))
    bias = attention_bias(mask, causal=causal, segment_ids=seg, parts=parts)
    layout = block_layout(mask, causal=causal, segment_ids=seg, parts=parts, block=BLOCK,
                          chunk=chunk)

    def dense(q, k, v):
        return softmax_attention(q, k, v, bias)

    def blocks(q, k, v):
        return block_attention(q, k, v, layout)

    # Every token, padding included, gets the dense path's output.
    np.testing.assert_allclose(jax.jit(blocks)(q, k, v), dense(q, k, v), atol=1e-5)
    grads = [jax.jit(jax.grad(lambda *a, f=f: jnp.sum(w * f(*a)), argnums=(0, 1, 2)))(q, k, v)
             for f in (blocks, dense)]
    for label, a, r in zip("qkv", *grads):
        np.testing.assert_allclose(a, r, atol=1e-5, err_msg=label)


def test_attended_fraction_of_a_hand_computed_layout():
    # Segments [8 | 8 | 16] in 4 blocks of 8: q-block 0 sees k-block 0, q-block 1 k-block 1,
    # q-blocks 2 and 3 see k-blocks 2 and 3: 6 of 16 tiles.
    seg = _segments([[8, 8, 16]])
    mask = (seg > 0).astype(jnp.int32)
    layout = block_layout(mask, causal=False, segment_ids=seg, block=BLOCK, chunk=2)
    np.testing.assert_array_equal(layout.counts, [1, 1, 2, 2])
    visible, computed = attended_fraction(layout)
    assert float(visible) == pytest.approx(6 / 16)
    assert float(computed) == pytest.approx(6 / 16)
    # Causal: q-block 2 no longer sees k-block 3 (5 tiles); chunks pair it with q-block 3
    # (2 blocks), so one tile of padding is computed.
    layout = block_layout(mask, causal=True, segment_ids=seg, block=BLOCK, chunk=2)
    visible, computed = attended_fraction(layout)
    assert float(visible) == pytest.approx(5 / 16)
    assert float(computed) == pytest.approx(6 / 16)


def test_dropout_takes_the_dense_path(monkeypatch):
    import rewardjax.models.block_attention as ba

    monkeypatch.setattr(ba, "DEFAULT_BLOCK", BLOCK)
    with nnx.use_eager_sharding(False):
        attn = Attention(16, 2, 2, 8, qkv_bias=False, out_bias=False, dtype=jnp.float32,
                         param_dtype=jnp.float32, std=0.2, rngs=nnx.Rngs(0), impl="blocks")
    seg = _segments(PACKED[:3])
    mask = (seg > 0).astype(jnp.int32)
    q, k, v = attn.qkv(jax.random.normal(jax.random.key(1), (3, T, 16)), None)
    with_blocks = make_attention_mask(mask, causal=False, segment_ids=seg, impl="blocks")
    assert with_blocks.blocks is not None
    dense = make_attention_mask(mask, causal=False, segment_ids=seg, impl="xla")
    assert dense.blocks is None
    rng = jax.random.key(2)
    attend = jax.jit(lambda m: attn.attend(q, k, v, m, 0.3, rng))
    np.testing.assert_allclose(attend(with_blocks), attend(dense), atol=1e-6)


def test_implementations_are_known():
    assert {"auto", "xla", "blocks", "cudnn"} <= set(ATTENTION_IMPLS)
    spec = registry.resolve("random:bert?hidden_size=16&num_layers=1&num_heads=2"
                            "&intermediate_size=16&vocab_size=11")
    assert spec.config.attention == "auto"


LLAMA = ("random:llama?hidden_size=32&num_layers=1&num_heads=4&num_kv_heads=2"
         "&intermediate_size=64&vocab_size=101")
BERT = "random:bert?hidden_size=32&num_layers=1&num_heads=4&intermediate_size=64&vocab_size=101"


def _packed_rewards_and_grads(path, impl, ids, mask, seg):
    spec = registry.resolve(path + f"&attention={impl}")
    backbone = registry.create(spec, seed=3)
    model = build_reward_model(backbone, spec.hidden_size, is_causal=spec.is_causal, seed=3)
    graphdef, state = nnx.split(model)

    valid = (seg[:, None, :] == jnp.arange(1, 6)[None, :, None]).any(-1)  # [R, S] used slots

    def loss(st):
        r = nnx.merge(graphdef, st).packed_rewards(ids, mask, seg, num_segments=5)
        r = jnp.where(valid, r.reshape(valid.shape), 0.0)
        return jnp.sum(r * jnp.arange(1.0, 1.0 + r.size).reshape(r.shape)), r

    (_, r), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
    return np.asarray(r), jax.tree.leaves(grads)


@pytest.mark.parametrize("path", [BERT, LLAMA])
def test_reward_models_match_dense_end_to_end(path, monkeypatch):
    import rewardjax.models.block_attention as ba

    monkeypatch.setattr(ba, "DEFAULT_BLOCK", BLOCK)  # rows of 32 tokens: 4 blocks of 8
    seg = _segments(PACKED)
    mask = (seg > 0).astype(jnp.int32)
    ids = jnp.where(mask > 0, jax.random.randint(jax.random.key(4), seg.shape, 2, 100), 0)
    assert make_attention_mask(mask, causal=False, segment_ids=seg,
                               impl="blocks").blocks is not None
    r_blocks, g_blocks = _packed_rewards_and_grads(path, "blocks", ids, mask, seg)
    r_dense, g_dense = _packed_rewards_and_grads(path, "xla", ids, mask, seg)
    np.testing.assert_allclose(r_blocks, r_dense, atol=1e-5)
    for a, b in zip(g_blocks, g_dense):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_per_shard_layouts_on_8_cpu_devices_match_dense():
    """``auto`` on a batch-sharded mesh builds one layout per batch shard and reads it inside a
    shard_map (heads split over ``tensor`` too): equal to the dense single-device path, outputs
    and gradients (``block_sharded_check.py`` under 8 virtual devices)."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, os.path.join(root, "tests", "models",
                                                     "block_sharded_check.py")],
                       cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert r.stdout.count(" ok") == 12 and "OK" in r.stdout, r.stdout
