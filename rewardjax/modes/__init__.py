"""Modes: what ``--config.mode`` does with a recipe's workdir (train, eval, score, export,
rewardbench). Each is a module here with ``run(config, workdir)``; it asks the recipe
(:func:`rewardjax.recipes.get`) for a trainer, a scorer or an exporter and never names recipes.
"""

from __future__ import annotations

import importlib
import pkgutil

__all__ = ["available", "run"]


def available() -> list[str]:
    """The modes (modules of this package)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def run(config, workdir: str):
    """Runs ``config.mode`` on ``workdir`` (the command line's job; usable from Python and
    notebooks as well). A pretrained ``model.path`` first gets its fine-tuning defaults."""
    if config.mode not in available():
        raise ValueError(f"unknown mode {config.mode!r}; choose from {', '.join(available())}")
    if config.get("model") is not None and config.model.get("path"):
        from rewardjax.runtime.setup import resolve_config

        resolve_config(config)
    return importlib.import_module(f"{__name__}.{config.mode}").run(config, workdir)
