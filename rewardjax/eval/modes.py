"""The ``eval`` and ``score`` modes: load a trained run from its workdir and use it."""

from __future__ import annotations

import json
import os

import jax

from rewardjax.data.sources import expand, load_sets
from rewardjax.data.tokenize import encode_responses
from rewardjax.eval.runner import evaluate_sets, format_table, score_encoded, write_scores
from rewardjax.train.checkpoint import Checkpointer
from rewardjax.train.logging import to_python
from rewardjax.train.setup import build_run


def load_trained(config, workdir: str):
    """Builds the run and restores the newest checkpoint of ``workdir`` (error if none)."""
    run = build_run(config, workdir)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), 0)
    state = ckpt.restore(run.state)
    if state is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train into --workdir first")
    ckpt.close()
    run.state = state
    return run


def evaluate(config, workdir: str) -> dict:
    run = load_trained(config, workdir)
    eval_sets = load_sets(config.data.eval, config.data)
    if not eval_sets:
        raise ValueError("data.eval is empty: name at least one evaluation set")
    results = evaluate_sets(run, run.state, eval_sets, config)
    summary = {"steps": int(run.state.step), "eval": results}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "eval.json"), "w") as f:
            json.dump(to_python(summary), f, indent=2)
        print(format_table(summary))
    return summary


def score(config, workdir: str) -> str:
    """Writes one JSON line per input response with its ``reward``; returns the output path."""
    from rewardjax.data.formats import load_responses

    if not config.score.input:
        raise ValueError("score mode needs --config.score.input=<file of prompt/response records>")
    run = load_trained(config, workdir)
    responses = load_responses(expand(config.score.input))
    seqs, kept = encode_responses(responses, run.encoder)
    rewards = score_encoded(run, run.state, seqs, config)
    out = config.score.output or os.path.join(workdir, "scores.jsonl")
    if jax.process_index() == 0:
        write_scores(out, kept, rewards)
        print(f"scored {len(kept)} responses -> {out} (truncation: {run.encoder.stats.as_dict()})")
    return out
