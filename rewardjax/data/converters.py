"""Per-format record converters (TRL, HH-RLHF, PandaLM, LLMBar, ranking) and their field checks.

Each ``_conv_<format>`` turns one validated record into ``Pair`` objects (or a :class:`Ranking`),
raising :class:`DataError` through the record's :class:`_Ctx` on structural problems and applying
the empty-response / prompt-repair policy described in :mod:`rewardjax.data.formats`, which
detects formats, dispatches to these converters and loads whole files.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import math
import numbers
import os
import re
from typing import Any

from rewardjax.data.records import DataError, Pair

ROLES = ("system", "user", "assistant")
# A turn starts at the beginning of the text or after a blank line; an inline "  Human:" inside
# a turn is text the model generated, not a turn boundary (several HH records contain one).
_TURN = re.compile(r"(?:\A\s*|\n\n+)(Human|Assistant):")


@dataclasses.dataclass
class Ranking:
    """A prompt with several responses and their scores (higher is better)."""

    prompt: list[dict[str, str]]
    responses: list[str]
    scores: list[float]
    source: str = ""
    category: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


# How a command-line user changes the oddity policy (and a Python caller).
DROP_HINT = ("set --config.data.odd_records=drop to drop and count such records "
             "(load_pairs(..., strict=False) from Python)")
REPAIR_HINT = ("set --config.data.odd_records=drop to repair such pairs from the shared prefix "
               "and count them (load_pairs(..., strict=False) from Python)")


@dataclasses.dataclass
class _Ctx:
    """Where a record came from, the oddity policy, and the counters it updates."""

    file: str
    index: int | str
    source: str
    fmt: str
    strict: bool
    stats: collections.Counter

    def error(self, problem: str) -> DataError:
        return DataError(problem, file=self.file, record=self.index)


def _looks_hh(text: Any) -> bool:
    roles = {m.group(1) for m in _TURN.finditer(text)} if isinstance(text, str) else set()
    return roles == {"Human", "Assistant"}


# ----------------------------------------------------------------------------- field checks


def _field(rec: dict, key: str, ctx: _Ctx, types: tuple = (str,), what: str = "a string"):
    if key not in rec:
        raise ctx.error(f"missing field {key!r} (keys present: {sorted(rec)})")
    value = rec[key]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
        raise ctx.error(f"field {key!r} is {type(value).__name__} {_short(value)}, expected {what}")
    if isinstance(value, str):
        _check_text(value, f"field {key!r}", ctx)
    return value


def _check_text(text: str, what: str, ctx: _Ctx) -> str:
    """Returns ``text``; a DataError when it cannot be encoded as UTF-8.

    JSON allows escapes such as ``"\\ud800"``, which Python decodes into a lone surrogate: a str
    that every tokenizer (and every UTF-8 writer) rejects far from the file that holds it.
    """
    if text.isascii():  # O(1) in CPython: plain ASCII texts skip the encode.
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ctx.error(
            f"{what} holds a lone surrogate at character {err.start} (an unpaired "
            f"\\u{ord(text[err.start]):04x} escape in the JSON), which is not valid Unicode and "
            "cannot be encoded as UTF-8; fix the file: complete the surrogate pair or remove "
            "the escape") from None
    return text


def _margin(rec: dict, ctx: _Ctx) -> float:
    """The record's optional Bradley-Terry ``margin`` (TRL's column), 0.0 when absent.

    The loss adds it to ``loss.margin`` when ``loss.use_data_margin`` is set; records carrying
    one are counted (``with_margin``) so a user can see whether the flag has anything to use.
    """
    if "margin" not in rec:
        return 0.0
    value = rec["margin"]
    number = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # a JSON integer too large for a float.
            number = None
    if number is None or not math.isfinite(number):
        raise ctx.error(f"field 'margin' is {type(value).__name__} {_short(value)}, expected a "
                        "finite number (the reward gap this pair should exceed; omit the field "
                        "for none)")
    ctx.stats["with_margin"] += 1
    return number


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _messages(value: Any, what: str, ctx: _Ctx) -> list[dict[str, str]]:
    """Validates a chat message list; keeps only role and content."""
    if not isinstance(value, list):
        raise ctx.error(f"{what} is {type(value).__name__}, expected a list of messages")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ctx.error(f"{what} message {i} is not an object with 'role' and 'content': "
                            f"{_short(msg)}")
        if msg["role"] not in ROLES:
            raise ctx.error(f"unknown role {msg['role']!r} in {what} message {i} "
                            f"(known roles: {', '.join(ROLES)})")
        if not isinstance(msg["content"], str):
            raise ctx.error(f"{what} message {i} content is {type(msg['content']).__name__}, "
                            "expected a string")
        _check_text(msg["content"], f"{what} message {i} content", ctx)
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def _prompt(value: Any, ctx: _Ctx, key: str = "prompt") -> list[dict[str, str]]:
    """A prompt string (already checked by :func:`_field`) or message list as messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if value.strip() else []
    if isinstance(value, list):
        return _messages(value, key, ctx)
    raise ctx.error(f"field {key!r} is {type(value).__name__} {_short(value)}, expected a string "
                    "or a list of messages")


def _pair(ctx: _Ctx, prompt: list, chosen: str, rejected: str, **meta) -> list[Pair]:
    """Builds the Pair after the empty-response policy; [] when dropped (and counted)."""
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            if ctx.strict:
                raise ctx.error(f"empty {name} response (whitespace only); {DROP_HINT}")
            ctx.stats["dropped_empty"] += 1
            return []
    if chosen == rejected:  # no preference to learn, and always a "wrong" tie in evaluation
        if ctx.strict:
            raise ctx.error(f"chosen and rejected responses are identical; {DROP_HINT}")
        ctx.stats["dropped_identical"] += 1
        return []
    roles = [m["role"] for m in prompt]
    ctx.stats["non_alternating_prompt"] += any(a == b for a, b in itertools.pairwise(roles))
    meta = {"file": ctx.file, "record": ctx.index, "format": ctx.fmt, **meta}
    return [Pair(prompt=prompt, chosen=chosen, rejected=rejected, source=ctx.source, meta=meta)]


# ----------------------------------------------------------------------------- converters


def _parse_transcript(text: str, what: str, ctx: _Ctx) -> list[dict[str, str]]:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' -> user/assistant messages (contents stripped)."""
    turns = list(_TURN.finditer(text))
    if not turns:
        raise ctx.error(f"{what} has no '\\n\\nHuman:' / '\\n\\nAssistant:' turns")
    if text[:turns[0].start()].strip():
        raise ctx.error(f"{what} has text before its first Human/Assistant turn: "
                        f"{_short(text[:turns[0].start()])}")
    ends = [t.start() for t in turns[1:]] + [len(text)]
    return [{"role": "user" if t.group(1) == "Human" else "assistant",
             "content": text[t.end():end].strip()} for t, end in zip(turns, ends, strict=True)]


def _split_last_assistant(msgs: list, what: str, ctx: _Ctx) -> tuple[list, str]:
    if not msgs or msgs[-1]["role"] != "assistant":
        raise ctx.error(f"{what} does not end with an assistant turn")
    return msgs[:-1], msgs[-1]["content"]


def _first_difference(a: list, b: list) -> int:
    same = itertools.takewhile(lambda xy: xy[0] == xy[1], zip(a, b, strict=False))
    return sum(1 for _ in same)


def _repair_hh(chosen: str, rejected: str, ctx: _Ctx):
    """Splits at the last Assistant turn both transcripts share verbatim.

    Some HH transcripts contain a generated run-on ("...  Human: more\\n\\nAssistant: ...") so
    the final Assistant turns of the two sides answer different prompts. The labeller compared
    everything after the shared prefix, so that is what the responses become.
    """
    common = os.path.commonprefix([chosen, rejected])
    marks = [t for t in _TURN.finditer(common) if t.group(1) == "Assistant"]
    if not marks or marks[-1].start() == 0:
        return None
    cut = marks[-1]
    prompt = _parse_transcript(common[:cut.start()], "shared prefix", ctx)
    return prompt, chosen[cut.end():].strip(), rejected[cut.end():].strip()


def _with_margin(pairs: list[Pair], margin: float) -> list[Pair]:
    for pair in pairs:
        pair.margin = margin
    return pairs


def _conv_hh(rec: dict, ctx: _Ctx) -> list:
    chosen = _field(rec, "chosen", ctx)
    rejected = _field(rec, "rejected", ctx)
    margin = _margin(rec, ctx)  # HH transcripts written by a user may carry TRL's margin too.
    pc, c = _split_last_assistant(_parse_transcript(chosen, "chosen", ctx), "chosen", ctx)
    pr, r = _split_last_assistant(_parse_transcript(rejected, "rejected", ctx), "rejected", ctx)
    if pc == pr:
        return _with_margin(_pair(ctx, pc, c, r), margin)
    problem = (f"chosen and rejected transcripts have different prompts (first differing turn "
               f"{_first_difference(pc, pr)}; {len(pc)} vs {len(pr)} prompt turns)")
    repaired = None if ctx.strict else _repair_hh(chosen, rejected, ctx)
    if repaired is None:
        raise ctx.error(problem + (f"; {REPAIR_HINT}" if ctx.strict else
                                   " and no shared Assistant turn to split at"))
    ctx.stats["repaired_prompt"] += 1
    return _with_margin(_pair(ctx, *repaired, repaired_prompt=True), margin)


def _implicit(chosen: str, rejected: str, ctx: _Ctx) -> list:
    """Prompt = longest common prefix of the two strings, cut back to a whitespace boundary."""
    cut = len(os.path.commonprefix([chosen, rejected]))
    while cut > 0 and not chosen[cut - 1].isspace():
        cut -= 1
    c, r = chosen[cut:].strip(), rejected[cut:].strip()
    for name, text in (("chosen", c), ("rejected", r)):
        if not text:
            raise ctx.error(f"implicit prompt: the {name} response is empty after removing the "
                            "prefix shared with the other response; add a 'prompt' field")
    return _pair(ctx, _prompt(chosen[:cut].strip(), ctx), c, r, implicit_prompt=True)


def _conv_trl(rec: dict, ctx: _Ctx) -> list:
    what = "a string or a list of messages"
    chosen = _field(rec, "chosen", ctx, (str, list), what)
    rejected = _field(rec, "rejected", ctx, (str, list), what)
    prompt = None
    if "prompt" in rec:
        prompt = _prompt(_field(rec, "prompt", ctx, (str, list), what), ctx)
    if isinstance(chosen, str) and isinstance(rejected, str) and prompt is None \
            and _looks_hh(chosen) and _looks_hh(rejected):
        return _conv_hh(rec, ctx)  # reads the margin itself.
    return _with_margin(_trl_pairs(chosen, rejected, prompt, ctx), _margin(rec, ctx))


def _trl_pairs(chosen: str | list, rejected: str | list, prompt: list | None,
               ctx: _Ctx) -> list:
    if isinstance(chosen, str) and isinstance(rejected, str):
        if prompt is not None:
            return _pair(ctx, prompt, chosen, rejected)
        return _implicit(chosen, rejected, ctx)
    sides = []
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if isinstance(value, str):
            sides.append(([], value))
        else:
            sides.append(_split_last_assistant(_messages(value, name, ctx), name, ctx))
    (pc, c), (pr, r) = sides
    if pc != pr:
        raise ctx.error(f"chosen and rejected conversations have different prompts (first "
                        f"differing message {_first_difference(pc, pr)})")
    if prompt and pc[:len(prompt)] == prompt:
        return _pair(ctx, pc, c, r)  # the message lists repeat the explicit prompt.
    return _pair(ctx, (prompt or []) + pc, c, r)


def _pandalm_response(rec: dict, key: str, ctx: _Ctx) -> str:
    value = _field(rec, key, ctx, (str, bool))
    if isinstance(value, bool):
        # The PandaLM test set holds 6 responses `true` to "Verify the correctness of the given
        # statement": the model's answer "True" became a JSON boolean when the file was written.
        # Annotators judged the text "True", so the text is restored and counted.
        ctx.stats["coerced"] += 1
        return "True" if value else "False"
    return value


def _label(rec: dict, key: str, allowed: tuple, ctx: _Ctx) -> int:
    value = rec.get(key)
    if key not in rec:
        raise ctx.error(f"missing field {key!r} (keys present: {sorted(rec)})")
    if isinstance(value, bool) or value not in allowed:
        raise ctx.error(f"bad label {key}={_short(value)}, expected one of {list(allowed)}")
    return int(value)


def _conv_pandalm(rec: dict, ctx: _Ctx) -> list:
    instruction = _field(rec, "instruction", ctx)
    extra = rec.get("input")
    extra = "" if extra is None else extra
    if not isinstance(extra, str):
        raise ctx.error(f"field 'input' is {type(extra).__name__}, expected a string")
    _check_text(extra, "field 'input'", ctx)
    r1 = _pandalm_response(rec, "response1", ctx)
    r2 = _pandalm_response(rec, "response2", ctx)
    votes = [_label(rec, f"annotator{i}", (0, 1, 2), ctx) for i in (1, 2, 3)]
    winner, count = collections.Counter(votes).most_common(1)[0]
    if count < 2:
        ctx.stats["dropped_no_majority"] += 1
        return []
    if winner == 0:
        ctx.stats["dropped_ties"] += 1
        return []
    text = instruction + ("\n\n" + extra if extra.strip() else "")
    chosen, rejected = (r1, r2) if winner == 1 else (r2, r1)
    meta = {k: rec[k] for k in ("idx", "cmp_key", "motivation_app") if k in rec}
    return _pair(ctx, _prompt(text, ctx), chosen, rejected, votes=votes, **meta)


def _conv_llmbar(rec: dict, ctx: _Ctx) -> list:
    prompt = _prompt(_field(rec, "input", ctx), ctx, "input")
    outs = (_field(rec, "output_1", ctx), _field(rec, "output_2", ctx))
    label = _label(rec, "label", (1, 2), ctx)
    return _pair(ctx, prompt, outs[label - 1], outs[2 - label], label=label)


def _conv_ranking(rec: dict, ctx: _Ctx) -> Ranking | None:
    prompt = _prompt(_field(rec, "prompt", ctx, (str, list), "a string or messages"), ctx)
    responses = _field(rec, "responses", ctx, (list,), "a list of strings")
    key = "scores" if "scores" in rec else "ranks"
    values = _field(rec, key, ctx, (list,), "a list of numbers")
    if len(values) != len(responses) or len(responses) < 2:
        raise ctx.error(f"need >= 2 responses and one {key[:-1]} each; got {len(responses)} "
                        f"responses and {len(values)} {key}")
    for i, (text, v) in enumerate(zip(responses, values, strict=True)):
        if not isinstance(text, str):
            raise ctx.error(f"responses[{i}] is {type(text).__name__}, expected a string")
        _check_text(text, f"responses[{i}]", ctx)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ctx.error(f"{key}[{i}] is {_short(v)}, expected a number")
        try:
            finite = math.isfinite(v)
        except OverflowError:  # a JSON integer too large for a float
            finite = False
        if not finite:
            raise ctx.error(f"field {key!r}: {key}[{i}] is {_short(v)}, expected a finite "
                            "number (NaN/Infinity cannot be ordered)")
        if not text.strip():
            if ctx.strict:
                raise ctx.error(f"empty response responses[{i}] (whitespace only); {DROP_HINT}")
            ctx.stats["dropped_empty"] += 1
            return None
    # Rank 1 is best, so scores are negated ranks (higher is better everywhere downstream).
    scores = [float(v) if key == "scores" else -float(v) for v in values]
    meta = {"file": ctx.file, "record": ctx.index, "format": "ranking"}
    return Ranking(prompt, list(responses), scores, source=ctx.source, meta=meta)


def ranking_to_pairs(ranking: Ranking, ctx: _Ctx | None = None) -> list[Pair]:
    """All pairs of responses with different scores, the higher-scored one as chosen.

    Identical responses with different scores follow :func:`_pair`'s policy when ``ctx`` is
    given (a DataError when strict, else dropped and counted as ``dropped_identical``); without
    it they are dropped silently. Either way no pair with chosen == rejected comes out.
    """
    pairs = []
    for i, (a, sa) in enumerate(zip(ranking.responses, ranking.scores, strict=True)):
        for j in range(i + 1, len(ranking.responses)):
            b, sb = ranking.responses[j], ranking.scores[j]
            if sa == sb:
                continue
            if a == b:  # no preference to learn, and always a "wrong" tie in evaluation
                if ctx is not None and ctx.strict:
                    raise ctx.error(f"responses[{i}] and responses[{j}] are identical but "
                                    f"scored differently; {DROP_HINT}")
                if ctx is not None:
                    ctx.stats["dropped_identical"] += 1
                continue
            (c, ic), (r, ir) = ((a, i), (b, j)) if sa > sb else ((b, j), (a, i))
            pairs.append(Pair(list(ranking.prompt), c, r, ranking.source, ranking.category,
                              meta={**ranking.meta, "ranking_pair": (ic, ir)}))
    return pairs


_CONVERTERS = {"trl": _conv_trl, "hh": _conv_hh, "pandalm": _conv_pandalm,
               "llmbar": _conv_llmbar}
