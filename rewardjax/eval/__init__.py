"""Pure evaluation parts: pair metrics and calibration, best-of-n curves and pools, the RewardBench
protocol, plots. Rewards come in as arrays or score functions.
"""

from rewardjax._lazy import lazy_exports

# The public surface: name -> defining submodule, imported on first use (rewardjax._lazy).
_EXPORTS = {
    "pair_metrics": "metrics",
    "pairwise_accuracy": "metrics",
    "calibration": "metrics",
    "reward_stats": "metrics",
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
    "process_report": "process",
    "step_metrics": "process",
    "first_error_metrics": "process",
    "report_scores": "rewardbench",
    "knockout": "pairwise_bon",
    "round_robin": "pairwise_bon",
    "symmetric_logit": "pairwise_bon",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
