"""The ``eval`` and ``score`` modes: load a trained run from its workdir and use it."""

from __future__ import annotations

import json
import os

import jax

from rewardjax.data.sources import expand, load_sets
from rewardjax.data.tokenize import encode_responses
from rewardjax.eval.runner import (
    evaluate_native_pairs,
    evaluate_sets,
    format_table,
    score_encoded,
    write_scores,
)
from rewardjax.train.checkpoint import Checkpointer
from rewardjax.train.logging import to_python
from rewardjax.train.setup import build_run

# What eval / score / export read from a workdir, by recipe: one reward model's train checkpoint,
# or (ArmoRM) the saved heads over a frozen backbone, used through the native export.
CHECKPOINT_RECIPES = ("bt", "more")
NATIVE_RECIPES = ("armorm",)
_ELSEWHERE = {
    "warm": "its members, WA and ENS are evaluated at the end of training (warm.json)",
    "dmoerm": "its experts, router and aggregators are evaluated at the end of training "
              "(dmoerm.json)",
    "bon": "it holds best-of-n curves, not a reward model (bon.json)",
    "ppo": "it holds a policy, not a reward model (summary.json)",
}


def check_recipe(config, mode: str) -> None:
    """A clear error when ``mode`` cannot read this recipe's workdir."""
    if config.recipe in CHECKPOINT_RECIPES + NATIVE_RECIPES:
        return
    why = _ELSEWHERE.get(config.recipe, "its workdir is not one reward model")
    raise ValueError(f"--config.mode={mode} reads one reward model's workdir (recipes "
                     f"{', '.join(CHECKPOINT_RECIPES + NATIVE_RECIPES)}); a {config.recipe!r} "
                     f"workdir does not hold one: {why}")


def load_native_workdir(config, workdir: str):
    """The :class:`~rewardjax.export.NativeModel` of an ArmoRM workdir, exported
    to ``<workdir>/export`` on first use (``--config.mode=export`` writes the same)."""
    from rewardjax.eval.export_mode import export_armorm
    from rewardjax.export import MANIFEST, load_native

    out = os.path.join(workdir, "export")
    head = os.path.join(workdir, "armorm", "gate", "model.npz")
    manifest = os.path.join(out, MANIFEST)
    if not os.path.isfile(manifest) or (
            os.path.isfile(head) and os.path.getmtime(head) > os.path.getmtime(manifest)):
        export_armorm(config, workdir, out)
    return load_native(out)


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
    check_recipe(config, "eval")
    eval_sets = load_sets(config.data.eval, config.data)
    if not eval_sets:
        raise ValueError("data.eval is empty: name at least one evaluation set")
    if config.recipe in NATIVE_RECIPES:
        model = load_native_workdir(config, workdir)
        results = {name: evaluate_native_pairs(model, pairs, config)
                   for name, pairs, _ in eval_sets}
        summary = {"steps": None, "eval": results}
    else:
        run = load_trained(config, workdir)
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

    check_recipe(config, "score")
    if not config.score.input:
        raise ValueError("score mode needs --config.score.input=<file of prompt/response records>")
    responses = load_responses(expand(config.score.input))
    extra = {}
    if config.recipe in NATIVE_RECIPES:
        model = load_native_workdir(config, workdir)
        encoder = model.encoder
        seqs, kept = encode_responses(responses, encoder)
        scored = model.score_encoded(seqs, int(config.eval.batch_size))
        rewards = scored["reward"]
        names = model.manifest["objectives"]
        extra = {"objectives": [dict(zip(names, map(float, row)))
                                for row in scored["objectives"]]}
    else:
        run = load_trained(config, workdir)
        encoder = run.encoder
        seqs, kept = encode_responses(responses, encoder)
        rewards = score_encoded(run, run.state, seqs, config)
    out = config.score.output or os.path.join(workdir, "scores.jsonl")
    if jax.process_index() == 0:
        write_scores(out, kept, rewards, **extra)
        print(f"scored {len(kept)} responses -> {out} (truncation: {encoder.stats.as_dict()})")
    return out
