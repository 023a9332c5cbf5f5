"""Best-of-n pools: one prompt's candidates with their gold scores (:class:`Pool`), read from
the AlpacaEval pools file, split back from flat scores, the length proxy, and the prompt files
that sampled pools start from.
"""

from __future__ import annotations

import dataclasses
import gzip
import json

import numpy as np

from rewardjax.data.records import DataError
from rewardjax.data.sources import expand, split_specs

# ----------------------------------------------------------------------------- pools


@dataclasses.dataclass
class Pool:
    """One prompt's candidates with their gold scores.

    Attributes:
      prompt: chat messages before the response.
      responses: the N candidate responses.
      gold: ``[N]`` gold scores.
      generators: who wrote each candidate (model names, or sample indices).
      meta: provenance.
    """
    prompt: list[dict[str, str]]
    responses: list[str]
    gold: np.ndarray
    generators: list[str]
    meta: dict = dataclasses.field(default_factory=dict)


def load_alpaca_pools(path: str, *, num_prompts: int = 0, num_candidates: int = 0,
                      seed: int = 0) -> list[Pool]:
    """Reads ``alpacaeval-bon/pools.jsonl.gz``; gold = the judge's ``preference`` (1 to 2).

    Args:
      path: the (gzipped) JSON-lines file.
      num_prompts: > 0 keeps a fixed random subset of that many prompts (file order kept).
      num_candidates: > 0 keeps the same fixed random subset of generators in every pool.
      seed: for both subsets.

    Empty outputs (a few models answered nothing) stay in the pool: they were sampled and judged
    like any other answer, and dropping them would flatter random choice.
    """
    opener = gzip.open if path.endswith(".gz") else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((line_no, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON: {e}", file=path, record=f"line {line_no}") from e
    rng = np.random.default_rng(seed)
    if 0 < num_prompts < len(rows):
        rows = [rows[i] for i in sorted(rng.choice(len(rows), num_prompts, replace=False))]
    keep = None
    pools = []
    for line_no, rec in rows:
        where = dict(file=path, record=f"line {line_no}")
        if not isinstance(rec.get("instruction"), str) or not rec.get("candidates"):
            raise DataError("needs a string 'instruction' and a non-empty 'candidates' list",
                            **where)
        cands = rec["candidates"]
        for c in cands:
            if not isinstance(c.get("output"), str):
                raise DataError(f"candidate {c.get('generator')!r}: 'output' is not a string",
                                **where)
            pref = c.get("preference")
            if not isinstance(pref, (int, float)) or not np.isfinite(pref):
                raise DataError(f"candidate {c.get('generator')!r}: 'preference' {pref!r} is not "
                                f"a finite number", **where)
        if num_candidates > 0:
            # A generator name can occur twice in a pool (two runs of one model): the key is
            # (name, occurrence), so the same candidates are kept in every pool.
            seen: dict = {}
            keys = []
            for c in cands:
                seen[c["generator"]] = seen.get(c["generator"], -1) + 1
                keys.append((c["generator"], seen[c["generator"]]))
            if keep is None:
                names = sorted(keys)
                k = min(num_candidates, len(names))
                keep = {names[i] for i in rng.choice(len(names), k, replace=False)}
            cands = [c for c, key in zip(cands, keys) if key in keep]
        pools.append(Pool(prompt=[{"role": "user", "content": rec["instruction"]}],
                          responses=[c["output"] for c in cands],
                          gold=np.asarray([float(c["preference"]) for c in cands]),
                          generators=[c["generator"] for c in cands],
                          meta={"line": line_no, "dataset": rec.get("dataset", "")}))
    return pools


def split_by_pool(flat: np.ndarray, pools: list[Pool]) -> list[np.ndarray]:
    """Flat scores (pool by pool, candidate by candidate) back into one array per pool."""
    bounds = np.cumsum([len(p.responses) for p in pools])[:-1]
    return np.split(np.asarray(flat, np.float64), bounds)


def length_scores(pools: list[Pool]) -> list[np.ndarray]:
    """The length proxy: a response's number of characters (a reward hacker's favourite)."""
    return [np.asarray([len(r) for r in p.responses], np.float64) for p in pools]


def read_prompts(specs: str, limit: int = 0, seed: int = 0) -> list[str]:
    """First turns of MT-bench / Vicuna question files (``{"turns": [...]}`` JSON lines)."""
    prompts = []
    for spec in split_specs(specs):
        path = expand(spec)
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                turns = json.loads(line).get("turns")
                if not turns or not isinstance(turns[0], str):
                    raise DataError("needs a non-empty 'turns' list of strings", file=path,
                                    record=f"line {line_no}")
                prompts.append(turns[0])
    if 0 < limit < len(prompts):
        rng = np.random.default_rng(seed)
        prompts = [prompts[i] for i in sorted(rng.choice(len(prompts), limit, replace=False))]
    return prompts
