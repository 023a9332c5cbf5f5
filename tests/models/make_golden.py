"""Regenerates the golden files used by the torch-free parity tests.

For one tiny Llama (GQA, Llama-3 rope scaling, untied) and one tiny BERT, builds the PyTorch
model from a fixed seed, perturbs every parameter (so norms and biases are not trivially 1/0),
saves its config under ``tests/models/golden/<name>/`` and its weights as
``<name>_weights.npz`` and stores inputs and outputs
in ``tests/models/golden/<name>_outputs.npz``. Each checkpoint is well under 200 KB.

Run from the repository root: ``python tests/models/make_golden.py``.
"""

import os

import numpy as np
import torch
import transformers

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")

LLAMA = transformers.LlamaConfig(
    vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=10000.0,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
BERT = transformers.BertConfig(
    vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=32, type_vocab_size=2)


def _inputs(seed: int):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 64, size=(3, 9)).astype(np.int32)
    lengths = np.array([9, 6, 2])
    mask = (np.arange(9)[None] < lengths[:, None]).astype(np.int32)  # right padding
    types = (np.arange(9)[None] >= 3).astype(np.int32) * mask
    return ids * mask, mask, types


def _build(cls, config, seed: int):
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _to_npz(name: str) -> None:
    """Keeps the weights as ``<name>_weights.npz``: tests write the safetensors file themselves
    (tests/models/golden_checkpoints.py), so no weight file is committed."""
    from rewardjax.models.hf import read_safetensors

    path = os.path.join(GOLDEN, name, "model.safetensors")
    np.savez(os.path.join(GOLDEN, f"{name}_weights.npz"), **read_safetensors(path))
    os.remove(path)


def main() -> None:
    os.makedirs(GOLDEN, exist_ok=True)
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731

    llama = _build(transformers.LlamaForCausalLM, LLAMA, seed=0)
    llama.save_pretrained(os.path.join(GOLDEN, "llama"))
    _to_npz("llama")
    ids, mask, _ = _inputs(0)
    with torch.no_grad():
        out = llama(input_ids=t(ids), attention_mask=t(mask), output_hidden_states=True)
    np.savez(os.path.join(GOLDEN, "llama_outputs.npz"), input_ids=ids, attention_mask=mask,
             hidden=out.hidden_states[-1].numpy(), logits=out.logits.numpy())

    bert = _build(transformers.BertModel, BERT, seed=1)
    bert.save_pretrained(os.path.join(GOLDEN, "bert"))
    _to_npz("bert")
    ids, mask, types = _inputs(1)
    with torch.no_grad():
        hidden = bert(input_ids=t(ids), attention_mask=t(mask),
                      token_type_ids=t(types)).last_hidden_state
    np.savez(os.path.join(GOLDEN, "bert_outputs.npz"), input_ids=ids, attention_mask=mask,
             token_type_ids=types, hidden=hidden.numpy())
    for root, _, files in os.walk(GOLDEN):
        for name in sorted(files):
            path = os.path.join(root, name)
            print(f"{os.path.relpath(path, GOLDEN)}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
