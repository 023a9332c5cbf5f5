"""Policy-side parts: KV-cache sampling, the LoRA policy, RL objectives (KL control, GAE, RLOO)
and the jitted PPO / RLOO update.

Public surface: the names below, imported from their modules on first use (``from rewardjax.rl
import generate``), so importing one module of the package does not import the rest.
"""

import importlib

_EXPORTS = {
    "SamplingConfig": "sampling",
    "generate": "sampling",
    "make_sampler": "sampling",
    "sample_texts": "sampling",
    "PolicyModel": "policy",
    "build_policy": "policy",
    "KLController": "objectives",
    "gae": "objectives",
    "rloo_advantages": "objectives",
    "update_kl": "objectives",
    "RLState": "ppo_update",
    "init_rl_state": "ppo_update",
    "make_update": "ppo_update",
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
