"""Reward heads: scalar / regression (linear); gating, MoE aggregator and router come later."""

from rewardjax.heads.scalar import LinearHead

__all__ = ["LinearHead"]
