"""PPO / RLOO against a reward model, with EMA and Elastic Reset (Noukhovitch et al.)."""

from rewardjax.recipes import Recipe, register
from rewardjax.recipes.ppo.train import train_ppo

# The policy trains on the shared optimizer keys (train.steps, train.batch_size, train.lr, ...);
# the rest of the shared run sections describe a reward model it does not have.
READS = (
    "rl",
    "!model: the policy is rl.policy; the reward models are rl.proxy and rl.gold",
    "!data: the prompts are rl.prompts", "data.sim", "data.split_seed",
    "!loss: the policy's objective is set by rl.* (kl_coef, cliprange, ...)",
    "!mesh: the policy runs on one device", "!eval: rl.num_eval_prompts sets the evaluation",
    "!defaults: set train.lr / train.warmup_steps / train.schedule directly",
    "!lora.enabled: the policy always trains LoRA adapters", "!lora.dropout: not applied",
    "!train.trainable: the policy trains its LoRA adapters and value head",
    "!train.dropout: the policy samples and trains without dropout",
    "!train.log_every: a metrics row is written every iteration",
    "!train.eval_every: set rl.eval_every (RL iterations)",
    "!train.checkpoint_every: set rl.checkpoint_every (RL iterations)",
    "!train.debug_kill_at_step: not implemented here",
    "!train.grad_accum: an iteration already takes rl.epochs x rl.minibatches updates",
)

register(Recipe("ppo", train=train_ppo, reads=READS,
                no_scorer="it holds a policy, not a reward model (summary.json)"))
