"""Stacked members and stacked LoRA experts vs Python loops, measured in one run.

(a) one vmapped training step for M members vs M sequential single-member steps
    (``run.train_step`` on each member's state in turn);
(b) K LoRA experts on one base scored by one vmapped call vs a Python loop over adapters;
(c) peak resident memory of each variant, each measured in its own child process.

    python benchmarks/members_speed.py --members=4 --steps=6
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SIZES = {  # name -> backbone; "tiny" is the configs/warm.py default
    "tiny": ("random:llama?hidden_size=128&num_layers=2&num_heads=4&num_kv_heads=2"
             "&intermediate_size=256"),
    "small": ("random:llama?hidden_size=256&num_layers=4&num_heads=8&num_kv_heads=4"
              "&intermediate_size=512"),
}
ARGS = argparse.Namespace(size="small", batch=8, length=128, overrides="")


def _run(m: int, lora: bool):
    from rewardjax.config import base_config
    from rewardjax.data.sources import load_sets
    from rewardjax.runtime.setup import build_run

    c = base_config()
    c.model.path = SIZES[ARGS.size]
    c.model.max_length = ARGS.length
    c.model.overrides = ARGS.overrides
    c.data.sim.num_train = 512
    c.train.batch_size = ARGS.batch
    c.train.dropout = False
    c.lora.enabled = lora
    c.lora.rank = 8
    pairs = load_sets("sim:train", c.data)[0][1]
    return c, build_run(c, "/tmp/rewardjax_members_bench", pairs), pairs


def _time(fn, steps):
    fn()  # compile
    t = time.perf_counter()
    for _ in range(steps):
        out = fn()
    import jax

    jax.block_until_ready(out)
    return (time.perf_counter() - t) / steps


def train_variant(mode: str, m: int, steps: int) -> float:
    import jax

    from rewardjax.data.batching import collate_pairs
    from rewardjax.data.tokenize import encode_pairs
    from rewardjax.runtime.members import init_members, make_member_step
    from rewardjax.runtime.members_data import member_batch
    from rewardjax.runtime.state import TrainState

    c, run, pairs = _run(m, lora=False)
    data = encode_pairs(pairs, run.encoder)
    pad = run.tokenizer.pad_token_id
    b, n = ARGS.batch, ARGS.length
    per = [collate_pairs(data, np.arange(i * b, i * b + b), n, b, pad) for i in range(m)]
    stacked = {k: np.stack([b[k] for b in per]) for k in per[0]}
    state, hypers = init_members(run, m)
    if mode == "vmap":
        from rewardjax.runtime.members_data import place_members

        step = make_member_step(run, dropout=False)
        batch = place_members(run, stacked)
        box = [state]

        def fn():
            box[0], metrics = step(box[0], batch, hypers)
            return metrics["loss"]
    else:
        single = run.train_step(dropout=False)
        # Each member gets its own step buffer: the single step donates its whole state.
        states = [TrainState(state.step + 0, jax.tree.map(lambda x, i=i: x[i], state.params),
                             state.frozen, jax.tree.map(lambda x, i=i: x[i], state.opt_state),
                             state.rng[i]) for i in range(m)]
        batches = [run.place(member_batch(stacked, i)) for i in range(m)]

        def fn():
            out = None
            for i in range(m):
                states[i], metrics = single(states[i], batches[i])
                out = metrics["loss"]
            return out
    return _time(fn, steps)


def score_variant(mode: str, k: int, steps: int) -> float:
    import jax
    from flax import nnx

    from rewardjax.data.batching import collate_single
    from rewardjax.data.tokenize import encode_pairs
    from rewardjax.lora.stacked import score_experts, stack_adapters

    c, run, pairs = _run(k, lora=True)
    model = nnx.merge(run.graphdef, run.state.params, run.state.frozen)
    graphdef, lora_state, rest = nnx.split(model, nnx.LoRAParam, ...)
    adapters = []
    for i in range(k):  # distinct adapters: random B
        key = jax.random.key(i)
        adapters.append(jax.tree.map(
            lambda x, key=key: jax.random.normal(key, x.shape, x.dtype) * 0.01, lora_state))
    stacked = stack_adapters(adapters)
    data = encode_pairs(pairs[:16], run.encoder)
    batch = collate_single(data.chosen + data.rejected, np.arange(32), ARGS.length, 32,
                           run.tokenizer.pad_token_id)
    batch = {kk: batch[kk] for kk in ("input_ids", "attention_mask", "token_type_ids")}
    if mode == "vmap":
        f = jax.jit(score_experts, static_argnums=0)
        return _time(lambda: f(graphdef, stacked, rest, batch)[0], steps)
    f = jax.jit(lambda g, a, r, b: nnx.merge(g, a, r)(b["input_ids"], b["attention_mask"]),
                static_argnums=0)
    return _time(lambda: [f(graphdef, a, rest, batch) for a in adapters][-1], steps)


def child(args) -> None:
    fn = train_variant if args.part == "train" else score_variant
    sec = fn(args.mode, args.members, args.steps)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"seconds": sec, "peak_rss_mb": peak_mb}
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:  # accelerators: device memory is what matters
        out["peak_device_mb"] = stats["peak_bytes_in_use"] / 2**20
    out["device"] = f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}"
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--part", default="")
    ap.add_argument("--mode", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--size", default="small", choices=sorted(SIZES))
    ap.add_argument("--batch", type=int, default=8, help="pairs per member per step")
    ap.add_argument("--length", type=int, default=128, help="tokens per sequence")
    ap.add_argument("--overrides", default="", help='model.overrides, e.g. "scan_unroll=4"')
    ap.add_argument("--repeats", type=int, default=2,
                    help="alternate vmap / loop children this many times; keep each one's best")
    args = ap.parse_args()
    ARGS.size, ARGS.batch, ARGS.length = args.size, args.batch, args.length
    ARGS.overrides = args.overrides
    if args.part:
        return child(args)
    out = {"members": args.members, "model": SIZES[args.size], "batch": args.batch,
           "length": args.length, "overrides": args.overrides}
    for part in ("train", "score"):
        # Alternating the variants and keeping each one's best run makes the ratio robust to
        # other load on the machine drifting during the measurement.
        for _ in range(args.repeats):
            for mode in ("vmap", "loop"):
                r = subprocess.run([sys.executable, __file__, f"--part={part}", f"--mode={mode}",
                                    f"--members={args.members}", f"--steps={args.steps}",
                                    f"--size={args.size}", f"--batch={args.batch}",
                                    f"--length={args.length}", f"--overrides={args.overrides}"],
                                   capture_output=True, text=True, cwd=ROOT)
                if r.returncode:
                    raise RuntimeError(r.stderr[-3000:])
                res = json.loads(r.stdout.strip().splitlines()[-1])
                best = out.get(f"{part}_{mode}")
                if best is None or res["seconds"] < best["seconds"]:
                    out[f"{part}_{mode}"] = dict(res, peak_rss_mb=max(
                        res["peak_rss_mb"], best["peak_rss_mb"] if best else 0.0))
        out[f"{part}_speedup"] = out[f"{part}_loop"]["seconds"] / out[f"{part}_vmap"]["seconds"]
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
