"""DMoERM (Quan): a router over task categories, LoRA capability experts and an aggregator."""

from rewardjax.recipes import Recipe, register
from rewardjax.recipes.dmoerm.train import train_dmoerm

register(Recipe("dmoerm", train=train_dmoerm, reads=("dmoerm",),
                no_scorer="its experts, router and aggregators are evaluated at the end of "
                          "training (dmoerm.json)"))
