"""The pairwise training story: data -> run -> both orders -> steps -> symmetrised eval."""

from __future__ import annotations

import logging
import os
import time

import jax

from rewardjax.data import (
    BatchPlan,
    PairwiseEncoder,
    collate_orders,
    default_buckets,
    encode_orders,
    load_sets,
    load_train_pairs,
)
from rewardjax.data.sources import summary_stats
from rewardjax.recipes.pairwise.step import make_pairwise_step
from rewardjax.runtime import (
    Checkpointer,
    MetricsWriter,
    ModelScorer,
    PairwiseScorer,
    Part,
    Trainer,
    build_run,
    count_params,
    finish_run,
    format_table,
    load_trained,
    owns_workdir,
)

log = logging.getLogger(__name__)


def pairwise_encoder(run) -> PairwiseEncoder:
    """The ``[prompt, A, B]`` rendering of this run (``data.encoding``: auto, pair or plain;
    ``chat`` / ``single`` render plain; ``data.truncation``; ``model.max_length``)."""
    c = run.config
    return PairwiseEncoder(run.tokenizer, int(c.model.max_length), c.data.truncation,
                           c.data.encoding)


def scorer_of(run, state=None, encoder: PairwiseEncoder | None = None) -> PairwiseScorer:
    """The run's model (``state``, default ``run.state``) as a :class:`PairwiseScorer`."""
    base = ModelScorer.of(run, state)
    base.step = int(jax.device_get((run.state if state is None else state).step))
    return PairwiseScorer(base, encoder or pairwise_encoder(run))


def load_scorer(config, workdir: str) -> PairwiseScorer:
    """The workdir's newest checkpoint as a :class:`PairwiseScorer` (eval / rewardbench)."""
    return scorer_of(load_trained(config, workdir))


@owns_workdir  # lock, run identity, config.json
def train(config, workdir: str) -> dict:
    """Trains a pairwise preference model; returns the summary (also in summary.json)."""
    t_start = time.time()
    tcfg = config.train
    loaded: dict = {}
    train_pairs = load_train_pairs(config.data, report=loaded)
    eval_sets = load_sets(config.data.eval, config.data)
    run = build_run(config, workdir, train_pairs)
    encoder = pairwise_encoder(run)
    data = encode_orders(train_pairs, encoder)
    if not len(data):
        raise ValueError("every training pair was dropped by the truncation policy "
                         "(data.truncation=drop); raise model.max_length or use keep_end")
    batch_at = make_batches(config, run, data)
    train_step = make_pairwise_step(run, dropout=bool(tcfg.dropout))

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), tcfg.checkpoint_every,
                        tcfg.keep_checkpoints)
    writer = MetricsWriter(workdir, tensorboard=tcfg.tensorboard)
    total = int(tcfg.steps) * int(tcfg.grad_accum)
    num_bins = int(config.eval.num_bins)
    trainer = Trainer(
        train_step, lambda step: run.place(batch_at(step)), total_steps=total,
        parts=[Part(ckpt)], writer=writer, train=tcfg,
        eval_fn=(lambda state: scorer_of(run, state, encoder).evaluate_sets(
            eval_sets, num_bins=num_bins)) if eval_sets else None,
    )
    state = trainer.fit(trainer.restore(run.state, tcfg.get("resume_step")))

    train_trunc = data.stats.as_dict()
    results = scorer_of(run, state, encoder).evaluate_sets(
        eval_sets, num_bins=num_bins) if eval_sets else {}
    summary = {
        "steps": int(state.step),
        "wall_time_s": time.time() - t_start,
        "train_pairs": len(data),
        "data": {"train": loaded,
                 "eval": {name: summary_stats(stats) for name, _, stats in eval_sets}},
        "encoding": encoder.spec(),
        "truncation": train_trunc,  # of the training triples (both orders of every pair)
        "train_real_tokens_per_s": trainer.tokens / max(trainer.train_time, 1e-9),
        "eval": results,
        "params": {"trained": count_params(state.params), "frozen": count_params(state.frozen)},
    }
    return finish_run(writer, total, workdir, summary, format_table)


def make_batches(config, run, data):
    """``step -> host batch`` of ``train.batch_size`` pairs in both orders (``[B, 2, L]``,
    length-bucketed), a pure function of ``(seed, step)`` so a resumed run sees the same data."""
    tcfg = config.train
    buckets = tuple(config.data.buckets) or default_buckets(config.model.max_length)
    plan = BatchPlan(data.lengths(), tcfg.batch_size, buckets, seed=config.seed, shuffle=True)
    pad_id, left = run.tokenizer.pad_token_id, config.data.padding_side == "left"

    def at_step(step: int):
        length, idx = plan.at_step(step)
        return collate_orders(data, idx, length, tcfg.batch_size, pad_id, left)

    return at_step
