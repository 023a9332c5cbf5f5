"""Best-of-n studies: proxy and gold curves of reward models over candidate pools."""

from rewardjax.recipes import Recipe, register
from rewardjax.recipes.bon.run import run_bon

READS = (
    "bon",
    "!model: bon scores with bon.rm_workdir, bon.warm_workdir or bon.init_model",
    "!data: the candidates are bon.pools (or sampled for bon.prompts)",
    "!train: bon trains nothing", "!lora: bon trains nothing", "!loss: bon trains nothing",
    "!mesh: not used by bon", "!defaults: the scored runs bring their own settings",
    "!eval: set bon.batch_size / bon.max_length",
)

register(Recipe("bon", train=run_bon, reads=READS,
                no_scorer="it holds best-of-n curves, not a reward model (bon.json)"))
