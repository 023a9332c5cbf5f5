"""Modes: what ``--config.mode`` does with a recipe's workdir (train, eval, score, export,
rewardbench, serve). Each is a module here with ``run(config, workdir)``; it asks the recipe
(:func:`rewardjax.recipes.get`) for a trainer, a scorer or an exporter and never names recipes.

A mode module may set ``READS``: the config sections it reads besides the trained model's
(:data:`rewardjax.config.MODEL_READS`); the built-in ones are declared in :data:`_READS`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

__all__ = ["available", "check_overrides", "run"]

# The mode's own section, for the modes whose modules do not declare READS themselves.
_READS = {"score": ("score",), "export": ("export",), "rewardbench": ("rewardbench",)}


def available() -> list[str]:
    """The modes (modules of this package)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def mode_reads(mode: str) -> tuple[str, ...]:
    """What ``mode`` reads beyond the recipe's training (train) or its trained model (others)."""
    module = importlib.import_module(f"{__name__}.{mode}")
    return tuple(getattr(module, "READS", _READS.get(mode, ())))


def readers(key: str) -> list[str]:
    """Who reads ``key``: ``["recipes bt, more", "--config.mode=score"]`` (the recipes' training,
    the other modes), for error messages; imports every shipped recipe."""
    from rewardjax import recipes
    from rewardjax.config import is_read, parse_reads, read_rules

    names = []
    for name in recipes.available():
        try:
            recipe = recipes.get(name)
        except Exception:  # noqa: BLE001 -- an optional dependency missing: skip it in a hint
            continue
        if is_read(key, read_rules("train", recipe.reads)):
            names.append(name)
    out = [("recipe " if len(names) == 1 else "recipes ") + ", ".join(names)] if names else []
    for mode in available():
        if mode != "train" and is_read(key, parse_reads(mode_reads(mode))):
            out.append(f"--config.mode={mode}")
    return out


def check_overrides(config, overrides: Iterable[str]) -> None:
    """Raises :class:`rewardjax.config.UnreadConfigKeys` when a key of ``overrides`` (the keys
    set on the command line) is one ``config.recipe`` in ``config.mode`` never reads."""
    from rewardjax import recipes
    from rewardjax.config import check_unread

    overrides = list(overrides)
    if not overrides:
        return
    recipe = recipes.get(config.recipe)
    check_unread(overrides, recipe=config.recipe, mode=config.mode, recipe_reads=recipe.reads,
                 mode_reads=mode_reads(config.mode), readers=readers)


def run(config, workdir: str, overrides: Iterable[str] | None = None):
    """Runs ``config.mode`` on ``workdir`` (the command line's job; usable from Python and
    notebooks as well). A pretrained ``model.path`` first gets its fine-tuning defaults.

    ``overrides``: the keys set on the command line; any that this recipe and mode never read
    stops the run before any work (:func:`check_overrides`). ``None`` (Python callers that set
    keys themselves) skips the check.
    """
    if config.mode not in available():
        raise ValueError(f"unknown mode {config.mode!r}; choose from {', '.join(available())}")
    if overrides is not None:
        check_overrides(config, overrides)
    if config.get("model") is not None and config.model.get("path"):
        from rewardjax.runtime.setup import resolve_config

        resolve_config(config)
    return importlib.import_module(f"{__name__}.{config.mode}").run(config, workdir)
