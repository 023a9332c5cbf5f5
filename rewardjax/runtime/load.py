"""Loading a trained workdir: the newest checkpoint of one reward model or of stacked members,
as a run or a :class:`~rewardjax.runtime.scorer.Scorer`, and exporting such a checkpoint.

Recipes build their ``load_scorer`` / ``export`` from these (DESIGN §1: the runtime loads
workdirs; recipes say which loader fits theirs).
"""

from __future__ import annotations

import logging
import os

import jax
import ml_collections
import numpy as np

from rewardjax.config import base_config
from rewardjax.data.sources import load_sets
from rewardjax.export import NotExportable, export_hf, reward_statistics, save_run
from rewardjax.runtime import paths
from rewardjax.runtime.checkpoint import Checkpointer
from rewardjax.runtime.scorer import MembersScorer, ModelScorer, Scorer
from rewardjax.runtime.setup import build_run

log = logging.getLogger(__name__)


def restore_newest(workdir: str, template, what: str = "train the recipe there first"):
    """The newest checkpoint of ``<workdir>/checkpoints`` restored into ``template``'s
    structure; a clear error when there is none."""
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), 0)
    try:
        state = ckpt.restore(template)
    finally:
        ckpt.close()
    if state is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: {what} (--workdir)")
    return state


def load_trained(config, workdir: str):
    """Builds the run and restores the newest checkpoint of ``workdir`` into ``run.state``."""
    run = build_run(config, workdir)
    run.state = restore_newest(workdir, run.state, "train into --workdir first")
    return run


def checkpoint_scorer(config, workdir: str) -> Scorer:
    """One reward model's newest checkpoint (bt, more) as a scorer."""
    run = load_trained(config, workdir)
    scorer = ModelScorer.of(run)
    scorer.step = int(run.state.step)
    return scorer


def members_scorer(config, workdir: str, *, combine: str = "wa") -> Scorer:
    """Stacked members' newest checkpoint (warm) as a scorer: ``reward`` is the weight average
    (``combine="wa"``) or a prediction ensemble of the members; ``members`` holds each one."""
    from rewardjax.runtime.members import init_members

    run = build_run(config, workdir)
    template, _ = init_members(run, int(config.members.num), init=config.members.init)
    state = restore_newest(workdir, template)
    scorer = MembersScorer(run, state, combine=combine)
    scorer.step = int(np.max(jax.device_get(state.step)))
    return scorer


def eval_statistics(scorer: Scorer, config) -> dict | None:
    """Normalisation statistics of the scorer's rewards over every response of ``data.eval``."""
    if not config.data.eval:
        return None
    rewards, names = [], []
    for name, pairs, _ in load_sets(config.data.eval, config.data):
        rc, rr, _ = scorer.score_pairs(pairs)
        rewards += [rc, rr]
        names.append(name)
    return reward_statistics(np.concatenate(rewards), data=",".join(names))


def export_model(run, state, opts: dict, workdir: str, stats_scorer: Scorer | None = None) -> dict:
    """Writes one reward model (``run`` with ``state``) as an HF sequence-classification
    checkpoint when an exact mapping exists (``opts["format"]``: auto / hf), else natively.

    ``opts``: ``dir`` (default ``<workdir>/export``), ``format``, ``stats`` (``eval``: reward
    normalisation over ``data.eval``; ``none``) and ``drop_bias``.
    """
    if opts["stats"] not in ("eval", "none"):
        raise ValueError(f"export.stats must be eval or none, got {opts['stats']!r}")
    fmt = opts["format"]
    if fmt not in ("auto", "hf", "native"):
        raise ValueError(f"export.format must be auto, hf or native, got {fmt!r}")
    norm = None
    if opts["stats"] == "eval":
        norm = eval_statistics(stats_scorer or ModelScorer.of(run, state), run.config)
    out = opts["dir"] or os.path.join(workdir, "export")
    # the writers know local directories: a gs:// ``out`` is written locally, then copied
    with paths.staged_dir(out) as local:
        if fmt in ("auto", "hf"):
            try:
                export_hf(run, state, local, normalisation=norm,
                          drop_bias=bool(opts["drop_bias"]))
                fmt = "hf"
            except NotExportable as e:
                if fmt == "hf":
                    raise
                log.warning("no exact HF form (%s); writing the native format instead", e)
                fmt = "native"
        if fmt == "native":
            save_run(run, state, local, normalisation=norm)
    return {"format": fmt, "dir": out, "normalisation": norm}


def export_checkpoint(config, workdir: str, opts: dict) -> dict:
    """The newest checkpoint of one reward model's workdir (bt, more), exported."""
    run = load_trained(config, workdir)
    return export_model(run, run.state, opts, workdir)


def export_weight_average(config, workdir: str, opts: dict) -> dict:
    """The weight average of a members workdir (WARM's final model), exported as one model."""
    from rewardjax.runtime.members import average_members, init_members

    run = build_run(config, workdir)
    template, _ = init_members(run, int(config.members.num), init=config.members.init)
    members = restore_newest(workdir, template)
    state = run.state._replace(params=average_members(members), frozen=members.frozen)
    return export_model(run, state, opts, workdir)


def read_run_config(workdir: str, spec: str = "", key: str = ""):
    """A trained run's config: ``spec`` (``"configs/x.py[:args]"``) or ``workdir/config.json``
    (``key``: the config key that names ``spec``, for the error when neither exists)."""
    if spec:
        from rewardjax.config import load_config_file

        path, _, arg = spec.partition(":")
        return load_config_file(path, arg or None)
    path = os.path.join(workdir, "config.json")
    if not paths.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: name the config the run was trained with, e.g. "
            f"--config.{key or '<key>'}=configs/warm.py:data=hh,model=minilm")
    # Over today's defaults, so keys added since the run was trained still resolve.
    config = base_config()
    _overlay(config, paths.read_json(path))
    return config


def _overlay(config, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(config.get(key), ml_collections.ConfigDict):
            _overlay(config[key], value)
        elif isinstance(value, dict):
            config[key] = ml_collections.ConfigDict(value)
        else:
            config[key] = value
