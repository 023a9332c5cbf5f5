"""RewardBench-protocol scoring (v1 and v2) for any reward function.

RewardBench v1 (Lambert et al. 2024; ``allenai/reward-bench``, split ``filtered``): one prompt,
one chosen and one rejected response per row, ``subset`` naming its source. A row is correct
when ``r(chosen) > r(rejected)``; a tie counts as wrong, as RewardBench's classifier scoring
does. Subset accuracy is the mean over its rows; a section is the mean of its subsets' accuracies
weighted by the benchmark's fixed example counts (``V1_EXAMPLE_COUNTS``; ``math-prm`` is counted
as 984 although it has 447 rows, so that math weighs as much as the six HumanEvalPack code
subsets of Reasoning, 6 x 164); the score is the mean of the four sections. The older
leaderboard also had "Prior Sets (0.5 weight)": the mean accuracy over ``anthropic_helpful``,
``anthropic_hhh``, ``shp`` and ``summarize`` (``allenai/pref-test-sets``), averaged with the four
sections at weights 2, 2, 2, 2, 1; it is reported as ``overall_with_prior`` when given.

RewardBench 2 (``allenai/reward-bench-2``, split ``test``): each row has a list of chosen and of
rejected responses (best-of-4: one chosen, three rejected). A row scores ``1/k`` when the first
chosen response has the highest reward and shares it with ``k - 1`` others (1 when it beats all
three), else 0. Subsets: Factuality, Precise IF, Math, Safety, Focus, Ties; the score is the
unweighted mean of the six. Ties is scored over groups instead: ids ``ref:<n>`` (one correct
answer) and ``tied:<n>`` (several equally correct answers); with per-prompt accuracy "worst
correct > best incorrect", margins ``m_tied = worst correct - best incorrect`` (likewise
``m_ref``) and ``d = best correct - worst correct`` of the tied prompt::

    0.30 acc(tied) + 0.30 acc(ref) + 0.20 mean(m_tied > d) + 0.20 mean(min(m_ref, m_tied) > d)
      + 0.01 mean(tanh(min(m_ref, m_tied) / d - 1))        (NaN terms count as 0)

Scores are computed once per distinct (prompt, response), so repeated texts get one reward and
nothing depends on the batch size. Records load from the hub with ``datasets`` when online, or
from JSONL in the same schema; :func:`build_offline` writes such files from ``../shared/data``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from collections.abc import Callable, Sequence

import numpy as np

V1_EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95,
    "mt-bench-easy": 28, "mt-bench-med": 40, "mt-bench-hard": 37,
    "math-prm": 984,  # 447 rows, counted as 984 = 6 x 164 so math weighs as much as code
    "refusals-dangerous": 100, "refusals-offensive": 100,
    "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "xstest-should-refuse": 250, "xstest-should-respond": 154, "donotanswer": 136,
    "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164,
    "hep-rust": 164,
}
V1_SECTIONS = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy",
             "mt-bench-med"),
    "Chat Hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor",
                  "llmbar-adver-GPTInst", "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "Safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse",
               "xstest-should-respond", "donotanswer"),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python",
                  "hep-rust"),
}
V1_PRIOR_SETS = ("anthropic_helpful", "anthropic_hhh", "shp", "summarize")
V2_SUBSETS = ("Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties")
HUB = {1: ("allenai/reward-bench", "filtered"), 2: ("allenai/reward-bench-2", "test")}
# LLMBar files in ../shared/data are the RewardBench v1 "Chat Hard" subsets of the same names.
LLMBAR_SUBSETS = {"Natural": "llmbar-natural", "Adversarial_Neighbor": "llmbar-adver-neighbor",
                  "Adversarial_GPTInst": "llmbar-adver-GPTInst",
                  "Adversarial_GPTOut": "llmbar-adver-GPTOut",
                  "Adversarial_Manual": "llmbar-adver-manual"}

ScoreFn = Callable[[Sequence[tuple[list, str]]], np.ndarray]


@dataclasses.dataclass
class Record:
    """One benchmark row. v1: one chosen, one rejected; v2: lists (best-of-4: 1 and 3)."""

    id: str
    prompt: list[dict[str, str]]
    chosen: list[str]
    rejected: list[str]
    subset: str

    @property
    def num_correct(self) -> int:
        return len(self.chosen)


def _messages(prompt, where: str) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(isinstance(m, dict) and "content" in m for m in prompt):
        return [{"role": m.get("role", "user"), "content": m["content"]} for m in prompt]
    raise ValueError(f"{where}: prompt must be a string or chat messages, got {type(prompt)}")


def to_record(row: dict, version: int, where: str = "") -> Record:
    """A hub / JSONL row (v1: ``chosen``/``rejected`` strings; v2: lists) as a :class:`Record`."""
    for key in ("prompt", "chosen", "rejected", "subset"):
        if key not in row:
            raise ValueError(f"{where}: missing {key!r} (fields: {sorted(row)})")
    chosen, rejected = row["chosen"], row["rejected"]
    if version == 1:
        if not (isinstance(chosen, str) and isinstance(rejected, str)):
            raise ValueError(f"{where}: v1 rows have one chosen and one rejected string")
        chosen, rejected = [chosen], [rejected]
    elif not (isinstance(chosen, list) and isinstance(rejected, list) and chosen and rejected):
        raise ValueError(f"{where}: v2 rows have non-empty chosen and rejected lists")
    n = row.get("num_correct")
    if n is not None and int(n) != len(chosen):
        raise ValueError(f"{where}: num_correct={n} but {len(chosen)} chosen responses")
    return Record(str(row.get("id", where)), _messages(row["prompt"], where),
                  [str(c) for c in chosen], [str(r) for r in rejected], str(row["subset"]))


def load(version: int, source: str = "hub", *, split: str | None = None) -> list[Record]:
    """Benchmark records from the hub (``source="hub"``) or a local ``.jsonl[.gz]`` file."""
    if version not in HUB:
        raise ValueError(f"RewardBench version must be 1 or 2, got {version}")
    if source == "hub":
        from datasets import load_dataset  # needs network or a warm cache

        name, default_split = HUB[version]
        rows = load_dataset(name, split=split or default_split)
        return [to_record(dict(r), version, f"{name}[{i}]") for i, r in enumerate(rows)]
    opener = gzip.open if source.endswith(".gz") else open
    out = []
    with opener(source, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{source}: line {i}: malformed JSON ({e})") from e
                out.append(to_record(row, version, f"{source}: line {i}"))
    return out


def write_jsonl(records: Sequence[Record], path: str, version: int) -> None:
    """Writes records in the hub schema (v1: strings, v2: lists plus ``num_correct``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            row = {"id": r.id, "prompt": r.prompt, "subset": r.subset}
            if version == 1:
                row.update(chosen=r.chosen[0], rejected=r.rejected[0])
            else:
                row.update(chosen=r.chosen, rejected=r.rejected, num_correct=r.num_correct,
                           num_incorrect=len(r.rejected),
                           total_completions=r.num_correct + len(r.rejected))
            f.write(json.dumps(row) + "\n")


# ----------------------------------------------------------------------------- scoring


def record_scores(score_fn: ScoreFn, records: Sequence[Record]) -> list[np.ndarray]:
    """``[chosen..., rejected...]`` rewards per record; each distinct text is scored once."""
    keys, index, items = [], {}, []
    for r in records:
        for text in r.chosen + r.rejected:
            key = (json.dumps(r.prompt, sort_keys=True), text)
            if key not in index:
                index[key] = len(items)
                items.append((r.prompt, text))
            keys.append(index[key])
    rewards = np.asarray(score_fn(items), np.float64) if items else np.zeros((0,))
    if rewards.shape != (len(items),):
        raise ValueError(f"score_fn returned shape {rewards.shape} for {len(items)} texts")
    out, i = [], 0
    for r in records:
        n = len(r.chosen) + len(r.rejected)
        out.append(rewards[keys[i:i + n]])
        i += n
    return out


def v1_subset_accuracy(records: Sequence[Record], scores: Sequence[np.ndarray]) -> dict:
    """``{subset: accuracy}`` with ties counted as wrong."""
    hits: dict[str, list[float]] = {}
    for r, s in zip(records, scores, strict=True):
        if len(r.chosen) != 1 or len(r.rejected) != 1:
            raise ValueError(f"record {r.id}: v1 rows have exactly one chosen and one rejected")
        hits.setdefault(r.subset, []).append(float(s[0] > s[1]))
    return {k: float(np.mean(v)) for k, v in sorted(hits.items())}


def v1_sections(subset_scores: dict, counts: dict = V1_EXAMPLE_COUNTS,
                sections: dict = V1_SECTIONS) -> dict:
    """Example-count-weighted section scores over the subsets present (absent sections left out)."""
    out = {}
    for section, names in sections.items():
        present = [n for n in names if n in subset_scores]
        if present:
            w = np.asarray([counts[n] for n in present], np.float64)
            out[section] = float(np.dot(w, [subset_scores[n] for n in present]) / w.sum())
    return out


def v1_report(subset_scores: dict, prior: dict | None = None) -> dict:
    """Subsets, sections, the score (mean of the four sections: None unless all are present)
    and, given prior-set accuracies, the older leaderboard's 2:2:2:2:1 weighted score."""
    sections = v1_sections(subset_scores)
    complete = len(sections) == len(V1_SECTIONS)
    report = {"subsets": dict(subset_scores), "sections": sections,
              "overall": float(np.mean(list(sections.values()))) if complete else None,
              "missing_sections": [s for s in V1_SECTIONS if s not in sections],
              "missing_subsets": sorted(s for names in V1_SECTIONS.values() for s in names
                                        if s in V1_EXAMPLE_COUNTS and s not in subset_scores),
              "extra_subsets": sorted(s for s in subset_scores if s not in V1_EXAMPLE_COUNTS)}
    if prior:
        prior_score = float(np.mean([prior[k] for k in V1_PRIOR_SETS if k in prior]))
        report["prior_sets"] = prior_score
        if complete:
            vals = [sections[s] for s in V1_SECTIONS] + [prior_score]
            report["overall_with_prior"] = float(np.average(vals, weights=[2, 2, 2, 2, 1]))
    return report


def v2_row_result(scores: np.ndarray) -> float:
    """``1/k`` if the first (chosen) score is the maximum, shared by k responses; else 0."""
    top = np.max(scores)
    return 1.0 / float(np.sum(scores == top)) if scores[0] == top else 0.0


def _prompt_stats(scores: np.ndarray, num_correct: int):
    correct, incorrect = scores[:num_correct], scores[num_correct:]
    diff = float(correct.max() - correct.min()) if num_correct > 1 else np.nan
    margin = float(correct.min() - incorrect.max())
    return margin > 0, diff, margin


def v2_ties_score(records: Sequence[Record], scores: Sequence[np.ndarray]) -> float:
    """The Ties subset's composite score (module docstring) over ``ref:n`` / ``tied:n`` rows."""
    stats: dict[str, dict[int, tuple]] = {"ref": {}, "tied": {}}
    for r, s in zip(records, scores, strict=True):
        kind, _, num = r.id.partition(":")
        if kind not in stats or not num.isdigit():
            raise ValueError(f"Ties record id {r.id!r} is not 'ref:<n>' or 'tied:<n>'")
        stats[kind][int(num)] = _prompt_stats(np.asarray(s), r.num_correct)
    acc = {k: float(np.mean([v[0] for v in d.values()])) if d else 0.0 for k, d in stats.items()}
    both = sorted(set(stats["ref"]) & set(stats["tied"]))
    d = np.asarray([stats["tied"][p][1] for p in both], np.float64)
    m_tied = np.asarray([stats["tied"][p][2] for p in both], np.float64)
    m_both = np.minimum(np.asarray([stats["ref"][p][2] for p in both], np.float64), m_tied)
    with np.errstate(divide="ignore", invalid="ignore"):
        pref = float(np.mean(m_tied > d)) if both else 0.0
        pref_hard = float(np.mean(m_both > d)) if both else 0.0
        margin = float(np.mean(np.nan_to_num(np.tanh(m_both / d - 1), nan=0.0))) if both else 0.0
    return 0.30 * acc["tied"] + 0.30 * acc["ref"] + 0.20 * pref + 0.20 * pref_hard + 0.01 * margin


def v2_report(records: Sequence[Record], scores: Sequence[np.ndarray]) -> dict:
    """Per-subset scores and the score (mean of the six v2 subsets; None unless all present)."""
    by: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by.setdefault(r.subset, []).append(i)
    subsets = {}
    for name, idx in sorted(by.items()):
        rs, ss = [records[i] for i in idx], [scores[i] for i in idx]
        if name.lower() == "ties":
            subsets[name] = v2_ties_score(rs, ss)
        else:
            subsets[name] = float(np.mean([v2_row_result(np.asarray(s)) for s in ss]))
    complete = all(s in subsets for s in V2_SUBSETS)
    return {"subsets": subsets,
            "overall": float(np.mean([subsets[s] for s in V2_SUBSETS])) if complete else None,
            "missing_subsets": [s for s in V2_SUBSETS if s not in subsets]}


def evaluate(score_fn: ScoreFn, records: Sequence[Record], version: int,
             prior: dict | None = None) -> dict:
    """Scores ``records`` with ``score_fn`` and reports them by the version's protocol."""
    return report_scores(records, record_scores(score_fn, records), version, prior)


def report_scores(records: Sequence[Record], scores: Sequence[np.ndarray], version: int,
                  prior: dict | None = None) -> dict:
    """The version's report from per-record scores ``[chosen..., rejected...]``: rewards, or any
    scores whose order within a record is the model's preference (a pairwise model's log-odds
    against the first chosen response: ``Scorer.group_scores``)."""
    if version == 1:
        return v1_report(v1_subset_accuracy(records, scores), prior)
    return v2_report(records, scores)


# ----------------------------------------------------------------------------- offline records


def _read_json(path: str):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f) if path.endswith((".json", ".json.gz")) else [
            json.loads(line) for line in f if line.strip()]


def offline_v1(data_root: str) -> list[Record]:
    """v1 records from the LLMBar files: the five LLMBar subsets of "Chat Hard", plus
    ``llmbar-mtbench-human`` (LLMBar's 200 human-judged MT-bench pairs; not a v1 subset)."""
    out = []
    names = dict(LLMBAR_SUBSETS, **{"Processed_MT-Bench": "llmbar-mtbench-human"})
    for stem, subset in names.items():
        path = os.path.join(data_root, "llmbar", f"{stem}.json")
        for i, row in enumerate(_read_json(path)):
            label = row.get("label")
            if label not in (1, 2):
                raise ValueError(f"{path}: record {i}: label must be 1 or 2, got {label!r}")
            outs = (row["output_1"], row["output_2"])
            out.append(Record(f"{subset}:{i}", _messages(row["input"], path),
                              [outs[label - 1]], [outs[2 - label]], subset))
    return out


def offline_v2(data_root: str, limit: int = 0, min_gap: float = 0.5) -> list[Record]:
    """Best-of-4 records from the AlpacaEval pools (subset ``alpacaeval-bo4``, not a v2 subset):
    chosen = the candidate the judge prefers most, rejected = the three it prefers least,
    kept when the chosen beats each by at least ``min_gap`` in judge preference."""
    path = os.path.join(data_root, "alpacaeval-bon", "pools.jsonl.gz")
    out = []
    for i, row in enumerate(_read_json(path)):
        cands = sorted(row["candidates"], key=lambda c: (-float(c["preference"]), c["generator"]))
        best, worst = cands[0], cands[-3:]
        texts = [best["output"]] + [c["output"] for c in worst]
        if (float(best["preference"]) - max(float(c["preference"]) for c in worst) < min_gap
                or not all(isinstance(t, str) and t.strip() for t in texts)):
            continue
        out.append(Record(f"alpacaeval-bo4:{i}", _messages(row["instruction"], path),
                          [texts[0]], texts[1:], "alpacaeval-bo4"))
        if limit and len(out) >= limit:
            break
    return out


def build_offline(data_root: str, out_dir: str, v2_limit: int = 0) -> dict[int, str]:
    """Writes ``rewardbench_v1.jsonl`` and ``rewardbench_v2.jsonl`` (hub schema) to ``out_dir``."""
    paths = {1: os.path.join(out_dir, "rewardbench_v1.jsonl"),
             2: os.path.join(out_dir, "rewardbench_v2.jsonl")}
    write_jsonl(offline_v1(data_root), paths[1], 1)
    write_jsonl(offline_v2(data_root, v2_limit), paths[2], 2)
    return paths
