"""Reward-model training losses."""

from rewardjax.losses.bradley_terry import bradley_terry_loss, ranking_loss

__all__ = ["bradley_terry_loss", "ranking_loss"]
