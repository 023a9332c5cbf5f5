"""The ``export`` mode: the recipe's exporter writes the trained workdir as an HF
sequence-classification checkpoint or in the native format (writers: :mod:`rewardjax.export`)."""

from __future__ import annotations

import jax

from rewardjax import recipes

OPTIONS = {"dir": "", "format": "auto", "stats": "eval", "drop_bias": False}


def options(config) -> dict:
    """``config.export`` if the recipe defines it, else the defaults: ``dir`` (default
    ``<workdir>/export``), ``format`` (``auto``: HF when an exact mapping exists, else native;
    ``hf``; ``native``), ``stats`` (``eval``: normalisation statistics over every response of
    ``data.eval``; ``none``) and ``drop_bias`` (HF export of a decoder head without its bias)."""
    opts = dict(OPTIONS)
    section = config.get("export") if hasattr(config, "get") else None
    if section is not None:
        opts.update({k: section[k] for k in section.keys() if k in opts})
    return opts


def run(config, workdir: str) -> dict:
    """Exports ``workdir``; returns ``{"format", "dir", "normalisation"}``."""
    exporter = recipes.get(config.recipe).exporter("export")
    result = exporter(config, workdir, options(config))
    if jax.process_index() == 0:
        print(f"exported ({result['format']}, {config.recipe}) -> {result['dir']}")
    return result

