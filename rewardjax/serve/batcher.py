"""Dynamic batching: concurrent requests' texts coalesced into compiled bucket shapes.

One worker thread owns the scorer. Texts wait in one queue per length bucket (the scorer's own
buckets, so a text lands where offline scoring puts it); the worker takes the bucket whose
oldest text is oldest and runs it when it holds a full batch, when that text has waited
``max_wait_ms``, or when the server is draining. A batch of bucket ``L`` holds up to
``R_L = max_batch_tokens // L`` texts and is padded (with copies of one of its texts) to the
smallest row count of ``tiers(L)`` (``R_L, R_L/4, R_L/16, ... >= 1``) that fits it, so every
forward (and every array op after it) sees one of a few fixed shapes, all compiled by
:meth:`Batcher.warm_up` before the server says it is ready.

Each text keeps its request and position, so a response carries exactly its own rewards
whatever it was batched with; a cancelled request's waiting texts are dropped unscored.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from rewardjax.data.batching import bucket_of
from rewardjax.data.tokenize import Encoded

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` texts already: the request should come back later."""


def row_tiers(length: int, max_batch_tokens: int, multiple: int = 1) -> tuple[int, ...]:
    """Row counts a batch of ``length``-token texts is padded to: ``R, R/4, ...`` (``>= 1``)
    with ``R = max_batch_tokens // length``, each rounded up to a multiple of ``multiple`` (the
    mesh's data-parallel ways, so every device gets rows), ascending."""
    rows, out, m = max(1, int(max_batch_tokens) // int(length)), [], max(1, int(multiple))
    while rows >= 1:
        out.append(-(-rows // m) * m)
        if rows == 1:
            break
        rows = max(1, rows // 4)
    return tuple(sorted(set(out)))


class Request:
    """One HTTP request's texts: filled in row by row, resolved when the last one is scored."""

    def __init__(self, n: int):
        self.rows: list[dict | None] = [None] * n
        self.remaining = n
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.cancelled = False

    def cancel(self) -> None:
        """The client went away: its waiting texts are dropped, its future cancelled."""
        self.cancelled = True
        self.future.cancel()


@dataclasses.dataclass
class _Item:
    request: Request
    index: int
    seq: Encoded
    since: float


class Batcher:
    """Coalesces texts from concurrent requests into fixed-shape batches of ``scorer``.

    Args:
      scorer: a :class:`rewardjax.runtime.Scorer` with fixed shapes (``padding()``).
      max_batch_tokens: rows x bucket length of the largest batch.
      max_wait_ms: how long the oldest text of a partly filled batch waits for company.
      max_queue: texts waiting at most; :meth:`submit` raises :class:`QueueFull` beyond it.
      post: ``scorer output (padded rows) -> output``, run on every batch inside the worker
        (combinations, normalisation): it sees the same fixed shapes, so it compiles at warm-up.
      metrics: a :class:`rewardjax.serve.metrics.ServeMetrics` (optional).
      row_multiple: every row count is a multiple of it (the data-parallel ways of the mesh).
    """

    def __init__(self, scorer, *, max_batch_tokens: int, max_wait_ms: float, max_queue: int,
                 post: Callable[[dict], dict] | None = None, metrics=None,
                 row_multiple: int = 1):
        shapes = scorer.padding()
        if shapes is None:
            raise ValueError(f"{type(scorer).__name__} does not pad to fixed shapes "
                             "(Scorer.padding); the server cannot batch it")
        self.scorer, self.buckets = scorer, tuple(shapes[1])
        self.tiers = {b: row_tiers(b, max_batch_tokens, row_multiple) for b in self.buckets}
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.post = post or (lambda out: out)
        self.metrics = metrics
        self._pending = {b: collections.deque() for b in self.buckets}
        self._depth = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- shapes ----------------------------------------------------------------------------
    def shapes(self) -> list[tuple[int, int]]:
        """Every ``(rows, length)`` a batch can have."""
        return [(r, b) for b in self.buckets for r in self.tiers[b]]

    def _score(self, seqs: Sequence[Encoded], rows: int) -> dict[str, np.ndarray]:
        seqs = list(seqs) + [seqs[0]] * (rows - len(seqs))  # filler rows: one copy, same bucket
        self.scorer.set_rows(rows)
        out = self.post(self.scorer.score_encoded(seqs))
        return {k: np.asarray(v) for k, v in out.items()}

    def warm_up(self, sample: Encoded) -> int:
        """Compiles every shape by scoring ``sample`` stretched (its ids repeated) to each bucket
        length; returns how many shapes.

        Some scorers also run the prompt prefixes on their own (a native ArmoRM's prompt
        features on an encoder, DMoERM's router): a batch's prefixes fall in any bucket up to
        the batch's, padded to the same rows, so each warm-up batch holds texts whose prompts
        end in every such bucket.
        """
        ids = np.asarray(sample.ids)
        for rows, length in self.shapes():
            text = np.tile(ids, -(-length // len(ids)))[:length].astype(np.int32)
            starts = [min(b, length - 1) for b in self.buckets if b <= length]
            for i in range(0, len(starts), rows):
                self._score([Encoded(text, np.zeros((length,), np.int32), start)
                             for start in starts[i:i + rows]], rows)
        return len(self.shapes())

    # -- requests ----------------------------------------------------------------------------
    def submit(self, seqs: Sequence[Encoded]) -> Request:
        """Queues ``seqs`` (one request's texts); raises :class:`QueueFull` or, once stopping,
        ``RuntimeError``."""
        req = Request(len(seqs))
        now = time.monotonic()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            if self._depth + len(seqs) > self.max_queue:
                raise QueueFull(f"{self._depth} texts queued; at most {self.max_queue}")
            for i, s in enumerate(seqs):
                self._pending[bucket_of(len(s.ids), self.buckets)].append(_Item(req, i, s, now))
            self._depth += len(seqs)
            self._gauge()
            self._cond.notify()
        return req

    def cancel(self, req: Request) -> None:
        """Drops ``req``'s waiting texts at once (its client went away) and cancels it."""
        with self._cond:
            req.cancel()
            for q in self._pending.values():
                kept = [it for it in q if it.request is not req]
                if len(kept) < len(q):
                    self._depth -= len(q) - len(kept)
                    q.clear()
                    q.extend(kept)
            self._gauge()
            self._cond.notify()

    def depth(self) -> int:
        return self._depth

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._depth)

    # -- worker --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="rewardjax-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Scores what is queued (no more waiting for company), then stops the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _take(self) -> tuple[int, list[_Item]] | None:
        """Under the lock: the next batch, or None when it is time to stop."""
        while True:
            heads = []
            for b, q in self._pending.items():
                while q and q[0].request.cancelled:  # a gone client's texts are not scored
                    q.popleft()
                    self._depth -= 1
                if q:
                    heads.append((q[0].since, b))
            if not heads:
                self._gauge()
                if self._stopping:
                    return None
                self._cond.wait()
                continue
            since, b = min(heads)
            q, limit = self._pending[b], self.tiers[b][-1]
            wait = since + self.max_wait - time.monotonic()
            if len(q) >= limit or wait <= 0 or self._stopping:
                items = []
                while q and len(items) < limit:
                    it = q.popleft()
                    self._depth -= 1
                    if not it.request.cancelled:
                        items.append(it)
                self._gauge()
                if items:
                    return b, items
                continue
            self._cond.wait(wait)

    def _loop(self) -> None:
        while True:
            with self._cond:
                batch = self._take()
            if batch is None:
                return
            try:
                self._run(*batch)
            except Exception:  # noqa: BLE001 -- one bad batch must not stop the worker for all
                log.exception("the batch worker failed on a batch; it goes on")

    def _run(self, bucket: int, items: list[_Item]) -> None:
        rows = next(r for r in self.tiers[bucket] if r >= len(items))
        start = time.monotonic()
        try:
            out = self._score([it.seq for it in items], rows)
        except Exception as err:  # noqa: BLE001 -- the requests get the error, the server lives
            log.exception("scoring a batch of %d texts failed", len(items))
            for it in items:
                _resolve(it.request.future, error=err)
            return
        if self.metrics is not None:
            self.metrics.observe_batch(bucket, len(items), rows, time.monotonic() - start)
        for i, it in enumerate(items):
            req = it.request
            req.rows[it.index] = {k: v[i] for k, v in out.items()}
            req.remaining -= 1
            if req.remaining == 0:
                _resolve(req.future, result=req.rows)


def _resolve(future: concurrent.futures.Future, *, result=None, error=None) -> None:
    """Sets ``future``'s result (or error) unless it is already done: the client's hang-up may
    cancel it from the event loop between any check here and the set."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled meanwhile: nobody waits for it
