"""Largest model and sequence length whose training step fits in this machine's memory.

For every candidate (a Llama-family size ladder x sequence length x remat policy) the real
rewardjax Bradley-Terry train step (``rewardjax.runtime.step.make_train_step``: AdamW, clipping,
donated state, one pair = two sequences a step) is lowered on abstract arguments and compiled,
and XLA's buffer assignment gives the bytes the step needs::

    peak = arguments + outputs + temporaries - aliased (the donated state is updated in place)

Parameters, gradients and both AdamW moments are in that figure (the state is an argument and
an output, the gradients are temporaries). Nothing is allocated, so a 2.7B model costs one
compile; the layers run under ``lax.scan`` (``scan_unroll=1``), so compile time does not grow
with depth. A candidate *fits* when ``peak + --overhead_gib`` (the Python / JAX runtime, measured
by the verification runs) is within ``--budget_gib``.

XLA:CPU in this jaxlib hands dot / elementwise / reduce fusions to YNNPACK by default, and those
library fusions allocate their intermediates outside XLA's buffer assignment, so
``memory_analysis()`` misses them (a ``[B, H, T, T]`` score matrix per attention, measured).
This script therefore plans and trains with them off
(``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=``), where every buffer is in the plan;
``--ynn_fusions`` keeps the default and shows the gap.

The plan is then checked on both headlines of each ``--verify_policies`` policy: one real
training step (``build_run`` + ``run.train_step``, random weights, a word-level tokenizer of the
planned vocabulary size) of the SmolLM2-135M shape at the longest length it plans to fit, and of
the largest ladder model at ``--model_length``, each in a child process whose peak resident
memory is read back (``ru_maxrss``, and the peak over the step alone). A point whose step would
take longer than ``--verify_max_s`` on this CPU, or is planned above ``--verify_cap_gib`` or
above the memory available right now, is replaced by the next smaller one that fits, and the
report says so.

    nice -n 10 python benchmarks/memory_fit.py --json=/tmp/memory_fit.json
    nice -n 10 python benchmarks/memory_fit.py --no_verify --policies=none,full
    nice -n 10 python benchmarks/memory_fit.py --ynn_fusions   # this jaxlib's default fusions
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlencode

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GIB = 1024**3
MAX_LENGTH = 32768
NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="  # an empty list: no YNNPACK library fusions

# Llama-family ladder: GPT-3 table widths / depths with a SwiGLU MLP (intermediate ~ 8/3 hidden),
# a 32k vocabulary and untied embeddings; "1.1B" is Llama-3.2-1B's shape with a 32k vocabulary.
SIZES = {
    "23M": dict(hidden_size=256, num_layers=8, num_heads=4, intermediate_size=704),
    "134M": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048),
    "374M": dict(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=2816),
    "778M": dict(hidden_size=1536, num_layers=24, num_heads=16, intermediate_size=4096),
    "1.1B": dict(hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8,
                 intermediate_size=8192),
    "1.35B": dict(hidden_size=2048, num_layers=24, num_heads=16, intermediate_size=5504),
    "2.7B": dict(hidden_size=2560, num_layers=32, num_heads=32, intermediate_size=6912),
}
for _shape in SIZES.values():
    _shape.setdefault("vocab_size", 32000)
    _shape.setdefault("num_kv_heads", _shape["num_heads"])  # random:llama defaults to 2
# SmolLM2-135M's architecture (tied embeddings, GQA 9/3 heads).
SMOLLM2 = dict(hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, intermediate_size=1536,
               vocab_size=49152, tie_embeddings="true", rope_theta=100000.0)


def model_path(shape: dict) -> str:
    """A ``random:llama`` path; positions cover the longest length tried (RoPE has no table)."""
    return "random:llama?" + urlencode({**shape, "max_position_embeddings": MAX_LENGTH})


def make_config(path: str, length: int, remat: str):
    from rewardjax.config import base_config

    c = base_config()
    c.model.path = path
    c.model.max_length = length
    # "none" is the backbone default; left out because parse_value reads "none" as None.
    c.model.overrides = "" if remat == "none" else f"remat={remat}"
    c.train.steps = 1000
    return c


def host_batch(length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One pair (two full-length sequences) in the ``[B, 2, L]`` layout of ``collate_pairs``."""
    rng = np.random.default_rng(seed)
    shape = (1, 2, length)
    return {
        "input_ids": rng.integers(8, vocab, shape).astype(np.int32),
        "attention_mask": np.ones(shape, np.int32),
        "token_type_ids": np.zeros(shape, np.int32),
        "weights": np.ones((1,), np.float32),
        "margin": np.zeros((1,), np.float32),
    }


def abstract_step(config):
    """``(jitted step, abstract state, abstract batch, trained params)`` without allocating.

    Mirrors ``build_run`` / ``init_state``: same mesh, reward model, trainable split, optimizer
    and shardings, with every array a ``ShapeDtypeStruct``. A random backbone keeps the
    vocabulary of its path (``build_run`` would take it from a fitted tokenizer instead).
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from rewardjax.models import registry
    from rewardjax.models.reward_model import build_reward_model
    from rewardjax.runtime.optim import make_optimizer
    from rewardjax.runtime.setup import dtype_of, mesh_and_rules, reward_backbone_spec
    from rewardjax.runtime.state import TrainState, count_params, split_model
    from rewardjax.runtime.step import batch_shardings, make_train_step
    from rewardjax.sharding import state_shardings

    mesh, rules = mesh_and_rules(config)
    spec = reward_backbone_spec(config, registry.resolve(config.model.path))
    dtype, param_dtype = dtype_of(config.model.dtype), dtype_of(config.model.param_dtype)

    def build():
        backbone = registry.create(spec, dtype=dtype, param_dtype=param_dtype, seed=config.seed)
        return build_reward_model(backbone, spec.config.hidden_size, is_causal=spec.is_causal,
                                  pooling=config.model.pooling, seed=config.seed)

    with nnx.use_eager_sharding(False):
        graphdef, a_params, a_frozen = split_model(nnx.eval_shape(build), config.train.trainable)

    def with_sharding(tree, shardings):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            tree, shardings)

    params = with_sharding(a_params, state_shardings(a_params, mesh, rules))
    frozen = with_sharding(a_frozen, state_shardings(a_frozen, mesh, rules))
    tx = make_optimizer(config.train)
    # As in init_state: the moments take the params' shardings by propagation, scalars are
    # replicated over the mesh.
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    init = jax.jit(tx.init).lower(params).compile()
    opt_sh = jax.tree.map(
        lambda s: s if isinstance(s, jax.sharding.NamedSharding) else replicated,
        init.output_shardings)
    opt_state = with_sharding(jax.eval_shape(tx.init, params), opt_sh)
    state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
        params=params,
        frozen=frozen,
        opt_state=opt_state,
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated),
    )
    step = make_train_step(graphdef, tx, config.loss, mesh=mesh, rules=rules,
                           state_shardings=jax.tree.map(lambda x: x.sharding, state),
                           dropout=False)
    host = host_batch(config.model.max_length, 16)
    bsh = batch_shardings(mesh, rules, host)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh[k]) for k, v in host.items()}
    return step, state, batch, count_params(params)


def memory_of(compiled) -> dict:
    """XLA's planned bytes for one call of a compiled step (see the module docstring)."""
    m = compiled.memory_analysis()
    keys = ("argument", "output", "alias", "temp")
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in keys}
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def plan(path: str, length: int, remat: str) -> dict:
    t0 = time.perf_counter()
    step, state, batch, n_params = abstract_step(make_config(path, length, remat))
    mem = memory_of(step.lower(state, batch).compile())
    return dict(mem, params=n_params, compile_s=round(time.perf_counter() - t0, 1))


def train_flops(shape: dict, length: int, remat: str) -> float:
    """Analytic FLOPs of one step (two sequences): 6 x matmul params per token plus attention,
    and one more forward (2 x ...) when the layers are rematerialised."""
    d, n = shape["hidden_size"], shape["num_layers"]
    hd = d // shape["num_heads"]
    kv = shape.get("num_kv_heads", shape["num_heads"]) * hd
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * shape["intermediate_size"]
    tokens = 2 * length
    fwd = 2 * n * per_layer * tokens + 2 * 2 * n * length * length * d * 2  # matmuls + QK, AV
    return 3 * fwd + (fwd if remat != "none" else 0)


def mem_available() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _status_kib(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def verify_child(request: dict) -> dict:
    """Runs in a child process: one real step through ``build_run``; returns planned/measured."""
    import jax

    from rewardjax.data.records import Pair
    from rewardjax.runtime.setup import build_run

    jax.devices()
    runtime_kib = _status_kib("VmRSS")
    shape, length, remat = request["shape"], request["length"], request["remat"]
    config = make_config(model_path(shape), length, remat)
    config.model.vocab_size = shape["vocab_size"]
    # A word-level tokenizer of exactly vocab_size entries (8 specials + distinct words), so the
    # random backbone gets the planned vocabulary through the ordinary build_run path.
    words = " ".join(f"w{i}" for i in range(shape["vocab_size"]))
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        run = build_run(config, workdir, [Pair([], words, "w0")])
        step = run.train_step(dropout=False)
        batch = run.place(host_batch(length, shape["vocab_size"]))
        compiled = step.lower(run.state, batch).compile()
        setup_s = time.perf_counter() - t0
        planned = memory_of(compiled)
        before_kib = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM: the step's own peak
            f.write("5")
        t0 = time.perf_counter()
        state, metrics = compiled(run.state, batch)
        loss = float(jax.block_until_ready(metrics["loss"]))
        step_s = time.perf_counter() - t0
    return dict(
        planned=planned,
        loss=loss,
        setup_s=round(setup_s, 1),
        step_s=round(step_s, 1),
        runtime_rss=runtime_kib * 1024,
        rss_before_step=before_kib * 1024,
        step_peak_rss=_status_kib("VmHWM") * 1024,
        ru_maxrss_self=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )


def run_child(request: dict, timeout: float, ynn_fusions: bool) -> dict:
    t0 = time.perf_counter()
    cmd = [sys.executable, os.path.abspath(__file__), "--verify_child", json.dumps(request)]
    try:
        proc = subprocess.run(cmd + ["--ynn_fusions"] * ynn_fusions, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout:.0f} s")
    out = dict(wall_s=round(time.perf_counter() - t0, 1),
               ru_maxrss_children=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return dict(out, error=f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}")
    return dict(out, **json.loads(lines[-1]))


def largest(points: dict, fits):
    """The largest key (in key order) whose plan fits, or None."""
    ok = [k for k, v in points.items() if "peak" in v and fits(v)]
    return ok[-1] if ok else None


def gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def refine(points: dict, remat: str, fits, step: int, over_time) -> None:
    """Bisects between the largest fitting power of two and the next one, ``step`` apart."""
    lo = largest(points, fits)
    if lo is None or "peak" not in points.get(2 * lo, {}):
        return
    hi = 2 * lo
    while hi - lo > step and not over_time():
        mid = (lo + hi) // 2 // step * step
        points[mid] = plan(model_path(SMOLLM2), mid, remat)
        print(f"smollm2 L={mid:>6} {remat:>5}: {gib(points[mid]['peak'])} GiB", file=sys.stderr,
              flush=True)
        lo, hi = (mid, hi) if fits(points[mid]) else (lo, mid)
    for k in sorted(points):  # back in length order for largest()
        points[k] = points.pop(k)


def verify_all(args, policies, sizes, seqs, fits) -> list[dict]:
    """One child-process training step per (policy, headline), cheapest candidate that is
    within the memory cap, the memory free now, the per-step time limit and the time left."""
    jobs = []  # the sequence-length headlines first, then the model-size ones
    for remat in policies:
        lens = [n for n, v in seqs[remat].items() if "peak" in v and fits(v)][::-1]
        jobs.append((remat, "longest SmolLM2-135M",
                     [(SMOLLM2, "SmolLM2-135M", n, seqs[remat][n]["peak"]) for n in lens]))
    for remat in policies:
        names = [k for k, v in sizes[remat].items() if "peak" in v and fits(v)][::-1]
        jobs.append((remat, f"largest model @{args.model_length}",
                     [(SIZES[k], k, args.model_length, sizes[remat][k]["peak"]) for k in names]))
    rate = args.cpu_gflops * 1e9  # updated from each run
    t_end = time.perf_counter() + args.verify_budget_s
    done, results = {}, []
    for remat, headline, cands in jobs:
        reasons = []
        for shape, name, length, peak in cands:
            secs = train_flops(shape, length, remat) / rate
            left = t_end - time.perf_counter()
            if (name, length, remat) in done:
                break
            if peak > args.verify_cap_gib * GIB:
                reasons.append(f"{name}@{length}: planned {gib(peak)} GiB > cap")
            elif peak + 2 * GIB > mem_available():
                reasons.append(f"{name}@{length}: planned {gib(peak)} GiB > free memory - 2 GiB")
            elif secs > args.verify_max_s:
                reasons.append(f"{name}@{length}: step predicted {secs:.0f} s > limit")
            elif 1.5 * secs + 60 > left:
                reasons.append(f"{name}@{length}: step predicted {secs:.0f} s > time left")
            else:
                break
        else:
            results.append(dict(remat=remat, headline=headline, skipped="; ".join(reasons)
                                or "nothing fits"))
            continue
        row = dict(remat=remat, headline=headline, model=name, length=length,
                   plan_peak=peak, substituted=reasons)
        if (name, length, remat) in done:
            results.append(dict(done[(name, length, remat)], **row, note="same run as above"))
            continue
        print(f"verify {remat} {name} L={length} (predicted {secs:.0f} s) ...", file=sys.stderr,
              flush=True)
        res = run_child(dict(shape=shape, length=length, remat=remat),
                        timeout=max(2 * args.verify_max_s, 300), ynn_fusions=args.ynn_fusions)
        res["flops"] = train_flops(shape, length, remat)
        if "step_s" in res:
            rate = res["flops"] / max(res["step_s"], 1e-3)
        done[(name, length, remat)] = res
        results.append(dict(res, **row))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget_gib", type=float, default=20.0)
    ap.add_argument("--overhead_gib", type=float, default=1.0,
                    help="resident memory beyond XLA's plan (Python, JAX runtime, host copies)")
    ap.add_argument("--policies", default="none,full,dots")
    ap.add_argument("--model_length", type=int, default=2048, help="length for the size ladder")
    ap.add_argument("--min_length", type=int, default=512)
    ap.add_argument("--max_length", type=int, default=MAX_LENGTH)
    ap.add_argument("--refine_step", type=int, default=256,
                    help="bisect the longest length to this granularity (0: powers of two only)")
    ap.add_argument("--ynn_fusions", action="store_true",
                    help="keep XLA:CPU's YNNPACK fusions (their buffers are not in the plan)")
    ap.add_argument("--no_verify", action="store_true")
    ap.add_argument("--verify_policies", default="none,full")
    ap.add_argument("--verify_max_s", type=float, default=600.0,
                    help="use a smaller point when a verify step is predicted slower")
    ap.add_argument("--verify_budget_s", type=float, default=1500.0)
    ap.add_argument("--verify_cap_gib", type=float, default=18.0)
    ap.add_argument("--cpu_gflops", type=float, default=40.0,
                    help="first guess of this CPU's training FLOP/s (then measured)")
    ap.add_argument("--time_budget_s", type=float, default=600.0, help="planning stops here")
    ap.add_argument("--json", default="")
    ap.add_argument("--verify_child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.ynn_fusions and NO_YNN not in os.environ.get("XLA_FLAGS", ""):
        # Before jax is imported; the verify children inherit it.
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {NO_YNN}".strip()
    if args.verify_child:
        print(json.dumps(verify_child(json.loads(args.verify_child))))
        return

    import jax

    policies = args.policies.split(",")
    budget = args.budget_gib * GIB

    def fits(v):
        return v["peak"] + args.overhead_gib * GIB <= budget

    lengths = [2**k for k in range(20) if args.min_length <= 2**k <= args.max_length]
    t_start = time.perf_counter()

    def over_time():
        return time.perf_counter() - t_start > args.time_budget_s

    sizes, seqs = {}, {}
    for remat in policies:  # the size ladder at --model_length
        sizes[remat] = {}
        for name, shape in SIZES.items():
            if over_time():
                sizes[remat][name] = {"skipped": "time budget"}
                continue
            sizes[remat][name] = plan(model_path(shape), args.model_length, remat)
            print(f"size {name:>6} L={args.model_length} {remat:>5}: "
                  f"{gib(sizes[remat][name]['peak'])} GiB", file=sys.stderr, flush=True)
    for remat in policies:  # SmolLM2-135M over lengths
        seqs[remat] = {}
        for length in lengths:
            if over_time():
                seqs[remat][length] = {"skipped": "time budget"}
                continue
            seqs[remat][length] = plan(model_path(SMOLLM2), length, remat)
            print(f"smollm2 L={length:>6} {remat:>5}: {gib(seqs[remat][length]['peak'])} GiB",
                  file=sys.stderr, flush=True)
        if args.refine_step:
            refine(seqs[remat], remat, fits, args.refine_step, over_time)
    plan_s = time.perf_counter() - t_start
    checked = [r for r in args.verify_policies.split(",") if r in policies]
    verify = [] if args.no_verify else verify_all(args, checked, sizes, seqs, fits)

    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                         text=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    out = dict(
        git=git,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        device=str(jax.devices()[0]),
        cpu_count=os.cpu_count(),
        budget_gib=args.budget_gib,
        overhead_gib=args.overhead_gib,
        model_length=args.model_length,
        plan_seconds=round(plan_s, 1),
        shapes=dict(SIZES, **{"SmolLM2-135M": SMOLLM2}),
        sizes=sizes,
        smollm2={r: {str(k): v for k, v in d.items()} for r, d in seqs.items()},
        largest_model={r: largest(sizes[r], fits) for r in policies},
        largest_smollm2_length={r: largest(seqs[r], fits) for r in policies},
        verify=verify,
    )
    print(json.dumps(out, indent=1))
    print(markdown(out, policies))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


def markdown(out: dict, policies: list[str]) -> str:
    budget, overhead = out["budget_gib"], out["overhead_gib"]

    def cell(v):
        if "peak" not in v:
            return "—"
        ok = v["peak"] + overhead * GIB <= budget * GIB
        return gib(v["peak"]) if ok else f"~~{gib(v['peak'])}~~"

    rows = [f"Planned peak GiB of one training step (1 pair = 2 sequences, float32, AdamW); "
            f"struck out: over the {budget:g} GiB budget less {overhead:g} GiB runtime. "
            f"XLA_FLAGS={out['xla_flags'] or '(none)'}", "",
            f"Size ladder at length {out['model_length']}:", "",
            "| model | trained params | " + " | ".join(f"remat={r}" for r in policies) + " |",
            "|---|---|" + "---|" * len(policies)]
    for name in SIZES:
        first = out["sizes"][policies[0]][name]
        params = f"{first['params'] / 1e6:,.1f}M" if "params" in first else "?"
        rows.append(f"| {name} | {params} | "
                    + " | ".join(cell(out["sizes"][r][name]) for r in policies) + " |")
    lengths = sorted({int(n) for r in policies for n in out["smollm2"][r]})
    rows += ["", "SmolLM2-135M shape by sequence length:", "",
             "| length | " + " | ".join(f"remat={r}" for r in policies) + " |",
             "|---|" + "---|" * len(policies)]
    for n in lengths:
        rows.append(f"| {n} | " + " | ".join(cell(out["smollm2"][r].get(str(n), {}))
                                              for r in policies) + " |")
    rows += ["", "| remat | largest model @" + str(out["model_length"])
             + " | longest SmolLM2-135M length |", "|---|---|---|"]
    for r in policies:
        rows.append(f"| {r} | {out['largest_model'][r]} | {out['largest_smollm2_length'][r]} |")
    if out["verify"]:
        rows += ["", "| remat | headline | run | planned GiB | step peak RSS GiB | runtime RSS GiB "
                 "| peak - runtime - plan GiB | child ru_maxrss GiB | step s | not the headline "
                 "point because |", "|---|---|---|---|---|---|---|---|---|---|"]
    for v in out["verify"]:
        if "planned" not in v:
            why = v.get("skipped") or v.get("error", "")
            rows.append(f"| {v['remat']} | {v['headline']} | not run | | | | | | | {why} |")
            continue
        extra = v["step_peak_rss"] - v["runtime_rss"] - v["planned"]["peak"]
        rows.append(
            f"| {v['remat']} | {v['headline']} | {v['model']} @ {v['length']} | "
            f"{gib(v['planned']['peak'])} | {gib(v['step_peak_rss'])} | {gib(v['runtime_rss'])} "
            f"| {extra / GIB:+.2f} | {gib(v['ru_maxrss_self'])} | {v['step_s']} | "
            f"{'; '.join(v['substituted'][:1])} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
