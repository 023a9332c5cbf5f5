"""DMoERM evaluation: every model on every eval set, per category, plus capability scores.

Methods in the table: ``single`` (one full fine-tune), ``ens_mean`` / ``ens_wco`` (min) /
``ens_uwo`` (mean - λ var) over the seeded LoRA ensemble, ``dmoerm`` (router, top-1),
``dmoerm_oracle`` (the same inner models reached with the true category: what a perfect router
would give) and ``dmoerm_no_router`` (one inner model over all categories). Accuracy is
against the pairs' labels; gold accuracy against the simulator's gold reward (ties excluded).
"""

from __future__ import annotations

import os

import numpy as np

from rewardjax.data import encode_pairs
from rewardjax.ensembles.predictions import combine
from rewardjax.eval import pairwise_accuracy
from rewardjax.heads.router import route
from rewardjax.recipes.dmoerm.data import (
    expert_outputs,
    router_inputs,
)
from rewardjax.runtime import gold_agreement
from rewardjax.runtime.workdir import write_jsonl, write_npz

METHODS = ("single", "ens_mean", "ens_wco", "ens_uwo", "dmoerm", "dmoerm_oracle",
           "dmoerm_no_router")
_ENSEMBLE = (("ens_mean", "mean"), ("ens_wco", "min"), ("ens_uwo", "uwo"))


def _metrics(rc, rr, pairs) -> dict:
    gold = gold_agreement(pairs, rc, rr) if pairs else None
    return {"n": len(pairs), "accuracy": pairwise_accuracy(rc, rr) if len(pairs) else np.nan,
            "gold_accuracy": np.nan if gold is None else gold}


def method_metrics(rewards, pairs, true_cats, categories) -> dict:
    """Overall and per-category accuracy / gold accuracy of ``rewards [2N]`` (chosen first)."""
    n = len(pairs)
    rc, rr = rewards[:n], rewards[n:]
    out = _metrics(rc, rr, pairs)
    out["by_category"] = {}
    for c in categories:
        sel = np.flatnonzero(true_cats == c)
        out["by_category"][c] = _metrics(rc[sel], rr[sel], [pairs[i] for i in sel])
    return out


def capability_accuracy(cap_rewards, caps, pairs, labeler) -> dict[str, float]:
    """Per capability: how often expert k's own score orders the pair like its capability
    label (pairs whose label is a tie or missing are skipped)."""
    n = len(pairs)
    out = {}
    for k, cap in enumerate(caps):
        y = labeler(pairs, cap)
        keep = y != 0
        if n and keep.any():
            diff = cap_rewards[k, :n] - cap_rewards[k, n:]
            out[cap] = float(np.mean(np.sign(diff[keep]) == y[keep]))
    return out


def _score_routed(router_model, run_full, run_lora, enc, seqs, true, categories, config):
    """Rewards under routed and oracle (true-category) inner models, and the routed per-
    capability scores (``{i: (category, caps, [K, 2] scores)}``)."""
    router, inners = router_model
    n = len(enc)
    feats = router_inputs(run_full, enc, config)
    routed = np.asarray(categories, dtype=object)[route(router, feats)]
    r_routed, r_oracle = np.zeros(2 * n, np.float32), np.zeros(2 * n, np.float32)
    cap_rows, oracle_caps = {}, {}
    for c, model in inners.items():
        need = np.flatnonzero((routed == c) | (true == c))
        if not len(need):
            continue
        agg, caps_r = model.score(run_lora, [seqs[i] for i in need] +
                                  [seqs[n + i] for i in need], config)
        k = len(need)
        both = np.concatenate([need, need + n])
        for sel, dest in ((routed[need] == c, r_routed), (true[need] == c, r_oracle)):
            s2 = np.concatenate([sel, sel])
            dest[both[s2]] = agg[s2]
        for j, i in enumerate(need):
            scores = caps_r[:, [j, k + j]]  # [K, 2] chosen, rejected
            if routed[i] == c:
                cap_rows[int(i)] = (c, model.caps, scores)
        sel = np.flatnonzero(true[need] == c)
        oracle_caps[c] = (model.caps, caps_r[:, np.concatenate([sel, sel + k])])
    return routed, r_routed, r_oracle, cap_rows, oracle_caps


def evaluate(run_full, run_lora, eval_sets, config, *, categories, single, ensemble, models,
             workdir, labeler) -> dict:
    """Scores every eval set with every trained model; writes ``capability_scores.jsonl``.
    ``labeler`` gives the reference capability labels (the one training used)."""
    lam = float(config.baselines.uwo_lambda)
    results, router_acc, cap_acc, rows, saved = {}, {}, {}, [], {}
    for name, pairs, _ in eval_sets:
        enc = encode_pairs(pairs, run_full.encoder)
        n, seqs = len(enc), enc.chosen + enc.rejected
        true = np.asarray([p.category for p in enc.pairs], dtype=object)
        rewards = {"single": expert_outputs(run_full, single.params, single.frozen, seqs,
                                            config)[0][0]}
        r_ens = expert_outputs(run_lora, ensemble.params, ensemble.frozen, seqs, config)[0]
        for method, how in _ENSEMBLE:
            rewards[method] = np.asarray(combine(r_ens, how, lam=lam))
        cap_rows, nr_caps = {}, None
        if "router" in models:
            routed, rewards["dmoerm"], rewards["dmoerm_oracle"], cap_rows, oracle_caps = \
                _score_routed(models["router"], run_full, run_lora, enc, seqs, true, categories,
                              config)
            router_acc[name] = {"all": float(np.mean(routed == true)), **{
                c: float(np.mean(routed[true == c] == c)) for c in categories if (true == c).any()}}
            cap_acc.setdefault("router", {})[name] = {
                c: capability_accuracy(scores, caps, [p for p, t in zip(enc.pairs, true)
                                                      if t == c], labeler)
                for c, (caps, scores) in oracle_caps.items()}
        if "no_router" in models:
            inner = models["no_router"]
            rewards["dmoerm_no_router"], nr_caps = inner.score(run_lora, seqs, config)
            cap_acc.setdefault("no_router", {})[name] = {
                "all": capability_accuracy(nr_caps, inner.caps, enc.pairs, labeler)}
        results[name] = {m: method_metrics(rewards[m], enc.pairs, true, categories)
                         for m in METHODS if m in rewards}
        saved.update({f"{name}/{m}": np.asarray(r, np.float32) for m, r in rewards.items()})
        saved[f"{name}/gold"] = np.asarray([p.meta.get("gold_chosen", np.nan) for p in enc.pairs]
                                           + [p.meta.get("gold_rejected", np.nan)
                                              for p in enc.pairs], np.float32)
        for i, p in enumerate(enc.pairs):
            row = {"set": name, "pair_id": p.meta.get("pair_id", i), "category": p.category}
            for m in ("dmoerm", "dmoerm_no_router"):
                if m in rewards:
                    row[m] = [float(rewards[m][i]), float(rewards[m][n + i])]
            if i in cap_rows:
                c, caps, scores = cap_rows[i]
                row["routed"] = c
                row["capabilities"] = {cap: scores[k].tolist() for k, cap in enumerate(caps)}
            if nr_caps is not None:
                row["capabilities_no_router"] = {
                    cap: [float(nr_caps[k, i]), float(nr_caps[k, n + i])]
                    for k, cap in enumerate(models["no_router"].caps)}
            rows.append(row)
    # Per-pair rewards ([2N]: chosen then rejected) for paired comparisons between methods.
    write_npz(os.path.join(workdir, "pair_rewards.npz"), **saved)
    write_jsonl(os.path.join(workdir, "capability_scores.jsonl"), rows)
    return {"results": results, "router_accuracy": router_acc, "capability_accuracy": cap_acc}


def budget(config, categories, models, ensemble_size) -> dict:
    """Optimizer steps x batch rows each component trained on (pairs seen)."""
    d, steps, bs = config.dmoerm, int(config.train.steps), int(config.train.batch_size)
    lora = int(d.lora_steps) * int(d.lora_batch_size)
    on_single = config.baselines.ensemble_base == "single"
    out = {"single": steps * bs, "ensemble": steps * bs * on_single + ensemble_size * lora}
    if "router" in models:
        k = sum(len(m.caps) for m in models["router"][1].values())
        p1 = int(d.phase1_steps) or -(-steps // len(categories))
        out["dmoerm"] = len(categories) * p1 * bs + k * lora
    if "no_router" in models:
        out["dmoerm_no_router"] = steps * bs + len(models["no_router"].caps) * lora
    return out


def format_tables(summary: dict) -> str:
    """One table per eval set and metric: rows are categories (and all), columns methods."""
    lines = []
    for name, res in summary["results"].items():
        methods = [m for m in METHODS if m in res]
        cats = list(next(iter(res.values()))["by_category"])
        for key in ("accuracy", "gold_accuracy"):
            lines.append(f"{name} {key}:")
            lines.append(f"{'category':<14}{'n':>5}" + "".join(f"{m:>17}" for m in methods))
            for c in cats + ["all"]:
                cells = [res[m] if c == "all" else res[m]["by_category"][c] for m in methods]
                lines.append(f"{c:<14}{cells[0]['n']:>5}" +
                             "".join(f"{x[key]:>17.3f}" for x in cells))
        acc = summary.get("router_accuracy", {}).get(name)
        if acc:
            lines.append("router accuracy: " + ", ".join(f"{c} {v:.3f}" for c, v in acc.items()))
    for variant, sets in summary.get("capability_accuracy", {}).items():
        for name, by_cat in sets.items():
            for c, accs in by_cat.items():
                lines.append(f"capability experts ({variant}, {name}, {c}): " +
                             ", ".join(f"{k} {v:.2f}" for k, v in accs.items()))
    lines.append("pairs seen in training: " +
                 ", ".join(f"{k} {v}" for k, v in summary.get("budget", {}).items()))
    return "\n".join(lines)
