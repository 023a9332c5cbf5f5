"""DMoERM (Quan): a router over task categories, LoRA capability experts and an aggregator."""

from rewardjax.recipes import Recipe, register
from rewardjax.recipes.dmoerm.train import train_dmoerm

READS = (
    "dmoerm", "baselines",
    "!lora: the LoRA stages are set by dmoerm.lora_* (rank, alpha, dropout, targets)",
    "!data.packing: batches are length-bucketed, never packed",
    "!data.pack_segments: batches are never packed",
    "!train.eval_every: every model is evaluated once, at the end",
    "!train.resume_step: each stage resumes from its own newest checkpoint",
    "!train.grad_accum: the stages' loop counts micro-steps as steps; raise train.batch_size "
    "instead",
)

register(Recipe("dmoerm", train=train_dmoerm, reads=READS,
                no_scorer="its experts, router and aggregators are evaluated at the end of "
                          "training (dmoerm.json)"))
