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


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def prompt_positions(seqs: Sequence[Encoded], indices, length: int, batch_size: int,
                     left: bool = False) -> np.ndarray:
    """``[B]`` position of each row's last prompt token in a batch padded to ``length``
    (shifted like the row when padding is on the left); -1 for prompt-less and filler rows."""
    out = np.full((batch_size,), -1, np.int32)
    for row, i in enumerate(indices):
        s = seqs[i]
        if s.response_start > 0:
            out[row] = (length - len(s.ids) if left else 0) + s.response_start - 1
    return out


def map_batches(fn, seqs: Sequence[Encoded], *, batch_size: int, buckets: Sequence[int],
                pad_id: int, left: bool = False, batch_axis: int = 0,
                with_prompt_index: bool = False) -> list[np.ndarray]:
    """``fn(batch)`` over length-bucketed, fixed-size batches of ``seqs``, its outputs put back
    in input order: the one "bucket, call, scatter back" loop every scorer uses.

    Args:
      fn: ``batch -> array or tuple of arrays``, each with the batch along ``batch_axis``; the
        batch holds :data:`MODEL_INPUTS` ``[B, L]`` (and ``prompt_index [B]`` if asked).
      seqs: encoded sequences, any order and lengths.
      batch_size, buckets: every call sees ``[batch_size, bucket]`` arrays (one compilation per
        bucket), the last batch of a bucket filled with padding rows.
      pad_id, left: the padding token and side.

    Returns:
      One numpy array per output of ``fn``, ``[len(seqs), ...]`` with ``batch_axis`` moved back
      where ``fn`` had it; ``[]`` when ``seqs`` is empty.
    """
    if not seqs:
        return []
    plan = BatchPlan([len(s.ids) for s in seqs], batch_size, tuple(buckets), shuffle=False)
    outs = None
    for length, idx in plan.epoch(0):
        batch = collate_single(seqs, idx, length, batch_size, pad_id, left)
        inputs = {k: batch[k] for k in MODEL_INPUTS}
        if with_prompt_index:
            inputs["prompt_index"] = prompt_positions(seqs, idx, length, batch_size, left)
        res = fn(inputs)
        res = res if isinstance(res, (tuple, list)) else (res,)
        res = [np.moveaxis(np.asarray(x), batch_axis, 0) for x in res]
        if outs is None:
            outs = [np.zeros((len(seqs),) + r.shape[1:], r.dtype) for r in res]
        real = batch["index"] >= 0  # filler rows pad the last batch of a bucket
        for o, r in zip(outs, res):
            o[batch["index"][real]] = r[real]
    return [np.moveaxis(o, 0, batch_axis) for o in outs]
