"""The training story, top to bottom: data -> run -> resume -> steps -> eval -> summary."""

from __future__ import annotations

import logging
import os
import time

from rewardjax.data import (
    BatchPlan,
    PackedPairBatches,
    SharedPrefixBatches,
    collate_pairs,
    default_buckets,
    encode_pairs,
    load_sets,
    load_train_pairs,
    sharing_enabled,
)
from rewardjax.data.sources import margin_warning, summary_stats
from rewardjax.recipes import Recipe, register
from rewardjax.runtime import (
    Checkpointer,
    MetricsWriter,
    ModelScorer,
    Part,
    Trainer,
    batch_axis_size,
    build_run,
    checkpoint_scorer,
    export_checkpoint,
    finish_run,
    format_table,
    owns_workdir,
)

log = logging.getLogger(__name__)


@owns_workdir  # lock, run identity, config.json
def train(config, workdir: str) -> dict:
    """Trains a Bradley-Terry reward model; returns the final summary (also in summary.json)."""
    return fit_pairs(config, workdir)


def fit_pairs(config, workdir: str, *, num_outputs: int = 1, pair_loss=None,
              batch_extras=None, scorer_of=ModelScorer.of, set_metrics=None,
              postfix_fn=None) -> dict:
    """The pair-training story of bt, for recipes that change only what it computes (ODIN):

    Args:
      num_outputs: outputs of the reward head (``build_run``).
      pair_loss: the loss of the shared BT step in place of plain BT (``Run.train_step``).
      batch_extras: ``encoded pairs -> (host batch -> host batch)``: what the loss reads besides
        the model inputs (ODIN: response lengths).
      scorer_of: ``(run, state) -> Scorer`` that evaluates (its ``reward`` is what is scored).
      set_metrics: ``(scorer, pairs) -> {name: float}`` added to each eval set's report.
      postfix_fn: the progress bar's ``row -> {name: str}``.
    """
    t_start = time.time()
    tcfg = config.train
    loaded: dict = {}
    train_pairs = load_train_pairs(config.data, report=loaded)
    if warning := margin_warning(loaded, config.loss.use_data_margin):
        log.warning(warning)
    eval_sets = load_sets(config.data.eval, config.data)
    run = build_run(config, workdir, train_pairs, num_outputs=num_outputs)

    data = encode_pairs(train_pairs, run.encoder, same_prompt=shares_prefix(config, run))
    batch_at = make_batches(config, run, data)
    sharing = batch_at.sharing
    if batch_extras is not None:
        extend, plain = batch_extras(data), batch_at
        batch_at = lambda step: extend(plain(step))  # noqa: E731
    train_step = run.train_step(dropout=tcfg.dropout, pair_loss=pair_loss)

    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"), tcfg.checkpoint_every, tcfg.keep_checkpoints
    )
    writer = MetricsWriter(workdir, tensorboard=tcfg.tensorboard)
    total = int(tcfg.steps) * int(tcfg.grad_accum)

    def evaluate(state) -> dict:
        scorer = scorer_of(run, state)
        return {name: dict(scorer.evaluate(pairs, num_bins=config.eval.num_bins),
                           **(set_metrics(scorer, pairs) if set_metrics else {}))
                for name, pairs, _ in eval_sets}

    trainer = Trainer(
        train_step, lambda step: run.place(batch_at(step)), total_steps=total,
        parts=[Part(ckpt)], writer=writer, train=tcfg,
        eval_fn=evaluate if eval_sets else None, postfix_fn=postfix_fn,
    )
    state = trainer.fit(trainer.restore(run.state, tcfg.get("resume_step")))

    results = evaluate(state) if eval_sets else {}
    summary = {
        "steps": int(state.step),
        "wall_time_s": time.time() - t_start,
        "train_pairs": len(data),
        "data": {"train": loaded,
                 "eval": {name: summary_stats(stats) for name, _, stats in eval_sets}},
        "truncation": data.stats.as_dict(),
        "shared_prefix": sharing.as_dict() if sharing else "off",
        "train_real_tokens_per_s": trainer.tokens / max(trainer.train_time, 1e-9),
        "eval": results,
        "params": _param_counts(state),
    }
    return finish_run(writer, total, workdir, summary, format_table)


def shares_prefix(config, run) -> bool:
    """Whether this run lays pairs out as shared-prefix rows (``data.shared_prefix``)."""
    return sharing_enabled(config.data.get("shared_prefix", "off"),
                           packing=bool(config.data.get("packing", False)),
                           is_causal=bool(run.spec.is_causal), pooling=config.model.pooling)


def make_batches(config, run, data):
    """``step -> host batch``, a pure function of ``(seed, step)``: length-bucketed padded
    pairs, or with ``data.packing`` random batches of pairs packed padding-free into
    ``model.max_length`` rows of at most ``data.pack_segments`` sequences (``data.buckets`` and
    ``data.padding_side`` do not apply there); on causal backbones the two sequences of a pair
    share their prompt (``data.shared_prefix``, :mod:`rewardjax.data.shared_prefix`).
    The function's ``sharing`` attribute holds the shared-prefix counts (None: not shared)."""
    tcfg, pad_id = config.train, run.tokenizer.pad_token_id
    if config.data.get("packing", False):
        kind = SharedPrefixBatches if shares_prefix(config, run) else PackedPairBatches
        packed = kind(
            data, tcfg.batch_size, config.model.max_length, config.data.get("pack_segments", 8),
            pad_id, seed=config.seed, row_multiple=batch_axis_size(run.mesh, run.rules),
        )
        return _with_sharing(packed.at_step, getattr(packed, "stats", None))
    buckets = tuple(config.data.buckets) or default_buckets(config.model.max_length)
    plan = BatchPlan(data.lengths(), tcfg.batch_size, buckets, seed=config.seed, shuffle=True)
    left = config.data.padding_side == "left"

    def at_step(step: int):
        length, idx = plan.at_step(step)
        return collate_pairs(data, idx, length, tcfg.batch_size, pad_id, left)

    return _with_sharing(at_step, None)


def _with_sharing(fn, stats):
    def at_step(step: int):
        return fn(step)

    at_step.sharing = stats
    return at_step


def _param_counts(state) -> dict[str, int]:
    from rewardjax.runtime.state import count_params

    return {"trained": count_params(state.params), "frozen": count_params(state.frozen)}


register(Recipe("bt", train=train, load_scorer=checkpoint_scorer, export=export_checkpoint))
