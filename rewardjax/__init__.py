"""rewardjax: training, combining and evaluating reward models for RLHF in JAX / Flax NNX."""

__version__ = "0.1.0"
