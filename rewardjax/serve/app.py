"""The reward server's ASGI app (Starlette): routes, auth, limits, warm-up and draining.

``POST /get_reward`` (OpenRLHF), ``POST /v1/rewards`` (rewardjax), ``GET /health`` (503
``warming`` until every batch shape is compiled, then 200) and ``GET /metrics`` (Prometheus).
Texts are encoded exactly as at training time by the scorer's encoder, queued in the
:class:`rewardjax.serve.batcher.Batcher` and answered with their own rewards. The lifespan
starts warm-up and the batch worker; on shutdown (uvicorn's graceful SIGTERM: no new
connections, in-flight requests finish) the worker scores whatever is still queued, then stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import threading
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rewardjax.runtime import batch_axis_size
from rewardjax.serve.batcher import Batcher, QueueFull
from rewardjax.serve.metrics import ServeMetrics
from rewardjax.serve.post import make_post
from rewardjax.serve.protocol import (
    POLICY_TEMPLATES,
    BadRequest,
    extra_logs,
    item_result,
    parse_get_reward,
    parse_items,
)

log = logging.getLogger(__name__)

DEFAULTS = {"max_batch_tokens": 8192, "max_wait_ms": 5.0, "max_queue": 4096,
            "max_items_per_request": 1024, "max_request_bytes": 8 * 2**20,
            "policy_template": "auto", "combine": "", "lam": 0.5, "normalize": True,
            "token": None, "retry_after_s": 1}


class RewardServer:
    """A scorer behind a batcher, with the request handling both protocols share.

    Args:
      scorer: a :class:`rewardjax.runtime.Scorer` with fixed shapes.
      recipe: named in responses (``model.recipe``).
      **options: :data:`DEFAULTS` (the ``serve`` config section; ``token`` is the bearer token
        itself, already read from the environment).
    """

    def __init__(self, scorer, recipe: str = "", **options):
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown server options {sorted(unknown)}")
        self.opts = {**DEFAULTS, **options}
        if self.opts["policy_template"] not in POLICY_TEMPLATES:
            raise ValueError(f"unknown serve.policy_template {self.opts['policy_template']!r}; "
                             f"choose from {', '.join(POLICY_TEMPLATES)}")
        self.scorer, self.recipe = scorer, recipe
        self.metrics = ServeMetrics()
        post, self.labels = make_post(scorer, combine=self.opts["combine"],
                                      lam=float(self.opts["lam"]),
                                      normalize=bool(self.opts["normalize"]))
        self.batcher = Batcher(scorer, max_batch_tokens=int(self.opts["max_batch_tokens"]),
                               max_wait_ms=float(self.opts["max_wait_ms"]),
                               max_queue=int(self.opts["max_queue"]), post=post,
                               metrics=self.metrics, row_multiple=row_multiple(scorer))
        self.ready = threading.Event()
        self.warm_error: BaseException | None = None
        self.on_warm_error = None  # called when warm-up fails (the mode stops the server)
        self._encode_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Compiles every batch shape, then starts the worker and says ready."""
        try:
            sample = self.scorer.encoder.encode([{"role": "user", "content": "warm up"}],
                                                "a response to warm the server up")
            if sample is None:
                raise ValueError("the encoder drops even a short warm-up text")
            t0 = time.monotonic()
            n = self.batcher.warm_up(sample)
            self.metrics.compiled_shapes.set(n)
            log.info("warm-up: %d batch shapes compiled in %.1fs", n, time.monotonic() - t0)
            self.batcher.start()
            self.ready.set()
        except BaseException as err:  # noqa: BLE001 -- reported by /health and the mode
            self.warm_error = err
            log.exception("warm-up failed")
            if self.on_warm_error is not None:
                self.on_warm_error()
            raise

    def close(self) -> None:
        """Scores every queued text, then stops the worker (SIGTERM drain) and releases the
        other processes of a multi-process mesh (``LockstepScorer.close``)."""
        self.batcher.stop()
        release = getattr(self.scorer, "close", None)
        if release is not None:
            release()

    # -- request handling --------------------------------------------------------------------
    def _encode(self, items):
        enc = self.scorer.encoder
        with self._encode_lock:  # the encoder's truncation counters are not thread-safe
            before = enc.stats.as_dict()
            seqs = []
            for i, (p, r) in enumerate(items):
                try:
                    seqs.append(enc.encode(p, r))
                except Exception as err:  # noqa: BLE001 -- e.g. a chat template's own check
                    raise BadRequest(f"item {i} cannot be encoded as the model was trained: "
                                     f"{type(err).__name__}: {err}", 422) from None
            after = enc.stats.as_dict()
        for part in ("prompt_truncated", "response_truncated", "dropped"):
            if after.get(part, 0) > before.get(part, 0):
                self.metrics.truncated.labels(part=part.split("_")[0]).inc(
                    after[part] - before[part])
        for i, s in enumerate(seqs):
            if s is None:
                raise BadRequest(f"item {i} is longer than model.max_length and the training "
                                 "truncation policy (data.truncation=drop) drops it", 422)
        return seqs

    async def _body(self, request: Request):
        limit = int(self.opts["max_request_bytes"])
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadRequest(f"body of {declared} bytes; at most {limit} "
                             "(serve.max_request_bytes)", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(f"body over {limit} bytes (serve.max_request_bytes)", 413)
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BadRequest(f"invalid JSON: {err}") from None

    def _authorized(self, request: Request) -> bool:
        token = self.opts["token"]
        if not token:
            return True
        got = request.headers.get("authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {token}".encode())

    async def handle(self, request: Request, endpoint: str) -> Response:
        t0 = time.monotonic()
        resp = await self._handle(request, endpoint)
        self.metrics.requests.labels(endpoint=endpoint, status=str(resp.status_code)).inc()
        self.metrics.latency.labels(endpoint=endpoint).observe(time.monotonic() - t0)
        return resp

    def _refuse(self, status: int, message: str, reason: str, **headers) -> JSONResponse:
        self.metrics.rejected.labels(reason=reason).inc()
        return JSONResponse({"error": message}, status_code=status, headers=headers or None)

    async def _handle(self, request: Request, endpoint: str) -> Response:
        if not self._authorized(request):
            return self._refuse(401, "missing or wrong bearer token (Authorization: Bearer ...)",
                                "unauthorized", **{"WWW-Authenticate": "Bearer"})
        retry = str(self.opts["retry_after_s"])
        if not self.ready.is_set():
            return self._refuse(503, "warming up: batch shapes are compiling", "warming",
                                **{"Retry-After": retry})
        try:
            body = await self._body(request)
            if endpoint == "get_reward":
                items = parse_get_reward(body, self.opts["policy_template"],
                                         int(self.opts["max_items_per_request"]))
            else:
                items = parse_items(body, int(self.opts["max_items_per_request"]))
            seqs = await run_in_threadpool(self._encode, items)
        except BadRequest as err:
            reason = "too_large" if err.status == 413 else "bad_request"
            return self._refuse(err.status, str(err), reason)
        except ClientDisconnect:  # hung up mid-body: nothing was queued, nobody reads a reply
            return self._refuse(499, "client disconnected", "cancelled")
        try:
            job = self.batcher.submit(seqs)
        except QueueFull as err:
            return self._refuse(503, f"queue full ({err}); retry later", "queue_full",
                                **{"Retry-After": retry})
        except RuntimeError as err:  # shutting down
            return self._refuse(503, str(err), "shutting_down", **{"Retry-After": retry})
        try:
            rows = await self._wait(request, job)
        except Exception as err:  # noqa: BLE001 -- the batch failed; the server goes on
            return self._refuse(500, f"scoring failed: {type(err).__name__}: {err}", "error")
        if rows is None:  # the client went away; nothing of its request is left queued
            return self._refuse(499, "client disconnected", "cancelled")
        results = [item_result(row, self.labels) for row in rows]
        bad = [i for i, r in enumerate(results) if not math.isfinite(r["reward"])]
        if bad:
            return self._refuse(500, f"the model gave non-finite rewards for items {bad}",
                                "error")
        if endpoint == "get_reward":
            rewards = [r["reward"] for r in results]
            return JSONResponse({"rewards": rewards, "scores": rewards,
                                 "extra_logs": extra_logs(results)})
        return JSONResponse({"results": results,
                             "model": {"recipe": self.recipe, "step": self.scorer.step}})

    async def _wait(self, request: Request, job):
        """The job's rows, or None (the job cancelled) when the client disconnects first."""
        fut = asyncio.wrap_future(job.future)
        gone = asyncio.ensure_future(_disconnected(request))
        done, _ = await asyncio.wait({fut, gone}, return_when=asyncio.FIRST_COMPLETED)
        if fut in done:
            gone.cancel()
            return fut.result()
        self.batcher.cancel(job)
        return None


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def build_app(server: RewardServer, *, warm_up: bool = True) -> Starlette:
    """The Starlette app of ``server``; its lifespan warms up (in a thread, so ``/health``
    answers ``warming`` meanwhile) and drains on shutdown."""

    async def get_reward(request):
        return await server.handle(request, "get_reward")

    async def rewards(request):
        return await server.handle(request, "v1_rewards")

    async def health(request):
        if server.warm_error is not None:
            return JSONResponse({"status": "failed", "error": str(server.warm_error)},
                                status_code=500)
        if not server.ready.is_set():
            return JSONResponse({"status": "warming"}, status_code=503)
        return JSONResponse({"status": "ok", "queue": server.batcher.depth()})

    async def metrics(request):
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = None
        if warm_up and not server.ready.is_set():
            task = asyncio.ensure_future(asyncio.to_thread(server.warm_up))
        try:
            yield
        finally:
            if task is not None and not task.done():
                with contextlib.suppress(BaseException):
                    await task
            await asyncio.to_thread(server.close)

    routes = [Route("/get_reward", get_reward, methods=["POST"]),
              Route("/v1/rewards", rewards, methods=["POST"]),
              Route("/health", health, methods=["GET"]),
              Route("/metrics", metrics, methods=["GET"])]
    async def no_route(request, exc):  # every error is JSON, unknown paths included
        return JSONResponse({"error": f"no route {request.method} {request.url.path}"},
                            status_code=exc.status_code)

    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={404: no_route, 405: no_route})


def row_multiple(scorer) -> int:
    """How many ways the scorer's mesh splits a batch's rows (1 without a mesh)."""
    run = getattr(scorer, "run", None) or getattr(getattr(scorer, "base", None), "run", None)
    if run is None or getattr(run, "mesh", None) is None:
        return 1
    return batch_axis_size(run.mesh, run.rules)


def token_from_env(name: str) -> str | None:
    """The bearer token held by environment variable ``name`` (never logged); ``""``: none."""
    if not name:
        return None
    token = os.environ.get(name, "")
    if not token:
        raise ValueError(f"serve.token_env={name!r} but that environment variable is empty")
    return token
