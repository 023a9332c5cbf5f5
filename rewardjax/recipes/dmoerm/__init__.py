"""DMoERM (Quan): a router over task categories, LoRA capability experts and an aggregator."""

from rewardjax.recipes import Recipe, register
from rewardjax.recipes.dmoerm.export import export, native_scorer
from rewardjax.recipes.dmoerm.train import train_dmoerm

READS = (
    "dmoerm", "baselines",
    "!lora: the LoRA stages are set by dmoerm.lora_* (rank, alpha, dropout, targets)",
    "!data.packing: batches are length-bucketed, never packed",
    "!data.shared_prefix: batches are length-bucketed, never packed",
    "!data.pack_segments: batches are never packed",
    "!train.eval_every: every model is evaluated once, at the end",
    "!train.resume_step: each stage resumes from its own newest checkpoint",
    "!train.grad_accum: the stages' loop counts micro-steps as steps; raise train.batch_size "
    "instead",
)

# The workdir's scorer: the native mixture written at the end of training (router, merged
# capability experts, aggregators); eval / score / rewardbench / export read it.
register(Recipe("dmoerm", train=train_dmoerm, reads=READS, load_scorer=native_scorer,
                export=export))
