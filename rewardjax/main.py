"""Command-line entry point.

    python -m rewardjax.main --config=configs/bt.py[:args] --workdir=DIR \
        [--config.train.steps=100 ...] [--config.mode=eval|score]
"""

from __future__ import annotations

import logging as pylogging
import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and outputs go.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")


def run(config, workdir: str, overrides=None):
    """Runs ``config.mode`` of ``config.recipe`` on ``workdir`` (:func:`rewardjax.modes.run`);
    ``overrides``, the keys set on the command line, must all be read by that recipe and mode."""
    from rewardjax import modes

    return modes.run(config, workdir, overrides=overrides)


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
    from rewardjax.config import UnreadConfigKeys

    # A key the recipe and mode never read is refused before any work (no silent no-op).
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    try:
        run(_CONFIG.value, workdir, overrides=sorted(overrides))
    except UnreadConfigKeys as e:
        raise app.UsageError(str(e)) from None


if __name__ == "__main__":
    app.run(main)
