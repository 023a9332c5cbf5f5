"""Per-member data order for stacked ensemble training (WARM: diversity from data order).

Each member draws its batches from its own :class:`~rewardjax.data.batching.BatchPlan`
(``seed = seeds[i]``), so members see the same examples in different orders. One vmapped step
needs one array shape, so at every step all members are padded to the longest of their bucket
lengths; the step therefore still compiles at most ``len(buckets)`` times. Padding a batch to a
longer length does not change its rewards (pooling reads the last real token from the mask and
padded keys are masked out), only the work done.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from rewardjax.data.batching import BatchPlan, collate_pairs
from rewardjax.runtime.step import HOST_ONLY_KEYS
from rewardjax.sharding import logical_to_spec


class MemberPlans:
    """M batch plans over one dataset, one shuffling seed per member.

    Args:
      lengths: per-example token length (for pairs, the longer side).
      batch_size: rows per member batch (global, across hosts).
      buckets: allowed padded lengths, ascending.
      seeds: one shuffling seed per member; its length is M.
      shuffle: as for :class:`BatchPlan` (``False`` gives every member the same order).
    """

    def __init__(self, lengths, batch_size: int, buckets: Sequence[int], seeds: Sequence[int],
                 shuffle: bool = True):
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("MemberPlans needs at least one member seed")
        self.seeds = tuple(seeds)
        self.batch_size = int(batch_size)
        self.plans = [BatchPlan(lengths, batch_size, buckets, seed=s, shuffle=shuffle)
                      for s in seeds]
        # Identical for every member: the batch count per epoch does not depend on the shuffle,
        # so all members pass epoch boundaries at the same global step.
        self.batches_per_epoch = self.plans[0].batches_per_epoch

    @property
    def num_members(self) -> int:
        return len(self.plans)

    def at_step(self, step: int) -> tuple[int, list[np.ndarray]]:
        """``(length, [indices_i])``: the common padded length and each member's example ids.

        ``length`` is the largest of the members' own bucket lengths at this step.
        """
        picks = [p.at_step(step) for p in self.plans]
        return max(b for b, _ in picks), [idx for _, idx in picks]


def collate_members(data, plans: MemberPlans, step: int, pad_id: int,
                    left: bool = False) -> dict[str, np.ndarray]:
    """The stacked batch of global step ``step``: member ``i``'s batch from ``plans.plans[i]``.

    Args:
      data: encoded pairs (``rewardjax.data.tokenize.encode_pairs``).
      plans: the members' batch plans.
      step: global step (the same for every member).
      pad_id: padding token id.
      left: pad on the left.

    Returns:
      ``input_ids / attention_mask / token_type_ids`` ``[M, B, 2, L]`` and ``weights / margin /
      index`` ``[M, B]`` numpy arrays; ``L`` is the common length of :meth:`MemberPlans.at_step`.
    """
    length, indices = plans.at_step(step)
    per_member = [collate_pairs(data, idx, length, plans.batch_size, pad_id, left)
                  for idx in indices]
    return {k: np.stack([b[k] for b in per_member]) for k in per_member[0]}


def member_batch(batch: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    """Member ``i``'s ``[B, ...]`` batch out of a stacked ``[M, B, ...]`` one."""
    return {k: v[i] for k, v in batch.items()}


def member_batch_shardings(mesh, rules, batch_like: dict) -> dict[str, NamedSharding]:
    """Member axis replicated; rows split over the ``batch`` logical axis like a single batch."""

    def one(x):
        rest = logical_to_spec(("batch",) + (None,) * (len(x.shape) - 2), rules, mesh,
                               x.shape[1:])
        return NamedSharding(mesh, PartitionSpec(None, *rest))

    return {k: one(v) for k, v in batch_like.items() if k not in HOST_ONLY_KEYS}


def place_members(run, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Places a stacked host batch ``[M, B, ...]`` on the run's mesh (host-only keys dropped).

    With several hosts each feeds its own rows of every member (axis 1), as ``place_batch`` does
    for axis 0 of a single batch.
    """
    n, pid = jax.process_count(), jax.process_index()
    out = {}
    for k, sh in member_batch_shardings(run.mesh, run.rules, batch).items():
        x = batch[k]
        if n > 1:
            rows = x.shape[1] // n
            local = x[:, pid * rows : (pid + 1) * rows]
            out[k] = jax.make_array_from_process_local_data(sh, local, x.shape)
        else:
            out[k] = jax.device_put(x, sh)
    return out
