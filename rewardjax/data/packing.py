"""Padding-free batches: several sequences back to back in each row, a fixed number of pairs.

A packed batch of ``B`` pairs is ``R`` rows of ``L`` tokens. Each row holds up to ``S`` sequences
(chosen or rejected responses) one after another, marked by ``segment_ids`` 1..S (0 = the
padding at the row's tail). Positions restart and attention is block-diagonal per segment (the
backbones do this from ``segment_ids``), and pooling reads one vector per segment, so every
sequence is scored exactly as it would be alone. The pairs are referenced by ``(row, slot)``
indices, which is all the loss needs to get ``r_chosen[B]`` and ``r_rejected[B]`` back.

Which pairs form a step is the random batch of :class:`~rewardjax.data.batching.BatchPlan` with
a single bucket (no length grouping: packing removes the padding that bucketing only reduces,
without skewing batch composition by length), so the batch at step ``s`` is still a pure
function of ``(seed, s)`` and resume is exact.

The number of rows a step needs varies with its lengths. It is rounded up to a short, static
ladder of row counts growing by about 12% (and to a multiple of the data-parallel shard count),
so a run compiles the step for only the few rungs its batches hit, paying at most ~12% (typically
~6%) empty rows; one fixed worst-case row count would waste far more (the worst case is one row
per sequence), and an exact count would recompile at nearly every new total length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rewardjax.data.batching import BatchPlan
from rewardjax.data.tokenize import Encoded

LADDER_GROWTH = 1.125


def first_fit_decreasing(
    lengths: Sequence[int], row_length: int, max_segments: int
) -> list[list[int]]:
    """Assigns items to rows: longest first, each into the first row with room.

    A row holds at most ``row_length`` tokens and ``max_segments`` items. Ties are broken by
    index, so the result is a deterministic function of the lengths.

    Returns:
      Rows as lists of item indices, in placement order (which becomes the slot order).
    """
    lengths = [int(n) for n in lengths]
    if max_segments < 1:
        raise ValueError(f"max_segments must be >= 1, got {max_segments}")
    for i, n in enumerate(lengths):
        if n < 1 or n > row_length:
            raise ValueError(f"item {i}: {n} tokens do not fit a packed row of {row_length}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        for r, room in enumerate(free):
            if room >= lengths[i] and len(rows[r]) < max_segments:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(row_length - lengths[i])
    return rows


def row_ladder(
    min_rows: int, max_rows: int, multiple: int = 1, growth: float = LADDER_GROWTH
) -> tuple[int, ...]:
    """Static row counts from ``min_rows`` to ``max_rows``, each a multiple of ``multiple`` and
    about ``growth`` times the previous (at least one ``multiple`` more)."""
    up = lambda n: -(-int(n) // multiple) * multiple  # noqa: E731
    r, top = up(max(min_rows, 1)), up(max(max_rows, min_rows, 1))
    out = []
    while r < top:
        out.append(r)
        r = max(r + multiple, up(np.ceil(r * growth)))
    out.append(top)
    return tuple(out)


def pair_row_ladder(batch_size: int, max_segments: int, multiple: int = 1) -> tuple[int, ...]:
    """The ladder for ``batch_size`` pairs: from all rows full of segments to one row per
    sequence."""
    n = 2 * int(batch_size)
    return row_ladder(-(-n // int(max_segments)), n, multiple)


def collate_packed_pairs(
    data,
    indices: np.ndarray,
    batch_size: int,
    row_length: int,
    max_segments: int,
    pad_id: int,
    rows: Sequence[int] | int | None = None,
) -> dict[str, np.ndarray]:
    """Packs the pairs ``data[indices]`` (plus filler up to ``batch_size``) into rows.

    Args:
      data: an :class:`~rewardjax.data.tokenize.EncodedPairs`.
      indices: at most ``batch_size`` pair indices.
      row_length: tokens per row ``L`` (every sequence must fit).
      max_segments: slots per row ``S``.
      pad_id: id of the padding tokens at the end of rows.
      rows: the row count ``R``: an int (must be enough), a ladder (the smallest rung that is
        enough), or ``None`` (exactly the rows used).

    Returns:
      ``input_ids / attention_mask / segment_ids / token_type_ids`` ``[R, L]``;
      ``segment_lengths [R, S]`` (tokens per slot, 0 = empty; its shape also carries ``S``);
      ``chosen_index / rejected_index [B, 2]`` as ``(row, slot)``; ``weights [B]`` (0 on filler
      pairs, which point at slot ``(0, 0)``); ``margin [B]``; ``index [B]`` (-1 on filler).
    """
    indices = [int(i) for i in indices]
    if len(indices) > batch_size:
        raise ValueError(f"{len(indices)} pairs do not fit a batch of {batch_size}")
    seqs: list[Encoded] = [data.chosen[i] for i in indices] + [data.rejected[i] for i in indices]
    placed = first_fit_decreasing([len(s.ids) for s in seqs], row_length, max_segments)
    n_rows = pick_row_count(len(placed), rows)

    ids = np.full((n_rows, row_length), pad_id, np.int32)
    mask = np.zeros((n_rows, row_length), np.int32)
    seg = np.zeros((n_rows, row_length), np.int32)
    types = np.zeros((n_rows, row_length), np.int32)
    seg_len = np.zeros((n_rows, max_segments), np.int32)
    where = np.zeros((len(seqs), 2), np.int32)  # (row, slot) of each sequence
    for r, members in enumerate(placed):
        start = 0
        for slot, k in enumerate(members):
            s = seqs[k]
            n = len(s.ids)
            ids[r, start : start + n] = s.ids
            types[r, start : start + n] = s.type_ids
            mask[r, start : start + n] = 1
            seg[r, start : start + n] = slot + 1
            seg_len[r, slot] = n
            where[k] = (r, slot)
            start += n

    n, fill = len(indices), batch_size - len(indices)
    zeros = np.zeros((fill, 2), np.int32)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "segment_ids": seg,
        "token_type_ids": types,
        "segment_lengths": seg_len,
        "chosen_index": np.concatenate([where[:n], zeros]),
        "rejected_index": np.concatenate([where[n:], zeros]),
        "weights": np.asarray([1.0] * n + [0.0] * fill, np.float32),
        "margin": np.asarray(
            [float(data.pairs[i].margin) for i in indices] + [0.0] * fill, np.float32
        ),
        "index": np.asarray(indices + [-1] * fill, np.int64),
    }


def pick_row_count(used: int, rows) -> int:
    if rows is None:
        return used
    if isinstance(rows, (int, np.integer)):
        if rows < used:
            raise ValueError(f"the pairs need {used} packed rows, only {rows} allowed")
        return int(rows)
    for r in sorted(rows):
        if r >= used:
            return int(r)
    raise ValueError(f"the pairs need {used} packed rows, more than the ladder's {max(rows)}")


class PackedPairBatches:
    """The packed training batch at each step: a pure function of ``(seed, step)``.

    Args:
      data: an :class:`~rewardjax.data.tokenize.EncodedPairs`.
      batch_size: pairs per step (global).
      row_length: tokens per packed row (usually ``model.max_length``).
      max_segments: slots per row.
      pad_id: padding token id.
      seed: shuffling seed (same meaning as for :class:`BatchPlan`).
      row_multiple: row counts are multiples of this (the data-parallel shard count, so rows
        split evenly over devices and hosts).
    """

    def __init__(self, data, batch_size: int, row_length: int, max_segments: int, pad_id: int,
                 seed: int = 0, row_multiple: int = 1):
        self.data = data
        self.batch_size = int(batch_size)
        self.row_length = int(row_length)
        self.max_segments = int(max_segments)
        self.pad_id = int(pad_id)
        self.plan = BatchPlan(data.lengths(), batch_size, (row_length,), seed=seed, shuffle=True)
        self.ladder = pair_row_ladder(batch_size, max_segments, row_multiple)

    @property
    def batches_per_epoch(self) -> int:
        return self.plan.batches_per_epoch

    def at_step(self, step: int) -> dict[str, np.ndarray]:
        _, idx = self.plan.at_step(step)
        return collate_packed_pairs(self.data, idx, self.batch_size, self.row_length,
                                    self.max_segments, self.pad_id, rows=self.ladder)
