"""ArmoRM (Wang et al.): per-objective ridge regression on frozen features, verbosity
debiasing and a gating network; scored and exported through the native format."""

from rewardjax.recipes import Recipe, register
from rewardjax.recipes.armorm.export import export, native_scorer
from rewardjax.recipes.armorm.train import train_armorm

register(Recipe("armorm", train=train_armorm, load_scorer=native_scorer, export=export,
                reads=("armorm",)))
