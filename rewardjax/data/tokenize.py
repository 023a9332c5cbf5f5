"""Turning records into token ids: chat templates, text-pair encoding and explicit truncation.

Three ways of rendering a (prompt, response) pair, picked from the tokenizer:

* the tokenizer has a chat template (SmolLM2, Llama-3, Qwen2 ...): the conversation is rendered
  with it; the prompt part is the rendering with the generation prompt, the response part is
  the rest of the full rendering;
* an encoder without a template (BERT / MiniLM): ``[CLS] prompt [SEP] response [SEP]`` with
  token type ids 0/1, the prompt flattened to ``User: ...`` lines;
* ``"single"`` (asked for): one segment in the tokenizer's single-sequence frame
  (``[CLS] User: ...\nAssistant: response [SEP]`` for BERT, BOS ... EOS otherwise), token type 0
  throughout - what a ``*ForSequenceClassification`` model sees when trained on transcripts;
* anything else: the flattened prompt, a separator, the response.

Truncation is a stated policy, applied to the token ids and counted:
``"keep_end"`` (default) cuts the *start* of the prompt first, keeping at least half of the budget
for it when the response is long, then the *end* of the response; ``"drop"`` removes over-length
records (also counted). Nothing is cut or removed silently: :class:`TruncationStats` goes into
the run's summary.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from rewardjax.data.records import Pair, Response

TRUNCATION_POLICIES = ("keep_end", "drop")
ENCODINGS = ("chat", "pair", "single", "plain")

# A minimal chat template for tokenizers we build ourselves (word-level, for random models).
SIMPLE_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def flatten_prompt(prompt: Sequence[dict[str, str]]) -> str:
    """Plain-text rendering of chat messages for tokenizers without a chat template."""
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in prompt)


@dataclasses.dataclass
class TruncationStats:
    """Counts of what the truncation policy did, reported in every run summary."""

    sequences: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    dropped: int = 0
    tokens_removed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Encoded:
    """One tokenized sequence: ids, token types, and where the response starts."""

    ids: np.ndarray  # [len] int32
    type_ids: np.ndarray  # [len] int32
    response_start: int


class SequenceEncoder:
    """Encodes (prompt messages, response) into token ids within ``max_length``.

    Args:
      tokenizer: a ``transformers`` tokenizer (fast or slow).
      max_length: maximum total tokens, special tokens included.
      policy: ``"keep_end"`` or ``"drop"``; see the module docstring.
      mode: ``"auto"`` (chat template if present, else text pair for tokenizers with
        ``cls``/``sep`` tokens, else plain), or one of ``"chat"``, ``"pair"``, ``"plain"``.
    """

    def __init__(self, tokenizer, max_length: int, policy: str = "keep_end", mode: str = "auto"):
        if policy not in TRUNCATION_POLICIES:
            raise ValueError(
                f"unknown truncation policy {policy!r}; choose from {TRUNCATION_POLICIES}"
            )
        if max_length < 8:
            raise ValueError(f"max_length must be at least 8, got {max_length}")
        self.tok = tokenizer
        self.max_length = int(max_length)
        self.policy = policy
        if mode == "auto":
            if getattr(tokenizer, "chat_template", None):
                mode = "chat"
            elif tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None:
                mode = "pair"
            else:
                mode = "plain"
        if mode not in ENCODINGS:
            raise ValueError(f"unknown encoding mode {mode!r}")
        self.mode = mode
        self.stats = TruncationStats()

    # -- rendering -------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        if not text:
            return []
        # verbose=False: we truncate by our own policy, the tokenizer's length warning misleads.
        return list(self.tok(text, add_special_tokens=False, verbose=False)["input_ids"])

    def _split(self, prompt: Sequence[dict[str, str]], response: str):
        """Returns (prefix ids, prompt ids, middle ids, response ids, suffix ids, type split)."""
        if self.mode == "chat":
            msgs = list(prompt)
            head = (
                self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
                if msgs
                else ""
            )
            full = self.tok.apply_chat_template(
                msgs + [{"role": "assistant", "content": response}], tokenize=False
            )
            if not full.startswith(head):  # templates that rewrite earlier turns: fall back
                head = ""
            return [], self._ids(head), [], self._ids(full[len(head) :]), []
        if self.mode == "pair":
            cls, sep = self.tok.cls_token_id, self.tok.sep_token_id
            return [cls], self._ids(flatten_prompt(prompt)), [sep], self._ids(response), [sep]
        bos = [self.tok.bos_token_id] if self.tok.bos_token_id is not None else []
        eos = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
        if self.mode == "single":  # the encoder's own frame around one segment
            if self.tok.cls_token_id is not None and self.tok.sep_token_id is not None:
                bos, eos = [self.tok.cls_token_id], [self.tok.sep_token_id]
        sep = self._ids("\nAssistant: ") if prompt else []
        return bos, self._ids(flatten_prompt(prompt)), sep, self._ids(response), eos

    def encode(self, prompt: Sequence[dict[str, str]], response: str, *,
               origin: str = "") -> Encoded | None:
        """Encodes one sequence; ``None`` when the ``drop`` policy removes it.

        Args:
          prompt: chat messages before the response.
          response: the response text.
          origin: where the texts came from (``"data.jsonl, record 3, chosen"``), named in errors.

        Raises:
          ValueError: a text holds a lone surrogate (e.g. from a JSON ``"\\ud800"`` escape),
            which no tokenizer can encode; the loaders reject such records earlier, this covers
            Python callers that build pairs themselves.
        """
        return self._fit(*self._render(prompt, response, origin))

    def encode_pair(self, prompt: Sequence[dict[str, str]], chosen: str, rejected: str, *,
                    origins: tuple[str, str] = ("", "")) -> tuple[Encoded | None, Encoded | None]:
        """Encodes both responses of a pair with the prompt truncated *identically*.

        Under ``keep_end`` each side alone would keep as much prompt as its own response leaves
        room for, so the two prompts of a truncated pair would start at different tokens and
        share nothing. Here both keep the shorter of the two prompt lengths, so the encoded
        prompts stay equal and a shared-prefix layout (``rewardjax.data.shared_prefix``) can
        hold the prompt once. Pairs that render different prompts are encoded side by side as
        :meth:`encode` does.
        """
        a = self._render(prompt, chosen, origins[0])
        b = self._render(prompt, rejected, origins[1])
        if a[:3] != b[:3]:
            return self._fit(*a), self._fit(*b)
        keep = min(self._prompt_keep(*a), self._prompt_keep(*b))
        return self._fit(*a, keep_p=keep), self._fit(*b, keep_p=keep)

    def _render(self, prompt, response, origin):
        try:
            return self._split(prompt, response)
        except (UnicodeEncodeError, TypeError) as err:
            # Fast tokenizers reject a lone surrogate with a TypeError ("TextEncodeInput must
            # be ..."), slow ones and Jinja with a UnicodeEncodeError: neither names the text.
            problem = _unencodable(prompt, response)
            if problem is None:
                raise
            where = f"{origin}: " if origin else ""
            raise ValueError(f"{where}{problem}; the tokenizer cannot encode it "
                             f"({type(err).__name__}: {err}). Replace or remove that character "
                             "(rewardjax.data.formats.load_pairs rejects such records by file "
                             "and record)") from None

    def _budget(self, pre, mid, post) -> int:
        return self.max_length - len(pre) - len(mid) - len(post)

    def _prompt_keep(self, pre, p, mid, r, post) -> int:
        """Prompt tokens ``keep_end`` keeps: at least half the budget (or all of itself if
        shorter), more when the response leaves room; its start goes."""
        budget = self._budget(pre, mid, post)
        if len(p) + len(r) <= budget:
            return len(p)
        return max(budget - len(r), min(len(p), budget // 2))

    def _fit(self, pre, p, mid, r, post, keep_p: int | None = None) -> Encoded | None:
        """Applies the truncation policy (``keep_p``: the prompt tokens to keep, default the
        policy's own choice for this sequence) and builds the :class:`Encoded`."""
        self.stats.sequences += 1
        budget = self._budget(pre, mid, post)
        if len(p) + len(r) > budget and self.policy == "drop":
            self.stats.dropped += 1
            return None
        if self.policy == "keep_end":
            before = len(p) + len(r)
            keep_p = self._prompt_keep(pre, p, mid, r, post) if keep_p is None else keep_p
            if keep_p < len(p):
                p = p[len(p) - keep_p :]
                self.stats.prompt_truncated += 1
            if len(p) + len(r) > budget:
                r = r[: budget - len(p)]
                self.stats.response_truncated += 1
            self.stats.tokens_removed += before - len(p) - len(r)
        ids = pre + p + mid + r + post
        types = [0] * (len(pre) + len(p) + len(mid)) + [1] * (len(r) + len(post))
        if self.mode != "pair":
            types = [0] * len(ids)
        return Encoded(
            np.asarray(ids, np.int32), np.asarray(types, np.int32), len(pre) + len(p) + len(mid)
        )


def _unencodable(prompt: Sequence[dict[str, str]], response: str) -> str | None:
    """Names the first text that cannot be encoded as UTF-8 and where, or None."""
    texts = [(f"prompt message {i} content", m.get("content")) for i, m in enumerate(prompt)]
    for what, text in texts + [("response", response)]:
        if not isinstance(text, str):
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            return (f"{what} holds a lone surrogate \\u{ord(text[err.start]):04x} at character "
                    f"{err.start}, which is not valid Unicode")
    return None


def _origin(meta: dict, side: str) -> str:
    """``"data.jsonl, record 3, chosen"`` from a pair's provenance (``Pair.meta``)."""
    where = [str(meta["file"])] if "file" in meta else []
    where += [f"record {meta['record']}"] if "record" in meta else []
    return ", ".join(where + [side])


@dataclasses.dataclass
class EncodedPairs:
    """A tokenized pair dataset kept on the host: ragged ids plus per-pair metadata."""

    chosen: list[Encoded]
    rejected: list[Encoded]
    pairs: list[Pair]
    stats: TruncationStats

    def __len__(self) -> int:
        return len(self.pairs)

    def lengths(self) -> np.ndarray:
        return np.asarray([max(len(c.ids), len(r.ids)) for c, r in zip(self.chosen, self.rejected)])

    def real_tokens(self) -> int:
        return int(sum(len(c.ids) + len(r.ids) for c, r in zip(self.chosen, self.rejected)))


def encode_pairs(pairs: Iterable[Pair], encoder: SequenceEncoder, *,
                 same_prompt: bool = False) -> EncodedPairs:
    """Tokenizes pairs; a pair is dropped (and counted) if either side is dropped.

    Args:
      same_prompt: truncate both prompts of a pair identically
        (:meth:`SequenceEncoder.encode_pair`), as shared-prefix training needs; off, each side
        is truncated on its own (the layout every earlier run used).
    """
    before = dataclasses.replace(encoder.stats)
    chosen, rejected, kept = [], [], []
    for pair in pairs:
        origins = (_origin(pair.meta, "chosen"), _origin(pair.meta, "rejected"))
        if same_prompt:
            c, r = encoder.encode_pair(pair.prompt, pair.chosen, pair.rejected, origins=origins)
        else:
            c = encoder.encode(pair.prompt, pair.chosen, origin=origins[0])
            r = encoder.encode(pair.prompt, pair.rejected, origin=origins[1])
        if c is None or r is None:
            continue
        chosen.append(c)
        rejected.append(r)
        kept.append(pair)
    after = encoder.stats
    delta = TruncationStats(**{k: getattr(after, k) - getattr(before, k) for k in after.as_dict()})
    return EncodedPairs(chosen, rejected, kept, delta)


def encode_responses(responses: Iterable[Response], encoder: SequenceEncoder):
    """Tokenizes single responses for scoring; returns (encoded list, kept responses)."""
    out, kept = [], []
    for resp in responses:
        e = encoder.encode(resp.prompt, resp.response, origin=_origin(resp.meta, "response"))
        if e is not None:
            out.append(e)
            kept.append(resp)
    return out, kept


def build_wordlevel_tokenizer(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 1):
    """A word-level tokenizer fitted on ``texts``, for randomly initialised models.

    Offline and deterministic: words are ranked by frequency (ties alphabetically). Carries
    :data:`SIMPLE_CHAT_TEMPLATE` so it goes through the same chat path as real LMs.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [
        "[PAD]",
        "[UNK]",
        "[BOS]",
        "[EOS]",
        "<|user|>",
        "<|assistant|>",
        "<|system|>",
        "<|end|>",
    ]
    counts: collections.Counter[str] = collections.Counter()
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    norm = normalizers.Lowercase()
    for text in texts:
        for word, _ in pre.pre_tokenize_str(norm.normalize_str(text)):
            counts[word] += 1
    words = sorted(
        (w for w, c in counts.items() if c >= min_frequency and w not in specials),
        key=lambda w: (-counts[w], w),
    )
    vocab = {t: i for i, t in enumerate(specials)}
    for w in words[: max(0, vocab_size - len(specials))]:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        additional_special_tokens=specials[4:],
    )
    fast.chat_template = SIMPLE_CHAT_TEMPLATE
    return fast
