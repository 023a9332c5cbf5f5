"""The ``export`` mode: restore a workdir and write it as an HF sequence-classification
checkpoint or in the native format (the writers live in :mod:`rewardjax.export`)."""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from rewardjax.data.sources import load_sets
from rewardjax.eval.modes import NATIVE_RECIPES, check_recipe, load_trained
from rewardjax.eval.runner import score_native_pairs, score_pairs
from rewardjax.export import (
    NotExportable,
    export_hf,
    load_native,
    reward_statistics,
    save_armorm,
    save_run,
    set_normalisation,
)
from rewardjax.heads.gating import ArmoRMHead
from rewardjax.train.setup import build_run

log = logging.getLogger(__name__)


def _export_config(config):
    """``config.export`` if the recipe defines it, else the defaults."""
    defaults = {"dir": "", "format": "auto", "stats": "eval", "drop_bias": False}
    section = config.get("export") if hasattr(config, "get") else None
    if section is not None:
        defaults.update({k: section[k] for k in section.keys() if k in defaults})
    return defaults


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


def export_run(config, workdir: str) -> dict:
    """The ``export`` mode: restores ``workdir``'s newest checkpoint and exports it.

    Reads optional ``config.export`` fields: ``dir`` (default ``<workdir>/export``), ``format``
    (``auto``: HF when an exact mapping exists, else native; ``hf``; ``native``), ``stats``
    (``eval``: normalisation statistics over every response of ``data.eval``; ``none``) and
    ``drop_bias`` (HF export of a decoder head without its bias, see :func:`export_hf`).

    Returns:
      ``{"format", "dir", "normalisation"}``.
    """
    check_recipe(config, "export")
    opts = _export_config(config)
    if config.recipe in NATIVE_RECIPES:
        return _export_armorm_run(config, workdir, opts)
    run = load_trained(config, workdir)
    norm = None
    if opts["stats"] == "eval" and config.data.eval:
        rewards, names = [], []
        for name, pairs, _ in load_sets(config.data.eval, config.data):
            rc, rr, _ = score_pairs(run, run.state, pairs, config)
            rewards += [rc, rr]
            names.append(name)
        norm = reward_statistics(np.concatenate(rewards), data=",".join(names))
    elif opts["stats"] not in ("eval", "none"):
        raise ValueError(f"export.stats must be eval or none, got {opts['stats']!r}")
    out = opts["dir"] or os.path.join(workdir, "export")
    fmt = opts["format"]
    if fmt not in ("auto", "hf", "native"):
        raise ValueError(f"export.format must be auto, hf or native, got {fmt!r}")
    if fmt in ("auto", "hf"):
        try:
            export_hf(run, run.state, out, normalisation=norm,
                      drop_bias=bool(opts["drop_bias"]))
            fmt = "hf"
        except NotExportable as e:
            if fmt == "hf":
                raise
            log.warning("no exact HF form (%s); writing the native format instead", e)
            fmt = "native"
    if fmt == "native":
        save_run(run, run.state, out, normalisation=norm)
    if jax.process_index() == 0:
        print(f"exported ({fmt}) -> {out}")
    return {"format": fmt, "dir": out, "normalisation": norm}


def _export_armorm_run(config, workdir: str, opts: dict) -> dict:
    """``export_run`` for an ArmoRM workdir: always the native format (no HF form exists for K
    objectives and a gate); ``stats=eval`` normalises the gated reward over ``data.eval``."""
    if opts["format"] == "hf":
        raise NotExportable("an ArmoRM model (K objectives, debiasing, a gate) has no HF "
                            "sequence-classification form; use export.format=native or auto")
    if opts["stats"] not in ("eval", "none"):
        raise ValueError(f"export.stats must be eval or none, got {opts['stats']!r}")
    out = opts["dir"] or os.path.join(workdir, "export")
    export_armorm(config, workdir, out)
    norm = None
    if opts["stats"] == "eval" and config.data.eval:
        model, rewards, names = load_native(out), [], []
        for name, pairs, _ in load_sets(config.data.eval, config.data):
            rc, rr, _ = score_native_pairs(model, pairs, config)
            rewards += [rc, rr]
            names.append(name)
        norm = reward_statistics(np.concatenate(rewards), data=",".join(names))
        set_normalisation(out, norm)
    if jax.process_index() == 0:
        print(f"exported (native, ArmoRM) -> {out}")
    return {"format": "native", "dir": out, "normalisation": norm}
