"""Reports over scored pairs and responses: metrics of a set, the summary table, score files.

The rewards come from a :class:`rewardjax.runtime.scorer.Scorer`."""

from __future__ import annotations

import numpy as np

from rewardjax.eval.metrics import pair_metrics
from rewardjax.runtime.paths import write_jsonl


def gold_agreement(pairs, r_chosen, r_rejected) -> float | None:
    """Accuracy against the gold reward (simulator pairs), ties in gold excluded."""
    golds = [(p.meta.get("gold_chosen"), p.meta.get("gold_rejected")) for p in pairs]
    if not golds or any(g is None or b is None for g, b in golds):
        return None
    g = np.asarray(golds, np.float64)
    sign = np.sign(g[:, 0] - g[:, 1])
    keep = sign != 0
    if not keep.any():
        return None
    pred = np.sign(np.asarray(r_chosen) - np.asarray(r_rejected))
    return float(np.mean(pred[keep] == sign[keep]))


def pair_report(rc, rr, data, *, num_bins: int = 10) -> dict:
    """Accuracy, calibration, per-source / per-category groups and gold agreement of pair
    rewards ``rc`` (chosen) and ``rr`` (rejected) over the encoded pairs ``data``."""
    kept = data.pairs
    sources = [p.source for p in kept]
    res = pair_metrics(
        rc, rr, sources if len(set(sources)) > 1 else None, num_bins=num_bins
    )
    cats = [p.category for p in kept]
    if any(cats) and len(set(cats)) > 1:
        res["by_category"] = pair_metrics(rc, rr, cats, num_bins=num_bins)["by_group"]
    gold = gold_agreement(kept, rc, rr)
    if gold is not None:
        res["gold_accuracy"] = gold
    res["truncation"] = data.stats.as_dict()
    return res


def format_table(summary: dict) -> str:
    """A short human summary: one row per eval set (and per group within it)."""
    lines = [
        f"steps {summary.get('steps')}  pairs {summary.get('train_pairs')}  "
        f"wall {summary.get('wall_time_s', 0):.1f}s  "
        f"real tok/s {summary.get('train_real_tokens_per_s', 0):.0f}"
    ]
    trunc = summary.get("truncation")
    if trunc:
        lines.append("truncation: " + ", ".join(f"{k} {v}" for k, v in trunc.items()))
    lines.append(
        f"{'eval set':<34}{'n':>6}{'acc':>8}{'gold':>8}{'ece':>8}{'r mean':>9}{'r std':>8}"
    )
    for name, res in (summary.get("eval") or {}).items():
        rows = [(name, res)] + [(f"  {g}", r) for g, r in (res.get("by_group") or {}).items()]
        for label, r in rows:
            nan = float("nan")
            gold = r.get("gold_accuracy")
            gold_s = "" if gold is None else f"{gold:.3f}"
            lines.append(
                f"{label[:33]:<34}{r.get('n', 0):>6}{r.get('accuracy', nan):>8.3f}{gold_s:>8}"
                f"{r.get('ece', nan):>8.3f}{r.get('reward_mean', nan):>9.3f}"
                f"{r.get('reward_std', nan):>8.3f}"
            )
    return "\n".join(lines)


def write_scores(path: str, responses, rewards, **columns) -> None:
    """One JSON line per response with its ``reward``; ``columns`` adds per-response fields
    (e.g. ``objectives``: one dict per response); written whole, by process 0."""
    write_jsonl(path, ({
        "prompt": resp.prompt,
        "response": resp.response,
        "reward": float(r),
        **{k: v[i] for k, v in columns.items()},
        "source": resp.source,
        **{k: v for k, v in resp.meta.items() if isinstance(v, (str, int, float, bool))},
    } for i, (resp, r) in enumerate(zip(responses, rewards))))
