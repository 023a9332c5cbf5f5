"""The DMoERM story (Quan): a router over task categories, capability experts inside each.

Outer layer: a :class:`~rewardjax.heads.router.Router` classifies the prompt (pooled over the
prompt tokens by the frozen pretrained backbone) into a task category, top-1, and only that
category's inner model scores the responses. Inner layer, per category:

1. a task-specific RM: full fine-tune from the pretrained backbone on the category's pairs;
2. one LoRA expert per capability point (``dmoerm.lora_*``: q/v, rank 32, α 32, dropout 0.05)
   on the frozen phase-1 model, each with its own head initialised from the phase-1 head and
   trained on pairs labelled for that capability; the K experts train as one vmapped program
   (:mod:`rewardjax.runtime.members`), member k on capability k's pairs;
3. backbone and LoRAs frozen, the K experts' last-token embeddings (one vmapped
   :func:`~rewardjax.lora.score_experts` call) concatenated and aggregated by
   :class:`~rewardjax.heads.moe.MoEAggregator` (PReLU MLP) with the BT loss.

The experts' own heads on their embeddings are the per-capability scores (interpretability
output, ``capability_scores.jsonl``). The variant without the router trains one inner model on
all the data with the union of capability points; its phase 1 is the single-RM baseline.
Baselines on the same data: the single RM (full fine-tune, ``train.steps``) and an ensemble of
independently seeded LoRA RMs on it (adapter seed and data order; optionally a fresh head each),
combined by mean, min (WCO) and UWO. Every LoRA model (expert or member) gets the same steps.

Capability labels come from :mod:`~rewardjax.recipes.dmoerm.labels`
(``dmoerm.capability_labels``): on the simulator, each response's attribute ratings; otherwise a
judge chosen by ``dmoerm.judge`` (HTTP, a local LM, or a trained reward model's scorer) asked in
both orders. The data and feature preparation (labels, subsets,
prompt and expert features) lives in :mod:`rewardjax.recipes.dmoerm.data`, the evaluation in
:mod:`rewardjax.recipes.dmoerm.report`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import zlib

import jax
import numpy as np

from rewardjax.data import default_buckets, encode_pairs, load_sets, load_train_pairs
from rewardjax.heads.moe import concat_experts, fit_aggregator
from rewardjax.heads.router import fit_router
from rewardjax.recipes.dmoerm.data import (
    SubsetPlans,
    capabilities_of,
    expert_outputs,
    oriented_dataset,
    router_inputs,
)
from rewardjax.recipes.dmoerm.export import write_export
from rewardjax.recipes.dmoerm.labels import make_labeler
from rewardjax.runtime import (
    Checkpointer,
    MetricsWriter,
    Part,
    Trainer,
    build_run,
    collate_members,
    init_members,
    make_member_step,
    make_optimizer,
    member_params,
    owns_workdir,
    place_members,
    to_python,
    write_json,
)
from rewardjax.runtime.state import path_str

log = logging.getLogger(__name__)

VARIANTS = ("router", "no_router")


# --------------------------------------------------------------------------- model plumbing


def stage_config(config, *, lora: bool):
    """The run config of a full fine-tune (``train.*``) or of a LoRA stage (``dmoerm.lora_*``)."""
    c = config.copy_and_resolve_references()
    d = c.dmoerm
    c.lora.enabled = lora
    if lora:
        c.lora.rank, c.lora.alpha = int(d.lora_rank), float(d.lora_alpha)
        c.lora.dropout, c.lora.targets = float(d.lora_dropout), d.lora_targets
        c.train.steps, c.train.batch_size = int(d.lora_steps), int(d.lora_batch_size)
        c.train.lr, c.train.warmup_steps = float(d.lora_lr), int(d.lora_warmup_steps)
    return c


def with_steps(run, steps: int):
    """``run`` with ``train.steps = steps`` and an optimizer whose schedule spans them (fresh
    optimizer state; same structure, so the run's shardings still apply)."""
    if steps == int(run.config.train.steps):
        return run
    config = run.config.copy_and_resolve_references()
    config.train.steps = int(steps)
    tx = make_optimizer(config.train)
    state = run.state._replace(opt_state=jax.jit(tx.init, out_shardings=run.shardings.opt_state)(
        run.state.params))
    return dataclasses.replace(run, config=config, tx=tx, state=state)


class Clock:
    """Wall and process-CPU seconds per stage (``laps``), for the run's summary."""

    def __init__(self):
        self.laps, self._t = {}, (time.time(), time.process_time())

    def lap(self, name: str) -> None:
        now = (time.time(), time.process_time())
        self.laps[name] = {"wall": now[0] - self._t[0], "cpu": now[1] - self._t[1]}
        self._t = now
        log.info("%s done: %.0f s wall, %.0f s CPU", name, *self.laps[name].values())


def reseed_lora(params, seeds):
    """Stacked member params with member i's LoRA ``A`` matrices redrawn from ``seeds[i]``, with
    :class:`~rewardjax.lora.LoRALinear`'s init (uniform in ±1/sqrt(fan_in)); ``B`` stays 0."""

    def f(path, x):
        name = path_str(path).removesuffix("/value")
        if not name.endswith("lora_a"):
            return x
        bound = 1.0 / np.sqrt(x.shape[-2])
        keys = [jax.random.fold_in(jax.random.key(int(s)), zlib.crc32(name.encode()) & 0x7FFFFFFF)
                for s in seeds]
        new = jax.numpy.stack([jax.random.uniform(k, x.shape[1:], x.dtype, -bound, bound)
                               for k in keys])  # [M, ...]
        return jax.device_put(new, x.sharding)

    return jax.tree_util.tree_map_with_path(f, params)


def transplant(source, state):
    """``state`` with every non-LoRA leaf (backbone and head, in ``params`` or ``frozen``)
    replaced by the same-path leaf of ``source`` (an ``nnx.State``, e.g. a fine-tuned full
    model's params); LoRA adapters keep their initialisation."""
    src = {path_str(p).removesuffix("/value"): x
           for p, x in jax.tree_util.tree_leaves_with_path(source)}
    missing = []

    def f(path, x):
        name = path_str(path).removesuffix("/value")
        if name.endswith(("lora_a", "lora_b")):
            return x
        if name not in src:
            missing.append(name)
            return x
        return jax.device_put(np.asarray(src[name]).astype(x.dtype), x.sharding)

    params = jax.tree_util.tree_map_with_path(f, state.params)
    frozen = jax.tree_util.tree_map_with_path(f, state.frozen)
    if missing:
        raise ValueError(f"transplant: source has no {missing[:4]}")
    return state._replace(params=params, frozen=frozen)


def train_members(name, run, state, hypers, data, subsets, seeds, config, workdir, writer,
                  dropout: bool):
    """Trains stacked members, member ``i`` on ``subsets[i]`` of ``data``, for the run's
    ``train.steps``; checkpoints under ``checkpoints/<name>`` and resumes from there."""
    tcfg = run.config.train
    step = run.compiled(f"dmoerm/member_step/{dropout}",
                        lambda: make_member_step(run, dropout=dropout))
    buckets = tuple(config.data.buckets) or default_buckets(config.model.max_length)
    plans = SubsetPlans(data.lengths(), subsets, tcfg.batch_size, buckets, seeds)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints", name), config.train.checkpoint_every,
                        config.train.keep_checkpoints)
    pad_id, left = run.tokenizer.pad_token_id, config.data.padding_side == "left"
    trainer = Trainer(
        lambda state, batch: step(state, batch, hypers),
        lambda s: place_members(run, collate_members(data, plans, s, pad_id, left)),
        total_steps=int(tcfg.steps), parts=[Part(ckpt)], writer=writer, train=config.train,
        name=f"train/{name}", reduce="last",
        nonfinite_message=lambda s, m: f"{name}: non-finite loss at step {s}; stopped.",
        nonfinite_kw={"lr": tcfg.lr, "resume_key": None,
                      "lr_key": "dmoerm.lora_lr" if run.config.lora.enabled else "train.lr"})
    return trainer.fit(trainer.restore(state))  # each stage resumes its own newest intact step


@dataclasses.dataclass
class Inner:
    """One inner model: K capability experts (stacked LoRA members on a frozen base) and the
    aggregator over their embeddings."""

    caps: list
    experts: object  # member TrainState, params [K, ...]
    aggregator: object = None

    def score(self, run, seqs, config):
        """``(reward [N], capability scores [K, N])`` of encoded sequences."""
        r, z = expert_outputs(run, self.experts.params, self.experts.frozen, seqs, config)
        agg = np.asarray(self.aggregator(concat_experts(jax.numpy.asarray(z))))
        return agg, r


# --------------------------------------------------------------------------- the story


@owns_workdir  # lock, run identity, config.json
def train_dmoerm(config, workdir: str) -> dict:
    """Trains DMoERM (with and / or without the router) and the baselines; writes
    ``dmoerm.json``, ``capability_scores.jsonl`` and prints the per-category tables."""
    from rewardjax.recipes.dmoerm import report as report

    t_start, clock = time.time(), Clock()
    d, seed = config.dmoerm, int(config.seed)
    variants = [v.strip() for v in str(d.variants).split(",") if v.strip()]
    if not variants or set(variants) - set(VARIANTS):
        raise ValueError(f"dmoerm.variants={d.variants!r}: choose from {VARIANTS}")
    labeler = make_labeler(config, workdir)  # ratings, or a judge chosen by dmoerm.judge
    keep = {c.strip() for c in str(d.categories).split(",") if c.strip()}
    train_pairs = [p for p in load_train_pairs(config.data) if not keep or p.category in keep]
    eval_sets = [(name, [p for p in pairs if not keep or p.category in keep], stats)
                 for name, pairs, stats in load_sets(config.data.eval, config.data)]
    if not train_pairs:
        raise ValueError(f"no training pair in dmoerm.categories={d.categories!r}")
    run_full = build_run(stage_config(config, lora=False), workdir, train_pairs)
    run_lora = build_run(stage_config(config, lora=True), workdir, train_pairs)
    data = encode_pairs(train_pairs, run_full.encoder)
    cats = np.asarray([p.category for p in data.pairs], dtype=object)
    if not all(cats):
        raise ValueError("DMoERM's router needs Pair.category on every training pair")
    categories = sorted(set(cats.tolist()))
    excluded = tuple(x.strip() for x in str(d.exclude_capabilities).split(",") if x.strip())
    named = [c.strip() for c in str(d.capabilities).split(",") if c.strip()]
    all_caps = [c for c in named if c not in excluded] or capabilities_of(data.pairs, excluded)
    labels = {c: labeler(data.pairs, c) for c in all_caps}
    writer = MetricsWriter(workdir, tensorboard=config.train.tensorboard)
    full_dropout = bool(config.train.dropout) and bool(
        getattr(run_full.spec.config, "hidden_dropout", 0.0))
    lora_dropout = bool(config.train.dropout) and float(d.lora_dropout) > 0
    everything = np.arange(len(data))
    common = dict(config=config, workdir=workdir, writer=writer)

    # Single RM: the baseline, the no-router variant's phase 1 and the ensemble's base.
    clock.lap("setup")
    state, hypers = init_members(run_full, 1)
    single = train_members("single", run_full, state, hypers, data, [everything], [seed * 1000],
                           dropout=full_dropout, **common)
    single_params = member_params(single, 0)
    clock.lap("single")

    # Ensemble: M LoRA RMs, each with its own adapter seed and data order (and, with
    # baselines.ensemble_head="seed", its own freshly drawn head).
    b, m = config.baselines, int(config.baselines.ensemble_size)
    if b.ensemble_base not in ("single", "backbone") or b.ensemble_head not in ("base", "seed"):
        raise ValueError(f"baselines.ensemble_base={b.ensemble_base!r} (single | backbone), "
                         f"ensemble_head={b.ensemble_head!r} (base | seed)")
    base = transplant(single_params, run_lora.state) if b.ensemble_base == "single" \
        else run_lora.state
    state, hypers = init_members(dataclasses.replace(run_lora, state=base), m,
                                 init="seed" if b.ensemble_head == "seed" else "shared",
                                 seeds=[seed + 100 + i for i in range(m)])
    state = state._replace(params=reseed_lora(state.params, [seed + 100 + i for i in range(m)]))
    ensemble = train_members("ensemble", run_lora, state, hypers, data, [everything] * m,
                             [seed * 1000 + 100 + i for i in range(m)], dropout=lora_dropout,
                             **common)
    clock.lap("ensemble")

    def inner(name, base_params, caps, mask):
        """Phases 2 and 3 on a phase-1 model for the pairs selected by ``mask``."""
        caps = [c for c in caps if np.any(mask & (labels[c] != 0))]
        state = transplant(base_params, run_lora.state)
        experts, hypers = init_members(dataclasses.replace(run_lora, state=state), len(caps))
        cap_data, subsets = oriented_dataset(data, labels, caps, mask)
        experts = train_members(f"phase2_{name}", run_lora, experts, hypers, cap_data, subsets,
                                [seed * 1000 + 200 + i for i in range(len(caps))],
                                dropout=lora_dropout, **common)
        idx = np.flatnonzero(mask)
        if d.phase3_pairs and len(idx) > d.phase3_pairs:
            idx = np.sort(np.random.default_rng(seed).choice(idx, d.phase3_pairs, replace=False))
        model = Inner(caps, experts)
        seqs = [data.chosen[i] for i in idx] + [data.rejected[i] for i in idx]
        _, z = expert_outputs(run_lora, experts.params, experts.frozen, seqs, config)
        z = np.asarray(concat_experts(jax.numpy.asarray(z)))  # [2n, K·D]
        model.aggregator = fit_aggregator(
            z[:len(idx)], z[len(idx):], len(caps), hidden=int(d.phase3_hidden),
            sigmoid=bool(d.sigmoid), prelu_parameters=int(d.prelu_parameters),
            steps=int(d.phase3_steps), lr=float(d.phase3_lr), l2=float(d.phase3_l2),
            val_fraction=float(d.phase3_val_fraction), seed=seed)
        return model

    models = {}
    if "router" in variants:
        cat_ids = np.asarray([categories.index(c) for c in cats])
        feats = router_inputs(run_full, data, config)
        router = fit_router(feats, cat_ids, len(categories), hidden=int(d.router_hidden),
                            steps=int(d.router_steps), lr=float(d.router_lr),
                            l2=float(d.router_l2), seed=seed)
        clock.lap("router")
        if d.phase1_init == "single":  # the task RMs continue from the single RM
            p1_run = dataclasses.replace(run_full, state=run_full.state._replace(
                params=single_params))
        elif d.phase1_init == "backbone":  # DESIGN: from the pretrained backbone
            p1_run = run_full
        else:
            raise ValueError(f"dmoerm.phase1_init={d.phase1_init!r}: choose backbone or single")
        # Default phase-1 length: the single RM's pairs split over the categories, so each
        # task RM makes as many passes over its data as the single RM over all of it.
        p1_steps = int(d.phase1_steps) or -(-int(config.train.steps) // len(categories))
        p1_run = with_steps(p1_run, p1_steps)
        state, hypers = init_members(p1_run, len(categories))
        phase1 = train_members("phase1", p1_run, state, hypers, data,
                               [np.flatnonzero(cats == c) for c in categories],
                               [seed * 1000 + 1 + i for i in range(len(categories))],
                               dropout=full_dropout, **common)
        clock.lap("phase1")
        models["router"] = (router, {c: inner(c, member_params(phase1, i), all_caps, cats == c)
                                     for i, c in enumerate(categories)})
        clock.lap("router_phase2_3")
    if "no_router" in variants:
        models["no_router"] = inner("all", single_params, all_caps, np.ones(len(data), bool))
        clock.lap("no_router_phase2_3")

    summary = report.evaluate(run_full, run_lora, eval_sets, config, categories=categories,
                              single=single, ensemble=ensemble, models=models,
                              workdir=workdir, labeler=labeler)
    clock.lap("evaluate")
    if d.router_features == "backbone" or "router" not in models:
        write_export(workdir, run_full, run_lora, models, categories, config)  # the scorer's
        clock.lap("export")
    else:
        log.warning("dmoerm.router_features=%s: no native export (eval / score modes need "
                    "router_features=backbone)", d.router_features)
    summary.update(
        train_pairs=len(data), categories=categories, capabilities=all_caps,
        capability_pairs={c: int(np.sum(labels[c] != 0)) for c in all_caps},
        budget=report.budget(config, categories, models, m), seconds=clock.laps,
        **({"judge_labels": {c: n.as_dict() for c, n in labeler.counts.items()}}
           if hasattr(labeler, "counts") else {}),
        wall_time_s=time.time() - t_start)
    writer.write(int(config.train.steps), "dmoerm", summary)
    writer.close()
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "dmoerm.json"), to_python(summary))
        print(report.format_tables(summary))
        print(f"wall {summary['wall_time_s']:.1f}s; details in {workdir}/dmoerm.json")
    return summary

