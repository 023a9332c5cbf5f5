"""ODIN vs the plain BT reward model on HH-RLHF harmless, same data and budget (issue 17).

    REWARDJAX_DATA=/work/shared/data nice -n 15 python benchmarks/odin_vs_bt.py \
        --steps=30 --limit=400 --prompts=40 --candidates=8 --root=/tmp/odin_vs_bt
    python benchmarks/odin_vs_bt.py --table_only --root=/tmp/odin_vs_bt

Both arms: ``configs/{bt,odin}.py:data=hh,model=minilm`` (the real MiniLM-L6 weights, the fixed
80/20 split of HH-RLHF harmless as in ``quality_vs_trl.py``, 16 pairs a step, today's defaults),
``--steps`` optimizer steps (116 = one epoch), seed ``--seed``. Each arm trains in its own
subprocess, the arms side by side (skipped when its workdir holds a finished run), and is then
scored through its recipe's scorer (``recipes.get(name).scorer``: bt's reward, ODIN's ``r_Q``):

* accuracy on HH held-out (462 pairs) and PandaLM (842 pairs, ties dropped), each capped at a
  fixed random subset of ``--limit`` pairs (0: all);
* Spearman correlation of the reward with the response length (MiniLM tokens of the response as
  encoded) over every response of those pairs;
* best-of-n on the AlpacaEval pools (``--prompts`` prompts x ``--candidates`` candidates, fixed
  random subsets): the mean gold preference (GPT-4-Turbo judge vs GPT-4, 1 to 2) of the pick at
  each n, for BT, ODIN, the length-only picker (longest response), random and the oracle; and
  the mean length (characters) of the pick at the largest n.

Each arm writes ``<root>/<arm>/bench.json``; the table goes to stdout and ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

ARMS = ("bt", "odin")
SETS = {"HH held-out": "hh-rlhf/harmless-base-test.jsonl.gz@heldout",
        "PandaLM": "pandalm/testset-v1.json"}
POOLS = "alpacaeval-bon/pools.jsonl.gz"


def arm_config(arm: str, args):
    from rewardjax.config import load_config_file

    config = load_config_file(os.path.join(ROOT, "configs", f"{arm}.py"), "data=hh,model=minilm")
    config.data.eval = ""  # scored below, the same way for both arms
    config.seed = int(args.seed)
    config.train.steps = int(args.steps)
    config.train.progress = False
    config.train.tensorboard = False
    config.train.checkpoint_every = int(args.steps)
    config.train.log_every = 5
    return config


def run_arm(arm: str, args) -> dict:
    """Trains (unless done) and scores one arm; returns and writes its results."""
    from scipy.stats import spearmanr

    from rewardjax import recipes
    from rewardjax.data import encode_pairs, load_sets
    from rewardjax.data.sources import data_root
    from rewardjax.eval import load_alpaca_pools
    from rewardjax.main import run

    config = arm_config(arm, args)
    workdir = os.path.join(args.root, arm)
    t0 = time.time()
    if not os.path.isfile(os.path.join(workdir, "summary.json")):
        run(config, workdir)
    train_s = time.time() - t0
    if args.eval_max_length:  # scoring only: shorter rows, the same cut for both arms
        config.model.max_length = int(args.eval_max_length)
    scorer = recipes.get(arm).scorer(config, workdir, "eval")
    out: dict = {"arm": arm, "steps": int(args.steps), "seed": int(args.seed),
                 "limit": int(args.limit), "eval_max_length": int(args.eval_max_length),
                 "prompts": int(args.prompts), "candidates": int(args.candidates),
                 "train_wall_s": train_s, "sets": {}}
    root = data_root()
    for name, spec in SETS.items():
        ((_, pairs, _),) = load_sets(os.path.join(root, spec), config.data,
                                     limit=int(args.limit))
        data = encode_pairs(pairs, scorer.encoder)
        scored = scorer.score_encoded(data.chosen + data.rejected)
        r = np.asarray(scored["reward"], np.float64)
        n = len(data)
        lengths = np.asarray([len(e.ids) - e.response_start
                              for e in data.chosen + data.rejected], np.float64)
        res = {"n": n, "accuracy": float(np.mean(r[:n] > r[n:])),
               "spearman_length": float(spearmanr(r, lengths)[0]),
               "chosen_longer": float(np.mean(lengths[:n] > lengths[n:]))}
        if "length_reward" in scored:
            res["spearman_length_head"] = float(spearmanr(scored["length_reward"], lengths)[0])
        out["sets"][name] = res
    pools = load_alpaca_pools(os.path.join(root, POOLS), num_prompts=int(args.prompts),
                              num_candidates=int(args.candidates), seed=0)
    items = [(p.prompt, resp) for p in pools for resp in p.responses]
    t1 = time.time()
    flat = scorer.score_items(items)
    out["bon_score_s"] = time.time() - t1
    proxy = np.split(np.asarray(flat, np.float64),
                     np.cumsum([len(p.responses) for p in pools])[:-1])
    out["bon"] = bon_summary(proxy, pools)
    chars = np.asarray([len(r) for _, r in items], np.float64)
    out["bon"]["spearman_length"] = float(spearmanr(flat, chars)[0])
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "bench.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def ns_for(size: int) -> list[int]:
    return [n for n in (1, 2, 4, 8, 16, 32) if n <= size]


def bon_summary(proxy, pools) -> dict:
    """Mean gold of the pick at each n, its SE, and the pick's mean length at the largest n."""
    from rewardjax.eval.bon_curves import bon_curves

    gold = [np.asarray(p.gold, np.float64) for p in pools]
    ns = ns_for(min(len(g) for g in gold))
    curve = bon_curves(proxy, gold, ns)
    chars = [np.asarray([len(r) for r in p.responses], np.float64) for p in pools]
    best = bon_curves(proxy, chars, [ns[-1]])["gold"][0]  # E[length of the pick] at max n
    return {"ns": ns, "gold": curve["gold"].tolist(), "gold_sem": curve["gold_sem"].tolist(),
            "pick_chars": float(best)}


def reference(args) -> dict:
    """Length-only picker, random and oracle on the same pools."""
    from rewardjax.data.sources import data_root
    from rewardjax.eval import load_alpaca_pools
    from rewardjax.eval.bon_pools import length_scores

    pools = load_alpaca_pools(os.path.join(data_root(), POOLS), num_prompts=int(args.prompts),
                              num_candidates=int(args.candidates), seed=0)
    gold = [np.asarray(p.gold, np.float64) for p in pools]
    return {"length": bon_summary(length_scores(pools), pools),
            "random": bon_summary([np.zeros(len(g)) for g in gold], pools),
            "oracle": bon_summary(gold, pools)}


def table(results: dict, ref: dict) -> str:
    arms = [a for a in ARMS if a in results]
    lines = ["| metric | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for name in SETS:
        n = results[arms[0]]["sets"][name]["n"]
        for key, label in (("accuracy", "accuracy"), ("spearman_length", "Spearman(r, length)"),
                           ("spearman_length_head", "Spearman(r_L, length)")):
            vals = [results[a]["sets"][name].get(key) for a in arms]
            if all(v is None for v in vals):
                continue
            cells = ["" if v is None else f"{v:+.3f}" if "Spearman" in label else f"{v:.3f}"
                     for v in vals]
            lines.append(f"| {name} ({n}) {label} | " + " | ".join(cells) + " |")
    bon_arms = arms + ["length", "random", "oracle"]
    bon = {**{a: results[a]["bon"] for a in arms}, **ref}
    ns = bon[arms[0]]["ns"]
    lines += ["", "| best-of-n gold (AlpacaEval judge preference) | " + " | ".join(bon_arms)
              + " |", "|---|" + "---|" * len(bon_arms)]
    for i, n in enumerate(ns):
        lines.append(f"| n = {n} | " + " | ".join(
            f"{bon[a]['gold'][i]:.3f} ± {bon[a]['gold_sem'][i]:.3f}" for a in bon_arms) + " |")
    lines.append(f"| mean chars of the pick, n = {ns[-1]} | "
                 + " | ".join(f"{bon[a]['pick_chars']:.0f}" for a in bon_arms) + " |")
    lines.append("| Spearman(r, chars) over the pools | " + " | ".join(
        f"{bon[a]['spearman_length']:+.3f}" if "spearman_length" in bon[a] else ""
        for a in bon_arms) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="/tmp/odin_vs_bt")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--arm", default="", help="internal: run one arm in this process")
    ap.add_argument("--steps", type=int, default=116)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompts", type=int, default=60)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--limit", type=int, default=0, help="pairs per eval set (0: all)")
    ap.add_argument("--eval_max_length", type=int, default=0,
                    help="tokens per scored sequence (0: model.max_length as trained)")
    ap.add_argument("--out", default="")
    ap.add_argument("--table_only", action="store_true")
    args = ap.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.arm, args)))
        return
    results, procs = {}, []
    arms = args.arms.split(",")
    for arm in arms:
        if not os.path.isfile(os.path.join(args.root, arm, "bench.json")) and not args.table_only:
            cmd = [sys.executable, __file__, f"--arm={arm}", f"--root={args.root}",
                   f"--steps={args.steps}", f"--seed={args.seed}", f"--prompts={args.prompts}",
                   f"--candidates={args.candidates}", f"--limit={args.limit}",
                   f"--eval_max_length={args.eval_max_length}"]
            procs.append(subprocess.Popen(cmd))
    if any(p.wait() for p in procs):
        sys.exit("an arm failed")
    for arm in arms:
        path = os.path.join(args.root, arm, "bench.json")
        if os.path.isfile(path):
            with open(path) as f:
                results[arm] = json.load(f)
    text = table(results, reference(args))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
