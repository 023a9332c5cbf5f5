"""Canonical in-memory records that every data format is read into."""

from __future__ import annotations

import dataclasses
from typing import Any


class DataError(ValueError):
    """Bad input. The message names the file, the record (line or index) and the problem."""

    def __init__(self, problem: str, *, file: str | None = None, record: int | str | None = None):
        where = []
        if file is not None:
            where.append(str(file))
        if record is not None:
            where.append(f"record {record}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)
        self.file = file
        self.record = record
        self.problem = problem


@dataclasses.dataclass
class Pair:
    """One preference: a conversation prompt and two final assistant responses.

    Attributes:
      prompt: chat messages before the responses (``[{"role", "content"}]``); may be empty.
      chosen: the preferred response (non-empty).
      rejected: the dispreferred response (non-empty).
      source: dataset or annotator-source name, used for per-source breakdowns and MORE.
      category: task category when known (DMoERM's router target).
      margin: Bradley-Terry margin for this pair (a TRL record's ``margin`` field); the loss adds
        it to ``loss.margin`` when ``loss.use_data_margin`` is set.
      meta: provenance (file, record index), gold rewards, attribute ratings, flip flags ...
    """

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    source: str = ""
    category: str = ""
    margin: float = 0.0
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Response:
    """A prompt and one response to score (``score`` mode, best-of-n pools)."""

    prompt: list[dict[str, str]]
    response: str
    source: str = ""
    category: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
