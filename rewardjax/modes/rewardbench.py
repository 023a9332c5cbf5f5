"""The ``rewardbench`` mode: the trained workdir's scorer on RewardBench v1 and v2."""

from __future__ import annotations

import os
import tempfile

from rewardjax import recipes
from rewardjax.eval import build_offline, load, report_scores
from rewardjax.runtime.paths import write_json


def run(config, workdir: str) -> dict:
    return run_rewardbench(config, workdir, source=config.rewardbench.source,
                           v2_limit=config.rewardbench.v2_limit)


def run_rewardbench(config, workdir: str, *, source: str = "offline", v2_limit: int = 200,
                    out: str | None = None) -> dict:
    """Scores the trained workdir on RewardBench v1 and v2.

    Args:
      config, workdir: as for the ``eval`` mode (the recipe's scorer over the workdir).
      source: ``"offline"`` (records built from ``$REWARDJAX_DATA``) or ``"hub"``.
      v2_limit: offline best-of-4 records to build (0: all).
      out: the JSON report's path (default ``<workdir>/rewardbench.json``).

    Returns:
      ``{"v1": report, "v2": report}``.
    """
    from rewardjax.data.sources import data_root

    if source not in ("offline", "hub"):
        raise ValueError(f"source must be offline or hub, got {source!r}")
    scorer = recipes.get(config.recipe).scorer(config, workdir, "rewardbench")

    if source == "hub":
        sets = {1: load(1), 2: load(2)}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            paths = build_offline(data_root(), tmp, v2_limit=v2_limit)
            sets = {v: load(v, p) for v, p in paths.items()}
    # Per record, scores ordered as the model prefers (rewards; a pairwise model's log-odds
    # against the chosen response); every response must be scored, a dropped one is an error.
    reports = {f"v{v}": report_scores(
        records, scorer.group_scores([(r.prompt, r.chosen + r.rejected) for r in records]), v)
        for v, records in sets.items()}
    write_json(out or os.path.join(workdir, "rewardbench.json"), reports)  # process 0
    return reports
