"""Reading JSON / JSON Lines record files (optionally gzipped) with precise error messages.

Every problem is raised as :class:`DataError` naming the file, the line or record and what is
wrong, because a training run that dies on "Expecting ',' delimiter" with no location wastes
an hour of someone's time.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
import os
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from rewardjax.data.records import DataError

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
RECORD_SUFFIXES = (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz", ".gz")
# Files that ship beside published data sets (llmbar/LICENSE): skipped and counted like any
# other, but logged at INFO, so a warning always means a file someone may have meant to load.
_DOC_NAMES = ("LICENSE", "LICENCE", "COPYING", "NOTICE", "README", "CITATION")
# Skip reasons of a directory load (stats["skipped"][i]["reason"]).
NOT_RECORD_FILE = "not a .json/.jsonl(.gz) file"
SUB_FOLDER = "sub-folder (not read; name it explicitly)"
HIDDEN_FILE, HIDDEN_FOLDER, DOC_FILE = "hidden file", "hidden folder", "licence/readme file"
_SHOWN_SKIPPED = 20  # entries named in one log line or error; the rest are counted


def _open_binary(path: str) -> BinaryIO:
    """Opens ``path`` for reading bytes, transparently decompressing gzip (by magic bytes)."""
    raw = open(path, "rb")  # noqa: SIM115 - handed to the caller, closed there.
    magic = raw.read(2)
    raw.seek(0)
    if magic == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _kind_from_name(path: str) -> str | None:
    """'json', 'jsonl' or None (ambiguous) from the file name, ignoring a trailing .gz."""
    name = path.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    return None


def _decode(file: str, data: bytes) -> str:
    """Decodes a whole JSON document, pointing at the first undecodable byte on failure."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        pos = err.start
        line = data.count(b"\n", 0, pos) + 1
        col = pos - (data.rfind(b"\n", 0, pos) + 1)
        raise DataError(
            f"invalid UTF-8 on line {line}, byte offset {col} in that line "
            f"(byte 0x{data[pos:pos + 1].hex()} at file offset {pos}): {err.reason}; "
            "re-encode the file as UTF-8", file=file) from None


def _read_all(file: str) -> bytes:
    try:
        with _open_binary(file) as fh:
            return fh.read()
    except (OSError, EOFError, zlib.error) as err:
        # gzip raises BadGzipFile (an OSError) or EOFError on truncated archives.
        raise DataError(f"cannot read (corrupt or truncated gzip?): {err}", file=file) from None


def _peek_kind(file: str) -> str:
    """Guesses 'json' or 'jsonl' from content: a leading '[' is a JSON list; a first line that is
    a complete object followed by more content is JSON Lines; otherwise one JSON document."""
    with _open_binary(file) as fh:
        try:
            head = fh.read(1 << 16)
            while head.strip() == b"" and head:
                head = fh.read(1 << 16)
            first = head.lstrip()[:1]
            if first == b"[":
                return "json"
            first_line = head.lstrip().split(b"\n", 1)[0]
            rest = head.lstrip()[len(first_line):].strip()
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"cannot read (corrupt or truncated gzip?): {err}", file=file) from None
    try:
        json.loads(first_line)
    except ValueError:
        return "json"  # multi-line (pretty-printed) object.
    return "jsonl" if rest else "json"


def _check_object(file: str, index: int | str, value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"{where} is a JSON {type(value).__name__}, expected an object "
                        "({...}) holding one record", file=file, record=index)
    return value


def _iter_jsonl(file: str) -> Iterator[tuple[int, dict]]:
    seen = False
    offset = 0
    with _open_binary(file) as fh:
        lineno = 0
        while True:
            try:
                raw = fh.readline()
            except (OSError, EOFError, zlib.error) as err:
                raise DataError(f"cannot read after line {lineno} (corrupt or truncated gzip?): "
                                f"{err}", file=file) from None
            if not raw:
                break
            lineno += 1
            start, offset = offset, offset + len(raw)
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark is harmless; drop it.
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"invalid UTF-8 on line {lineno}, byte offset {err.start} in that line "
                    f"(byte 0x{raw[err.start:err.start + 1].hex()} at file offset "
                    f"{start + err.start}): {err.reason}; re-encode the file as UTF-8",
                    file=file, record=lineno) from None
            if not text.strip():
                continue  # blank lines (e.g. a trailing newline) carry no record.
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"malformed JSON on line {lineno}: {err.msg} (column {err.colno})",
                                file=file, record=lineno) from None
            seen = True
            yield lineno, _check_object(file, lineno, value, f"line {lineno}")
    if not seen:
        raise DataError("file is empty (no JSON records)", file=file)


def _records_of_document(file: str, doc: Any) -> list:
    """The record list of a parsed JSON document: a list, or an object holding exactly one list."""
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        lists = [k for k, v in doc.items() if isinstance(v, list)]
        if len(lists) == 1:
            return doc[lists[0]]
        if not lists:
            return [doc]  # a single record stored as a lone JSON object.
        raise DataError(f"JSON object holds several lists ({', '.join(map(repr, lists))}); "
                        "expected a list of records or an object holding exactly one list",
                        file=file)
    raise DataError(f"top-level JSON value is a {type(doc).__name__}, expected a list of "
                    "records", file=file)


def _iter_json(file: str) -> Iterator[tuple[int, dict]]:
    data = _read_all(file)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    text = _decode(file, data)
    if not text.strip():
        raise DataError("file is empty (no JSON records)", file=file)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        # A ".json" file that is really JSON Lines fails with "Extra data" after the first
        # object; read it as JSON Lines instead of rejecting a common naming slip.
        if err.msg == "Extra data" and text.lstrip().startswith("{"):
            yield from _iter_jsonl(file)
            return
        raise DataError(f"malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}",
                        file=file) from None
    records = _records_of_document(file, doc)
    if not records:
        raise DataError("file holds an empty list (no records)", file=file)
    for i, value in enumerate(records):
        yield i, _check_object(file, i, value, f"list item {i}")


def read_records(path: str | os.PathLike) -> Iterator[tuple[int | str, dict]]:
    """Yields ``(record_index, record)`` from a .json, .jsonl or gzipped record file.

    JSON files hold a list of objects (or an object holding exactly one such list); the index
    is the 0-based list position. JSON Lines hold one object a line; the index is the 1-based
    line number (blank lines skipped). Gzip is recognised by its magic bytes; when the name
    does not say JSON or JSON Lines (e.g. ``data.gz``) the content decides.

    Args:
      path: file to read.

    Returns:
      An iterator of ``(index, dict)``.

    Raises:
      DataError: missing file, directory, empty file, malformed JSON (decoder message with
        line/column), undecodable bytes (line and byte offset), a record that is not an object,
        corrupt gzip. Existence is checked immediately; content errors surface while iterating.
    """
    file = os.fspath(path)
    if not os.path.exists(file):
        raise DataError("file not found", file=file)
    if os.path.isdir(file):
        raise DataError("is a directory, expected a .json/.jsonl(.gz) file", file=file)
    if os.path.getsize(file) == 0:
        raise DataError("file is empty (0 bytes)", file=file)
    kind = _kind_from_name(file) or _peek_kind(file)
    return _iter_jsonl(file) if kind == "jsonl" else _iter_json(file)


def _skip_reason(path: str, name: str) -> str | None:
    """Why a directory load does not read ``name`` (None: it is a record file to read)."""
    if os.path.isdir(path):
        return HIDDEN_FOLDER if name.startswith(".") else SUB_FOLDER
    if name.startswith("."):
        return HIDDEN_FILE
    if not os.path.isfile(path):
        return "not a regular file (broken link, socket ...)"
    if name.lower().endswith(RECORD_SUFFIXES):
        return None
    return DOC_FILE if name.upper().startswith(_DOC_NAMES) else NOT_RECORD_FILE


def scan_directory(directory: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """Splits what ``directory`` holds into record files to read and entries skipped.

    Only record files directly inside are read (.json, .jsonl, .ndjson, their .gz, and any
    other .gz whose content decides); everything else is returned with the reason it is not,
    so a loader can count and report it instead of dropping a .csv or a sub-folder silently.

    Returns:
      ``(files, skipped)``: record file paths, sorted; ``[{"path", "reason"}]`` for the rest.
    """
    directory = os.fspath(directory)
    files, skipped = [], []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        reason = _skip_reason(path, name)
        if reason is None:
            files.append(path)
        else:
            skipped.append({"path": path, "reason": reason})
    return files, skipped


def list_record_files(directory: str | os.PathLike) -> list[str]:
    """Record files (.json, .jsonl, .ndjson, and their .gz) directly inside ``directory``."""
    return scan_directory(directory)[0]


def describe_skipped(directory: str, skipped: list[dict[str, str]]) -> str:
    """``'a.csv (not a .json/.jsonl(.gz) file), sub/ (sub-folder ...)'`` for a log or error."""
    parts = []
    for entry in skipped[:_SHOWN_SKIPPED]:
        name = os.path.relpath(entry["path"], directory)
        name += "/" if entry["reason"] in (SUB_FOLDER, HIDDEN_FOLDER) else ""
        parts.append(f"{name} ({entry['reason']})")
    if len(skipped) > _SHOWN_SKIPPED:
        parts.append(f"and {len(skipped) - _SHOWN_SKIPPED} more")
    return ", ".join(parts)


def _report_skipped(directory: str, n_files: int, skipped: list[dict[str, str]]) -> None:
    """One log line per directory load naming the entries it did not read: a warning unless
    they are only licence/readme/hidden files, which published data sets ship routinely."""
    if not skipped:
        return
    benign = all(e["reason"] in (DOC_FILE, HIDDEN_FILE, HIDDEN_FOLDER) for e in skipped)
    log.log(logging.INFO if benign else logging.WARNING,
            "%s: read %d record file(s), skipped %d: %s", directory, n_files, len(skipped),
            describe_skipped(directory, skipped))


def default_source(file: str) -> str:
    """'.../hh-rlhf/harmless-base-test.jsonl.gz' -> 'hh-rlhf/harmless-base-test'."""
    if file.startswith("hf:"):
        return file[3:].replace(":", "/")
    stem = os.path.basename(file)
    for suffix in (".gz", ".jsonl", ".ndjson", ".json"):
        stem = stem.removesuffix(suffix)
    parent = os.path.basename(os.path.dirname(os.path.abspath(file)))
    return f"{parent}/{stem}" if parent else stem


def _hub_records(spec: str):
    name, _, split = spec.removeprefix("hf:").partition(":")
    split = split or "train"
    try:
        import datasets  # optional and slow to import: only for hub specs.

        rows = datasets.load_dataset(name, split=split)
    except Exception as err:  # noqa: BLE001 - any failure becomes one clear message.
        raise DataError(f"could not load hub dataset {name!r} (split {split!r}): "
                        f"{type(err).__name__}: {err}. ({spec!r} is not a local path, so it was "
                        "read as a hub dataset name.) Hub datasets need network access or a "
                        "populated HF cache; offline, pass a local .json/.jsonl/.gz file or a "
                        "directory of them instead", file=f"hf:{name}:{split}") from None
    return f"hf:{name}:{split}", ((i, dict(row)) for i, row in enumerate(rows))


def iter_sources(spec: str | os.PathLike, skipped: list[dict[str, str]] | None = None):
    """Yields (file name, record iterator) for a file, a directory, a glob pattern
    (``llmbar/Adversarial_*.json``: the matching files, sorted) or a hub dataset.

    Args:
      spec: what to read.
      skipped: when given, receives ``{"path", "reason"}`` for every entry of a loaded
        directory that is not read (see :func:`scan_directory`); each directory load also logs
        one line naming them (a warning unless they are only licence/readme/hidden files).

    Raises:
      DataError: nothing matches, or a directory holds no record file (the message lists what
        it holds and why each entry is not read).
    """
    spec = os.path.expanduser(os.fspath(spec))
    if any(ch in spec for ch in "*?[") and not os.path.exists(spec):
        files = sorted(glob.glob(spec))
        if not files:
            raise DataError("no file matches this pattern", file=spec)
        for file in files:
            yield from iter_sources(file, skipped)
    elif os.path.isdir(spec):
        files, passed = scan_directory(spec)
        if not files:
            held = describe_skipped(spec, passed) if passed else "nothing (empty directory)"
            raise DataError(f"directory holds no .json/.jsonl(.gz) record file; it contains: "
                            f"{held}. Name a record file (or a sub-folder of them) explicitly",
                            file=spec)
        _report_skipped(spec, len(files), passed)
        if skipped is not None:
            skipped.extend(passed)
        for file in files:
            yield file, read_records(file)
    elif os.path.exists(spec):
        yield spec, read_records(spec)
    elif spec.startswith("hf:") or not (spec.lower().endswith(RECORD_SUFFIXES)
                                        or spec.startswith((".", "/", "~"))):
        yield _hub_records(spec)
    else:
        raise DataError("file not found", file=spec)


def write_records(path: str | os.PathLike, records: list[dict]) -> None:
    """Writes records as JSON Lines (gzipped when the name ends in .gz); used by tests and tools."""
    file = os.fspath(path)
    if _kind_from_name(file) == "json":
        payload = json.dumps(records, ensure_ascii=False, indent=1).encode("utf-8")
    else:
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    if file.endswith(".gz"):
        with gzip.open(file, "wb") as fh:
            fh.write(payload)
    else:
        with open(file, "wb") as fh:
            fh.write(payload)
