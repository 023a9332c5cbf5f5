"""Command-line entry point.

    python -m rewardjax.main --config=configs/bt.py[:args] --workdir=DIR \
        [--config.train.steps=100 ...] [--config.mode=eval|score]
"""

from __future__ import annotations

import importlib
import logging as pylogging
import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and outputs go.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")


# config.recipe -> "module:function(config, workdir)" run by mode "train"; imported on use.
RECIPES = {
    "bt": "rewardjax.train.loop:train",
    "warm": "rewardjax.train.warm:train_warm",
    "more": "rewardjax.train.more:train_more",
    "armorm": "rewardjax.train.armorm:train_armorm",
    "dmoerm": "rewardjax.train.dmoerm:train_dmoerm",
    "bon": "rewardjax.eval.bon:run_bon",
    "ppo": "rewardjax.rl.ppo:train_ppo",
}


def run(config, workdir: str):
    """Dispatches on ``config.mode`` (and ``config.recipe`` for training); usable from Python
    and notebooks as well."""
    if config.get("model") is not None and config.model.get("path"):
        from rewardjax.train.setup import resolve_config

        resolve_config(config)
    if config.mode == "train":
        if config.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {config.recipe!r}; choose from {sorted(RECIPES)}")
        module, _, fn = RECIPES[config.recipe].partition(":")
        return getattr(importlib.import_module(module), fn)(config, workdir)
    if config.mode == "export":
        from rewardjax.eval.export_mode import export_run

        return export_run(config, workdir)
    if config.mode == "rewardbench":
        from rewardjax.eval.rewardbench import run_rewardbench

        return run_rewardbench(config, workdir, source=config.rewardbench.source,
                               v2_limit=config.rewardbench.v2_limit)
    if config.mode == "eval":
        from rewardjax.eval.modes import evaluate

        return evaluate(config, workdir)
    if config.mode == "score":
        from rewardjax.eval.modes import score

        return score(config, workdir)
    raise ValueError(f"unknown mode {config.mode!r}; choose train, eval, score, export or "
                     "rewardbench")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config=configs/bt.py")
    if _MULTIHOST.value:
        import jax

        jax.distributed.initialize()
    # orbax reports every save through absl at INFO; keep the progress bar readable.
    pylogging.getLogger("absl").setLevel(pylogging.WARNING)
    pylogging.getLogger("rewardjax").setLevel(pylogging.INFO)
    workdir = _WORKDIR.value or os.path.join("runs", "default")
    logging.info("workdir %s", workdir)
    run(_CONFIG.value, workdir)


if __name__ == "__main__":
    app.run(main)
