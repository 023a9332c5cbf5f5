"""Preference-data formats (TRL, HH-RLHF, PandaLM, LLMBar, rankings) converted to ``Pair``.

Structural problems (missing field, wrong type, unknown role, bad label) always raise a
:class:`DataError` naming file, record and problem. Content oddities that occur in the public
datasets themselves are handled by an explicit policy and counted in the returned stats, never
silently: with ``strict=False`` a pair with an empty response is dropped (``dropped_empty``), so is
a pair whose two responses are identical (``dropped_identical``), and
an HH pair whose two transcripts disagree on the prompt is repaired from their shared prefix
(``repaired_prompt``). ``strict=None`` picks per format: lenient for the published benchmark
formats "hh", "pandalm" and "llmbar" (their files contain such records: 4 HH, 52 PandaLM,
1 LLMBar), strict for formats a user writes ("trl", "ranking", "response"), where an empty
response more likely means a bug in the pipeline that wrote the file.

The per-format converters and the field checks they share live in
:mod:`rewardjax.data.converters`; this module detects formats, dispatches and loads files.
"""

from __future__ import annotations

import collections
import hashlib
import json
from typing import Any

from rewardjax.data import io
from rewardjax.data.converters import (
    _CONVERTERS,
    DROP_HINT,
    Ranking,
    _conv_ranking,
    _Ctx,
    _field,
    _looks_hh,
    _messages,
    _prompt,
    _split_last_assistant,
    ranking_to_pairs,
)
from rewardjax.data.records import DataError, Pair, Response

FORMATS = ("trl", "hh", "pandalm", "llmbar", "ranking", "response")
_LENIENT_BY_DEFAULT = ("hh", "pandalm", "llmbar")
STAT_KEYS = ("read", "kept", "dropped_ties", "dropped_no_majority", "dropped_empty", "coerced",
             "repaired_prompt", "dropped_identical", "non_alternating_prompt", "with_margin")


def detect_format(record: dict, *, file: str | None = None, index: int | str | None = None) -> str:
    """Names the format of one record (one of ``FORMATS``) from its keys.

    Raises:
      DataError: nothing matches; the message lists the keys seen and the known formats.
    """
    keys = set(record)
    if {"response1", "response2"} <= keys and any(k.startswith("annotator") for k in keys):
        return "pandalm"
    if {"output_1", "output_2", "label"} <= keys:
        return "llmbar"
    if "responses" in keys and keys & {"scores", "ranks"}:
        return "ranking"
    if {"chosen", "rejected"} <= keys:
        if "prompt" not in keys and _looks_hh(record["chosen"]) and _looks_hh(record["rejected"]):
            return "hh"
        return "trl"
    if {"prompt", "response"} <= keys or "messages" in keys:
        return "response"
    raise DataError(f"unrecognised record format: keys seen {sorted(keys)}; known formats: "
                    "trl (prompt?/chosen/rejected), hh (chosen/rejected transcripts), pandalm "
                    "(instruction/input/response1/response2/annotator1-3), llmbar (input/output_1/"
                    "output_2/label), ranking (prompt/responses/scores|ranks), response "
                    "(prompt/response or messages)", file=file, record=index)


# ----------------------------------------------------------------------------- converting


def convert(record: dict, fmt: str = "auto", *, strict: bool | None = None,
            file: str = "<record>", index: int | str | None = None, source: str = "",
            stats: collections.Counter | None = None) -> list[Pair]:
    """Converts one record to its pairs ([] when dropped; drops are counted in ``stats``).

    ``file``/``index`` only label errors and ``Pair.meta``; ``load_pairs`` is the usual entry.
    """
    _check_fmt(fmt)
    fmt = detect_format(record, file=file, index=index) if fmt == "auto" else fmt
    lenient = fmt in _LENIENT_BY_DEFAULT if strict is None else not strict
    stats = collections.Counter() if stats is None else stats
    return _convert(record, fmt, _Ctx(file, index, source, fmt, not lenient, stats))


def _convert(rec: dict, fmt: str, ctx: _Ctx) -> list[Pair]:
    if fmt == "ranking":
        ranking = _conv_ranking(rec, ctx)
        identical = ctx.stats["dropped_identical"]
        pairs = ranking_to_pairs(ranking, ctx) if ranking else []
        identical = ctx.stats["dropped_identical"] > identical
        ctx.stats["dropped_ties"] += bool(ranking) and not pairs and not identical
        return pairs
    if fmt == "response":
        raise ctx.error("record holds a single response (format 'response'); use "
                        "load_responses to score it, load_pairs needs preference pairs")
    return _CONVERTERS[fmt](rec, ctx)


# ----------------------------------------------------------------------------- loading


def _check_fmt(fmt: str) -> None:
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; known: auto, {', '.join(FORMATS)}")


def _walk(spec: str, fmt: str, source: str | None, strict: bool | None, stats: dict):
    """Yields (fmt, record, ctx) for every record, detecting the format once per file."""
    _check_fmt(fmt)
    skipped: list[dict[str, str]] = []
    for file, records in io.iter_sources(spec, skipped):
        counts = collections.Counter({k: 0 for k in STAT_KEYS})
        file_fmt = None if fmt == "auto" else fmt
        for index, rec in records:
            file_fmt = file_fmt or detect_format(rec, file=file, index=index)
            lenient = file_fmt in _LENIENT_BY_DEFAULT if strict is None else not strict
            name = source or io.default_source(file)
            ctx = _Ctx(file, index, name, file_fmt, not lenient, counts)
            counts["read"] += 1
            yield file_fmt, rec, ctx
        stats["files"][file] = {"format": file_fmt, "source": source or io.default_source(file),
                                **counts}
        for key in STAT_KEYS:
            stats[key] = stats.get(key, 0) + counts[key]
    stats["skipped_files"], stats["skipped"] = len(skipped), skipped


def load_pairs(spec: str, *, fmt: str = "auto", source: str | None = None,
               strict: bool | None = None) -> tuple[list[Pair], dict]:
    """Loads preference pairs from a file, a directory of files, or a hub dataset.

    Args:
      spec: a .json/.jsonl(.gz) file; a directory (every such file inside, sorted, each its own
        source); or ``hf:<name>[:<split>]`` (also any name that is not an existing path) loaded
        with ``datasets.load_dataset`` (needs network or a cache).
      fmt: "auto" (detected per file from its first record) or one of ``FORMATS``.
      source: ``Pair.source`` for every pair; default a short name from the path
        ("llmbar/Natural").
      strict: oddity policy (see module docstring); None picks per format.

    Returns:
      ``(pairs, stats)``; stats has totals of ``STAT_KEYS`` and ``stats["files"][file]`` with the
      same counters plus the detected format and source. ``read`` counts records and ``kept``
      pairs (a ranking record yields several), so read == kept + dropped_* for pair formats.
      ``with_margin`` counts records carrying a data ``margin`` (TRL). A directory load also
      reports what it did not read: ``skipped_files`` (a count) and ``skipped``
      (``[{"path", "reason"}]``: other files, sub-folders, licence/readme and hidden files).
    """
    stats: dict[str, Any] = {"files": {}}
    pairs = []
    for file_fmt, rec, ctx in _walk(spec, fmt, source, strict, stats):
        new = _convert(rec, file_fmt, ctx)
        ctx.stats["kept"] += len(new)
        pairs.extend(new)
    return pairs, stats


def load_rankings(spec: str, *, source: str | None = None,
                  strict: bool | None = None) -> list[Ranking]:
    """Loads 'ranking' records (prompt, responses, scores or ranks) as :class:`Ranking`."""
    out = []
    for _, rec, ctx in _walk(spec, "ranking", source, strict, {"files": {}}):
        ranking = _conv_ranking(rec, ctx)
        out.extend([ranking] if ranking else [])
    return out


def load_responses(spec: str, *, source: str | None = None,
                   strict: bool | None = None) -> list[Response]:
    """Loads responses to score: 'response' records, or every response of pair/ranking files.

    A 'response' record is ``{"prompt": str | messages, "response": str}`` or
    ``{"messages": [...]}`` ending with an assistant message. For pair files each pair gives two
    Responses (``meta["label"]`` "chosen"/"rejected"); for rankings ``meta["score"]`` is kept.
    """
    out: list[Response] = []
    for file_fmt, rec, ctx in _walk(spec, "auto", source, strict, {"files": {}}):
        meta = {"file": ctx.file, "record": ctx.index, "format": file_fmt}
        if file_fmt == "response":
            if "messages" in rec:
                msgs = _messages(rec["messages"], "messages", ctx)
                prompt, text = _split_last_assistant(msgs, "messages", ctx)
            else:
                what = "a string or messages"
                prompt = _prompt(_field(rec, "prompt", ctx, (str, list), what), ctx)
                text = _field(rec, "response", ctx)
            if text.strip():
                out.append(Response(prompt, text, ctx.source, meta=meta))
            elif ctx.strict:
                raise ctx.error(f"empty response (whitespace only); {DROP_HINT}")
            else:
                ctx.stats["dropped_empty"] += 1
        elif file_fmt == "ranking":
            ranking = _conv_ranking(rec, ctx)
            for i, text in enumerate(ranking.responses if ranking else []):
                out.append(Response(ranking.prompt, text, ctx.source,
                                    meta={**meta, "response": i, "score": ranking.scores[i]}))
        else:
            for pair in _convert(rec, file_fmt, ctx):
                for label in ("chosen", "rejected"):
                    out.append(Response(pair.prompt, getattr(pair, label), pair.source,
                                        pair.category, meta={**pair.meta, "label": label}))
    return out


def _content_hash(pair: Pair, seed: int, key: str) -> str:
    content = pair.prompt if key == "prompt" else [pair.prompt, pair.chosen, pair.rejected]
    blob = json.dumps([seed, content], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def split_pairs(pairs: list[Pair], fraction: float, seed: int = 0, *,
                key: str = "pair") -> tuple[list[Pair], list[Pair]]:
    """Deterministic held-out split by a hash of the content, independent of input order.

    The ``round(fraction * len(pairs))`` pairs with the smallest hashes are held out; pairs with
    identical content (or, with ``key="prompt"``, the same prompt) always land on the same side
    so nothing leaks from train into held-out. Both lists keep the input order.

    Args:
      pairs: the pairs to split.
      fraction: share of pairs held out, e.g. 0.2 for an 80/20 split.
      seed: changes which pairs are held out.
      key: "pair" (prompt + both responses) or "prompt" (group pairs by prompt).

    Returns:
      ``(train, heldout)``.
    """
    if not 0.0 <= fraction <= 1.0 or key not in ("pair", "prompt"):
        raise ValueError(f"need 0 <= fraction <= 1 and key in ('pair', 'prompt'); got "
                         f"{fraction}, {key!r}")
    hashes = [_content_hash(p, seed, key) for p in pairs]
    k = round(fraction * len(pairs))
    ordered = sorted(hashes)
    held = set(ordered[:k])  # a set of hashes, so duplicates of the k-th follow it.
    train = [p for p, h in zip(pairs, hashes, strict=True) if h not in held]
    heldout = [p for p, h in zip(pairs, hashes, strict=True) if h in held]
    return train, heldout
