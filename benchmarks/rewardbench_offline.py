"""RewardBench-protocol scores of a trained run on the offline records (or the hub sets).

    python benchmarks/rewardbench_offline.py --config=configs/bt.py:runlocal --workdir=runs/x
    python benchmarks/rewardbench_offline.py --config=... --workdir=... --hub   # needs network

Offline, v1 covers the five LLMBar subsets of "Chat Hard" (built from $REWARDJAX_DATA/llmbar,
the same rows RewardBench uses) plus LLMBar's MT-bench human pairs as an extra subset, and a
best-of-4 set from the AlpacaEval pools stands in for v2's schema; the overall scores need the
full benchmarks and are reported as missing.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe config of the run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run's workdir.")
_HUB = flags.DEFINE_bool("hub", False, "Load allenai/reward-bench(-2) with `datasets`.")
_V2_LIMIT = flags.DEFINE_integer("v2_limit", 200, "Offline best-of-4 records (0: all).")
_OUT = flags.DEFINE_string("out", None, "Where the JSON report goes (<workdir>/rewardbench.json).")


def _table(name: str, report: dict) -> str:
    lines = [f"== {name} =="]
    for key in ("subsets", "sections"):
        for k, v in (report.get(key) or {}).items():
            lines.append(f"  {key[:-1]:<8} {k:<26} {100 * v:6.1f}")
    overall = report.get("overall")
    shown = "(needs every section)" if overall is None else f"{100 * overall:.1f}"
    lines.append(f"  overall  {shown}")
    return "\n".join(lines)


def main(argv):
    del argv
    from rewardjax.modes.rewardbench import run_rewardbench

    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("--config and --workdir are required")
    reports = run_rewardbench(_CONFIG.value, _WORKDIR.value,
                              source="hub" if _HUB.value else "offline",
                              v2_limit=_V2_LIMIT.value, out=_OUT.value)
    for name, report in reports.items():
        print(_table(f"RewardBench {name}", report))


if __name__ == "__main__":
    app.run(main)
