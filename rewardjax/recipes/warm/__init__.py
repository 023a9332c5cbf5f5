"""WARM (Ramé et al.): M members from one initialisation, trained at once, weight-averaged.

The workdir's scorer is the weight average (``reward``) with every member's reward
(``members``); the export writes the weight average as one reward model.
"""

from rewardjax.recipes import Recipe, register
from rewardjax.recipes.warm.train import train_warm
from rewardjax.runtime.load import export_weight_average, members_scorer

register(Recipe("warm", train=train_warm, load_scorer=members_scorer,
                export=export_weight_average, reads=("members", "warm")))
