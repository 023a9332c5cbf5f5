"""Step-labelled solutions for process reward models (PRMs): records, readers and encoding.

A :class:`StepRecord` is a prompt, a solution cut into steps and one boolean label per step
(``True`` = a good step), the stepwise-supervision format of TRL (``{"prompt", "completions",
"labels"}``). Two readers:

* TRL stepwise JSONL: ``prompt`` a string (or chat messages), ``completions`` a list of step
  strings, ``labels`` a list of booleans of the same length.
* PRM800K (``label.steps[i].completions[j].rating``): the solution is the chosen completion of
  each step (``chosen_completion``; the ``human_completion`` when a labeler wrote one). A step
  with no chosen completion is where the labeler stopped: its first completion is the last step
  of the solution. Ratings map to labels as: ``-1`` bad, ``+1`` good, ``0`` (a neutral step,
  "reasonable but not helpful") good by default - PRM800K's "optimistic" reading; pass
  ``neutral="bad"`` for the pessimistic one. A human-written step counts as good.

Encoding (:class:`StepEncoder`): one sequence per solution, ``prompt`` in the frame of the
reward model's :class:`~rewardjax.data.tokenize.SequenceEncoder`, then every step tokenized
alone followed by the separator's tokens (``prm.step_separator``, ``"\\n"`` like TRL). The
label of a step is read at the last token of ``step + separator``: the separator's last token,
or the step's own last token when the separator has no tokens of its own (BERT-style and
word-level tokenizers drop ``"\\n"``). One forward reads every step.

Truncation is explicit and counted (:class:`StepStats`): ``keep_end`` keeps the end of the
prompt (at least half the budget when the steps are long) and then as many *whole* steps as fit;
later steps and their labels are dropped; a solution with no step left, or any over-length one
under ``drop``, is removed. Steps beyond ``max_steps`` are dropped the same way.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence

import numpy as np

from rewardjax.data.io import read_records
from rewardjax.data.records import DataError, Pair
from rewardjax.data.tokenize import Encoded, SequenceEncoder

STEP_FORMATS = ("auto", "trl_steps", "prm800k")


@dataclasses.dataclass
class StepRecord:
    """One step-labelled solution.

    Attributes:
      prompt: chat messages before the solution.
      steps: the solution's steps, in order (non-empty strings).
      labels: one per step, ``True`` for a good step.
      meta: provenance (file, record) and, from the simulator, ``first_error`` / gold fields.
    """

    prompt: list[dict[str, str]]
    steps: list[str]
    labels: list[bool]
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def first_error(self) -> int:
        """Index of the first bad step, ``-1`` for a solution without one."""
        return next((i for i, ok in enumerate(self.labels) if not ok), -1)


def first_error_of(labels: Sequence[bool]) -> int:
    """Index of the first ``False`` in ``labels``; ``-1`` when every step is good."""
    return next((i for i, ok in enumerate(labels) if not ok), -1)


# ----------------------------------------------------------------------------------- readers
def _prompt_of(value, file: str, index) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}] if value else []
    if isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                       and isinstance(m.get("role"), str) for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError("'prompt' must be a string or a list of {role, content} messages",
                    file=file, record=index)


def _check_steps(steps, labels, file: str, index) -> None:
    if not isinstance(steps, list) or not steps:
        raise DataError("'completions' must be a non-empty list of step strings",
                        file=file, record=index)
    if not isinstance(labels, list) or len(labels) != len(steps):
        n = len(labels) if isinstance(labels, list) else type(labels).__name__
        raise DataError(f"'labels' must be a list with one boolean per step ({len(steps)} steps, "
                        f"got {n})", file=file, record=index)
    for i, (s, lab) in enumerate(zip(steps, labels)):
        if not isinstance(s, str) or not s.strip():
            raise DataError(f"step {i} is empty or not a string", file=file, record=index)
        if not isinstance(lab, bool):
            raise DataError(f"label {i} is {lab!r}, expected true or false",
                            file=file, record=index)


def trl_step_record(rec: dict, file: str = "", index=None) -> StepRecord:
    """A TRL stepwise-supervision record -> :class:`StepRecord` (clear errors otherwise)."""
    for key in ("prompt", "completions", "labels"):
        if key not in rec:
            raise DataError(f"missing {key!r} (a TRL stepwise record holds prompt, completions "
                            "and labels)", file=file, record=index)
    _check_steps(rec["completions"], rec["labels"], file, index)
    return StepRecord(_prompt_of(rec["prompt"], file, index), list(rec["completions"]),
                      list(rec["labels"]), {"file": file, "record": index})


def prm800k_record(rec: dict, file: str = "", index=None, neutral: str = "good") -> StepRecord:
    """A PRM800K labelling record -> :class:`StepRecord` (see the module docstring)."""
    if neutral not in ("good", "bad"):
        raise ValueError(f"neutral must be 'good' or 'bad', got {neutral!r}")
    try:
        problem = rec["question"]["problem"]
        raw_steps = rec["label"]["steps"]
    except (KeyError, TypeError):
        raise DataError("missing question.problem or label.steps (a PRM800K record)",
                        file=file, record=index) from None
    steps, labels = [], []
    for i, st in enumerate(raw_steps or []):
        chosen, human = st.get("chosen_completion"), st.get("human_completion")
        comps = st.get("completions") or []
        if chosen is None and human is not None:
            text = human["text"] if isinstance(human, dict) else human
            rating = 1
        else:
            j = 0 if chosen is None else chosen
            if not isinstance(j, int) or not 0 <= j < len(comps):
                raise DataError(f"step {i}: chosen_completion {chosen!r} is not an index into "
                                f"its {len(comps)} completions", file=file, record=index)
            text, rating = comps[j].get("text"), comps[j].get("rating")
        if rating not in (-1, 0, 1):
            raise DataError(f"step {i}: rating {rating!r}, expected -1, 0 or 1",
                            file=file, record=index)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"step {i}: empty step text", file=file, record=index)
        steps.append(text)
        labels.append(rating == 1 or (rating == 0 and neutral == "good"))
        if chosen is None and human is None:
            break  # the labeler stopped here (found an error or gave up)
    if not steps:
        raise DataError("no labelled steps", file=file, record=index)
    return StepRecord(_prompt_of(problem, file, index), steps, labels,
                      {"file": file, "record": index})


def detect_step_format(rec: dict, file: str = "", index=None) -> str:
    if "completions" in rec and "labels" in rec:
        return "trl_steps"
    if "label" in rec and "question" in rec:
        return "prm800k"
    raise DataError(f"not a step-labelled record (keys {sorted(rec)[:6]}): expected TRL's "
                    "{prompt, completions, labels} or PRM800K's {question, label.steps}",
                    file=file, record=index)


def load_steps(path: str, fmt: str = "auto", *, neutral: str = "good") -> list[StepRecord]:
    """Reads a step-labelled file (.json / .jsonl, gzipped or not) or every such file of a
    directory (sorted).

    Raises:
      DataError: naming the file and line of a malformed or inconsistent record.
    """
    if fmt not in STEP_FORMATS:
        raise ValueError(f"unknown step format {fmt!r}; choose from {STEP_FORMATS}")
    files = ([os.path.join(path, f) for f in sorted(os.listdir(path))
              if f.endswith((".json", ".jsonl", ".gz"))] if os.path.isdir(path) else [path])
    out = []
    for file in files:
        for index, rec in read_records(file):
            kind = detect_step_format(rec, file, index) if fmt == "auto" else fmt
            out.append(trl_step_record(rec, file, index) if kind == "trl_steps"
                       else prm800k_record(rec, file, index, neutral))
    if not out:
        raise DataError("no step-labelled records", file=path)
    return out


def solution_pairs(records: Iterable[StepRecord], separator: str = "\n") -> list[Pair]:
    """Solution-level preference pairs for a plain (outcome) reward model: for each prompt, every
    fully correct solution against every erroneous one, steps joined by ``separator``."""
    by_prompt: dict[str, list[StepRecord]] = {}
    for r in records:
        by_prompt.setdefault(repr(r.prompt), []).append(r)
    pairs = []
    for group in by_prompt.values():
        good = [r for r in group if r.first_error < 0]
        bad = [r for r in group if r.first_error >= 0]
        for g in good:
            for b in bad:
                pairs.append(Pair(g.prompt, separator.join(g.steps), separator.join(b.steps),
                                  source="steps", meta={"gold_chosen": 1.0, "gold_rejected": 0.0}))
    return pairs


# ---------------------------------------------------------------------------------- encoding
@dataclasses.dataclass
class StepStats:
    """What truncation did to step-labelled solutions (in every PRM run's summary)."""

    solutions: int = 0
    prompt_truncated: int = 0
    solutions_truncated: int = 0  # lost at least one step
    steps_dropped: int = 0  # steps (and their labels) cut by max_length
    steps_over_max: int = 0  # steps beyond max_steps
    dropped: int = 0  # solutions removed (no step fits, or policy "drop")
    tokens_removed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class EncodedSteps(Encoded):
    """One encoded solution: the sequence plus where each kept step's label is read."""

    step_ends: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))
    labels: np.ndarray | None = None  # [steps] bool, when known


class StepEncoder:
    """Encodes step-labelled solutions as one sequence each (see the module docstring).

    Args:
      base: the reward model's encoder (tokenizer, ``max_length``, truncation policy, frame).
      separator: text appended to every step (``prm.step_separator``).
      max_steps: the most steps a solution keeps (the static step axis of a batch).
    """

    def __init__(self, base: SequenceEncoder, separator: str = "\n", max_steps: int = 16):
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        self.base, self.separator, self.max_steps = base, separator, int(max_steps)
        self.tok, self.max_length = base.tok, base.max_length
        self.sep_ids = base._ids(separator)
        self.stats = StepStats()

    def split(self, response: str) -> list[str]:
        """A plain response cut at the separator (empty pieces dropped): how score / serve read
        a solution given as one text."""
        if not self.separator:
            return [response] if response.strip() else []
        return [s for s in response.split(self.separator) if s.strip()]

    def encode(self, prompt, response: str, *, origin: str = "") -> EncodedSteps | None:
        """The score-mode entry point (``SequenceEncoder.encode``'s signature): ``response`` is
        split into steps at the separator."""
        steps = self.split(response)
        if not steps:
            where = f"{origin}: " if origin else ""
            raise ValueError(f"{where}empty solution (no step after splitting at "
                             f"{self.separator!r})")
        return self.encode_steps(prompt, steps)

    def encode_steps(self, prompt, steps: Sequence[str],
                     labels: Sequence[bool] | None = None) -> EncodedSteps | None:
        """One solution -> :class:`EncodedSteps`, or ``None`` when truncation removes it."""
        st = self.stats
        st.solutions += 1
        pre, p, mid, tail, post = self.base._split(prompt, "")
        step_ids = [self.base._ids(s) + self.sep_ids for s in steps]
        if any(not ids for ids in step_ids):
            raise ValueError("a step has no tokens; it cannot carry a label")
        if len(step_ids) > self.max_steps:
            st.steps_over_max += len(step_ids) - self.max_steps
            step_ids = step_ids[: self.max_steps]
        budget = self.max_length - len(pre) - len(mid) - len(tail) - len(post)
        total = sum(map(len, step_ids))
        kept = len(step_ids)
        if len(p) + total > budget:
            if self.base.policy == "drop":
                st.dropped += 1
                return None
            keep_p = max(budget - total, min(len(p), budget // 2))
            if keep_p < len(p):
                st.prompt_truncated += 1
                st.tokens_removed += len(p) - keep_p
                p = p[len(p) - keep_p:]
            room, kept = budget - len(p), 0
            while kept < len(step_ids) and len(step_ids[kept]) <= room:
                room -= len(step_ids[kept])
                kept += 1
            if kept < len(step_ids):
                st.solutions_truncated += 1
                st.steps_dropped += len(step_ids) - kept
                st.tokens_removed += sum(map(len, step_ids[kept:]))
            if kept == 0:
                st.dropped += 1
                return None
            step_ids = step_ids[:kept]
        head = pre + p + mid
        ends, pos = [], len(head)
        for ids in step_ids:
            pos += len(ids)
            ends.append(pos - 1)
        ids = head + [t for s in step_ids for t in s] + tail + post
        types = [0] * len(head) + [1] * (len(ids) - len(head))
        if self.base.mode != "pair":
            types = [0] * len(ids)
        lab = None if labels is None else np.asarray(list(labels)[:kept], bool)
        return EncodedSteps(np.asarray(ids, np.int32), np.asarray(types, np.int32), len(head),
                            step_ends=np.asarray(ends, np.int32), labels=lab)


def encode_step_records(records: Iterable[StepRecord], encoder: StepEncoder):
    """``(encoded, kept records)``; solutions removed by truncation are counted, not kept."""
    out, kept = [], []
    for r in records:
        e = encoder.encode_steps(r.prompt, r.steps, r.labels)
        if e is not None:
            out.append(e)
            kept.append(r)
    return out, kept


def collate_steps(seqs: Sequence[EncodedSteps], indices, length: int, batch_size: int,
                  max_steps: int, pad_id: int, left: bool = False) -> dict[str, np.ndarray]:
    """A padded batch of solutions: ``[B, L]`` model inputs, ``step_pos [B, S]`` (the token
    read for each step, shifted for left padding; 0 on padding steps), ``step_mask [B, S]``,
    ``step_labels [B, S]`` (1 = good; 0 where unknown or padding), ``weights [B]`` and
    ``index [B]`` (-1 on filler rows)."""
    from rewardjax.data.batching import collate_single

    batch = collate_single(seqs, indices, length, batch_size, pad_id, left)
    pos = np.zeros((batch_size, max_steps), np.int32)
    mask = np.zeros((batch_size, max_steps), np.float32)
    labels = np.zeros((batch_size, max_steps), np.float32)
    for row, i in enumerate(indices):
        e = seqs[i]
        k = len(e.step_ends)
        shift = length - len(e.ids) if left else 0
        pos[row, :k] = e.step_ends + shift
        mask[row, :k] = 1.0
        if e.labels is not None:
            labels[row, :k] = e.labels
    batch.update(step_pos=pos, step_mask=mask, step_labels=labels,
                 weights=(batch["index"] >= 0).astype(np.float32))
    return batch
