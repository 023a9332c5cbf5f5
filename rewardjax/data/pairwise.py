"""Rendering ``[prompt, A, B]`` for a pairwise preference model, and batches of both orders.

A pairwise model reads one sequence holding the prompt and two responses and outputs the logit
of P(A is better). Two renderings, picked from the tokenizer:

* ``"pair"`` (encoders with ``cls`` / ``sep`` tokens: BERT, MiniLM): the prompt is segment 1,
  the two responses segment 2, each behind its marker and closed by ``[SEP]``::

      [CLS] User: ... [SEP] Response A: ... [SEP] Response B: ... [SEP]
      type 0 ..................... | type 1 .................................

* ``"plain"`` (everything else, chat-template tokenizers included: the triple is one input to
  judge, not a conversation turn): ``[BOS] User: ...\\n\\nResponse A: ...\\n\\nResponse B: ...
  [EOS]`` with token type 0 throughout, so the last token (causal pooling) has seen both.

Truncation is a stated policy, counted in :class:`~rewardjax.data.tokenize.TruncationStats`
(``response_truncated`` counts responses, so a triple can add 2):

* ``"keep_end"``: when the three parts exceed the budget (``max_length`` minus special tokens
  and markers) the prompt first loses its *start*, keeping at least a quarter of the budget (or
  all of itself if shorter); the two responses then share what is left by water-filling: a
  response shorter than its half keeps everything and the other gets the rest, else both are cut
  to the same length, from the end. The cut depends on the two responses as a set, never on
  which is shown first, so both orders of a pair show the same tokens.
* ``"drop"``: an over-length triple is removed (``dropped``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from rewardjax.data.batching import pad_rows
from rewardjax.data.records import Pair
from rewardjax.data.tokenize import (
    TRUNCATION_POLICIES,
    Encoded,
    TruncationStats,
    flatten_prompt,
)

PAIRWISE_ENCODINGS = ("pair", "plain")
MARKERS = ("Response A: ", "Response B: ")
NO_REWARD = (
    "a pairwise preference model compares two responses ([prompt, A, B] -> P(A better)) and "
    "gives no reward to a single response: the score mode, PPO rewards and a reward server need "
    "a scalar reward model (recipe bt, warm, ...). Use the eval or rewardbench mode, or "
    "rewardjax.runtime.PairwiseScorer.compare / rewardjax.eval.pairwise_bon for best-of-n")


class PairwiseEncoder:
    """Encodes ``(prompt, a, b)`` into one sequence within ``max_length`` (module docstring).

    Args:
      tokenizer: a ``transformers`` tokenizer.
      max_length: maximum total tokens, special tokens and markers included.
      policy: ``"keep_end"`` or ``"drop"``.
      mode: ``"auto"`` (``pair`` when the tokenizer has ``cls`` and ``sep`` tokens, else
        ``plain``), ``"pair"`` or ``"plain"``.
    """

    def __init__(self, tokenizer, max_length: int, policy: str = "keep_end", mode: str = "auto"):
        if policy not in TRUNCATION_POLICIES:
            raise ValueError(f"unknown truncation policy {policy!r}; "
                             f"choose from {TRUNCATION_POLICIES}")
        has_pair = tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None
        if mode in ("auto", "chat", "single"):  # the triple is never a chat turn
            mode = "pair" if has_pair and mode == "auto" else "plain"
        if mode not in PAIRWISE_ENCODINGS:
            raise ValueError(f"unknown pairwise encoding {mode!r}; choose from "
                             f"{PAIRWISE_ENCODINGS} (or auto)")
        if mode == "pair" and not has_pair:
            raise ValueError("the pair encoding needs a tokenizer with cls and sep tokens")
        self.tok, self.max_length, self.policy, self.mode = tokenizer, int(max_length), policy, mode
        self.stats = TruncationStats()
        if mode == "pair":
            cls, sep = [tokenizer.cls_token_id], [tokenizer.sep_token_id]
            self._frame = (cls, sep, self._ids(MARKERS[0]), sep, self._ids(MARKERS[1]), sep)
        else:
            bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
            eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
            gap = self._ids("\n\n")  # after the prompt (when there is one) and response A
            self._frame = (bos, gap, self._ids(MARKERS[0]), gap, self._ids(MARKERS[1]), eos)
        overhead = sum(len(x) for x in self._frame)
        if self.max_length - overhead < 8:
            raise ValueError(f"max_length={max_length} leaves {self.max_length - overhead} "
                             f"tokens for prompt and responses after {overhead} special and "
                             "marker tokens; raise model.max_length")

    def spec(self) -> dict:
        """What defines the rendering (for a run's summary and documentation)."""
        return {"kind": "pairwise", "mode": self.mode, "max_length": self.max_length,
                "truncation": self.policy, "markers": list(MARKERS)}

    def _ids(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.tok(text, add_special_tokens=False, verbose=False)["input_ids"])

    def encode(self, prompt, response, **_):
        """A single response has no encoding here: a clear error (see :data:`NO_REWARD`)."""
        raise ValueError(NO_REWARD)

    def encode_triple(self, prompt: Sequence[dict[str, str]], a: str, b: str, *,
                      origin: str = "") -> Encoded | None:
        """Encodes ``[prompt, a, b]``; ``None`` when the ``drop`` policy removes it.

        ``response_start`` is the first token of response A's marker.
        """
        try:
            p = self._ids(flatten_prompt(prompt))
            ra, rb = self._ids(a), self._ids(b)
        except (UnicodeEncodeError, TypeError) as err:
            where = f"{origin}: " if origin else ""
            raise ValueError(f"{where}the tokenizer cannot encode a text of this triple "
                             f"({type(err).__name__}: {err})") from None
        p, ra, rb = self.fit(p, ra, rb)
        if p is None:
            return None
        pre, mid, mark_a, sep_a, mark_b, post = self._frame
        head = pre + p + (mid if p or self.mode == "pair" else [])
        tail = mark_a + ra + sep_a + mark_b + rb + post
        types = [0] * len(head) + [1 if self.mode == "pair" else 0] * len(tail)
        return Encoded(np.asarray(head + tail, np.int32), np.asarray(types, np.int32), len(head))

    def fit(self, p: list, ra: list, rb: list):
        """Applies the truncation policy to prompt / response ids; ``(None, None, None)`` when
        ``drop`` removes the triple. Counts into :attr:`stats`."""
        self.stats.sequences += 1
        budget = self.max_length - sum(len(x) for x in self._frame)
        total = len(p) + len(ra) + len(rb)
        if total <= budget:
            return p, ra, rb
        if self.policy == "drop":
            self.stats.dropped += 1
            return None, None, None
        keep_p = max(budget - len(ra) - len(rb), min(len(p), budget // 4))
        if keep_p < len(p):
            p = p[len(p) - keep_p:]
            self.stats.prompt_truncated += 1
        cap = response_cap(len(ra), len(rb), budget - len(p))
        for r in (ra, rb):
            self.stats.response_truncated += int(len(r) > cap)
        ra, rb = ra[:cap], rb[:cap]
        self.stats.tokens_removed += total - len(p) - len(ra) - len(rb)
        return p, ra, rb


def response_cap(la: int, lb: int, room: int) -> int:
    """The largest per-response length ``c`` with ``min(la, c) + min(lb, c) <= room``:
    symmetric in the two responses (water-filling)."""
    if la + lb <= room:
        return max(la, lb)
    short = min(la, lb)
    return room - short if short <= room // 2 else room // 2


@dataclasses.dataclass
class EncodedOrders:
    """Pairs encoded in both orders: ``ab[i]`` shows (chosen, rejected) (label 1), ``ba[i]``
    shows (rejected, chosen) (label 0). A pair is dropped if either order is."""

    ab: list[Encoded]
    ba: list[Encoded]
    pairs: list[Pair]
    stats: TruncationStats

    def __len__(self) -> int:
        return len(self.pairs)

    def lengths(self) -> np.ndarray:
        return np.asarray([max(len(x.ids), len(y.ids)) for x, y in zip(self.ab, self.ba)])


def encode_orders(pairs: Iterable[Pair], encoder: PairwiseEncoder) -> EncodedOrders:
    """Both orders of every pair; the truncation counts of this call in ``stats``."""
    before = dataclasses.replace(encoder.stats)
    ab, ba, kept = [], [], []
    for i, pair in enumerate(pairs):
        where = ", ".join(str(x) for x in (pair.meta.get("file"), pair.meta.get("record", i))
                          if x is not None)
        x = encoder.encode_triple(pair.prompt, pair.chosen, pair.rejected, origin=where)
        y = encoder.encode_triple(pair.prompt, pair.rejected, pair.chosen, origin=where)
        if x is None or y is None:
            continue
        ab.append(x)
        ba.append(y)
        kept.append(pair)
    after = encoder.stats
    delta = TruncationStats(**{k: getattr(after, k) - getattr(before, k) for k in after.as_dict()})
    return EncodedOrders(ab, ba, kept, delta)


def collate_orders(data: EncodedOrders, indices, length: int, batch_size: int, pad_id: int,
                   left: bool = False) -> dict[str, np.ndarray]:
    """A batch of pairs in both orders: ``input_ids / attention_mask / token_type_ids``
    ``[B, 2, L]`` (index 0: chosen shown first, label 1; index 1: rejected first, label 0),
    ``weights [B]`` (0 on filler rows) and ``index [B]`` (-1 on filler)."""
    idx = list(indices) + [None] * (batch_size - len(indices))
    x = pad_rows([None if i is None else data.ab[i] for i in idx], length, batch_size, pad_id,
                 left)
    y = pad_rows([None if i is None else data.ba[i] for i in idx], length, batch_size, pad_id,
                 left)
    return {
        "input_ids": np.stack([x[0], y[0]], 1),
        "attention_mask": np.stack([x[1], y[1]], 1),
        "token_type_ids": np.stack([x[2], y[2]], 1),
        "weights": np.asarray([0.0 if i is None else 1.0 for i in idx], np.float32),
        "index": np.asarray([-1 if i is None else int(i) for i in idx], np.int64),
    }
