"""What every recipe stands on: run construction, state, the BT step, the trainer, the scorer,
checkpoints, metrics, workdir files and loading trained workdirs.

Public surface: the names below, imported from their modules on first use (``from
rewardjax.runtime import Trainer``), so importing one module of the package does not import the
rest.
"""

import importlib

_EXPORTS = {
    "Run": "setup",
    "build_run": "setup",
    "resolve_config": "setup",
    "get_tokenizer": "setup",
    "TrainState": "state",
    "count_params": "state",
    "shardings_of": "state",
    "bt_update": "step",
    "make_train_step": "step",
    "batch_axis_size": "step",
    "place_batch": "step",
    "MemberHypers": "members",
    "init_members": "members",
    "make_member_step": "members",
    "member_params": "members",
    "average_members": "members",
    "MemberPlans": "members_data",
    "collate_members": "members_data",
    "place_members": "members_data",
    "Trainer": "trainer",
    "Part": "trainer",
    "Scorer": "scorer",
    "ModelScorer": "scorer",
    "MembersScorer": "scorer",
    "NativeScorer": "scorer",
    "pair_report": "scoring",
    "gold_agreement": "scoring",
    "format_table": "scoring",
    "write_scores": "scoring",
    "Checkpointer": "checkpoint",
    "NonFiniteLoss": "checkpoint",
    "nonfinite_error": "checkpoint",
    "MetricsWriter": "logging",
    "to_python": "logging",
    "make_optimizer": "optim",
    "load_trained": "load",
    "checkpoint_scorer": "load",
    "members_scorer": "load",
    "read_run_config": "load",
    "export_model": "load",
    "eval_statistics": "load",
    "export_checkpoint": "load",
    "export_weight_average": "load",
    "owns_workdir": "workdir",
    "DiskFull": "workdir",
    "write_json": "workdir",
    "read_json": "workdir",
    "staged_dir": "workdir",
    "local_copy": "workdir",
    "init_head_by_probe": "probe",
    "pair_features": "probe",
    "BackboneFeatures": "features",
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
