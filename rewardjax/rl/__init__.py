"""Policy-side parts: KV-cache sampling, the LoRA policy, RL objectives (KL control, GAE, RLOO)
and the jitted PPO / RLOO update.
"""

from rewardjax._lazy import lazy_exports

# The public surface: name -> defining submodule, imported on first use (rewardjax._lazy).
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

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
