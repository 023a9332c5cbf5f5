"""``--config.mode=serve`` as a process over a 4-device mesh: port 0 found through serve.json,
the score mode's rewards, a client that hangs up leaves nothing queued, and SIGTERM answers every
request in flight before the process exits."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.serve.conftest import TEXTS
from tests.serve.test_server import metric, offline_scores

CFG = os.path.join(ROOT, "configs", "bt.py")


def request(port, method, path, body=None, timeout=120):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def wait_for(predicate, limit_s, what):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def server_process(bt_workdir):
    _, workdir = bt_workdir
    info = os.path.join(workdir, "serve.json")
    if os.path.exists(info):
        os.remove(info)
    # Four virtual devices: the model is served over a 4-way data mesh, as on a multi-chip host.
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rewardjax.main", f"--config={CFG}:runlocal",
         "--config.mode=serve", f"--workdir={workdir}", "--config.serve.port=0",
         "--config.serve.max_batch_tokens=512", "--config.serve.max_wait_ms=3000"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def ready():
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read()[-3000:])
            if not os.path.exists(info):
                return None
            port = json.load(open(info))["port"]
            try:
                return port if request(port, "GET", "/health", timeout=5)[0] == 200 else None
            except OSError:
                return None

        port = wait_for(ready, 300, "the server to be ready")
        yield proc, port, json.load(open(info))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_mesh_server_hang_up_and_sigterm_drain(server_process, bt_workdir, tmp_path):
    proc, port, info = server_process
    assert info["host"] == "127.0.0.1" and info["port"] == port and port > 0
    body = {"items": [{"prompt": p, "response": r} for p, r in TEXTS]}

    # Served over the 4-device mesh (rows rounded to multiples of 4): the score mode's rewards
    # (this process: one device).
    status, text = request(port, "POST", "/v1/rewards", body)
    assert status == 200, text
    want = offline_scores(*bt_workdir, tmp_path, TEXTS)
    np.testing.assert_allclose([r["reward"] for r in json.loads(text)["results"]], want,
                               atol=1e-5)
    scored = metric(request(port, "GET", "/metrics")[1], "rewardjax_items_scored_total")
    assert scored == len(TEXTS)

    # A client that hangs up while its texts wait (max_wait_ms=3000): they are never scored.
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw = json.dumps(body).encode()
    sock.sendall(b"POST /v1/rewards HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
    wait_for(lambda: metric(request(port, "GET", "/metrics")[1], "rewardjax_queue_depth") > 0,
             30, "the hung-up request to be queued")
    sock.close()
    wait_for(lambda: 'reason="cancelled"} 1.0' in request(port, "GET", "/metrics")[1], 30,
             "the server to notice the hang-up")
    text = request(port, "GET", "/metrics")[1]
    assert metric(text, "rewardjax_queue_depth") == 0
    assert metric(text, "rewardjax_items_scored_total") == scored  # none of the hung-up texts

    # Requests in flight when SIGTERM arrives all get their rewards, then the process exits 0.
    answers = []

    def post(k):
        answers.append(request(port, "POST", "/get_reward",
                               {"query": [TEXTS[k][1]]}))

    threads = [threading.Thread(target=post, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: metric(request(port, "GET", "/metrics")[1], "rewardjax_queue_depth")
             == 4, 30, "four requests queued (no bucket full: they wait for company)")
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(120)
    assert sorted(status for status, _ in answers) == [200] * 4, answers
    # uvicorn re-raises the signal once drained, so supervisors see a SIGTERM exit.
    assert proc.wait(120) in (0, -signal.SIGTERM)
    for _, text in answers:
        assert len(json.loads(text)["rewards"]) == 1
    out = proc.stdout.read()
    assert f"http://127.0.0.1:{port}" in out
