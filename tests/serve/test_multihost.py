"""A mesh over two processes serves like training runs: process 0 answers HTTP, process 1 runs
every batch in lockstep (rewardjax.serve.lockstep), the rewards equal the single-process score
mode, and SIGTERM to process 0 releases process 1 cleanly."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT
from tests.serve.conftest import TEXTS
from tests.serve.test_serve_mode import request, wait_for
from tests.serve.test_server import offline_scores

# Each process: one CPU device, gloo collectives between them, then the serve mode as the
# command line runs it after jax.distributed.initialize().
LAUNCH = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]))
    sys.path.insert(0, sys.argv[4])
    from rewardjax import modes
    from tests.serve.conftest import serve_config
    config = serve_config("bt")
    config.serve.port = 0
    out = modes.run(config, sys.argv[3])
    print("RESULT", out, flush=True)
""")


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_serve_the_score_modes_rewards(bt_workdir, tmp_path):
    config, workdir = bt_workdir
    info = os.path.join(workdir, "serve.json")
    if os.path.exists(info):
        os.remove(info)
    script = tmp_path / "launch.py"
    script.write_text(LAUNCH)
    coord = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    procs = [subprocess.Popen([sys.executable, str(script), coord, str(i), workdir, ROOT],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        def up():
            if any(p.poll() is not None for p in procs):
                raise AssertionError("a process exited: " + procs[0].stdout.read()[-3000:])
            if not os.path.exists(info):
                return None
            import json

            port = json.load(open(info))["port"]
            try:
                return port if request(port, "GET", "/health", timeout=5)[0] == 200 else None
            except OSError:
                return None

        port = wait_for(up, 400, "the two-process server's /health")
        items = [{"prompt": p, "response": r} for p, r in TEXTS if p]
        status, body = request(port, "POST", "/v1/rewards", {"items": items})
        assert status == 200, body
        import json

        got = [r["reward"] for r in json.loads(body)["results"]]
        want = offline_scores(config, workdir, tmp_path, [(p, r) for p, r in TEXTS if p])
        assert got == pytest.approx(want, abs=1e-5)

        procs[0].send_signal(signal.SIGTERM)
        out1, _ = procs[1].communicate(timeout=120)
        assert procs[1].returncode == 0, out1[-3000:]
        assert "RESULT {'process': 1, 'batches':" in out1
        procs[0].wait(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
