"""PPO / RLOO against a reward model, with EMA and Elastic Reset (Noukhovitch et al.)."""

from rewardjax.recipes import Recipe, register
from rewardjax.recipes.ppo.train import train_ppo

register(Recipe("ppo", train=train_ppo, reads=("rl",),
                no_scorer="it holds a policy, not a reward model (summary.json)"))
