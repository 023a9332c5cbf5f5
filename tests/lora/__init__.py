"""Shared tiny-model helpers for the LoRA tests."""

import jax
import jax.numpy as jnp
from flax import nnx

from rewardjax.models import registry
from rewardjax.models.reward_model import build_reward_model

LLAMA = ("random:llama?hidden_size=32&num_layers=2&num_heads=4&num_kv_heads=2"
         "&intermediate_size=64&vocab_size=101")
BERT = ("random:bert?hidden_size=32&num_layers=2&num_heads=4&intermediate_size=64"
        "&vocab_size=101&max_position_embeddings=16&hidden_dropout=0.0&attention_dropout=0.0")


def tiny_reward_model(path: str = LLAMA, seed: int = 0):
    """``(model, spec)``: a random tiny backbone with a linear head."""
    spec = registry.resolve(path)
    with nnx.use_eager_sharding(False):
        backbone = registry.create(spec, seed=seed)
        model = build_reward_model(backbone, spec.hidden_size, is_causal=spec.is_causal,
                                   seed=seed)
    return model, spec


def tiny_batch(batch: int = 3, length: int = 7, vocab: int = 101, seed: int = 0) -> dict:
    """Token ids with some right padding (row i has ``length - i`` real tokens)."""
    ids = jax.random.randint(jax.random.key(seed), (batch, length), 1, vocab)
    mask = (jnp.arange(length)[None, :] < (length - jnp.arange(batch))[:, None]).astype(jnp.int32)
    return {"input_ids": ids * mask, "attention_mask": mask,
            "token_type_ids": jnp.zeros_like(ids)}


def score(model, batch) -> jax.Array:
    return model(batch["input_ids"], batch["attention_mask"],
                 token_type_ids=batch["token_type_ids"])


def perturb_lora_b(model, seed: int = 1, std: float = 0.2) -> None:
    """Sets every ``lora_b`` of ``model`` to random values in place (B = 0 is a no-op)."""
    state = nnx.state(model, nnx.LoRAParam)
    flat = []
    for i, (path, var) in enumerate(nnx.to_flat_state(state)):
        if path[-1] == "lora_b":
            noise = std * jax.random.normal(jax.random.fold_in(jax.random.key(seed), i),
                                            var.shape, var.dtype)
            var = var.replace(noise)
        flat.append((path, var))
    nnx.update(model, nnx.from_flat_state(flat))
