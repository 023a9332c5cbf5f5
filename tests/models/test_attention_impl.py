"""The attention implementations agree: materialised bias (``xla``) vs fused cuDNN (GPU only),
and a length-described mask vs the bias built from the same padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardjax.models import registry
from rewardjax.models.layers import (
    AttentionMask,
    attention_bias,
    fused_attention,
    lengths_mask,
    softmax_attention,
)
from rewardjax.models.llama import Attention
from rewardjax.models.reward_model import build_reward_model

LLAMA = ("random:llama?hidden_size=64&num_layers=2&num_heads=4&num_kv_heads=2"
         "&intermediate_size=128&vocab_size=101")
BERT = "random:bert?hidden_size=64&num_layers=2&num_heads=4&intermediate_size=128&vocab_size=101"
ON_GPU = any(d.platform == "gpu" for d in jax.devices())


def test_unknown_attention_implementation_is_named():
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
        registry.resolve(LLAMA + "&attention=flash")
    with pytest.raises(ValueError, match="unknown attention implementation"):
        registry.resolve(BERT + "&attention=flash")


@pytest.mark.parametrize("causal", [True, False])
def test_lengths_mask_equals_its_bias(causal):
    with nnx.use_eager_sharding(False):
        attn = Attention(32, 4, 2, 8, qkv_bias=False, out_bias=False, dtype=jnp.float32,
                         param_dtype=jnp.float32, std=0.2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (3, 7, 32))
    lengths = jnp.array([7, 4, 1])
    q, k, v = attn.qkv(x, None)
    by_lengths = attn.attend(q, k, v, AttentionMask(None, lengths, causal=causal))
    bias = attention_bias(lengths_mask(lengths, 7), causal=causal)
    by_bias = attn.attend(q, k, v, bias)
    np.testing.assert_allclose(by_lengths, by_bias, atol=1e-6)
    # Real positions do not depend on the padding beyond them.
    short = attn.attend(q[1:2, :4], k[1:2, :4], v[1:2, :4], AttentionMask(None, lengths[1:2],
                                                                            causal=causal))
    np.testing.assert_allclose(by_lengths[1, :4], short[0], atol=1e-5)


def _reference_attention(q, k, v, bias, keep):
    """Textbook attention, differentiated by JAX: what the hand-written backward must equal."""
    b, t, h, d = q.shape
    g = h // k.shape[2]
    k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(d) + bias
    probs = jax.nn.softmax(scores, axis=-1)
    if keep is not None:  # [B, KV, G*T, S] -> [B, H, T, S]
        probs = probs * keep.reshape(b, h, t, -1)
    return jnp.einsum("bhts,bshd->bthd", probs, v)


@pytest.mark.parametrize("heads,kv_heads,dropout", [(4, 4, False), (6, 2, False), (6, 3, True)])
def test_softmax_attention_values_and_gradients(heads, kv_heads, dropout):
    keys = jax.random.split(jax.random.key(0), 5)
    b, t, d = 2, 6, 8
    q = jax.random.normal(keys[0], (b, t, heads, d))
    k = jax.random.normal(keys[1], (b, t, kv_heads, d))
    v = jax.random.normal(keys[2], (b, t, kv_heads, d))
    bias = attention_bias(lengths_mask(jnp.array([6, 3]), t), causal=True)
    keep = None
    if dropout:
        shape = (b, kv_heads, heads // kv_heads * t, t)
        keep = jax.random.bernoulli(keys[3], 0.7, shape) / 0.7
    w = jax.random.normal(keys[4], (b, t, heads, d))

    def loss(fn):
        return lambda q, k, v: jnp.sum(w * fn(q, k, v, bias, keep))

    np.testing.assert_allclose(softmax_attention(q, k, v, bias, keep),
                               _reference_attention(q, k, v, bias, keep), atol=1e-5)
    ours = jax.grad(loss(softmax_attention), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(_reference_attention), argnums=(0, 1, 2))(q, k, v)
    for name, a, r in zip("qkv", ours, ref):
        np.testing.assert_allclose(a, r, atol=2e-5, err_msg=name)


def test_fused_attention_needs_half_precision():
    q = jnp.zeros((1, 4, 2, 8), jnp.float32)
    with pytest.raises(ValueError, match="bfloat16/float16 compute dtype"):
        fused_attention(q, q, q, AttentionMask(None, jnp.array([4]), causal=True))


def _rewards(path, impl, ids, mask):
    spec = registry.resolve(path + f"&attention={impl}")
    backbone = registry.create(spec, dtype=jnp.bfloat16, seed=3)
    model = build_reward_model(backbone, spec.hidden_size, is_causal=spec.is_causal, seed=3)

    def loss(m):
        r = m(ids, mask)
        return jnp.mean(r.astype(jnp.float32) ** 2), r

    (_, r), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    return np.asarray(r, np.float32), jax.tree.leaves(nnx.state(grads, nnx.Param))


@pytest.mark.skipif(not ON_GPU, reason="cuDNN flash attention needs a GPU")
@pytest.mark.parametrize("path", [LLAMA, BERT])
def test_cudnn_matches_xla_rewards_and_gradients(path):
    rng = np.random.default_rng(0)
    lengths = np.array([64, 37, 5, 64])
    ids = rng.integers(2, 100, (4, 64)).astype(np.int32)
    mask = (np.arange(64)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask > 0, ids, 0)
    r_xla, g_xla = _rewards(path, "xla", ids, mask)
    r_cudnn, g_cudnn = _rewards(path, "cudnn", ids, mask)
    np.testing.assert_allclose(r_cudnn, r_xla, rtol=3e-2, atol=3e-2)
    for a, b in zip(g_cudnn, g_xla):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        scale = np.abs(b).max() + 1e-6
        assert np.abs(a - b).max() / scale < 0.1
