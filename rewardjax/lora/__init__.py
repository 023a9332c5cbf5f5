"""LoRA adapters: the layer, regex injection/merging, and K stacked experts on one base."""

from rewardjax.lora.inject import (
    LoRAConfig,
    apply_lora,
    linear_paths,
    load_lora_state,
    lora_filter,
    lora_paths,
    lora_state,
    merge_lora,
    split_lora,
    trainable_regex_for_lora,
)
from rewardjax.lora.layers import LoRALinear
from rewardjax.lora.stacked import (
    num_experts,
    score_experts,
    score_experts_loop,
    stack_adapters,
)

__all__ = [
    "LoRAConfig",
    "LoRALinear",
    "apply_lora",
    "linear_paths",
    "load_lora_state",
    "lora_filter",
    "lora_paths",
    "lora_state",
    "merge_lora",
    "num_experts",
    "score_experts",
    "score_experts_loop",
    "split_lora",
    "stack_adapters",
    "trainable_regex_for_lora",
]
