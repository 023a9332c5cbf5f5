"""The jitted train step: NaN guard, a single trace, sharded == unsharded on 8 CPU devices."""

import os
import subprocess
import sys

import chex
import jax
import numpy as np

from tests.runtime.helpers import ROOT, fixed_batch, tiny_run


def test_step_traces_once_and_learns(tmp_path):
    config, run, data = tiny_run(tmp_path)
    step = run.train_step(trace_guard=chex.assert_max_traces(n=1))
    state = run.state
    losses = []
    for i in range(4):
        state, m = step(state, run.place(fixed_batch(run, data, start=8 * (i % 2))))
        losses.append(float(m["loss"]))
    assert int(state.step) == 4
    assert np.isfinite(losses).all()


def test_nan_guard_skips_update_and_reports(tmp_path):
    config, run, data = tiny_run(tmp_path)
    config.loss.unlock()
    config.loss.use_data_margin = True
    step = run.train_step()
    before = jax.tree.map(np.asarray, run.state.params)
    batch = fixed_batch(run, data)
    batch["margin"][:] = np.nan
    state, m = step(run.state, run.place(batch))
    assert float(m["finite"]) == 0.0
    after = jax.tree.map(np.asarray, state.params)
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(x, y)


def test_sharded_equals_unsharded_on_8_cpu_devices():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "runtime", "sharded_check.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "OK" in r.stdout
