"""GPU reward-model training throughput and MFU: a random ~1B Llama at 2048 tokens, bf16.

rewardjax's own train step (bf16 compute, float32 master weights and AdamW state) for each
``--variants`` entry (``attention:remat:pairs``), then TRL's ``RewardTrainer`` on the same model
shape, sequences and pairs per step (``transformers`` ``LlamaForSequenceClassification``, SDPA
attention, ``bf16=True``: float32 weights under bf16 autocast; gradient checkpointing only if it
does not fit without). Every configuration runs in its own child process, so one framework's
memory pool never limits the other. Every sequence is exactly ``--length`` real tokens.

MFU = (6 x matmul parameters + 12 x layers x length x attention width) FLOPs per token (PaLM's
formula: causal attention counted in full, the embedding gather not at all) x tokens/s over the
GPU's dense bf16 peak (``--peak_tflops``; H100 SXM 989).

    python benchmarks/gpu_llama.py --json=runs/gpu_llama.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Llama-3.2-1B's shape: 1.24B parameters, 0.97B of them outside the embedding table.
SHAPES = {
    "1b": dict(hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8,
               intermediate_size=8192, vocab_size=128256),
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                 intermediate_size=256, vocab_size=1024),
}
# Dense bf16 TFLOP/s; the first name contained in the GPU's name wins (PCIe before SXM).
PEAKS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def flops_per_token(shape: dict, length: int) -> float:
    d, f, n = shape["hidden_size"], shape["intermediate_size"], shape["num_layers"]
    hd = d // shape["num_heads"]
    kv = shape["num_kv_heads"] * hd
    matmul = n * (2 * d * d + 2 * d * kv + 3 * d * f)  # q, o, k, v, gate/up/down
    return 6 * matmul + 12 * n * length * d


def sequences(shape, length, n_pairs, seed=0):
    rng = np.random.default_rng(seed)
    lo = 2  # 0 is the pad id both sides use
    return [
        (rng.integers(lo, shape["vocab_size"], length).astype(np.int32),
         rng.integers(lo, shape["vocab_size"], length).astype(np.int32))
        for _ in range(n_pairs)
    ]


def child_rewardjax(shape, length, pairs, steps, attention, remat):
    from benchmarks.train_throughput import run_rewardjax

    query = "&".join(f"{k}={v}" for k, v in shape.items())
    path = f"random:llama?{query}&max_position_embeddings={length}"
    seqs = sequences(shape, length, pairs * 4)
    out = run_rewardjax(path, seqs, pairs, steps, 2, length, "fixed", dtype="bfloat16",
                        overrides=f"attention={attention},remat={remat}")
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    out["peak_device_gb"] = stats.get("peak_bytes_in_use", 0) / 2**30
    return out


def child_trl(shape, length, pairs, steps, gradient_checkpointing):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from benchmarks.trl_baseline import id_tokenizer, run_trl, run_trl_like

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=shape["hidden_size"], num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_kv_heads"],
        intermediate_size=shape["intermediate_size"], vocab_size=shape["vocab_size"],
        max_position_embeddings=length, num_labels=1, pad_token_id=0,
    )
    cfg._attn_implementation = "sdpa"
    gpu = torch.cuda.is_available()
    model = LlamaForSequenceClassification(cfg).to("cuda" if gpu else "cpu")
    seqs = sequences(shape, length, pairs * 4)
    try:
        import datasets  # noqa: F401
        import trl  # noqa: F401
    except ImportError as e:  # no TRL on this machine: its step, written out
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
        out = run_trl_like(model, seqs, pairs, steps, 2, bf16=gpu)
        out["baseline"] = f"TRL-like step (trl not importable: {e})"
    else:
        out = run_trl(model, id_tokenizer(0), seqs, pairs, steps, 2, bf16=gpu,
                      gradient_checkpointing=gradient_checkpointing)
        out["baseline"] = f"trl {trl.__version__} RewardTrainer"
    out["params"] = sum(p.numel() for p in model.parameters())
    out["peak_device_gb"] = torch.cuda.max_memory_allocated() / 2**30 if gpu else 0.0
    out["gradient_checkpointing"] = gradient_checkpointing
    return out


def spawn(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (p.stdout + p.stderr)[-1500:]
    return {"error": f"exit {p.returncode}: {tail}"}


def gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--variants", default="cudnn:none:4,cudnn:dots:8,xla:none:2",
                    help="rewardjax runs, attention:remat:pairs_per_step, comma-separated")
    ap.add_argument("--trl_pairs", type=int, default=4)
    ap.add_argument("--no_trl", action="store_true")
    ap.add_argument("--peak_tflops", type=float, default=0.0,
                    help="dense bf16 peak; default from the GPU's name")
    ap.add_argument("--timeout", type=float, default=240)
    ap.add_argument("--json", default="")
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    shape = SHAPES[args.size]
    if args.child is not None:
        kind, *rest = args.child
        try:
            if kind == "rewardjax":
                attention, remat, pairs = rest
                res = child_rewardjax(shape, args.length, int(pairs), args.steps, attention,
                                      remat)
            else:
                res = child_trl(shape, args.length, args.trl_pairs, args.steps, rest[0] == "gc")
        except Exception as e:  # noqa: BLE001 - reported to the parent, which carries on
            traceback.print_exc()
            res = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        print("RESULT " + json.dumps(res), flush=True)
        return

    name = gpu_name()
    peak = args.peak_tflops or next((v for k, v in PEAKS.items() if k in name), 0.0)
    fpt = flops_per_token(shape, args.length)
    common = ["--size", args.size, "--length", str(args.length), "--steps", str(args.steps),
              "--trl_pairs", str(args.trl_pairs)]
    rows = {}
    for variant in args.variants.split(","):
        attention, remat, pairs = variant.split(":")
        rows[f"rewardjax {variant}"] = spawn(common + ["--child", "rewardjax", attention, remat,
                                                       pairs], args.timeout)
        print(variant, rows[f"rewardjax {variant}"], flush=True)
    if not args.no_trl:
        res = spawn(common + ["--child", "trl", "nogc"], args.timeout)
        if "error" in res and "memory" in res["error"].lower():
            res = spawn(common + ["--child", "trl", "gc"], args.timeout)
        rows[f"trl sdpa {args.trl_pairs}"] = res
        print("trl", res, flush=True)
    for r in rows.values():
        if "real_tokens_per_s" in r:
            r["tflops"] = fpt * r["real_tokens_per_s"] / 1e12
            r["mfu"] = r["tflops"] / peak if peak else None
    out = {"gpu": name, "peak_tflops": peak, "size": args.size, "shape": shape,
           "length": args.length, "flops_per_token": fpt, "runs": rows}
    print(json.dumps(out, indent=2))
    print("\n| run | tokens/s | TFLOP/s | MFU | peak GB |\n|---|---|---|---|---|")
    for k, r in rows.items():
        if "real_tokens_per_s" in r:
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
            print(f"| {k} | {r['real_tokens_per_s']:,.0f} | {r['tflops']:.0f} | {mfu} | "
                  f"{r.get('peak_device_gb', 0):.1f} |")
        else:
            print(f"| {k} | failed: {r['error'][:120]} | | | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
