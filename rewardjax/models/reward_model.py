"""Reward model = backbone + pooling + head.

The backbone maps tokens to hidden states, pooling reads one vector per sequence (by default the
last real token for causal LMs and the mean for encoders), the head maps it to one reward or to
K objective scores. Gates and expert mixtures replace the head (or wrap several feature
extractors) without touching the backbone code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rewardjax.heads.scalar import LinearHead, PoolerHead
from rewardjax.models.pooling import POOLINGS, pool, segment_pool


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

    def hidden_states(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        *,
        segment_ids: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        dropout_rng: jax.Array | None = None,
        dropout_rate=None,
        parts: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        """The backbone's hidden states ``[B, T, D]`` (packed rows when ``segment_ids``;
        shared-prefix rows with ``parts`` and ``positions``, causal backbones only)."""
        kwargs = {}
        if self.uses_token_types and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if segment_ids is not None:  # unpacked calls keep the backbone's default exactly
            kwargs["segment_ids"] = segment_ids
        if parts is not None:
            kwargs.update(parts=parts, positions=positions)
        return self.backbone(
            input_ids, attention_mask, dropout_rng=dropout_rng, dropout_rate=dropout_rate, **kwargs
        )

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
        hidden = self.hidden_states(
            input_ids,
            attention_mask,
            token_type_ids=token_type_ids,
            dropout_rng=dropout_rng,
            dropout_rate=dropout_rate,
        )  # [B, T, D]
        return pool(hidden, attention_mask, self.pooling)

    def packed_features(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        segment_ids: jax.Array,
        *,
        num_segments: int,
        token_type_ids: jax.Array | None = None,
        dropout_rng: jax.Array | None = None,
        dropout_rate=None,
    ) -> tuple[jax.Array, jax.Array]:
        """Per-segment pooled features of packed rows: ``([R, S, D] float32, valid [R, S])``.

        Args:
          input_ids, attention_mask, segment_ids: ``[R, L]`` packed rows (see
            ``rewardjax.data.packing``); the mask must be ``segment_ids > 0``.
          num_segments: slots per row ``S`` (static).
        """
        hidden = self.hidden_states(
            input_ids,
            attention_mask,
            segment_ids=segment_ids,
            token_type_ids=token_type_ids,
            dropout_rng=dropout_rng,
            dropout_rate=dropout_rate,
        )  # [R, L, D]
        return segment_pool(hidden, segment_ids, num_segments, self.pooling)

    def packed_rewards(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        segment_ids: jax.Array,
        *,
        num_segments: int,
        token_type_ids: jax.Array | None = None,
        dropout_rng: jax.Array | None = None,
        dropout_rate=None,
    ) -> jax.Array:
        """Rewards of every slot of packed rows, ``[R, S]`` (or ``[R, S, K]``); empty slots hold
        the head's output on a zero feature and must be ignored (use the pair indices)."""
        z, _ = self.packed_features(
            input_ids,
            attention_mask,
            segment_ids,
            num_segments=num_segments,
            token_type_ids=token_type_ids,
            dropout_rng=dropout_rng,
            dropout_rate=dropout_rate,
        )
        r, s, d = z.shape
        out = self.head(z.reshape(r * s, d))  # heads take [N, D]
        return out.reshape((r, s) + out.shape[1:])

    def token_rewards(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        segment_ids: jax.Array,
        parts: jax.Array,
        positions: jax.Array,
        read_at: jax.Array,
        *,
        dropout_rng: jax.Array | None = None,
        dropout_rate=None,
    ) -> jax.Array:
        """Rewards read at given tokens of shared-prefix rows (``rewardjax.data.shared_prefix``).

        Args:
          input_ids, attention_mask, segment_ids, parts, positions: ``[R, L]`` rows.
          read_at: ``[N, 2]`` ``(row, column)`` of each sequence's last token.

        Returns:
          ``[N]`` (or ``[N, K]``): the head on the hidden state at each ``read_at`` token, which
          is the ``"last"`` pooling of that sequence encoded alone.
        """
        if self.pooling != "last":
            raise ValueError(f"shared-prefix rows read the last token of each response; this "
                             f"model pools {self.pooling!r}")
        hidden = self.hidden_states(
            input_ids, attention_mask, segment_ids=segment_ids, parts=parts, positions=positions,
            dropout_rng=dropout_rng, dropout_rate=dropout_rate,
        )  # [R, L, D]
        z = hidden[read_at[:, 0], read_at[:, 1]].astype(jnp.float32)  # [N, D]
        return self.head(z)

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
    """Wraps a backbone with a freshly initialised head: linear, or BERT's pooler + linear for
    ``pooling="pooler"``."""
    pooling = resolve_pooling(pooling, is_causal)
    head_cls = PoolerHead if pooling == "pooler" else LinearHead
    with nnx.use_eager_sharding(False):  # shardings are applied at the jit boundary instead
        head = head_cls(hidden_size, num_outputs, rngs=nnx.Rngs(params=jax.random.key(seed + 1)))
    if uses_token_types is None:
        uses_token_types = not is_causal
    return RewardModel(backbone, head, pooling, uses_token_types)
