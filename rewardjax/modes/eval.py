"""The ``eval`` mode: the trained workdir's scorer on every set of ``data.eval``."""

from __future__ import annotations

import os

import jax

from rewardjax import recipes
from rewardjax.data import load_sets
from rewardjax.runtime import format_table, to_python
from rewardjax.runtime.paths import write_json


def run(config, workdir: str) -> dict:
    """Writes ``<workdir>/eval.json`` (``{"steps", "eval": {set: metrics}}``) and prints the
    table; returns the summary."""
    recipe = recipes.get(config.recipe)
    if recipe.evaluate is not None:  # sets that are not preference pairs (prm: step labels)
        summary, table = recipe.evaluate(config, workdir)
    else:
        summary = _evaluate_pairs(recipe, config, workdir)
        table = format_table(summary)
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "eval.json"), to_python(summary))
        print(table)
    return summary


def _evaluate_pairs(recipe, config, workdir: str) -> dict:
    if recipe.load_scorer is None:
        recipe.scorer(config, workdir, "eval")  # raises, naming what the workdir holds
    eval_sets = load_sets(config.data.eval, config.data)
    if not eval_sets:
        raise ValueError("data.eval is empty: name at least one evaluation set")
    scorer = recipe.scorer(config, workdir, "eval")
    results = scorer.evaluate_sets(eval_sets, num_bins=int(config.eval.num_bins))
    return {"steps": getattr(scorer, "step", None), "eval": results}
