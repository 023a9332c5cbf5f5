"""Serving a model whose mesh spans several processes (``--multihost``).

Every process holds a shard of the parameters, so every process must run every forward, with
the same batch, in the same order. Process 0 serves HTTP; its batcher scores through a
:class:`LockstepScorer`, which first broadcasts the batch (a fixed-size header, then the
token arrays) to the other processes. Those run :func:`follow`: receive a batch, score it
(their copy of the reward is dropped), repeat, until process 0 sends the stop header when its
server shuts down. Warm-up goes through the same path, so every process compiles the same
shapes before process 0 says it is ready.
"""

from __future__ import annotations

import logging

import numpy as np

from rewardjax.data.tokenize import Encoded
from rewardjax.runtime.scorer import Scorer

log = logging.getLogger(__name__)

_STOP, _SCORE = 0, 1


def _broadcast(tree):
    from jax.experimental import multihost_utils

    out = multihost_utils.broadcast_one_to_all(tree)
    return [np.asarray(x) for x in out] if isinstance(tree, (list, tuple)) else np.asarray(out)


def _pack(seqs: list[Encoded]) -> list[np.ndarray]:
    """``[ids [N, L], type_ids [N, L], lengths [N], response_start [N]]`` (``L`` the longest)."""
    n, width = len(seqs), max(len(s.ids) for s in seqs)
    ids, types = np.zeros((n, width), np.int32), np.zeros((n, width), np.int32)
    for i, s in enumerate(seqs):
        ids[i, :len(s.ids)], types[i, :len(s.ids)] = s.ids, s.type_ids
    lengths = np.asarray([len(s.ids) for s in seqs], np.int32)
    starts = np.asarray([s.response_start for s in seqs], np.int32)
    return [ids, types, lengths, starts]


def _unpack(ids, types, lengths, starts) -> list[Encoded]:
    return [Encoded(ids[i, :n].astype(np.int32), types[i, :n].astype(np.int32), int(st))
            for i, (n, st) in enumerate(zip(lengths, starts))]


class LockstepScorer(Scorer):
    """Process 0's scorer: each batch is sent to the other processes before it is scored.

    Everything else (encoder, labels, shapes) is the wrapped scorer's. Call :meth:`close` once
    the server has stopped, so the followers return.
    """

    def __init__(self, scorer: Scorer):
        self.inner = scorer
        self.encoder, self.labels, self.step = scorer.encoder, scorer.labels, scorer.step
        self.empty_is_error = scorer.empty_is_error
        self._rows = 0
        self._closed = False

    def __getattr__(self, name):  # run, model, average ...: what the server reads of a scorer
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def padding(self):
        return self.inner.padding()

    def set_rows(self, rows: int) -> None:
        self._rows = int(rows)
        self.inner.set_rows(rows)

    def score_encoded(self, seqs) -> dict[str, np.ndarray]:
        seqs = list(seqs)
        if not seqs:
            return self.inner.score_encoded(seqs)
        arrays = _pack(seqs)
        _broadcast(np.asarray([_SCORE, self._rows, *arrays[0].shape], np.int32))
        _broadcast(arrays)
        return self.inner.score_encoded(seqs)

    def close(self) -> None:
        """Tells the followers to return (once; later calls do nothing)."""
        if not self._closed:
            self._closed = True
            _broadcast(np.asarray([_STOP, 0, 0, 0], np.int32))


def follow(scorer: Scorer) -> int:
    """Runs on processes other than 0: scores every batch process 0 broadcasts, in order, until
    it sends the stop header; returns how many batches were scored."""
    done = 0
    while True:
        op, rows, n, width = (int(x) for x in _broadcast(np.zeros((4,), np.int32)))
        if op == _STOP:
            log.info("process 0 stopped serving after %d batches", done)
            return done
        arrays = _broadcast([np.zeros((n, width), np.int32), np.zeros((n, width), np.int32),
                             np.zeros((n,), np.int32), np.zeros((n,), np.int32)])
        if rows:
            scorer.set_rows(rows)
        scorer.score_encoded(_unpack(*arrays))
        done += 1
