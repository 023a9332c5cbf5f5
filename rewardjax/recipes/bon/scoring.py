"""Best-of-n scoring: a trained run's config adapted for scoring every candidate, and the
per-pool scores of every scorer the ``bon`` section names: a ``bt.py`` reward model, every member
of a ``warm.py`` workdir with their prediction ensembles and weight average, an untrained reward
model (smoke runs) and the length proxy.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from rewardjax.config import base_config
from rewardjax.data import Pair, Response, encode_responses
from rewardjax.ensembles.predictions import combine
from rewardjax.eval import Pool
from rewardjax.eval.bon_pools import length_scores, split_by_pool
from rewardjax.runtime import (
    Checkpointer,
    ModelScorer,
    average_members,
    build_run,
    init_members,
    member_params,
    read_run_config,
)

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- scoring


def scoring_config(run_config, bon_cfg):
    """The run's config adapted for scoring: ``bon.max_length``, ``bon.batch_size``, and the
    ``keep_end`` truncation (every candidate must get a score; ``drop`` would remove some)."""
    c = run_config.copy_and_resolve_references()
    c.unlock()
    if bon_cfg.max_length:
        c.model.max_length = int(bon_cfg.max_length)
    c.eval.batch_size = int(bon_cfg.batch_size)
    c.data.truncation = "keep_end"
    c.data.buckets = ()
    return c


def encode_pools(run, pools: list[Pool]):
    """Every candidate of every pool, tokenized by the encoder of ``run`` (a run or a scorer)."""
    responses = [Response(p.prompt, r) for p in pools for r in p.responses]
    before = run.encoder.stats.as_dict()
    seqs, kept = encode_responses(responses, run.encoder)
    if len(kept) != len(responses):
        raise RuntimeError(f"{len(responses) - len(kept)} candidates were dropped by truncation")
    after = run.encoder.stats.as_dict()
    return seqs, {k: after[k] - before[k] for k in after}


def rm_scores(cfg, workdir: str, pools: list[Pool], name: str = "RM"):
    """``{name: per-pool scores}`` from a reward-model workdir (``bt.py`` and the like), scored
    through its recipe: a model with no single-response reward (pairwise) is refused by name."""
    from rewardjax import recipes

    scorer = recipes.get(cfg.recipe).scorer(cfg, workdir, "bon")
    seqs, stats = encode_pools(scorer, pools)
    return {name: split_by_pool(scorer.rewards(seqs), pools)}, stats


def warm_scores(cfg, workdir: str, pools: list[Pool], combiners=("mean",), lam: float = 0.5):
    """Scores of every member of a ``warm.py`` workdir, their prediction ensembles
    (``ENS_<method>`` via :func:`rewardjax.ensembles.predictions.combine`) and the weight
    average ``WA``; the sequences are tokenized once for all of them."""
    run = build_run(cfg, workdir)
    template, _ = init_members(run, int(cfg.members.num), init=cfg.members.init)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), 0)
    state = ckpt.restore(template)
    ckpt.close()
    if state is None:
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train warm.py there first")
    seqs, stats = encode_pools(run, pools)

    def score(params):
        return ModelScorer(run, params, state.frozen).rewards(seqs)

    members = np.stack([score(member_params(state, i)) for i in range(int(cfg.members.num))])
    out = {f"member_{i}": split_by_pool(r, pools) for i, r in enumerate(members)}
    for method in combiners:
        out[f"ENS_{method}"] = split_by_pool(np.asarray(combine(members, method, lam=lam)), pools)
    out["WA"] = split_by_pool(score(average_members(state)), pools)
    return out, stats


def init_scores(model_path: str, bon_cfg, workdir: str, pools: list[Pool], seed: int = 0):
    """An untrained reward model on ``model_path`` (smoke runs: exercises the scoring path
    without a trained run). Random backbones get a word-level tokenizer fitted on the pools."""
    c = base_config()
    c.model.path, c.seed = model_path, int(seed)
    c = scoring_config(c, bon_cfg)
    texts = [Pair(p.prompt, r, r) for p in pools for r in p.responses]  # tokenizer fitting only
    run = build_run(c, os.path.join(workdir, "init_rm"), texts)
    seqs, stats = encode_pools(run, pools)
    return {"init_rm": split_by_pool(ModelScorer.of(run, run.state).rewards(seqs), pools)}, stats


def score_all(config, workdir: str, pools: list[Pool]):
    """``({scorer: per-pool scores}, {scorer group: {seconds, truncation}})`` for every scorer
    the ``bon`` section names."""
    b = config.bon
    scores, info = {}, {}
    if b.length_proxy:
        scores["length"] = length_scores(pools)
    jobs = []
    if b.rm_workdir:
        rm_config = read_run_config(b.rm_workdir, b.rm_config, "bon.rm_config")
        jobs.append(("RM", lambda: rm_scores(scoring_config(rm_config, b), b.rm_workdir, pools)))
    if b.warm_workdir:
        combiners = [m.strip() for m in str(b.combiners).split(",") if m.strip()]
        warm_config = read_run_config(b.warm_workdir, b.warm_config, "bon.warm_config")
        jobs.append(("WARM", lambda: warm_scores(scoring_config(warm_config, b), b.warm_workdir,
                                                 pools, combiners, float(b.uwo_lambda))))
    if b.init_model:
        jobs.append(("init_rm", lambda: init_scores(b.init_model, b, workdir, pools,
                                                    config.seed)))
    for group, job in jobs:
        t = time.time()
        got, stats = job()
        scores.update(got)
        info[group] = {"seconds": time.time() - t, "truncation": stats}
        log.info("scored %s in %.1fs (truncation %s)", group, info[group]["seconds"], stats)
    return scores, info
