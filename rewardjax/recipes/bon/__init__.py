"""Best-of-n studies: proxy and gold curves of reward models over candidate pools."""

from rewardjax.recipes import Recipe, register
from rewardjax.recipes.bon.run import run_bon

register(Recipe("bon", train=run_bon, reads=("bon",),
                no_scorer="it holds best-of-n curves, not a reward model (bon.json)"))
