"""Pure evaluation parts: pair metrics and calibration, best-of-n curves and pools, the RewardBench
protocol, plots. Rewards come in as arrays or score functions.

Public surface: the names below, imported from their modules on first use (``from rewardjax.eval
import pair_metrics``), so importing one module of the package does not import the rest.
"""

import importlib

_EXPORTS = {
    "pair_metrics": "metrics",
    "pairwise_accuracy": "metrics",
    "calibration": "metrics",
    "reward_stats": "metrics",
    "bon_curves": "bon_curves",
    "expected_best_of_n": "bon_curves",
    "kl_bon": "bon_curves",
    "reference_curves": "bon_curves",
    "Pool": "bon_pools",
    "load_alpaca_pools": "bon_pools",
    "read_prompts": "bon_pools",
    "Record": "rewardbench",
    "build_offline": "rewardbench",
    "evaluate": "rewardbench",
    "load": "rewardbench",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
