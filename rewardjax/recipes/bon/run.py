"""Best-of-n: the ``bon`` recipe.

The recipe (``run_bon``) scores real pools (AlpacaEval: 54 models' answers per prompt, GPT-4-Turbo
preference as gold) with trained reward models: a ``bt.py`` workdir, and / or every member of a
``warm.py`` workdir, their prediction ensembles (mean / median / min / UWO / mean-std) and the
weight average (WA); plus a response-length proxy, random choice and the oracle.

Pools come from :mod:`rewardjax.eval.bon_pools` (AlpacaEval) or are sampled here from a policy;
the scorers live in :mod:`rewardjax.recipes.bon.scoring`, the unbiased best-of-n estimator and its
curves in :mod:`rewardjax.eval.bon_curves`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np

from rewardjax.data import build_wordlevel_tokenizer, expand
from rewardjax.eval import Pool, kl_bon, load_alpaca_pools, plots, read_prompts, reference_curves
from rewardjax.eval.bon_curves import bon_curves, default_ns
from rewardjax.eval.bon_pools import length_scores
from rewardjax.models import registry
from rewardjax.recipes.bon.scoring import rm_scores, score_all, scoring_config
from rewardjax.rl import sampling
from rewardjax.runtime import read_run_config, to_python, write_json
from rewardjax.runtime.workdir import (
    is_main_process,
    isfile,
    makedirs,
    read_jsonl,
    write_jsonl,
    write_npz,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- pools


def sample_pools(config, workdir: str) -> list[Pool]:
    """Pools sampled from ``bon.policy`` (N = ``bon.num_samples`` per prompt), cached in
    ``workdir/samples.jsonl``; gold = a held-out reward model (``bon.gold_workdir``, a bt.py
    run) or, without one, the response length (smoke runs only)."""
    b = config.bon
    prompts = read_prompts(b.prompts, int(b.num_prompts), int(b.seed))
    cache = os.path.join(workdir, "samples.jsonl")
    texts = None
    if isfile(cache):
        rows = read_jsonl(cache)
        if [r["prompt"] for r in rows] == prompts and all(
                len(r["samples"]) == int(b.num_samples) for r in rows):
            texts = [r["samples"] for r in rows]
    if texts is None:
        model, tok = policy_and_tokenizer(b.policy, prompts, int(b.seed))
        cfg = sampling.SamplingConfig(
            max_new_tokens=int(b.max_new_tokens), temperature=float(b.temperature),
            top_k=int(b.top_k), top_p=float(b.top_p), eos_ids=sampling.default_eos_ids(tok),
            pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0)
        out = sampling.sample_texts(model, tok, prompts, cfg, num_samples=int(b.num_samples),
                                    batch_size=int(b.sample_batch_size), seed=int(b.seed))
        texts = [[s["text"] for s in samples] for samples in out]
        write_jsonl(cache, ({"prompt": prompt, "samples": samples}
                            for prompt, samples in zip(prompts, texts)))
    pools = [Pool([{"role": "user", "content": q}], list(samples), np.zeros(len(samples)),
                  [f"sample_{i}" for i in range(len(samples))])
             for q, samples in zip(prompts, texts)]
    if b.gold_workdir:
        cfg = scoring_config(read_run_config(b.gold_workdir, b.gold_config, "bon.gold_config"), b)
        gold = rm_scores(cfg, b.gold_workdir, pools, "gold")[0]["gold"]
    else:
        log.warning("bon.gold_workdir is empty: gold = response length (smoke runs only)")
        gold = length_scores(pools)
    for pool, g in zip(pools, gold):
        pool.gold = g
    return pools


def policy_and_tokenizer(path: str, prompts: list[str], seed: int):
    """The policy backbone and its tokenizer; a random backbone gets a word-level tokenizer
    fitted on the prompts (smoke runs)."""
    spec = registry.resolve(path)
    tok = spec.tokenizer
    if tok is None:
        tok = build_wordlevel_tokenizer(prompts, vocab_size=spec.config.vocab_size)
        config = dataclasses.replace(spec.config, vocab_size=len(tok))
        spec = dataclasses.replace(spec, config=config)
    model, _ = registry.load_backbone(spec, seed=seed)
    return model, tok


def load_pools(config, workdir: str) -> list[Pool]:
    """The pools ``bon.source`` names: ``alpacaeval`` (real answers, the judge's gold) or
    ``sampled`` (sampled from ``bon.policy``, a held-out reward model's gold)."""
    b = config.bon
    if b.source == "alpacaeval":
        return load_alpaca_pools(expand(b.pools), num_prompts=int(b.num_prompts),
                                 num_candidates=int(b.num_candidates), seed=int(b.seed))
    if b.source == "sampled":
        return sample_pools(config, workdir)
    raise ValueError(f"unknown bon.source {b.source!r}; choose alpacaeval or sampled")


# ----------------------------------------------------------------------------- the recipe


def run_bon(config, workdir: str) -> dict:
    """Recipe ``bon``: score pools, compute best-of-n curves, write ``bon.json`` and PNG plots."""
    t0 = time.time()
    makedirs(workdir)
    b = config.bon
    pools = load_pools(config, workdir)
    gold = [p.gold for p in pools]
    sizes = sorted({len(p.responses) for p in pools})
    ns = [int(v) for v in str(b.ns).split(",") if v.strip()] or default_ns(sizes[0])
    ns = [n for n in ns if n <= sizes[0]]
    scores, timings = score_all(config, workdir, pools)
    if not scores:
        raise ValueError("no scorer: set bon.length_proxy, bon.rm_workdir, bon.warm_workdir or "
                         "bon.init_model")
    curves = {name: bon_curves(s, gold, ns) for name, s in scores.items()}
    for name, c in curves.items():  # proxy gain in units of the scorer's own spread
        spread = float(np.std(np.concatenate(scores[name]))) or 1.0
        c["proxy_gain_std"] = (c["proxy"] - c["proxy"][0]) / spread
    refs = reference_curves(gold, ns)
    summary = {"source": b.source, "pools": len(pools), "pool_sizes": sizes, "n": ns,
               "kl_bon": kl_bon(ns), "scorers": curves, **refs,
               "scoring": timings, "wall_time_s": time.time() - t0}
    write_npz(os.path.join(workdir, "bon_scores.npz"), compressed=True,
              gold=np.concatenate(gold), sizes=[len(g) for g in gold],
              **{k: np.concatenate(v) for k, v in scores.items()})
    paths = plots.plot_bon(summary, workdir) if is_main_process() else []
    summary["plots"] = paths
    write_json(os.path.join(workdir, "bon.json"), to_python(summary))
    print(format_bon_table(summary))
    print(f"wall {summary['wall_time_s']:.1f}s; {workdir}/bon.json; plots: {', '.join(paths)}")
    return summary


def format_bon_table(summary: dict, key: str = "gold") -> str:
    """Mean ``key`` score of the pick for every n: one column per scorer, random and oracle."""
    cols = {**summary["scorers"], "random": summary["random"], "oracle": summary["oracle"]}
    widths = {c: max(8, len(c) + 2) for c in cols}
    lines = [f"best-of-n, mean {key} score of the pick ({summary['pools']} prompts)",
             f"{'n':>4}{'KL':>7}" + "".join(f"{c:>{widths[c]}}" for c in cols)]
    for k, n in enumerate(summary["n"]):
        cells = "".join(f"{float(v[key][k]):>{widths[c]}.4f}" for c, v in cols.items())
        lines.append(f"{n:>4}{float(summary['kl_bon'][k]):>7.3f}{cells}")
    return "\n".join(lines)
