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
