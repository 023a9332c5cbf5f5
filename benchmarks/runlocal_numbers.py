"""Every recipe's ``runlocal`` numbers, to prove a refactor changes no result (issue 13).

    python benchmarks/runlocal_numbers.py collect --out=/tmp/before      # runs all 8 recipes
    ... refactor ...
    python benchmarks/runlocal_numbers.py collect --out=/tmp/after
    python benchmarks/runlocal_numbers.py compare /tmp/before /tmp/after [--rtol=1e-5]

``collect`` runs ``configs/<recipe>.py:runlocal`` for each recipe into ``OUT/<recipe>`` (reusing a
finished workdir) and writes ``OUT/numbers.json``: every number of each recipe's result files
(``summary.json``, ``warm.json``, ``dmoerm.json``, ``bon.json`` and the last ``metrics.jsonl`` row
of each split), flattened to ``path/to/key -> value``, timing fields left out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ("bt", "warm", "more", "armorm", "dmoerm", "bon", "ppo", "elastic_reset")
RESULT_FILES = ("summary.json", "warm.json", "dmoerm.json", "bon.json", "eval.json")
# Wall-clock and throughput fields differ run to run by nature.
TIMING = ("wall", "time", "tokens_per_s", "seconds", "_s")


def _flatten(x, prefix, out):
    if isinstance(x, dict):
        for k, v in x.items():
            _flatten(v, f"{prefix}/{k}" if prefix else str(k), out)
    elif isinstance(x, list) and all(isinstance(v, (int, float)) for v in x) and len(x) <= 64:
        for i, v in enumerate(x):
            _flatten(v, f"{prefix}[{i}]", out)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        leaf = prefix.rsplit("/", 1)[-1]
        if not any(t in leaf for t in TIMING) and "/seconds/" not in f"/{prefix}/":
            out[prefix] = float(x)


def numbers(workdir: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in RESULT_FILES:
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            with open(path) as f:
                _flatten(json.load(f), name, out)
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        last = {}
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                last[row.get("split", "")] = row
        for split, row in last.items():
            _flatten(row, f"metrics/{split}", out)
    return out


def collect(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    table = {}
    for recipe in RECIPES:
        wd = os.path.join(out, recipe)
        if not os.path.exists(os.path.join(wd, "config.json")):
            cmd = [sys.executable, "-m", "rewardjax.main", f"--config=configs/{recipe}.py:runlocal",
                   f"--workdir={wd}", "--config.train.progress=False"]
            with open(os.path.join(out, f"{recipe}.log"), "w") as log:
                subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
        table[recipe] = numbers(wd)
        print(f"{recipe}: {len(table[recipe])} numbers")
    with open(os.path.join(out, "numbers.json"), "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)


def compare(a: str, b: str, rtol: float) -> int:
    with open(os.path.join(a, "numbers.json")) as f:
        before = json.load(f)
    with open(os.path.join(b, "numbers.json")) as f:
        after = json.load(f)
    bad = 0
    print(f"| recipe | numbers | equal (rtol {rtol:g}) | differ | only before | only after |")
    print("|---|---|---|---|---|---|")
    for recipe in RECIPES:
        x, y = before.get(recipe, {}), after.get(recipe, {})
        common = sorted(set(x) & set(y))
        differ = [k for k in common
                  if not math.isclose(x[k], y[k], rel_tol=rtol, abs_tol=rtol)]
        only_x, only_y = sorted(set(x) - set(y)), sorted(set(y) - set(x))
        bad += len(differ)
        print(f"| {recipe} | {len(common)} | {len(common) - len(differ)} | {len(differ)} | "
              f"{len(only_x)} | {len(only_y)} |")
        for k in differ[:10]:
            print(f"    {recipe} {k}: {x[k]!r} -> {y[k]!r}")
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--out", required=True)
    d = sub.add_parser("compare")
    d.add_argument("before")
    d.add_argument("after")
    d.add_argument("--rtol", type=float, default=1e-5)
    args = ap.parse_args()
    if args.cmd == "collect":
        collect(args.out)
    else:
        sys.exit(compare(args.before, args.after, args.rtol))


if __name__ == "__main__":
    main()
