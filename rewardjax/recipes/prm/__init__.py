"""Process reward model (PRM): a label per step, read in one forward per solution.

The story: step-labelled solutions (``data.train``: ``sim:train`` from the step simulator,
TRL stepwise JSONL or PRM800K files) -> the run (``build_run``: the BT reward model's backbone
and linear head, unchanged) -> every solution encoded once with the token index of each step's
last token (:class:`rewardjax.data.steps.StepEncoder`) -> length-bucketed batches -> the PRM step
(per-step BCE, :mod:`rewardjax.recipes.prm.step`) on the shared :class:`~rewardjax.runtime.Trainer`
(checkpoints, resume, non-finite stop) -> process metrics on ``data.eval``
(:mod:`rewardjax.eval.process`) -> summary.

The workdir holds one reward model's checkpoint; :class:`~rewardjax.recipes.prm.scorer.PRMScorer`
reads it for eval (step sets: process metrics), score / serve / rewardbench (a response split at
``prm.step_separator``; reward = ``prm.aggregate`` of its step probabilities). Export has no
exact HF form: a sequence-classification checkpoint reads one pooled position, a PRM one per
step; serve the workdir instead.
"""

from __future__ import annotations

import logging
import os
import time

from rewardjax.data import (
    BatchPlan,
    Pair,
    collate_steps,
    data_root,
    default_buckets,
    encode_step_records,
    load_steps,
    split_specs,
)
from rewardjax.recipes import Recipe, register
from rewardjax.recipes.bt import _param_counts
from rewardjax.recipes.prm.scorer import PRMScorer, step_encoder
from rewardjax.recipes.prm.step import make_prm_step
from rewardjax.runtime import (
    Checkpointer,
    MetricsWriter,
    Part,
    Trainer,
    build_run,
    finish_run,
    load_trained,
    owns_workdir,
)

log = logging.getLogger(__name__)

SIM_SPLITS = ("train", "test")


def load_step_sets(specs: str, config) -> list[tuple[str, list]]:
    """``[(name, records)]`` for a comma-separated spec: ``sim:train`` / ``sim:test`` (the step
    simulator, sized by ``prm.sim``) or step-labelled files / directories (``data.format``:
    auto, trl_steps, prm800k; ``$REWARDJAX_DATA`` expands)."""
    out = []
    for spec in split_specs(specs):
        if spec.startswith("sim:"):
            split = spec[4:]
            if split not in SIM_SPLITS:
                raise ValueError(f"unknown step simulator split {split!r} in {spec!r}; choose "
                                 f"from {SIM_SPLITS}")
            from rewardjax.data.sim_steps import standard_step_splits

            s = config.prm.sim
            recs = standard_step_splits(int(s.seed), int(s.num_train), int(s.num_test),
                                        float(s.correct_rate))[split]
        else:
            path = os.path.expanduser(spec.replace("$REWARDJAX_DATA", data_root()))
            recs = load_steps(path, str(config.data.format), neutral=str(config.prm.neutral))
        out.append((spec, recs))
    return out


def text_pairs(records) -> list[Pair]:
    """The texts a fitted tokenizer learns from (``build_run`` fits on pairs' texts)."""
    return [Pair(r.prompt, "\n".join(r.steps), "") for r in records]


@owns_workdir  # lock, run identity, config.json
def train_prm(config, workdir: str) -> dict:
    """Trains a PRM; returns the summary (also in summary.json)."""
    t_start = time.time()
    tcfg = config.train
    train_sets = load_step_sets(config.data.train, config)
    records = [r for _, recs in train_sets for r in recs]
    if not records:
        raise ValueError("data.train is empty: name at least one step-labelled set")
    eval_sets = load_step_sets(config.data.eval, config)
    run = build_run(config, workdir, text_pairs(records))
    encoder = step_encoder(run)
    seqs, _ = encode_step_records(records, encoder)
    truncation = encoder.stats.as_dict()
    if not seqs:
        raise ValueError(f"every training solution was removed by truncation: {truncation}")
    buckets = tuple(config.data.buckets) or default_buckets(config.model.max_length)
    plan = BatchPlan([len(e.ids) for e in seqs], tcfg.batch_size, buckets, seed=config.seed)
    pad_id, left = run.tokenizer.pad_token_id, config.data.padding_side == "left"
    max_steps = encoder.max_steps

    def batch_at(step: int):
        length, idx = plan.at_step(step)
        return run.place(collate_steps(seqs, idx, length, tcfg.batch_size, max_steps, pad_id,
                                       left))

    train_step = make_prm_step(run.graphdef, run.tx, mesh=run.mesh, rules=run.rules,
                               state_shardings=run.shardings, dropout=tcfg.dropout)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), tcfg.checkpoint_every,
                        tcfg.keep_checkpoints)
    writer = MetricsWriter(workdir, tensorboard=tcfg.tensorboard)
    total = int(tcfg.steps) * int(tcfg.grad_accum)

    def evaluate(state) -> dict:
        return PRMScorer.of(run, state).evaluate_step_sets(eval_sets) if eval_sets else {}

    trainer = Trainer(
        train_step, batch_at, total_steps=total, parts=[Part(ckpt)], writer=writer, train=tcfg,
        eval_fn=evaluate if eval_sets else None,
        postfix_fn=lambda row: {"loss": f"{row['loss']:.3f}",
                                "step_acc": f"{row['step_accuracy']:.3f}"},
    )
    state = trainer.fit(trainer.restore(run.state, tcfg.get("resume_step")))

    results = evaluate(state)
    summary = {
        "steps": int(state.step),
        "wall_time_s": time.time() - t_start,
        "train_solutions": len(seqs),
        "train_steps_labelled": int(sum(len(e.step_ends) for e in seqs)),
        "aggregate": str(config.prm.aggregate),
        "truncation": truncation,
        "train_real_tokens_per_s": trainer.tokens / max(trainer.train_time, 1e-9),
        "eval": results,
        "params": _param_counts(state),
    }
    return finish_run(writer, total, workdir, summary, format_process_table)


def format_process_table(summary: dict) -> str:
    """A short human summary of a PRM run or evaluation: one row per step set."""
    lines = []
    if "wall_time_s" in summary:
        lines.append(f"steps {summary.get('steps')}  solutions {summary.get('train_solutions')}  "
                     f"wall {summary['wall_time_s']:.1f}s  real tok/s "
                     f"{summary.get('train_real_tokens_per_s', 0):.0f}")
    if summary.get("truncation"):
        lines.append("truncation: " + ", ".join(f"{k} {v}"
                                                for k, v in summary["truncation"].items()))
    lines.append(f"{'step set':<30}{'sols':>6}{'steps':>7}{'step acc':>10}{'step F1':>9}"
                 f"{'1st-err F1':>11}{'sol acc':>9}")
    how = summary.get("aggregate", "min")
    for name, r in (summary.get("eval") or {}).items():
        lines.append(f"{name[:29]:<30}{r['solutions']:>6}{r['steps']:>7}"
                     f"{r['step_accuracy']:>10.3f}{r['step_f1']:>9.3f}"
                     f"{r['first_error_f1']:>11.3f}{r.get(f'solution_accuracy_{how}', 0):>9.3f}")
    return "\n".join(lines)


def load_prm_scorer(config, workdir: str) -> PRMScorer:
    """The newest checkpoint of a PRM workdir as a scorer."""
    run = load_trained(config, workdir)
    scorer = PRMScorer.of(run, run.state)
    scorer.step = int(run.state.step)
    return scorer


def evaluate_prm(config, workdir: str) -> tuple[dict, str]:
    """The eval mode: process metrics of the workdir's PRM on every ``data.eval`` step set;
    ``(summary {"steps", "aggregate", "eval"}, printed table)``."""
    step_sets = load_step_sets(config.data.eval, config)
    if not step_sets:
        raise ValueError("data.eval is empty: name at least one step-labelled set")
    scorer = load_prm_scorer(config, workdir)
    summary = {"steps": scorer.step, "aggregate": scorer.how,
               "eval": scorer.evaluate_step_sets(step_sets)}
    return summary, format_process_table(summary)


register(Recipe(
    "prm", train=train_prm, load_scorer=load_prm_scorer, export=None, evaluate=evaluate_prm,
    no_scorer=("a PRM reads one label per step, which no HF sequence-classification "
               "checkpoint holds; eval / score / serve / rewardbench read the workdir directly"),
    reads=("prm",
           "!loss: the PRM's loss is per-step binary cross-entropy (no margin or centering)",
           "!data.packing: PRM batches are length-bucketed solutions, never packed",
           "!data.pack_segments: PRM batches are never packed",
           "!data.shared_prefix: one solution per row, nothing to share",
           "!data.sim: the step simulator is sized by prm.sim.*",
           "!data.holdout_fraction: step sets have no @train / @heldout split; name files",
           "!data.train_limit: not applied to step sets",
           "!data.eval_limit: not applied to step sets",
           "!data.odd_records: step readers stop at the first bad record, naming it"),
))
