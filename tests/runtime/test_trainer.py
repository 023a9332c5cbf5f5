"""The one training loop (runtime.trainer.Trainer) on a toy step: cadence, hooks, averaging,
checkpoints, resume == uninterrupted, the non-finite stop."""

import json
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from rewardjax.runtime.checkpoint import Checkpointer, NonFiniteLoss
from rewardjax.runtime.logging import MetricsWriter
from rewardjax.runtime.trainer import Part, Trainer


class Toy(NamedTuple):
    step: jnp.ndarray
    w: jnp.ndarray


def toy_step(state, batch):
    """w += batch; loss = batch (so averages are checkable by hand); finite unless batch < 0."""
    w = state.w + batch
    return Toy(state.step + 1, w), {"loss": jnp.float32(batch), "w": w,
                                    "finite": jnp.float32(batch >= 0)}


def train_cfg(**kw):
    return ConfigDict(dict(dict(log_every=2, eval_every=0, progress=False, debug_kill_at_step=0,
                                lr=0.1), **kw))


def rows(workdir, split):
    with open(workdir / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


def make(workdir, total, batches, **kw):
    ckpt = Checkpointer(str(workdir / "checkpoints"), every=2, keep=5)
    writer = MetricsWriter(str(workdir), tensorboard=False)
    trainer = Trainer(toy_step, lambda s: float(batches[s]), total_steps=total, parts=[Part(ckpt)],
                      writer=writer, train=train_cfg(), **kw)
    return trainer, writer


def test_rows_average_the_window_hooks_fire_on_cadence(tmp_path):
    seen = []
    trainer, writer = make(tmp_path, 5, [1, 2, 3, 4, 5], last_keys=("w",))
    trainer.add_hook(lambda done, state, m: seen.append(done), every=2, at_end=True)
    state = trainer.fit(trainer.restore(Toy(jnp.int32(0), jnp.float32(0))))
    writer.close()
    assert int(state.step) == 5 and float(state.w) == 15.0
    got = [(r["step"], r["loss"], r["w"]) for r in rows(tmp_path, "train")]
    # loss averaged over each window of log_every=2 steps (the last window is one step); w is
    # a last_keys entry: its value at the logged step.
    assert got == [(2, 1.5, 3.0), (4, 3.5, 10.0), (5, 5.0, 15.0)]
    assert seen == [2, 4, 5]
    assert Checkpointer(str(tmp_path / "checkpoints"), 2).steps() == [2, 4, 5]


def test_resume_after_a_stop_equals_the_uninterrupted_run(tmp_path):
    batches = [1, 2, 3, 4, 5, 6]
    full, w1 = make(tmp_path / "full", 6, batches)
    want = full.fit(full.restore(Toy(jnp.int32(0), jnp.float32(0))))
    w1.close()
    first, w2 = make(tmp_path / "cut", 4, batches)  # the run stops after step 4
    first.fit(first.restore(Toy(jnp.int32(0), jnp.float32(0))))
    w2.close()
    second, w3 = make(tmp_path / "cut", 6, batches)
    got = second.fit(second.restore(Toy(jnp.int32(0), jnp.float32(0))))
    w3.close()
    assert int(got.step) == 6 and float(got.w) == float(want.w) == 21.0


def test_a_nonfinite_step_stops_naming_the_last_good_checkpoint(tmp_path):
    trainer, writer = make(tmp_path, 6, [1, 2, 3, -1, 5, 6])
    with pytest.raises(NonFiniteLoss, match=r"at step 4 .*Last good checkpoint: step 2"):
        trainer.fit(trainer.restore(Toy(jnp.int32(0), jnp.float32(0))))
    writer.close()


def test_members_rows_are_the_last_step_as_lists(tmp_path):
    def step(state, batch):
        return Toy(state.step + 1, state.w + batch), {
            "loss": jnp.asarray([batch, 2 * batch]), "finite": jnp.ones((2,))}

    writer = MetricsWriter(str(tmp_path), tensorboard=False)
    trainer = Trainer(step, lambda s: float(s), total_steps=3, parts=[], writer=writer,
                      train=train_cfg(), reduce="last")
    trainer.fit(Toy(jnp.int32(0), jnp.float32(0)))
    writer.close()
    got = [(r["step"], r["loss"]) for r in rows(tmp_path, "train")]
    np.testing.assert_allclose([g[1] for g in got], [[1, 2], [2, 4]])
    assert [g[0] for g in got] == [2, 3]
