"""WARM (Ramé et al.): M members from one initialisation, trained at once, weight-averaged.

The workdir's scorer is the weight average (``reward``) with every member's reward
(``members``); the export writes the weight average as one reward model.
"""

from rewardjax.recipes import Recipe, register
from rewardjax.recipes.warm.train import train_warm
from rewardjax.runtime import export_weight_average, members_scorer

# Each member is a reward model: train.steps / train.batch_size are per member (they update
# together), members.* the ensemble.
READS = (
    "members",
    "!data.packing: each member's batch is length-bucketed, never packed",
    "!data.shared_prefix: shared-prefix rows need packing, which members never use",
    "!data.pack_segments: each member's batch is never packed",
    "!train.eval_every: members, WA and ensembles are evaluated once, at the end",
    "!train.grad_accum: the members' loop counts micro-steps as steps; raise train.batch_size "
    "instead",
)

register(Recipe("warm", train=train_warm, load_scorer=members_scorer,
                export=export_weight_average, reads=READS))
