"""Recipes: what each one trains, how its workdir is scored and how it exports.

A recipe is a module or package under ``rewardjax.recipes`` (or any importable module, named in
full: ``--config.recipe=mypkg.my_recipe``) that calls :func:`register` once when imported. The
modes look a recipe up by ``config.recipe`` and ask it for what they need; no table outside the
recipe names it, so adding one touches nothing else::

    from rewardjax import recipes

    recipes.register(recipes.Recipe(
        name="mine", train=train_mine,
        load_scorer=lambda config, workdir: ...,   # eval / score / rewardbench / judges
        export=None, no_scorer="it trains a policy, not a reward model"))
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

__all__ = ["Recipe", "available", "get", "register"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What the modes may ask of a recipe.

    Attributes:
      name: the ``config.recipe`` value.
      train: ``(config, workdir) -> summary``: the ``train`` mode.
      load_scorer: ``(config, workdir) -> Scorer`` over the trained workdir
        (:class:`rewardjax.runtime.scorer.Scorer`); ``None`` when the workdir holds no reward
        model (say why in ``no_scorer``).
      export: ``(config, workdir, options) -> {"format", "dir", "normalisation"}``; ``None``
        when the recipe has no exportable reward model (``no_scorer`` says why).
      no_scorer: why eval / score / export / rewardbench cannot read this recipe's workdir.
      evaluate: ``(config, workdir) -> (summary, table)`` for the ``eval`` mode when the
        recipe's evaluation sets are not preference pairs (prm: step-labelled solutions);
        ``None``: the scorer's ``evaluate_sets`` on ``data.eval`` pairs.
      reads: what this recipe's training reads besides the shared run sections
        (:data:`rewardjax.config.RUN_READS`: ``model``, ``data``, ``train``, ``eval``, ``mesh``,
        ...): its own sections (``"members"``), and ``"!key: why / what to set instead"`` for a
        shared key or section it does not honour (a longer path wins: ``"!train"`` then
        ``"train.steps"``). A key set on the command line that the recipe and mode never read
        stops the run before any work (:func:`rewardjax.config.check_unread`).
    """

    name: str
    train: Callable[[Any, str], Any]
    load_scorer: Callable[[Any, str], Any] | None = None
    export: Callable[[Any, str, dict], dict] | None = None
    no_scorer: str = ""
    reads: tuple[str, ...] = ()
    evaluate: Callable[[Any, str], tuple[dict, str]] | None = None

    def scorer(self, config, workdir: str, mode: str):
        """The workdir's scorer, or a clear error saying why ``mode`` cannot use it."""
        if self.load_scorer is None:
            raise ValueError(self._unusable(mode))
        return self.load_scorer(config, workdir)

    def exporter(self, mode: str = "export"):
        if self.export is None:
            raise ValueError(self._unusable(mode))
        return self.export

    def _unusable(self, mode: str) -> str:
        usable = [n for n in available() if get(n).load_scorer is not None]
        return (f"--config.mode={mode} reads one reward model's workdir (recipes "
                f"{', '.join(usable)}); a {self.name!r} workdir does not hold one: "
                f"{self.no_scorer or 'its workdir is not one reward model'}")


_REGISTRY: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Makes ``recipe`` available under ``recipe.name`` (called by the recipe's module)."""
    old = _REGISTRY.get(recipe.name)
    if old is not None and old.train is not recipe.train:
        raise ValueError(f"recipe {recipe.name!r} is registered twice")
    _REGISTRY[recipe.name] = recipe
    return recipe


def available() -> list[str]:
    """The recipes shipped in this package (module names under ``rewardjax.recipes``)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get(name: str) -> Recipe:
    """The recipe registered as ``name``, importing ``rewardjax.recipes.<name>`` (or the module
    ``name`` itself when it is a dotted path) on first use."""
    if name not in _REGISTRY:
        before = set(_REGISTRY)
        if "." in name:  # a recipe outside the package: the module registers it when imported
            importlib.import_module(name)
            new = set(_REGISTRY) - before
            if name not in _REGISTRY and len(new) == 1:
                _REGISTRY[name] = _REGISTRY[new.pop()]
        elif name in available():
            importlib.import_module(f"{__name__}.{name}")
        if name not in _REGISTRY:
            raise ValueError(f"unknown recipe {name!r}; choose from {available()} or name a "
                             "module that registers it (rewardjax.recipes.register)")
    return _REGISTRY[name]
