"""An ArmoRM workdir as a native multi-objective model (ridge regression, debiasing, gate over
the frozen backbone), and the scorer the modes use through it."""

from __future__ import annotations

import os

from rewardjax.export import MANIFEST, NotExportable, load_native, save_armorm, set_normalisation
from rewardjax.heads.gating import ArmoRMHead
from rewardjax.runtime import (
    NativeScorer,
    build_run,
    eval_statistics,
    local_copy,
    read_json,
    staged_dir,
)
from rewardjax.runtime.workdir import isfile, mtime


def export_armorm(config, workdir: str, out_dir: str, *, normalisation: dict | None = None,
                  head: str = "gate") -> str:
    """An ArmoRM workdir (``configs/armorm.py``) as a native multi-objective model: the frozen
    backbone rebuilt from ``config.model`` (the one its features came from) and the saved
    ``armorm/<head>`` heads (ridge regression, debiasing, gate). ``out_dir`` is local (the
    callers stage a non-local one)."""
    directory = os.path.join(workdir, "armorm", head)
    if not isfile(os.path.join(directory, "model.json")):
        raise FileNotFoundError(f"no ArmoRM head in {directory}: train the armorm recipe into "
                                f"--workdir first")
    features = read_json(os.path.join(directory, "model.json")).get("features", {})
    if features and features.get("path") != config.model.path:
        raise ValueError(f"{directory} was fitted on features of {features.get('path')!r}, not "
                         f"model.path={config.model.path!r}: pass the training config")
    run = build_run(config, workdir)
    with local_copy(directory) as local:
        heads = ArmoRMHead.load(local)
    return save_armorm(out_dir, run, run.state, heads, normalisation=normalisation)


def native_scorer(config, workdir: str) -> NativeScorer:
    """The scorer of an ArmoRM workdir: its native export in ``<workdir>/export``, written on
    first use and again whenever the gate is newer (``--config.mode=export`` writes the same)."""
    out = os.path.join(workdir, "export")
    head = os.path.join(workdir, "armorm", "gate", "model.npz")
    manifest = os.path.join(out, MANIFEST)
    if not isfile(manifest) or (isfile(head) and mtime(head) > mtime(manifest)):
        with staged_dir(out) as local:  # each process reads its own copy of what it wrote
            export_armorm(config, workdir, local)
            native = load_native(local)
    else:
        with local_copy(out) as local:
            native = load_native(local)
    return NativeScorer(native, batch_size=int(config.eval.batch_size))


def export(config, workdir: str, opts: dict) -> dict:
    """The export mode for ArmoRM: always the native format (no HF form exists for K objectives
    and a gate); ``stats=eval`` normalises the gated reward over ``data.eval``."""
    if opts["format"] == "hf":
        raise NotExportable("an ArmoRM model (K objectives, debiasing, a gate) has no HF "
                            "sequence-classification form; use export.format=native or auto")
    if opts["stats"] not in ("eval", "none"):
        raise ValueError(f"export.stats must be eval or none, got {opts['stats']!r}")
    out = opts["dir"] or os.path.join(workdir, "export")
    with staged_dir(out) as local:  # the native writer knows local directories
        export_armorm(config, workdir, local)
        norm = None
        if opts["stats"] == "eval":
            norm = eval_statistics(NativeScorer(load_native(local),
                                                batch_size=int(config.eval.batch_size)), config)
            if norm is not None:
                set_normalisation(local, norm)
    return {"format": "native", "dir": out, "normalisation": norm}
