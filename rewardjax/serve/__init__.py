"""Serving reward models over HTTP (``--config.mode=serve``) and a client for it.

The server (:mod:`rewardjax.serve.app`: OpenRLHF's ``/get_reward``, rewardjax's ``/v1/rewards``,
``/health``, ``/metrics``) batches concurrent requests into compiled shapes
(:mod:`rewardjax.serve.batcher`). The client (:mod:`rewardjax.serve.client`) imports neither jax
nor the server's web stack, and names here are imported on first use (rewardjax._lazy), so
``from rewardjax.serve import RewardClient`` stays light.
"""

from rewardjax._lazy import lazy_exports

# The public surface: name -> defining submodule, imported on first use (rewardjax._lazy).
_EXPORTS = {
    "RewardClient": "client",
    "RewardServer": "app",
    "build_app": "app",
    "Batcher": "batcher",
    "BadRequest": "protocol",
    "split_policy_text": "protocol",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
