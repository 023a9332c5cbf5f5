"""Load test of ``--config.mode=serve`` against the way OpenRLHF's ``serve_rm`` serves a model.

    REWARDJAX_DATA=/work/shared/data nice -n 15 python benchmarks/serve_load.py
    REWARDJAX_DATA=/work/shared/data nice -n 15 python benchmarks/serve_load.py --models bt \\
        --clients 1,8 --json out.json     # a shorter run

Loopback only, bounded in requests and time. For each model (``bt``: the real MiniLM-L6 encoder
fine-tuned a few steps on HH-RLHF, ``warm``: four such members weight-averaged; reward quality
does not matter here, so both train in seconds and are reused from ``--root`` afterwards):

1. the workdir is exported to an HF checkpoint (``--config.mode=export``) and a pool of real
   texts (HH-RLHF harmless transcripts, AlpacaEval candidates) is scored offline by the score
   mode;
2. the rewardjax server runs in a subprocess; 1, 8 and 64 client threads each send OpenRLHF
   ``/get_reward`` requests of 8 chatml-rendered queries (with ``prompts``) through
   :class:`RewardClient`; every reward that comes back is checked against the offline reward of
   its own text;
3. the baseline runs in a subprocess: the exported checkpoint in PyTorch
   (``AutoModelForSequenceClassification``) behind uvicorn + starlette, one forward per request
   under a lock (no coalescing), the texts tokenized as sent, as ``serve_rm`` does; same texts,
   same clients.

Prints requests/s, texts/s, p50/p95/p99 latency, the rewardjax server's mean batch fill (from
``/metrics``) and the ratios against the baseline.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rewardjax.serve.client import RewardClient  # noqa: E402  (after the path insert)

MODEL = ["--config.model.pooling=pooler", "--config.model.max_length=128"]
MODELS = {  # name -> (config arguments every mode takes, training-only arguments)
    "bt": (["--config=configs/bt.py:data=hh,model=minilm", *MODEL],
           ["--config.train.steps=8", "--config.train.checkpoint_every=8",
            "--config.data.eval_limit=32"]),
    "warm": (["--config=configs/warm.py:data=hh,model=minilm", *MODEL],
             ["--config.train.steps=4", "--config.train.checkpoint_every=4",
              "--config.data.train_limit=64", "--config.data.eval_limit=16",
              "--config.members.eval_train_max=16",
              "--config.train.batch_size=8"]),  # ~4 GB at 16 pairs: too much on a shared box
}
PER_CLIENT = {1: 24, 8: 6, 64: 2}  # requests per client thread at each concurrency
TEXTS_PER_REQUEST = 8


# ----------------------------------------------------------------------------- texts
def _chatml(msgs):
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)


def _hh_messages(transcript):
    parts = re.split(r"\n\n(Human|Assistant): ?", transcript)[1:]
    msgs = [{"role": "user" if r == "Human" else "assistant", "content": c.strip()}
            for r, c in zip(parts[::2], parts[1::2])]
    roles = [m["role"] for m in msgs]
    ok = (msgs and roles[-1] == "assistant" and all(m["content"] for m in msgs)
          and all(a != b for a, b in zip(roles, roles[1:])) and roles[0] == "user")
    return msgs if ok else None


def load_texts(data_dir, n_hh=400, n_alpaca=400):
    """Real conversations as ``{"messages", "prompt", "query"}``: ``prompt``/``query`` are the
    policy's chatml rendering OpenRLHF would send, ``messages`` the score-mode record."""
    convs = []
    with gzip.open(os.path.join(data_dir, "hh-rlhf", "harmless-base-test.jsonl.gz"), "rt") as f:
        for line in f:
            rec = json.loads(line)
            for key in ("chosen", "rejected"):
                msgs = _hh_messages(rec[key])
                if msgs and len(convs) < n_hh:
                    convs.append(msgs)
    alpaca = []
    with gzip.open(os.path.join(data_dir, "alpacaeval-bon", "pools.jsonl.gz"), "rt") as f:
        for i, line in enumerate(f):
            rec = json.loads(line)
            cand = rec["candidates"][(i * 7) % len(rec["candidates"])]["output"]
            if isinstance(cand, str) and cand.strip() and rec["instruction"].strip():
                alpaca.append([{"role": "user", "content": rec["instruction"].strip()},
                               {"role": "assistant", "content": cand.strip()}])
            if len(alpaca) == n_alpaca:
                break
    texts = []
    for i in range(max(len(convs), len(alpaca))):  # interleaved: every request mixes lengths
        for pool in (convs, alpaca):
            if i < len(pool):
                msgs = pool[i]
                prompt = _chatml(msgs[:-1]) + "<|im_start|>assistant\n"
                texts.append({"messages": msgs, "prompt": prompt,
                              "query": prompt + msgs[-1]["content"] + "<|im_end|>"})
    return texts


def batch_of(client, j, n):
    """Text indices of request ``j`` of client thread ``client``: the same at every server."""
    start = (client * 104729 + j * TEXTS_PER_REQUEST) % n
    return [(start + k) % n for k in range(TEXTS_PER_REQUEST)]


# --------------------------------------------------------------------------- processes
def rewardjax_cmd(*args):
    return [sys.executable, "-m", "rewardjax.main", *args]


def _env():
    """CPU unless JAX_PLATFORMS says otherwise (export JAX_PLATFORMS=cuda on a GPU machine)."""
    return {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}


def run_checked(cmd, log_path, timeout):
    with open(log_path, "w") as log:
        r = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                           env=_env())
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): "
                           + open(log_path).read()[-3000:])


def start_process(cmd, log_path, info_path, wait_s=600.0):
    """Starts a server writing ``{"host", "port"}`` to ``info_path`` when up; waits (bounded)
    for a 200 from ``/health``; returns ``(process, base url)``."""
    if os.path.exists(info_path):
        os.remove(info_path)
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=_env())
    log.close()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: "
                               + open(log_path).read()[-3000:])
        try:
            with open(info_path) as f:
                doc = json.load(f)
            url = f"http://{doc['host']}:{doc['port']}"
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    stop_process(proc)
    raise RuntimeError(f"server not healthy after {wait_s}s: " + open(log_path).read()[-3000:])


def stop_process(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


BREAKDOWNS = False  # --breakdowns: also compute WARM's per-member rewards (M + 1 forwards)


def serve_cmd(args, workdir):
    # The baseline returns the reward alone; so does the rewardjax server unless --breakdowns.
    return rewardjax_cmd(*args, "--config.mode=serve", "--config.serve.port=0",
                         f"--config.serve.breakdowns={BREAKDOWNS}", f"--workdir={workdir}")


def prepare(name, root, texts, log_dir):
    """Trains (once), exports to HF and scores ``texts`` offline -> (workdir, hf dir, rewards)."""
    args, train = MODELS[name]
    wd = os.path.join(root, name)
    done = os.path.join(root, f"{name}_trained")  # written once training ran to the end
    if not os.path.exists(done):
        print(f"[{name}] training {wd}", flush=True)
        run_checked(rewardjax_cmd(*args, *train, "--config.train.progress=False",
                                  f"--workdir={wd}"), os.path.join(log_dir, f"{name}_train.log"),
                    1800)
        open(done, "w").close()
    hf = os.path.join(wd, "export_hf")
    if not os.path.exists(os.path.join(hf, "config.json")):
        run_checked(rewardjax_cmd(*args, "--config.mode=export", "--config.export.format=hf",
                                  "--config.export.stats=none",
                                  f"--config.export.dir={hf}", f"--workdir={wd}"),
                    os.path.join(log_dir, f"{name}_export.log"), 900)
    records = os.path.join(root, "texts.jsonl")
    lines = "".join(json.dumps({"messages": t["messages"]}) + "\n" for t in texts)
    out = os.path.join(root, f"{name}_offline.jsonl")
    same = os.path.exists(records) and open(records).read() == lines
    if not (same and os.path.exists(out)):  # offline scores of exactly these texts are kept
        with open(records, "w") as f:
            f.write(lines)
        run_checked(rewardjax_cmd(*args, "--config.mode=score", f"--config.score.input={records}",
                                  f"--config.score.output={out}", f"--workdir={wd}"),
                    os.path.join(log_dir, f"{name}_score.log"), 1800)
    rows = [json.loads(line) for line in open(out)]
    if [r["record"] for r in rows] != list(range(1, len(texts) + 1)):  # 1-based lines
        raise RuntimeError(f"offline scoring dropped texts: {len(rows)} of {len(texts)} kept")
    return wd, hf, [r["reward"] for r in rows]


# ------------------------------------------------------------------------------- load
def read_metrics(url):
    """Sums of the rewardjax server's counters that batch fill is computed from."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {"fill_sum": 0.0, "fill_count": 0.0, "items": 0.0, "batches": 0.0}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        name = key.split("{")[0]
        field = {"rewardjax_batch_fill_sum": "fill_sum", "rewardjax_batch_fill_count":
                 "fill_count", "rewardjax_items_scored_total": "items",
                 "rewardjax_batches_total": "batches"}.get(name)
        if field:
            out[field] += float(value)
    return out


def cpu_seconds(pid):
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))] if s else float("nan")


def run_level(url, texts, n_clients, per_client, offline=None, pid=None, cap_s=300.0,
              timeout=600.0):
    """``n_clients`` threads, each sending ``per_client`` requests back to back (none issued
    after ``cap_s``); checks each reward against ``offline`` when given. With the server's
    ``pid``, also the server's CPU seconds: on a shared machine texts per CPU-second compare
    the servers' own cost whatever share of the cores each was given."""
    client = RewardClient(url, protocol="openrlhf", timeout=timeout, retries=50, backoff=0.1,
                          max_backoff=2.0, total_timeout=timeout)
    lat, errors, mismatches, worst = [], [], [], [0.0]
    lock, barrier = threading.Lock(), threading.Barrier(n_clients + 1)

    def worker(c):
        barrier.wait()
        for j in range(per_client):
            if time.monotonic() > stop_at:
                return
            idx = batch_of(c, j, len(texts))
            t0 = time.perf_counter()
            try:
                rewards = client.get_reward([texts[i]["query"] for i in idx],
                                            [texts[i]["prompt"] for i in idx])
            except Exception as e:  # counted and reported, never hidden
                with lock:
                    errors.append(repr(e)[:300])
                continue
            dt = time.perf_counter() - t0
            with lock:
                lat.append(dt)
                if offline is not None:
                    for i, r in zip(idx, rewards):
                        d = abs(r - offline[i])
                        worst[0] = max(worst[0], d)
                        if d > 1e-4 + 1e-4 * abs(offline[i]):
                            mismatches.append((i, r, offline[i]))

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(n_clients)]
    for t in threads:
        t.start()
    stop_at = time.monotonic() + cap_s
    barrier.wait()
    start, cpu0 = time.perf_counter(), cpu_seconds(pid) if pid else None
    for t in threads:
        t.join(timeout=cap_s + timeout + 60)
    wall = time.perf_counter() - start
    cpu = cpu_seconds(pid) - cpu0 if pid else None
    client.close()
    n = len(lat)
    return {"clients": n_clients, "requests": n, "texts": n * TEXTS_PER_REQUEST,
            "wall_s": wall, "req_per_s": n / wall, "texts_per_s": n * TEXTS_PER_REQUEST / wall,
            "p50_s": percentile(lat, 50), "p95_s": percentile(lat, 95),
            "p99_s": percentile(lat, 99), "server_cpu_s": cpu,
            "texts_per_cpu_s": n * TEXTS_PER_REQUEST / cpu if cpu else None,
            "errors": len(errors), "error_examples": errors[:3],
            "retried_503": client.stats["rejected_503"],
            "checked": None if offline is None else n * TEXTS_PER_REQUEST,
            "mismatches": None if offline is None else len(mismatches),
            "max_abs_diff": None if offline is None else worst[0],
            "mismatch_examples": mismatches[:3]}


def load_levels(url, texts, levels, pid, offline=None, metrics=False):
    rows = []
    for n in levels:
        before = read_metrics(url) if metrics else None
        row = run_level(url, texts, n, PER_CLIENT.get(n, 2), offline, pid)
        if metrics:
            after = read_metrics(url)
            d = {k: after[k] - before[k] for k in after}
            row["batch_fill"] = d["fill_sum"] / d["fill_count"] if d["fill_count"] else None
            row["texts_per_batch"] = d["items"] / d["batches"] if d["batches"] else None
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- baseline
def baseline_server(model_dir, info_path, max_length):
    """OpenRLHF ``serve_rm`` style: one PyTorch forward per request, one at a time."""
    import socket

    import torch
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval().to(device)
    lock = threading.Lock()

    def score(queries):
        with lock, torch.inference_mode():
            enc = tok(queries, padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt").to(device)
            return model(**enc).logits[:, 0].float().tolist()

    async def get_reward(request):
        queries = (await request.json())["query"]
        rewards = await run_in_threadpool(score, queries)
        return JSONResponse({"rewards": rewards, "scores": rewards, "extra_logs": {}})

    async def health(request):
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/get_reward", get_reward, methods=["POST"]),
                            Route("/health", health)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    with open(info_path, "w") as f:
        json.dump({"host": "127.0.0.1", "port": sock.getsockname()[1]}, f)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def table(results):
    head = (f"{'model':6} {'server':9} {'clients':>7} {'req/s':>7} {'texts/s':>8} {'p50 s':>7} "
            f"{'p95 s':>7} {'p99 s':>7} {'txt/cpu-s':>9} {'fill':>5} {'txt/batch':>9} "
            f"{'503s':>5} {'err':>4} {'checked':>8} {'bad':>4}")
    lines = [head]
    for (model, server), rows in results.items():
        for r in rows:
            fill = f"{r['batch_fill']:.2f}" if r.get("batch_fill") is not None else "-"
            tpb = f"{r['texts_per_batch']:.1f}" if r.get("texts_per_batch") is not None else "-"
            lines.append(
                f"{model:6} {server:9} {r['clients']:>7} {r['req_per_s']:>7.2f} "
                f"{r['texts_per_s']:>8.1f} {r['p50_s']:>7.3f} {r['p95_s']:>7.3f} "
                f"{r['p99_s']:>7.3f} {r['texts_per_cpu_s'] or 0:>9.2f} {fill:>5} {tpb:>9} "
                f"{r['retried_503']:>5} "
                f"{r['errors']:>4} {r['checked'] or '-':>8} "
                f"{'-' if r['mismatches'] is None else r['mismatches']:>4}")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="/tmp/rewardjax_serve_load", help="workdirs and logs")
    p.add_argument("--models", default="bt,warm")
    p.add_argument("--breakdowns", action="store_true",
                   help="serve WARM's per-member rewards too (the baseline gives the reward only)")
    p.add_argument("--clients", default="1,8,64")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--baseline-server", nargs=3, metavar=("MODEL_DIR", "INFO", "MAX_LEN"),
                   help=argparse.SUPPRESS)
    a = p.parse_args()
    global BREAKDOWNS
    BREAKDOWNS = bool(a.breakdowns)
    # A plain kill still runs the finally blocks that stop the servers and subprocesses.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.baseline_server:
        return baseline_server(a.baseline_server[0], a.baseline_server[1],
                               int(a.baseline_server[2]))
    data = os.environ.get("REWARDJAX_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))
    os.makedirs(a.root, exist_ok=True)
    texts = load_texts(data)
    levels = [int(x) for x in a.clients.split(",")]
    print(f"{len(texts)} texts (HH-RLHF harmless + AlpacaEval), {TEXTS_PER_REQUEST} per request, "
          f"clients {levels}, requests per client {[PER_CLIENT.get(n, 2) for n in levels]}",
          flush=True)
    results = {}
    for name in a.models.split(","):
        wd, hf, offline = prepare(name, a.root, texts, a.root)
        proc, url = start_process(serve_cmd(MODELS[name][0], wd),
                                  os.path.join(a.root, f"{name}_serve.log"),
                                  os.path.join(wd, "serve.json"))
        try:
            print(f"[{name}] rewardjax server at {url}", flush=True)
            results[(name, "rewardjax")] = load_levels(url, texts, levels, proc.pid, offline,
                                                        metrics=True)
        finally:
            stop_process(proc)
        info = os.path.join(a.root, f"{name}_baseline.json")
        proc, url = start_process([sys.executable, os.path.abspath(__file__),
                                   "--baseline-server", hf, info, "128"],
                                  os.path.join(a.root, f"{name}_baseline.log"), info)
        try:
            print(f"[{name}] PyTorch baseline at {url}", flush=True)
            run_level(url, texts, 1, 2)  # first forwards allocate; not measured
            results[(name, "baseline")] = load_levels(url, texts, levels, proc.pid)
        finally:
            stop_process(proc)
    print(table(results))
    for name in a.models.split(","):
        for rj, base in zip(results[(name, "rewardjax")], results[(name, "baseline")]):
            speed = rj["texts_per_s"] / base["texts_per_s"]
            cost = rj["texts_per_cpu_s"] / base["texts_per_cpu_s"]
            print(f"{name} {rj['clients']:>2} clients: texts/s x{speed:.2f}, "
                  f"texts per server CPU-second x{cost:.2f}, "
                  f"p99 {rj['p99_s']:.3f}s vs {base['p99_s']:.3f}s "
                  f"(x{base['p99_s'] / rj['p99_s']:.2f} lower)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({f"{m}/{s}": rows for (m, s), rows in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
