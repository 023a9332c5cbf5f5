"""Resolving the ``data.train`` / ``data.eval`` strings of a config into named pair sets.

A spec is a comma-separated list; each item is one of

* ``sim:<split>`` — the preference simulator's ``train``, ``test_id`` or ``test_ood`` split
  (sizes, flip rate and seed from ``data.sim``);
* a file or directory path (``$VARS`` and ``~`` expanded), optionally suffixed ``@train`` or
  ``@heldout`` to take the fixed content-hashed split of ``data.holdout_fraction`` (only a
  trailing suffix is a split: an ``@`` elsewhere in the path is part of it);
* a hub dataset name (``hf:<name>[:<split>]``), loaded with ``datasets`` when online.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np

from rewardjax.data.records import Pair

SIM_SPLITS = ("train", "test_id", "test_ood")
# data.odd_records -> load_pairs(strict=): what empty responses, identical pairs and HH
# transcripts with disagreeing prompts do. auto: lenient for the published benchmark formats
# (hh, pandalm, llmbar), an error for the formats a user writes (trl, ranking).
ODD_RECORDS = {"auto": None, "error": True, "drop": False}
# Counters of formats.load_pairs worth a line in the log when non-zero.
_REPORTED = ("dropped_ties", "dropped_no_majority", "dropped_empty", "dropped_identical",
             "coerced", "repaired_prompt", "non_alternating_prompt", "with_margin",
             "skipped_files")

log = logging.getLogger(__name__)


def strict_of(data_cfg) -> bool | None:
    policy = str(data_cfg.get("odd_records", "auto"))
    if policy not in ODD_RECORDS:
        raise ValueError(f"--config.data.odd_records={policy!r}: choose from "
                         f"{', '.join(ODD_RECORDS)}")
    return ODD_RECORDS[policy]


def describe_stats(name: str, stats: dict) -> str:
    """One line: what loading a set read, kept, dropped and repaired."""
    parts = [f"read {stats.get('read', stats.get('kept', 0))}", f"kept {stats.get('kept', 0)}"]
    parts += [f"{k} {stats[k]}" for k in _REPORTED if stats.get(k)]
    if "split" in stats:
        parts.append(f"@{stats['split']} {stats.get('kept_after_split')}")
    if "subsampled" in stats:
        parts.append(f"subsampled to {stats['subsampled']}")
    return f"data {name}: " + ", ".join(parts)


def split_specs(specs: str) -> list[str]:
    return [s.strip() for s in (specs or "").split(",") if s.strip()]


def data_root() -> str:
    """Where the shared real data lives: ``$REWARDJAX_DATA`` or ``../shared/data``."""
    env = os.environ.get("REWARDJAX_DATA")
    if env:
        return env
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(os.path.dirname(here), "shared", "data")


def expand(path: str) -> str:
    if "$REWARDJAX_DATA" in path or "${REWARDJAX_DATA}" in path:
        os.environ.setdefault("REWARDJAX_DATA", data_root())
    return os.path.expanduser(os.path.expandvars(path))


def spec_name(spec: str) -> str:
    """A short display name: ``sim:test_ood`` or the file stem with its split suffix."""
    if spec.startswith(("sim:", "hf:")):
        return spec
    path, part = split_suffix(spec)
    base = os.path.basename(os.path.normpath(path))
    for ext in (".gz", ".jsonl", ".json"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    base = re.sub(r"[*?\[\]]", "", base).rstrip("_-.") or base  # "Adversarial_*" -> "Adversarial"
    return f"{base}@{part}" if part else base


SPLIT_SUFFIXES = ("train", "heldout")


def split_suffix(spec: str) -> tuple[str, str]:
    """``(path, split)``: a trailing ``@train`` / ``@heldout`` is the split ("" when none).

    An ``@`` elsewhere belongs to the path (``/data/user@host/x.jsonl``, ``prefs@v2.jsonl``);
    a trailing word that names no split and no existing path (``x.jsonl@test``) is an error.
    """
    path, sep, part = spec.rpartition("@")
    if not sep:
        return spec, ""
    if part in SPLIT_SUFFIXES:
        return path, part
    looks_like_suffix = part and not re.search(r"[/\\.*?\[]", part)
    if looks_like_suffix and not spec.startswith("hf:") and not os.path.exists(expand(spec)):
        raise ValueError(f"unknown split suffix @{part} in {spec!r}; use @train or @heldout "
                         "(no path of that name exists either)")
    return spec, ""


_SIM_CACHE: dict = {}


def _simulated(data_cfg) -> dict[str, list[Pair]]:
    from rewardjax.data import simulator

    sim = data_cfg.sim
    key = (int(sim.seed), int(sim.num_train), int(sim.num_eval), float(sim.flip_rate))
    if key not in _SIM_CACHE:
        _SIM_CACHE.clear()
        _SIM_CACHE[key] = simulator.standard_splits(
            seed=key[0], n_train=key[1], n_eval=key[2], flip_rate=key[3]
        )
    return _SIM_CACHE[key]


def load_spec(spec: str, data_cfg) -> tuple[list[Pair], dict]:
    """Loads one spec item into pairs plus the reader's stats."""
    if spec.startswith("sim:"):
        split = spec[4:]
        if split not in SIM_SPLITS:
            raise ValueError(
                f"unknown simulator split {split!r} in {spec!r}; choose from {SIM_SPLITS}"
            )
        pairs = _simulated(data_cfg)[split]
        return pairs, {"source": spec, "kept": len(pairs)}
    from rewardjax.data import formats

    path, part = split_suffix(spec)
    target = path if path.startswith("hf:") else expand(path)
    pairs, stats = formats.load_pairs(target, fmt=data_cfg.format, strict=strict_of(data_cfg))
    if part:
        train, heldout = formats.split_pairs(pairs, data_cfg.holdout_fraction, data_cfg.split_seed)
        pairs = train if part == "train" else heldout
        stats = dict(stats, split=part, kept_after_split=len(pairs))
    return pairs, stats


def subsample(pairs: list[Pair], limit: int, seed: int) -> list[Pair]:
    """At most ``limit`` pairs (0 = all), a fixed random subset kept in the original order."""
    if not limit or len(pairs) <= limit:
        return pairs
    keep = np.sort(np.random.default_rng(seed).choice(len(pairs), int(limit), replace=False))
    return [pairs[i] for i in keep]


def load_sets(specs: str, data_cfg, limit: int | None = None) -> list[tuple[str, list[Pair], dict]]:
    """``[(name, pairs, stats)]`` for each item of a comma-separated spec.

    ``limit`` (default ``data.eval_limit``) caps each set at a fixed random subset."""
    limit = int(data_cfg.get("eval_limit", 0)) if limit is None else limit
    out = []
    for s in split_specs(specs):
        pairs, stats = load_spec(s, data_cfg)
        if limit and len(pairs) > limit:
            pairs = subsample(pairs, limit, data_cfg.split_seed)
            stats = dict(stats, subsampled=len(pairs))
        log.info(describe_stats(spec_name(s), stats))
        out.append((spec_name(s), pairs, stats))
    return out


def load_train_pairs(data_cfg, report: dict | None = None) -> list[Pair]:
    """All ``data.train`` sets concatenated, capped at ``data.train_limit`` pairs (0 = all).

    ``report``, when given, receives ``{set name: load counters}`` (read, kept, every drop and
    repair) for the run's summary."""
    sets = load_sets(data_cfg.train, data_cfg, limit=0)
    if report is not None:
        report.update({name: summary_stats(stats) for name, _, stats in sets})
    pairs = [p for _, ps, _ in sets for p in ps]
    if not pairs:
        raise ValueError("data.train is empty: name at least one training set")
    return subsample(pairs, int(data_cfg.get("train_limit", 0)), data_cfg.split_seed)


def margin_warning(report: dict, use_data_margin: bool) -> str | None:
    """A warning when training data carries ``margin`` values the loss will ignore.

    ``report`` is :func:`load_train_pairs`'s ``{set name: counters}``; None when there is
    nothing to say (no margins, or ``loss.use_data_margin`` already on)."""
    with_margin = sum(int(stats.get("with_margin", 0)) for stats in report.values())
    if not with_margin or use_data_margin:
        return None
    return (f"{with_margin} training record(s) carry a 'margin' field, which is ignored: "
            "loss.use_data_margin is off; pass --config.loss.use_data_margin=True to add it "
            "to the loss margin")


def summary_stats(stats: dict) -> dict:
    """Load counters without the per-file breakdown (that stays in the loader's return)."""
    return {k: v for k, v in stats.items() if k != "files"}
