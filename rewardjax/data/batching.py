"""Length-bucketed, deterministic batches of fixed shapes.

Every batch is padded to one of a few bucket lengths and to a fixed number of rows (missing rows
get weight 0), so the train step compiles at most ``len(buckets)`` times. The batch served at
global step ``s`` is a pure function of ``(seed, s)``: epoch ``e = s // batches_per_epoch`` is
laid out by ``numpy.random.default_rng((seed, e))``, which is what makes resume-after-kill exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rewardjax.data.tokenize import Encoded


def default_buckets(max_length: int, smallest: int = 64, growth: float = 1.5,
                    multiple: int = 32) -> tuple[int, ...]:
    """Lengths growing by ``growth`` (rounded up to ``multiple``) from ``smallest`` to
    ``max_length``, which is always the last bucket: 64, 96, 160, 256, 384, 512 for 512.

    A factor of 1.5 keeps padding to the bucket near 20% while the step compiles for only
    about six shapes.
    """
    out = []
    b = min(int(smallest), int(max_length))
    while b < 0.9 * max_length:
        out.append(b)
        b = -(-int(b * growth) // multiple) * multiple
    out.append(int(max_length))
    return tuple(out)


def bucket_of(length: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"sequence of {length} tokens exceeds the largest bucket {buckets[-1]}")


class BatchPlan:
    """Which examples form each batch, epoch by epoch.

    Args:
      lengths: per-example token length (for pairs, the longer side).
      batch_size: rows per batch (global, across hosts).
      buckets: allowed padded lengths, ascending.
      seed: shuffling seed.
      shuffle: shuffle examples and batch order each epoch (training) or keep the input order
        (evaluation; still bucketed).
    """

    def __init__(
        self, lengths, batch_size: int, buckets: Sequence[int], seed: int = 0, shuffle: bool = True
    ):
        self.lengths = np.asarray(lengths, np.int64)
        if len(self.lengths) == 0:
            raise ValueError("cannot batch an empty dataset")
        self.batch_size = int(batch_size)
        self.buckets = tuple(sorted(buckets))
        self.seed = int(seed)
        self.shuffle = shuffle
        self.bucket_ids = np.asarray([bucket_of(int(n), self.buckets) for n in self.lengths])
        # Batches per epoch does not depend on the shuffle: one partial batch per bucket at most.
        counts = np.bincount(
            np.searchsorted(self.buckets, self.bucket_ids), minlength=len(self.buckets)
        )
        self.batches_per_epoch = int(sum(-(-c // self.batch_size) for c in counts))
        self._cache: dict[int, list[tuple[int, np.ndarray]]] = {}

    def epoch(self, e: int) -> list[tuple[int, np.ndarray]]:
        """``[(bucket_length, indices)]`` for epoch ``e``; indices has ``<= batch_size`` entries."""
        if e not in self._cache:
            self._cache = {e: self._layout(e)}  # one epoch at a time is all a loop needs
        return self._cache[e]

    def _layout(self, e: int) -> list[tuple[int, np.ndarray]]:
        rng = np.random.default_rng((self.seed, int(e)))
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        batches = []
        for b in self.buckets:
            idx = order[self.bucket_ids[order] == b]
            for start in range(0, len(idx), self.batch_size):
                batches.append((b, idx[start : start + self.batch_size]))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def at_step(self, step: int) -> tuple[int, np.ndarray]:
        e, i = divmod(int(step), self.batches_per_epoch)
        return self.epoch(e)[i]


def pad_rows(
    seqs: Sequence[Encoded | None], length: int, rows: int, pad_id: int, left: bool = False
):
    """Stacks sequences into ``[rows, length]`` ids, mask and token types (missing rows empty)."""
    ids = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    types = np.zeros((rows, length), np.int32)
    for i, s in enumerate(seqs):
        if s is None:
            continue
        n = len(s.ids)
        if n > length:
            raise ValueError(f"row {i}: {n} tokens do not fit the padded length {length}")
        sl = slice(length - n, length) if left else slice(0, n)
        ids[i, sl] = s.ids
        mask[i, sl] = 1
        types[i, sl] = s.type_ids
    return ids, mask, types


def collate_pairs(
    data, indices: np.ndarray, length: int, batch_size: int, pad_id: int, left: bool = False
) -> dict[str, np.ndarray]:
    """Batch of pairs: ``input_ids/attention_mask/token_type_ids`` are ``[B, 2, L]``
    (index 0 = chosen, 1 = rejected); ``weights`` is 0 on filler rows; ``margin`` per pair."""
    idx = list(indices) + [None] * (batch_size - len(indices))
    chosen = [None if i is None else data.chosen[i] for i in idx]
    rejected = [None if i is None else data.rejected[i] for i in idx]
    c = pad_rows(chosen, length, batch_size, pad_id, left)
    r = pad_rows(rejected, length, batch_size, pad_id, left)
    weights = np.asarray([0.0 if i is None else 1.0 for i in idx], np.float32)
    margin = np.asarray(
        [0.0 if i is None else float(data.pairs[i].margin) for i in idx], np.float32
    )
    return {
        "input_ids": np.stack([c[0], r[0]], 1),
        "attention_mask": np.stack([c[1], r[1]], 1),
        "token_type_ids": np.stack([c[2], r[2]], 1),
        "weights": weights,
        "margin": margin,
        "index": np.asarray([-1 if i is None else int(i) for i in idx], np.int64),
    }


def collate_single(
    seqs: Sequence[Encoded],
    indices: np.ndarray,
    length: int,
    batch_size: int,
    pad_id: int,
    left: bool = False,
) -> dict[str, np.ndarray]:
    """Batch of single sequences (scoring): ``[B, L]`` arrays plus ``index`` (-1 on filler)."""
    idx = list(indices) + [None] * (batch_size - len(indices))
    ids, mask, types = pad_rows(
        [None if i is None else seqs[i] for i in idx], length, batch_size, pad_id, left
    )
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": types,
        "index": np.asarray([-1 if i is None else int(i) for i in idx], np.int64),
    }
