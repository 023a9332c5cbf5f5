"""Pairwise training on the CLI: a run killed and resumed ends with the same parameters as an
uninterrupted one (same data order, same rng)."""

import os

import jax
import numpy as np

from tests.conftest import ROOT, run_module
from tests.recipes.test_bt import _final_params

CFG = os.path.join(ROOT, "configs", "pairwise.py")
TRAIN = [f"--config={CFG}:runlocal", "--config.data.sim.num_train=32", "--config.data.eval=",
         "--config.train.steps=6", "--config.train.checkpoint_every=2",
         "--config.train.progress=False", "--config.train.tensorboard=False"]


def test_pairwise_resume_after_kill_equals_uninterrupted(tmp_path):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    r = run_module(TRAIN + [f"--workdir={straight}"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_module(TRAIN + [f"--workdir={killed}", "--config.train.debug_kill_at_step=4"])
    assert r.returncode == -9, (r.returncode, r.stderr[-3000:])
    r = run_module(TRAIN + [f"--workdir={killed}"])
    assert r.returncode == 0 and "resumed from step 4" in r.stderr, r.stderr[-3000:]
    (sa, a), (sb, b) = _final_params(straight), _final_params(killed)
    assert sa == sb == 6
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
