"""The ``serve`` mode: an HTTP reward server over the workdir's reward model.

    python -m rewardjax.main --config=configs/bt.py --config.mode=serve --workdir=runs/x \\
        --config.serve.port=8000 --config.serve.policy_template=chatml

Any workdir with a scorer serves (bt, more, WARM members, ArmoRM, DMoERM, a native export, or
an HF checkpoint / GGUF as ``model.path`` with a trained head): the recipe says how the workdir
becomes a :class:`rewardjax.runtime.Scorer`, and this mode never asks which recipe it is.

Endpoints (:mod:`rewardjax.serve.app`): OpenRLHF's ``POST /get_reward``, ``POST /v1/rewards``,
``GET /health`` (ready after warm-up compiled every batch shape), ``GET /metrics``. The server
binds ``serve.host`` (127.0.0.1 unless asked) on ``serve.port`` (0: a free port), writes
``<workdir>/serve.json`` (host, port, pid) once listening, and on SIGTERM / Ctrl-C stops
accepting connections, answers every request in flight, scores whatever is queued and exits
(uvicorn then re-raises the signal, so the exit status says SIGTERM). A failed warm-up stops
the server with the error.
A bearer token, when wanted, is read from the environment variable named by
``serve.token_env`` and never logged.

Meshes: a model sharded over the devices of one host serves from that one process (the
scorer's forward is the mesh-sharded one of training). A mesh over several processes
(``--multihost``, one process per host as in training) serves from process 0, which binds the
port; the other processes run every batch in lockstep with it
(:mod:`rewardjax.serve.lockstep`) and return when process 0 shuts down.
"""

from __future__ import annotations

import logging
import os
import signal
import socket

import jax

from rewardjax import recipes
from rewardjax.runtime import write_json
from rewardjax.serve.app import RewardServer, build_app, token_from_env
from rewardjax.serve.lockstep import LockstepScorer, follow

READS = ("serve",)

log = logging.getLogger(__name__)


def load_scorer(config, workdir: str):
    """The workdir's scorer as served: without the costly breakdowns when
    ``serve.breakdowns=False``."""
    s = config.serve
    scorer = recipes.get(config.recipe).scorer(config, workdir, "serve")
    if not s.breakdowns:
        if s.combine not in ("", "wa"):
            raise ValueError(f"serve.combine={s.combine} combines the members' rewards, which "
                             "serve.breakdowns=False leaves out; keep breakdowns or unset combine")
        scorer = scorer.reward_only()
    return scorer


def make_server(config, workdir: str, scorer=None) -> RewardServer:
    """The workdir's scorer (or ``scorer``) behind a :class:`RewardServer` configured by
    ``config.serve``."""
    s = config.serve
    token = token_from_env(s.token_env)  # before loading the model: fail fast
    if scorer is None:
        scorer = load_scorer(config, workdir)
    return RewardServer(scorer, recipe=config.recipe, token=token,
                        max_batch_tokens=int(s.max_batch_tokens),
                        max_wait_ms=float(s.max_wait_ms), max_queue=int(s.max_queue),
                        max_items_per_request=int(s.max_items_per_request),
                        max_request_bytes=int(s.max_request_bytes),
                        policy_template=s.policy_template, combine=s.combine, lam=float(s.lam),
                        normalize=bool(s.normalize))


def run(config, workdir: str) -> dict:
    """Serves until SIGTERM / SIGINT; returns ``{"host", "port"}`` after a clean shutdown
    (processes other than 0 of a multi-process mesh: ``{"process", "batches"}``)."""
    lockstep = None
    if jax.process_count() > 1:
        scorer = load_scorer(config, workdir)
        if jax.process_index() != 0:
            batches = follow(scorer)  # every forward of process 0's server, until it stops
            return {"process": jax.process_index(), "batches": batches}
        lockstep = LockstepScorer(scorer)
        # uvicorn re-raises SIGTERM once drained; with the default handler process 0 would die
        # without leaving the coordination service, and the others abort at their exit.
        # Raised into a normal exit here, every process leaves jax.distributed cleanly.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_cleanly)
    try:
        return _serve(config, workdir, lockstep)
    finally:
        if lockstep is not None:
            lockstep.close()


def _exit_cleanly(signum, frame):
    raise SystemExit(0)


def _serve(config, workdir: str, scorer) -> dict:
    import uvicorn

    server = make_server(config, workdir, scorer)
    host, port = str(config.serve.host), int(config.serve.port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))  # bound here so port 0 becomes a known port before serving
    port = sock.getsockname()[1]
    info = {"host": host, "port": port, "pid": os.getpid(), "recipe": config.recipe,
            "step": server.scorer.step}
    write_json(os.path.join(workdir, "serve.json"), info)
    print(f"serving {config.recipe} reward model of {workdir} on http://{host}:{port} "
          "(ready when GET /health says ok)", flush=True)
    uv = uvicorn.Server(uvicorn.Config(build_app(server), log_level="info", access_log=False,
                                       lifespan="on", timeout_graceful_shutdown=None))
    server.on_warm_error = lambda: setattr(uv, "should_exit", True)  # no half-up server
    uv.run(sockets=[sock])
    if server.warm_error is not None:
        raise RuntimeError(f"warm-up failed: {server.warm_error}") from server.warm_error
    return {"host": host, "port": port}
