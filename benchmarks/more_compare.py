"""MORE vs MultiTask (plain mixing) on the same config: per-source accuracy and ECE.

Trains ``configs/more.py`` twice in this process, ``more.mode=more`` and ``more.mode=multitask``
(identical sampler, steps, optimizer and seed; only λ differs), into ``<workdir>/<mode>``,
then prints one table row per evaluation set and per source within it
and writes everything to ``<workdir>/compare.json``.

    python benchmarks/more_compare.py --config=configs/more.py --workdir=runs/more_sim
    python benchmarks/more_compare.py --config=configs/more.py:data=hh,model=minilm \
        --workdir=runs/more_hh

Config overrides work as in ``rewardjax.main`` (``--config.train.steps=100``).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "more.py"),
                                          "MORE recipe config.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", os.path.join(ROOT, "runs", "more_compare"),
                               "Parent directory of the two runs.")
_OUT = flags.DEFINE_string("out", "", "Where the JSON goes (default <workdir>/compare.json).")
_MODES = flags.DEFINE_list(
    "modes", ["more", "multitask"],
    "Modes to run, in order: more | multitask | more-raw (more with more.normalize=none: λ from "
    "the raw momentum, the non-degenerate variant for two sources).")

SHORT = {"more": "MORE", "multitask": "MT", "more-raw": "MORE-raw"}


def rows_of(eval_results: dict) -> dict[str, dict]:
    """``{label: metrics}``: every eval set, then each of its sources (by_group) indented."""
    out = {}
    for name, res in eval_results.items():
        out[name] = res
        for group, r in (res.get("by_group") or {}).items():
            out[f"{name} / {group}"] = r
    return out


def table(results: dict[str, dict]) -> str:
    modes = list(results)
    labels = list(rows_of(results[modes[0]]["eval"]))
    head = f"{'eval set / source':<48}{'n':>5}"
    for key in ("acc", "ece", "gold"):
        head += "".join(f"{key + ' ' + SHORT.get(m, m):>14}" for m in modes)
    lines = [head]
    per_mode = {m: rows_of(results[m]["eval"]) for m in modes}
    for label in labels:
        first = per_mode[modes[0]][label]
        line = f"{label[:47]:<48}{first.get('n', 0):>5}"
        for key in ("accuracy", "ece", "gold_accuracy"):
            for m in modes:
                v = per_mode[m][label].get(key)
                line += f"{'' if v is None else f'{v:.3f}':>14}"
        lines.append(line)
    for m in modes:
        lam = results[m]["lambda_mean"]
        lines.append(f"mean λ ({m}): " + ", ".join(f"{s} {v:.3f}" for s, v in lam.items())
                     + f"   cpu {results[m]['cpu_s']:.0f}s wall {results[m]['wall_s']:.0f}s")
    return "\n".join(lines)


def main(argv):
    del argv
    from rewardjax.recipes.more import train_more  # not rewardjax.main: it defines --config too
    from rewardjax.runtime.logging import to_python

    base = _CONFIG.value
    results = {}
    for mode in _MODES.value:
        config = base.copy_and_resolve_references()
        config.more.mode = "more" if mode == "more-raw" else mode
        if mode == "more-raw":
            config.more.normalize = "none"
        config.train.progress = False
        wd = os.path.join(_WORKDIR.value, mode)
        cpu, wall = time.process_time(), time.time()
        summary = train_more(config, wd)
        summary["cpu_s"] = time.process_time() - cpu  # all threads of this process
        summary["wall_s"] = time.time() - wall
        results[mode] = summary
    text = table(results)
    print(text)
    out = _OUT.value or os.path.join(_WORKDIR.value, "compare.json")
    with open(out, "w") as f:
        json.dump(to_python({"config": json.loads(base.to_json_best_effort()),
                             "results": results, "table": text}), f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
