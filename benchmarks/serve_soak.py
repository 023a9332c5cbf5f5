"""Soak test of ``--config.mode=serve``: mixed valid and invalid requests at high concurrency.

    REWARDJAX_DATA=/work/shared/data nice -n 15 python benchmarks/serve_soak.py --minutes 10

Reuses (or trains) the MiniLM ``bt`` workdir of benchmarks/serve_load.py under ``--root`` and
its offline scores of the same real texts. The server runs with a bearer token, a small queue
(``serve.max_queue``, so back-pressure 503s happen) and small request limits. ``--clients``
threads send, until ``--minutes`` have passed (and at most ``--max-requests`` in all):

* valid ``/get_reward`` (chatml queries with prompts) and ``/v1/rewards`` (messages) requests of
  1-8 random texts: each must come back 200 with exactly the offline rewards of *its own* texts
  in order (a lost, misrouted or wrong reward is a failure), or 503 with ``Retry-After``;
* invalid ones: bad JSON, wrong types, missing fields, empty responses, a query that does not
  start with its prompt, unknown roles, too many items, a body over the byte limit, a missing or
  wrong token, an unknown path: each must get its 4xx with a JSON ``error``;
* abandoned ones: a body cut short, a valid request whose client hangs up before the reply.

The server's resident memory (``VmRSS``) is sampled throughout; the run fails if it grows by
10% or more between the end of the first minute and the end, if any valid request gets a 5xx
other than 503, or if any response is lost or wrong. Prints a summary and exits 1 on failure.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_load import MODELS, load_texts, prepare, serve_cmd, start_process, stop_process  # noqa: E402

TOKEN_ENV, TOKEN = "RJ_SOAK_TOKEN", "soak-token-3141"
LIMITS = ["--config.serve.max_queue=96", "--config.serve.max_items_per_request=64",
          "--config.serve.max_request_bytes=1048576", f"--config.serve.token_env={TOKEN_ENV}"]
INVALID = {  # kind -> (the statuses that are right, weight)
    "bad_json": ({400}, 1), "wrong_type": ({400, 422}, 1), "missing_field": ({400}, 1),
    "empty_response": ({400, 422}, 1), "prompt_mismatch": ({400, 422}, 1),
    "unknown_role": ({400, 422}, 1), "too_many_items": ({413}, 1), "too_big": ({413}, 0.1),
    "no_token": ({401}, 1), "wrong_token": ({401}, 1), "unknown_path": ({404, 405}, 1),
}


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Conn:
    """A keep-alive HTTP connection of one thread; reopened after any failure."""

    def __init__(self, host, port, timeout):
        self.host, self.port, self.timeout, self.conn = host, port, timeout, None

    def send(self, method, path, body: bytes, token=TOKEN):
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        for attempt in range(2):  # a stale kept-alive socket is reopened once
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
                continue
            except Exception:
                self.conn.close()
                self.conn = None
                raise
            if resp.will_close:
                self.conn.close()
                self.conn = None
            return resp.status, resp.headers, data
        raise AssertionError("unreachable")


def valid_request(rng, texts):
    idx = [rng.randrange(len(texts)) for _ in range(rng.randint(1, 8))]
    if rng.random() < 0.5:
        body = {"query": [texts[i]["query"] for i in idx],
                "prompts": [texts[i]["prompt"] for i in idx]}
        return "/get_reward", body, idx
    return "/v1/rewards", {"items": [{"messages": texts[i]["messages"]} for i in idx]}, idx


def invalid_request(kind, rng, texts):
    """(path, body bytes, token) of one invalid request of ``kind``."""
    t = texts[rng.randrange(len(texts))]
    token, path = TOKEN, "/get_reward"
    body = {"query": [t["query"]], "prompts": [t["prompt"]]}
    if kind == "bad_json":
        return path, b'{"query": ["unterminated', token
    if kind == "wrong_type":
        body = {"query": "not a list"}
    elif kind == "missing_field":
        path, body = "/v1/rewards", {"itemz": []}
    elif kind == "empty_response":
        path, body = "/v1/rewards", {"items": [{"prompt": "hi", "response": "   "}]}
    elif kind == "prompt_mismatch":
        body = {"query": ["something else entirely"], "prompts": [t["prompt"]]}
    elif kind == "unknown_role":
        path = "/v1/rewards"
        body = {"items": [{"messages": [{"role": "wizard", "content": "x"},
                                        {"role": "assistant", "content": "y"}]}]}
    elif kind == "too_many_items":
        path, body = "/v1/rewards", {"items": [{"prompt": "p", "response": "r"}] * 65}
    elif kind == "too_big":
        path, body = "/v1/rewards", {"items": [{"prompt": "p", "response": "x" * 1_100_000}]}
    elif kind == "no_token":
        token = None
    elif kind == "wrong_token":
        token = "not-the-token"
    elif kind == "unknown_path":
        path = "/v2/everything"
    return path, json.dumps(body).encode(), token


def abandon(host, port, texts, rng):
    """Hangs up mid-body, or right after sending a whole valid request."""
    path, body, _ = valid_request(rng, texts)
    data = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(head + (data[: len(data) // 2] if rng.random() < 0.5 else data))


def rewards_of(path, doc):
    if path == "/get_reward":
        return doc["rewards"]
    return [r["reward"] for r in doc["results"]]


def soak(url, pid, texts, offline, minutes, clients, max_requests, seed=0):
    host, port = url.split("//")[1].split(":")
    port = int(port)
    deadline = time.monotonic() + minutes * 60
    warm_in = time.monotonic() + min(60.0, minutes * 60 / 4)
    counts = collections.Counter()
    failures, lock = [], threading.Lock()
    budget = [max_requests]
    rss = [(0.0, rss_kb(pid))]
    start = time.monotonic()
    stop = threading.Event()

    def fail(msg):
        with lock:
            failures.append(msg[:400])

    def take():
        with lock:
            budget[0] -= 1
            return budget[0] >= 0

    def worker(c):
        rng = random.Random(seed * 1000 + c)
        conn = Conn(host, port, timeout=180)
        kinds, weights = list(INVALID), [w for _, w in INVALID.values()]
        while time.monotonic() < deadline and take():
            roll, what, t0 = rng.random(), "abandon", time.monotonic()
            try:
                if roll < 0.7:
                    path, body, idx = valid_request(rng, texts)
                    what = f"valid {path}"
                    status, headers, data = conn.send("POST", path, json.dumps(body).encode())
                    if status == 503:
                        with lock:
                            counts["valid_503"] += 1
                        if headers.get("Retry-After") is None:
                            fail(f"503 without Retry-After: {data[:200]!r}")
                        time.sleep(min(float(headers.get("Retry-After") or 1), 5.0))
                        continue
                    if status != 200:
                        fail(f"valid {path} of {len(idx)} texts got {status}: {data[:300]!r}")
                        continue
                    got = rewards_of(path, json.loads(data))
                    want = [offline[i] for i in idx]
                    bad = len(got) != len(want) or any(
                        abs(g - w) > 1e-4 + 1e-4 * abs(w) for g, w in zip(got, want))
                    with lock:
                        counts["valid_ok"] += 1
                        counts["texts_checked"] += len(idx)
                    if bad:
                        fail(f"wrong rewards for texts {idx}: got {got}, offline {want}")
                elif roll < 0.97:
                    kind = rng.choices(kinds, weights)[0]
                    path, data, token = invalid_request(kind, rng, texts)
                    what = f"invalid {kind}"
                    status, _, reply = conn.send("POST", path, data, token=token)
                    with lock:
                        counts[f"invalid_{kind}"] += 1
                    if status == 503:
                        with lock:
                            counts["invalid_503"] += 1
                        continue
                    ok = status in INVALID[kind][0]
                    try:
                        has_error = "error" in json.loads(reply)
                    except ValueError:
                        has_error = False
                    # Starlette's own 404 is plain text (noted for serve-core); others are JSON.
                    if not ok or not (has_error or kind == "unknown_path"):
                        fail(f"invalid {kind} got {status}: {reply[:200]!r}")
                else:
                    abandon(host, port, texts, rng)
                    with lock:
                        counts["abandoned"] += 1
            except Exception as e:  # a lost response: no reply, or a broken one
                fail(f"lost ({what}, at {t0 - start:.0f}s, after {time.monotonic() - t0:.0f}s): "
                     f"{type(e).__name__}: {e}")

    def sampler():
        while not stop.wait(5.0):
            rss.append((time.monotonic() - start, rss_kb(pid)))

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(clients)]
    mon = threading.Thread(target=sampler, daemon=True)
    mon.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic()) + 300)
    stop.set()
    mon.join(timeout=10)
    alive = sum(t.is_alive() for t in threads)
    if alive:
        fail(f"{alive} client threads still running 300 s after the deadline")
    rss.append((time.monotonic() - start, rss_kb(pid)))
    wall = time.monotonic() - start
    after_warm = [kb for t, kb in rss if t >= warm_in - start] or [rss[-1][1]]
    base = after_warm[0]
    return {"minutes": wall / 60, "clients": clients, "counts": dict(counts),
            "failures": len(failures), "failure_examples": failures[:10],
            "valid_per_s": counts["valid_ok"] / wall,
            "rss_mb": {"ready": rss[0][1] / 1024, "after_warm_in": base / 1024,
                       "max": max(kb for _, kb in rss) / 1024, "end": rss[-1][1] / 1024},
            "rss_growth_after_warm_in": (rss[-1][1] - base) / base,
            "rss_series_mb": [(round(t), round(kb / 1024, 1))
                              for t, kb in rss[:: max(1, len(rss) // 40)]]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="/tmp/rewardjax_serve_load")
    p.add_argument("--model", default="bt", choices=sorted(MODELS))
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=48)
    p.add_argument("--max-requests", type=int, default=200_000)
    p.add_argument("--json", default="")
    a = p.parse_args()
    # A plain kill still runs the finally blocks that stop the servers and subprocesses.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    data = os.environ.get("REWARDJAX_DATA",
                          os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__)))), "shared", "data"))
    os.makedirs(a.root, exist_ok=True)
    texts = load_texts(data)
    wd, _, offline = prepare(a.model, a.root, texts, a.root)
    os.environ[TOKEN_ENV] = TOKEN
    proc, url = start_process(serve_cmd(MODELS[a.model][0] + LIMITS, wd),
                              os.path.join(a.root, f"{a.model}_soak_serve.log"),
                              os.path.join(wd, "serve.json"))
    try:
        print(f"soaking {url} (pid {proc.pid}) for {a.minutes} min with {a.clients} clients",
              flush=True)
        result = soak(url, proc.pid, texts, offline, a.minutes, a.clients, a.max_requests)
    finally:
        stop_process(proc)
    result["server_exit_code"] = proc.returncode
    ok = (not result["failures"] and result["rss_growth_after_warm_in"] < 0.10
          and result["counts"].get("valid_ok", 0) > 0)
    result["passed"] = ok
    print(json.dumps(result, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
