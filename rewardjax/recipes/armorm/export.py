"""An ArmoRM workdir as a native multi-objective model (ridge regression, debiasing, gate over
the frozen backbone), and the scorer the modes use through it."""

from __future__ import annotations

import json
import os

from rewardjax.export import MANIFEST, NotExportable, load_native, save_armorm, set_normalisation
from rewardjax.heads.gating import ArmoRMHead
from rewardjax.runtime.load import eval_statistics
from rewardjax.runtime.scorer import NativeScorer
from rewardjax.runtime.setup import build_run


def export_armorm(config, workdir: str, out_dir: str, *, normalisation: dict | None = None,
                  head: str = "gate") -> str:
    """An ArmoRM workdir (``configs/armorm.py``) as a native multi-objective model: the frozen
    backbone rebuilt from ``config.model`` (the one its features came from) and the saved
    ``armorm/<head>`` heads (ridge regression, debiasing, gate)."""
    directory = os.path.join(workdir, "armorm", head)
    if not os.path.isfile(os.path.join(directory, "model.json")):
        raise FileNotFoundError(f"no ArmoRM head in {directory}: train the armorm recipe into "
                                f"--workdir first")
    with open(os.path.join(directory, "model.json")) as f:
        features = json.load(f).get("features", {})
    if features and features.get("path") != config.model.path:
        raise ValueError(f"{directory} was fitted on features of {features.get('path')!r}, not "
                         f"model.path={config.model.path!r}: pass the training config")
    run = build_run(config, workdir)
    return save_armorm(out_dir, run, run.state, ArmoRMHead.load(directory),
                       normalisation=normalisation)


def native_scorer(config, workdir: str) -> NativeScorer:
    """The scorer of an ArmoRM workdir: its native export in ``<workdir>/export``, written on
    first use and again whenever the gate is newer (``--config.mode=export`` writes the same)."""
    out = os.path.join(workdir, "export")
    head = os.path.join(workdir, "armorm", "gate", "model.npz")
    manifest = os.path.join(out, MANIFEST)
    if not os.path.isfile(manifest) or (
            os.path.isfile(head) and os.path.getmtime(head) > os.path.getmtime(manifest)):
        export_armorm(config, workdir, out)
    return NativeScorer(load_native(out), batch_size=int(config.eval.batch_size))


def export(config, workdir: str, opts: dict) -> dict:
    """The export mode for ArmoRM: always the native format (no HF form exists for K objectives
    and a gate); ``stats=eval`` normalises the gated reward over ``data.eval``."""
    if opts["format"] == "hf":
        raise NotExportable("an ArmoRM model (K objectives, debiasing, a gate) has no HF "
                            "sequence-classification form; use export.format=native or auto")
    if opts["stats"] not in ("eval", "none"):
        raise ValueError(f"export.stats must be eval or none, got {opts['stats']!r}")
    out = opts["dir"] or os.path.join(workdir, "export")
    export_armorm(config, workdir, out)
    norm = None
    if opts["stats"] == "eval":
        norm = eval_statistics(NativeScorer(load_native(out),
                                            batch_size=int(config.eval.batch_size)), config)
        if norm is not None:
            set_normalisation(out, norm)
    return {"format": "native", "dir": out, "normalisation": norm}
