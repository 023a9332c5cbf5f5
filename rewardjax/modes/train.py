"""The ``train`` mode: the recipe's trainer on ``workdir``."""

from __future__ import annotations

from rewardjax import recipes


def run(config, workdir: str):
    return recipes.get(config.recipe).train(config, workdir)
