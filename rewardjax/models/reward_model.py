"""Reward model = backbone + pooling + head.

The backbone maps tokens to hidden states, pooling reads one vector per sequence (by default the
last real token for causal LMs and the mean for encoders), the head maps it to one reward or to
K objective scores. Gates and expert mixtures replace the head (or wrap several feature
extractors) without touching the backbone code.
"""

from __future__ import annotations

import jax
from flax import nnx

from rewardjax.heads.scalar import LinearHead
from rewardjax.models.pooling import POOLINGS, pool


def resolve_pooling(pooling: str, is_causal: bool) -> str:
    if pooling == "auto":
        return "last" if is_causal else "mean"
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose from ('auto',) + {POOLINGS}")
    return pooling


class RewardModel(nnx.Module):
    """Scores token sequences.

    Args:
      backbone: an NNX module following the backbone call contract
        ``backbone(ids, mask, *, segment_ids, dropout_rng, dropout_rate[, token_type_ids])``.
      head: maps pooled features ``[B, D]`` to rewards ``[B]`` (or ``[B, K]``).
      pooling: ``"last"``, ``"cls"`` or ``"mean"``.
      uses_token_types: pass ``token_type_ids`` to the backbone (BERT-style encoders).
    """

    def __init__(
        self, backbone: nnx.Module, head: nnx.Module, pooling: str, uses_token_types: bool = False
    ):
        self.backbone = backbone
        self.head = head
        self.pooling = pooling
        self.uses_token_types = uses_token_types

    def features(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        *,
        token_type_ids: jax.Array | None = None,
        dropout_rng: jax.Array | None = None,
        dropout_rate=None,
    ) -> jax.Array:
        """Pooled features ``[B, D]`` in float32."""
        kwargs = {}
        if self.uses_token_types and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.backbone(
            input_ids, attention_mask, dropout_rng=dropout_rng, dropout_rate=dropout_rate, **kwargs
        )  # [B, T, D]
        return pool(hidden, attention_mask, self.pooling)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        *,
        token_type_ids: jax.Array | None = None,
        dropout_rng: jax.Array | None = None,
        dropout_rate=None,
    ) -> jax.Array:
        z = self.features(
            input_ids,
            attention_mask,
            token_type_ids=token_type_ids,
            dropout_rng=dropout_rng,
            dropout_rate=dropout_rate,
        )
        return self.head(z)


def build_reward_model(
    backbone: nnx.Module,
    hidden_size: int,
    *,
    is_causal: bool,
    pooling: str = "auto",
    num_outputs: int = 1,
    seed: int = 0,
    uses_token_types: bool | None = None,
) -> RewardModel:
    """Wraps a backbone with a freshly initialised linear head."""
    with nnx.use_eager_sharding(False):  # shardings are applied at the jit boundary instead
        head = LinearHead(hidden_size, num_outputs, rngs=nnx.Rngs(params=jax.random.key(seed + 1)))
    if uses_token_types is None:
        uses_token_types = not is_causal
    return RewardModel(backbone, head, resolve_pooling(pooling, is_causal), uses_token_types)
