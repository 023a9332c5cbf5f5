"""The ``score`` mode: one JSON line per input response with its reward."""

from __future__ import annotations

import os

import jax

from rewardjax import recipes
from rewardjax.data import encode_responses, expand, load_responses
from rewardjax.runtime import write_scores


def run(config, workdir: str) -> str:
    """Writes ``score.output`` (default ``<workdir>/scores.jsonl``): per response its ``reward``
    plus the scorer's named breakdowns (e.g. ArmoRM's ``objectives``, WARM's ``members``);
    returns the output path."""
    recipe = recipes.get(config.recipe)
    if recipe.load_scorer is None:
        recipe.scorer(config, workdir, "score")  # raises, naming what the workdir holds
    if not config.score.input:
        raise ValueError("score mode needs --config.score.input=<file of prompt/response records>")
    responses = load_responses(expand(config.score.input))
    scorer = recipe.scorer(config, workdir, "score")
    seqs, kept = encode_responses(responses, scorer.encoder)
    scored = scorer.score_encoded(seqs)
    columns = {key: [dict(zip(names, map(float, row))) for row in scored[key]]
               for key, names in scorer.labels.items() if key in scored}
    out = config.score.output or os.path.join(workdir, "scores.jsonl")
    if jax.process_index() == 0:
        write_scores(out, kept, scored["reward"], **columns)
        print(f"scored {len(kept)} responses -> {out} "
              f"(truncation: {scorer.encoder.stats.as_dict()})")
    return out
