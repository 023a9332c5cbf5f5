"""Linear reward heads on pooled features.

A scalar Bradley-Terry head is the ``num_outputs == 1`` case of a linear head; multi-objective
regression heads (ArmoRM) use the same module with ``num_outputs = K``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class LinearHead(nnx.Module):
    """``r = z W + b`` computed in float32.

    Args:
      features: input width D.
      num_outputs: K (1 for a scalar reward).
      rngs: initialisation rngs; the kernel is ``N(0, 1/(D+1))`` like common RM heads.
    """

    def __init__(self, features: int, num_outputs: int = 1, *, rngs: nnx.Rngs):
        std = 1.0 / jnp.sqrt(features + 1.0)
        self.kernel = nnx.Param(
            std * jax.random.normal(rngs.params(), (features, num_outputs), jnp.float32),
            sharding_names=("embed", None),
        )
        self.bias = nnx.Param(jnp.zeros((num_outputs,), jnp.float32), sharding_names=(None,))
        self.num_outputs = num_outputs

    def __call__(self, z: jax.Array) -> jax.Array:
        out = z.astype(jnp.float32) @ self.kernel[...] + self.bias[...]  # [batch, K]
        return out[..., 0] if self.num_outputs == 1 else out


class PoolerHead(nnx.Module):
    """BERT's sequence-classification head: ``r = W_o tanh(W_p z + b_p) + b_o`` on the first
    token's feature ``z`` (``BertForSequenceClassification`` without dropout).

    ``dense`` starts from the checkpoint's pretrained pooler when there is one (see
    ``rewardjax.runtime.setup.load_pretrained``), so the model is the one TRL trains and exports
    exactly to ``transformers``.

    Args:
      features: input width D.
      num_outputs: K.
      rngs: initialisation rngs (``dense`` ~ N(0, 0.02) like BERT's initializer).
    """

    def __init__(self, features: int, num_outputs: int = 1, *, rngs: nnx.Rngs):
        self.dense_kernel = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (features, features), jnp.float32),
            sharding_names=("embed", None))
        self.dense_bias = nnx.Param(jnp.zeros((features,), jnp.float32), sharding_names=(None,))
        self.out = LinearHead(features, num_outputs, rngs=rngs)
        self.num_outputs = num_outputs

    def __call__(self, z: jax.Array) -> jax.Array:
        h = jnp.tanh(z.astype(jnp.float32) @ self.dense_kernel[...] + self.dense_bias[...])
        return self.out(h)  # [batch] or [batch, K]
