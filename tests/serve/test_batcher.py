"""The batcher with a stand-in scorer: coalescing into fixed shapes, own rows per request,
back-pressure, cancellation and draining (no model: fast)."""

import threading
import time

import numpy as np
import pytest

from rewardjax.data.tokenize import Encoded
from rewardjax.serve.batcher import Batcher, QueueFull, row_tiers


class FakeScorer:
    """Reward = sum of ids; ``members`` = (reward, -reward); records every call's shape."""

    def __init__(self, fail_on=None):
        self.rows, self.calls, self.fail_on = 0, [], fail_on

    def padding(self):
        return self.rows, (4, 8)

    def set_rows(self, rows):
        self.rows = rows

    def score_encoded(self, seqs):
        lengths = [len(s.ids) for s in seqs]
        self.calls.append((self.rows, len(seqs), max(lengths), min(lengths)))
        r = np.asarray([float(np.sum(s.ids)) for s in seqs], np.float32)
        if self.fail_on is not None and self.fail_on in r:
            raise RuntimeError("boom")
        return {"reward": r, "members": np.stack([r, -r], axis=1)}


def seq(*ids):
    return Encoded(np.asarray(ids, np.int32), np.zeros(len(ids), np.int32), 0)


def test_row_tiers():
    assert row_tiers(64, 512) == (1, 2, 8)
    assert row_tiers(8, 512) == (1, 4, 16, 64)
    assert row_tiers(1024, 512) == (1,)
    assert row_tiers(64, 512, multiple=4) == (4, 8)  # every device of the data axis gets rows
    assert row_tiers(96, 512, multiple=4) == (4, 8)


def test_concurrent_requests_share_fixed_shape_batches_and_get_their_own_rows():
    scorer = FakeScorer()
    b = Batcher(scorer, max_batch_tokens=32, max_wait_ms=100, max_queue=100)
    assert b.shapes() == [(1, 4), (2, 4), (8, 4), (1, 8), (4, 8)]
    reqs = [b.submit([seq(i, 1), seq(i, 2, 3, 4, 5, 6)]) for i in range(3)]
    reqs.append(b.submit([seq(100)]))
    b.start()  # after every submit: the grouping does not depend on how loaded the machine is
    rows = [r.future.result(timeout=10) for r in reqs]
    b.stop()
    for i in range(3):
        assert [float(x["reward"]) for x in rows[i]] == [i + 1, i + 20]
        assert rows[i][1]["members"].tolist() == [i + 20, -(i + 20)]
    assert float(rows[3][0]["reward"]) == 100
    # Four short and three long texts: one batch per bucket, padded to a tier's rows.
    assert sorted(scorer.calls) == [(4, 4, 6, 6), (8, 8, 2, 1)]
    for rows_, n, longest, shortest in scorer.calls:
        assert n == rows_ and (rows_, 8 if longest > 4 else 4) in b.shapes()
        assert (longest > 4) == (shortest > 4)  # one bucket per batch


def test_warm_up_runs_every_shape_and_every_prompt_prefix_shape():
    """After warm-up, any batch (and the prompt prefixes a scorer may run on their own, padded
    to the batch's rows) has a shape warm-up already ran."""
    from rewardjax.data.batching import bucket_of

    class PrefixScorer(FakeScorer):
        def __init__(self):
            super().__init__()
            self.shapes = set()

        def score_encoded(self, seqs):
            for s in seqs:
                self.shapes.add((self.rows, bucket_of(len(s.ids), (4, 8)), "text"))
                self.shapes.add((self.rows, bucket_of(max(s.response_start, 1), (4, 8)),
                                 "prefix"))
            return super().score_encoded(seqs)

    scorer = PrefixScorer()
    b = Batcher(scorer, max_batch_tokens=32, max_wait_ms=1, max_queue=10)
    assert b.warm_up(seq(1, 2, 3)) == 5
    warmed = set(scorer.shapes)
    b.start()
    for ids, start in (((1,) * 8, 6), ((1,) * 5, 4), ((1, 2), 1), ((1,) * 8, 2)):
        b.submit([Encoded(np.asarray(ids, np.int32), np.zeros(len(ids), np.int32), start)])
        time.sleep(0.01)
    b.stop()
    assert scorer.shapes <= warmed
    assert {(r, 4, "prefix") for r in (1, 4)} <= warmed  # long texts' short prompts


def test_a_full_queue_refuses_and_a_cancelled_request_is_never_scored():
    scorer = FakeScorer()
    b = Batcher(scorer, max_batch_tokens=32, max_wait_ms=1, max_queue=3)
    gone = b.submit([seq(7), seq(8)])
    with pytest.raises(QueueFull, match="at most 3"):
        b.submit([seq(1), seq(2)])
    kept = b.submit([seq(9)])
    b.cancel(gone)
    assert b.depth() == 1  # dropped at once, not when the worker comes by
    b.start()  # the worker starts after the cancel: only `kept` is left to score
    assert float(kept.future.result(timeout=10)[0]["reward"]) == 9
    b.stop()
    assert scorer.calls == [(1, 1, 1, 1)] and b.depth() == 0
    assert gone.future.cancelled()


def test_stop_scores_what_is_queued_without_waiting():
    scorer = FakeScorer()
    b = Batcher(scorer, max_batch_tokens=32, max_wait_ms=60_000, max_queue=10)
    b.start()
    req = b.submit([seq(1), seq(2, 3)])
    t0 = time.monotonic()
    b.stop(timeout=30)
    assert time.monotonic() - t0 < 20  # not the minute max_wait_ms asks for
    assert [float(x["reward"]) for x in req.future.result(timeout=0)] == [1, 5]
    with pytest.raises(RuntimeError, match="shutting down"):
        b.submit([seq(1)])


def test_a_failing_batch_fails_its_requests_only():
    scorer = FakeScorer(fail_on=13.0)
    b = Batcher(scorer, max_batch_tokens=32, max_wait_ms=1, max_queue=10)
    b.start()
    bad = b.submit([seq(13)])
    with pytest.raises(RuntimeError, match="boom"):
        bad.future.result(timeout=10)
    good = b.submit([seq(2)])
    assert float(good.future.result(timeout=10)[0]["reward"]) == 2
    b.stop()


def test_many_threads_each_get_their_own_rewards():
    b = Batcher(FakeScorer(), max_batch_tokens=32, max_wait_ms=2, max_queue=1000)
    b.start()
    out, errors = {}, []

    def client(k):
        try:
            for j in range(5):
                ids = [k + 1] * (1 + (k + j) % 8)
                got = b.submit([seq(*ids)]).future.result(timeout=20)
                out[(k, j)] = (float(got[0]["reward"]), float(sum(ids)))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    b.stop()
    assert not errors and len(out) == 40
    assert all(got == want for got, want in out.values())


def test_a_request_cancelled_while_its_batch_is_scored_does_not_stop_the_worker():
    """A hang-up may cancel a request's future between the worker's check and its set: the
    worker must go on serving everyone else."""
    import concurrent.futures

    from rewardjax.serve.batcher import _resolve

    done = concurrent.futures.Future()
    done.cancel()
    _resolve(done, result=[1])  # no InvalidStateError
    _resolve(done, error=RuntimeError("x"))

    class CancelInside(FakeScorer):  # the client hangs up while its batch is being scored
        victim = None

        def score_encoded(self, seqs):
            if self.victim is not None:
                self.victim.future.cancel()
            return super().score_encoded(seqs)

    scorer = CancelInside()
    b = Batcher(scorer, max_batch_tokens=32, max_wait_ms=1, max_queue=100)
    b.start()
    scorer.victim = b.submit([seq(1, 2)])
    time.sleep(0.2)
    scorer.victim = None
    later = b.submit([seq(3)])
    assert float(later.future.result(timeout=10)[0]["reward"]) == 3
    b.stop()
