"""Reward heads: scalar (Bradley-Terry), ArmoRM's gate, DMoERM's router and expert aggregator."""

from rewardjax.heads.gating import ArmoRMHead, FixedWeights, GatingMLP
from rewardjax.heads.moe import MoEAggregator, PReLU, concat_experts
from rewardjax.heads.router import Router
from rewardjax.heads.scalar import LinearHead, PoolerHead

__all__ = ["ArmoRMHead", "FixedWeights", "GatingMLP", "LinearHead", "MoEAggregator", "PReLU",
           "PoolerHead", "Router", "concat_experts"]
