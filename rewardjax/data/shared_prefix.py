"""Shared-prefix pairs: ``[prompt | chosen | rejected]`` in one packed segment.

The chosen and rejected sequences of a pair begin with the same prompt (in HH-RLHF the whole
transcript up to the last assistant turn), and a causal backbone computes that prompt's hidden
states without looking at either response. So the prompt is encoded once: the segment holds the
common token prefix, then the rest of the chosen sequence, then the rest of the rejected one,
with per-token ``parts`` (0 = shared prefix, 1 = chosen, 2 = rejected). A query sees a key of its
segment only if the key is earlier, and in the prefix or in the query's own part
(``rewardjax.models.layers.attention_bias``); the rejected tokens' positions continue from the end
of the prefix. Every hidden state then equals the unshared one, and the rewards are read at each
response's last token (``chosen_token`` / ``rejected_token`` as ``(row, column)``).

What is shared is the *longest common token prefix* of the two encoded sequences, not the prompt
string: templates that wrap the response in markup, or tokenizers that merge the prompt's last
characters with the response's first, are handled by construction. It is capped so that each
side keeps at least one token of its own (the reward of each response is then read at a token
of its own part). A pair is laid out in the two-sequence form instead (two segments, ``parts`` 0,
exactly :mod:`rewardjax.data.packing`) when the common prefix does not cover the prompt of both
(their prompts differ after rendering or truncation: count ``prompt_differs``), or when the
shared segment would not fit one row (``too_long``). Encoders cannot share exactly (their prompt
tokens see the response) and never use this layout.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rewardjax.data.batching import BatchPlan
from rewardjax.data.packing import first_fit_decreasing, pick_row_count, row_ladder

SHARED_PREFIX = ("auto", "on", "off")


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Tokens the two id arrays share at their start, capped so each keeps one of its own."""
    n = min(len(a), len(b))
    diff = np.nonzero(a[:n] != b[:n])[0]
    same = int(diff[0]) if len(diff) else n
    return max(0, min(same, n - 1))


@dataclasses.dataclass
class SharingStats:
    """How many pairs share their prefix and what that saves, for the run's summary."""

    pairs: int = 0
    shared: int = 0
    prompt_differs: int = 0  # the common prefix stops inside a prompt: two sequences
    too_long: int = 0  # the shared segment is longer than a row: two sequences
    tokens: int = 0  # chosen + rejected tokens of every pair (the unshared count)
    tokens_saved: int = 0  # prefix tokens not encoded twice

    def as_dict(self) -> dict[str, int | float]:
        out = dataclasses.asdict(self)
        out["saved_fraction"] = self.tokens_saved / max(self.tokens, 1)
        return out


def plan_prefixes(data, row_length: int) -> tuple[np.ndarray, SharingStats]:
    """Per pair, the shared prefix length (0: two-sequence form) and the counts.

    Args:
      data: an :class:`~rewardjax.data.tokenize.EncodedPairs`.
      row_length: tokens per packed row; a shared segment must fit one.
    """
    stats = SharingStats()
    prefix = np.zeros(len(data), np.int32)
    for i, (c, r) in enumerate(zip(data.chosen, data.rejected)):
        stats.pairs += 1
        stats.tokens += len(c.ids) + len(r.ids)
        p = common_prefix(c.ids, r.ids)
        if p < 1 or p < min(c.response_start, r.response_start):
            stats.prompt_differs += 1
        elif len(c.ids) + len(r.ids) - p > row_length:
            stats.too_long += 1
        else:
            prefix[i] = p
            stats.shared += 1
            stats.tokens_saved += p
    return prefix, stats


def collate_shared_pairs(
    data,
    prefix: np.ndarray,
    indices: np.ndarray,
    batch_size: int,
    row_length: int,
    max_segments: int,
    pad_id: int,
    rows=None,
) -> dict[str, np.ndarray]:
    """Packs the pairs ``data[indices]`` into rows, each pair with ``prefix[i] > 0`` as one
    ``[prefix | chosen rest | rejected rest]`` segment, the others as two segments.

    Returns:
      ``input_ids / attention_mask / segment_ids / parts / positions / token_type_ids [R, L]``;
      ``chosen_token / rejected_token [B, 2]``: ``(row, column)`` of each response's last token;
      ``pair_tokens [B]``: the pair's chosen + rejected tokens (what an unshared layout would
      process; 0 on filler); ``weights``, ``margin``, ``index [B]`` as
      :func:`~rewardjax.data.packing.collate_packed_pairs`.
    """
    indices = [int(i) for i in indices]
    if len(indices) > batch_size:
        raise ValueError(f"{len(indices)} pairs do not fit a batch of {batch_size}")
    # Items: (pair slot b, kind) with kind 0 = shared, 1 = chosen alone, 2 = rejected alone.
    items, lengths = [], []
    for b, i in enumerate(indices):
        c, r, p = data.chosen[i], data.rejected[i], int(prefix[i])
        if p > 0:
            items.append((b, 0))
            lengths.append(len(c.ids) + len(r.ids) - p)
        else:
            items += [(b, 1), (b, 2)]
            lengths += [len(c.ids), len(r.ids)]
    placed = first_fit_decreasing(lengths, row_length, max_segments)
    n_rows = pick_row_count(len(placed), rows)

    shape = (n_rows, row_length)
    ids = np.full(shape, pad_id, np.int32)
    seg, parts, pos = (np.zeros(shape, np.int32) for _ in range(3))
    where = np.zeros((2, batch_size, 2), np.int32)  # [chosen/rejected, B, (row, column)]
    for row, members in enumerate(placed):
        start = 0
        for slot, k in enumerate(members):
            b, kind = items[k]
            i = indices[b]
            c, r, p = data.chosen[i], data.rejected[i], int(prefix[i])
            if kind == 0:
                toks = np.concatenate([c.ids, r.ids[p:]])
                part = np.repeat(np.int32([0, 1, 2]), [p, len(c.ids) - p, len(r.ids) - p])
                place = np.concatenate([np.arange(len(c.ids)), np.arange(p, len(r.ids))])
                where[0, b] = (row, start + len(c.ids) - 1)
                where[1, b] = (row, start + len(toks) - 1)
            else:
                toks = (c if kind == 1 else r).ids
                part = np.zeros(len(toks), np.int32)
                place = np.arange(len(toks))
                where[kind - 1, b] = (row, start + len(toks) - 1)
            n = len(toks)
            ids[row, start : start + n] = toks
            seg[row, start : start + n] = slot + 1
            parts[row, start : start + n] = part
            pos[row, start : start + n] = place
            start += n

    n, fill = len(indices), batch_size - len(indices)
    return {
        "input_ids": ids,
        "attention_mask": (seg > 0).astype(np.int32),
        "segment_ids": seg,
        "parts": parts,
        "positions": pos,
        "token_type_ids": np.zeros(shape, np.int32),
        "chosen_token": where[0],
        "rejected_token": where[1],
        "pair_tokens": np.asarray(
            [len(data.chosen[i].ids) + len(data.rejected[i].ids) for i in indices] + [0] * fill,
            np.int32),
        "weights": np.asarray([1.0] * n + [0.0] * fill, np.float32),
        "margin": np.asarray(
            [float(data.pairs[i].margin) for i in indices] + [0.0] * fill, np.float32
        ),
        "index": np.asarray(indices + [-1] * fill, np.int64),
    }


class SharedPrefixBatches:
    """The shared-prefix packed batch at each step: a pure function of ``(seed, step)``.

    The same pairs per step as :class:`~rewardjax.data.packing.PackedPairBatches` with the same
    arguments (one random plan), laid out with their prefixes shared. Row counts follow a static
    ladder from all-shared full rows to one row per sequence.

    Args: as :class:`~rewardjax.data.packing.PackedPairBatches`.
    """

    def __init__(self, data, batch_size: int, row_length: int, max_segments: int, pad_id: int,
                 seed: int = 0, row_multiple: int = 1):
        self.data = data
        self.batch_size = int(batch_size)
        self.row_length = int(row_length)
        self.max_segments = int(max_segments)
        self.pad_id = int(pad_id)
        self.prefix, self.stats = plan_prefixes(data, row_length)
        self.plan = BatchPlan(data.lengths(), batch_size, (row_length,), seed=seed, shuffle=True)
        self.ladder = row_ladder(-(-self.batch_size // self.max_segments), 2 * self.batch_size,
                                 row_multiple)

    @property
    def batches_per_epoch(self) -> int:
        return self.plan.batches_per_epoch

    def at_step(self, step: int) -> dict[str, np.ndarray]:
        _, idx = self.plan.at_step(step)
        return collate_shared_pairs(self.data, self.prefix, idx, self.batch_size,
                                    self.row_length, self.max_segments, self.pad_id,
                                    rows=self.ladder)


def sharing_enabled(setting, *, packing: bool, is_causal: bool, pooling: str) -> bool:
    """Resolves ``data.shared_prefix``: ``"auto"`` shares on packed causal backbones that pool
    the last token; ``"on"`` (or ``True``) insists, an error where sharing cannot be exact;
    ``"off"`` (or ``False``) never shares."""
    words = {"auto": "auto", "on": True, "true": True, "off": False, "false": False}
    value = setting if isinstance(setting, bool) else words.get(str(setting).strip().lower())
    if value is None:
        raise ValueError(f"data.shared_prefix={setting!r}; choose auto, on or off")
    possible = packing and is_causal and pooling == "last"
    if value is True and not possible:
        why = ("it applies to packed batches: set data.packing=True" if not packing else
               "an encoder's prompt tokens attend to the response, so the prompt cannot be "
               "encoded once for both; encoders keep the two-sequence form" if not is_causal else
               f"the reward is read at one token per response, but model.pooling={pooling!r}; "
               "use model.pooling=last")
        raise ValueError(f"data.shared_prefix=on cannot be honoured: {why} "
                         "(data.shared_prefix=auto turns it on only where it is exact)")
    return bool(value) and possible
