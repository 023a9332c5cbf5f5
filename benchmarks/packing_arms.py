"""Arms of ``benchmarks/packing_speed.py`` beyond its JAX steps: the score-matrix fractions of
a batch, TRL's ``RewardTrainer`` on the timed pairs, and attention timed alone (dense vs block
skipping) on each packed batch's layout."""

from __future__ import annotations

import os
import time

import numpy as np


def attended(method, batch):
    """Score-matrix fractions of one batch: ``attended_visible`` (entries some real query may
    see, over the entries of the method's score matrices) and ``attended_computed`` (entries the
    method computes: all of them for dense attention, the computed tiles for block skipping)."""
    seg = batch.get("segment_ids")
    if seg is None:  # pad-to-longest / buckets: [B, 2, T] rows, one sequence each
        lengths = batch["attention_mask"].reshape(-1, batch["attention_mask"].shape[-1]).sum(-1)
        t = batch["attention_mask"].shape[-1]
        return {"attended_visible": float((lengths**2).sum() / (lengths.size * t * t)),
                "attended_computed": 1.0}
    r, t = seg.shape
    counts = [np.bincount(row[row > 0]) for row in seg]
    visible = float(sum((c.astype(np.float64) ** 2).sum() for c in counts) / (r * t * t))
    out = {"attended_visible": visible, "attended_computed": 1.0}
    if method == "packed_blocks":
        from rewardjax.models.block_attention import attended_fraction, block_layout

        layout = block_layout(np.asarray(batch["attention_mask"]), causal=False,
                              segment_ids=np.asarray(seg))
        tiles, computed = attended_fraction(layout)
        out.update(attended_computed=float(computed), tiles_visible=float(tiles))
    return out


def timed_pairs(args, data):
    """The pairs of the timed random batches (``pad_longest`` / ``packed``), for TRL."""
    from rewardjax.data.batching import BatchPlan

    plan = BatchPlan(data.lengths(), args.batch_size, (args.max_length,), seed=args.seed)
    idx = [i for s in range(args.steps) for i in plan.at_step(s)[1]]
    return [(data.chosen[i].ids, data.rejected[i].ids) for i in idx]


def trl_half(spec, seqs, args):
    """TRL ``RewardTrainer`` on ``seqs`` (a fresh model from the same checkpoint)."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from benchmarks.trl_baseline import run_trl

    torch.set_num_threads(os.cpu_count() or 2)
    torch.manual_seed(args.seed)
    model = BertForSequenceClassification.from_pretrained(spec.source, num_labels=1)
    tok = AutoTokenizer.from_pretrained(spec.source)
    res = run_trl(model, tok, seqs, args.batch_size, args.steps, 1, seed=args.seed)
    print(f"  trl          {res['real_tokens_per_s']:8.0f} real tok/s over {res['steps']} steps",
          flush=True)
    return res


def attention_profile(run, batches, repeats=2):
    """Wall / CPU seconds of one step's attention (forward + backward, every layer) on each
    packed batch's layout: dense (``softmax_attention``) vs block skipping."""
    import jax
    import jax.numpy as jnp

    from rewardjax.models.block_attention import block_attention, block_layout
    from rewardjax.models.layers import attention_bias, softmax_attention

    c = run.spec.config
    h, d, layers = c.num_heads, c.hidden_size // c.num_heads, c.num_layers

    def grad(fn):
        return jax.jit(jax.grad(lambda q, k, v, m, w: jnp.sum(w * fn(q, k, v, m)), (0, 1, 2)))

    dense = grad(softmax_attention)
    blocks = grad(block_attention)
    out = []
    for batch in batches:
        seg = jnp.asarray(batch["segment_ids"])
        mask = (seg > 0).astype(jnp.int32)
        r, t = seg.shape
        keys = jax.random.split(jax.random.key(0), 4)
        q, k, v, w = (jax.random.normal(x, (r, t, h, d)) for x in keys)
        masks = {"dense": attention_bias(mask, causal=False, segment_ids=seg),
                 "blocks": block_layout(mask, causal=False, segment_ids=seg)}
        fns = {"dense": dense, "blocks": blocks}
        best = {}
        for name in fns:
            jax.block_until_ready(fns[name](q, k, v, masks[name], w))
        for _ in range(repeats):
            for name in fns:
                w0, c0 = time.perf_counter(), time.process_time()
                jax.block_until_ready(fns[name](q, k, v, masks[name], w))
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                prev = best.get(name, (np.inf, np.inf))
                best[name] = (min(prev[0], wall * layers), min(prev[1], cpu * layers))
        out.append({"rows": r, **{f"{n}_{k}": best[n][i] for n in best
                                  for i, k in enumerate(("wall_s", "cpu_s"))}})
        print(f"  attention    rows {r:3d}  dense {best['dense'][0]:.3f} s  blocks "
              f"{best['blocks'][0]:.3f} s wall per step ({layers} layers fwd+bwd)", flush=True)
    return out
