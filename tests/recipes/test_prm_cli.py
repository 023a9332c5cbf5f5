"""PRM end to end on the CLI: resume after a kill equals the uninterrupted run; eval and score
read the workdir; export says why there is none."""

import json
import os

import jax
import numpy as np
import pytest

from tests.conftest import ROOT, run_module
from tests.recipes.test_bt import _final_params

CFG = os.path.join(ROOT, "configs", "prm.py")
MODEL = [f"--config={CFG}:runlocal", "--config.prm.sim.num_train=32",
         "--config.prm.sim.num_test=16"]
TRAIN = MODEL + ["--config.train.progress=False", "--config.train.checkpoint_every=2"]


def _train(workdir, *extra):
    return run_module(TRAIN + [f"--workdir={workdir}", *extra])


def test_prm_resume_after_kill_equals_uninterrupted(tmp_path):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    r = _train(straight)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step acc" in r.stdout and "sim:test" in r.stdout
    summary = json.load(open(os.path.join(straight, "summary.json")))
    assert summary["steps"] == 6 and summary["train_solutions"] == 32
    assert summary["eval"]["sim:test"]["solutions"] == 16
    assert set(summary["truncation"]) >= {"steps_dropped", "dropped", "steps_over_max"}
    r = _train(killed, "--config.train.debug_kill_at_step=4")
    assert r.returncode == -9, (r.returncode, r.stderr[-3000:])
    r = _train(killed)
    assert r.returncode == 0 and "resumed from step 4" in r.stderr, r.stderr[-3000:]
    (sa, a), (sb, b) = _final_params(straight), _final_params(killed)
    assert sa == sb == 6
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow  # four CLI launches: minutes on a shared CPU
def test_prm_eval_score_export_modes(tmp_path):
    wd = str(tmp_path / "run")
    r = _train(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    ev = json.load(open(os.path.join(wd, "summary.json")))["eval"]["sim:test"]
    r = run_module(MODEL + ["--config.mode=eval", f"--workdir={wd}"])
    assert r.returncode == 0, r.stderr[-3000:]
    again = json.load(open(os.path.join(wd, "eval.json")))["eval"]["sim:test"]
    assert again["step_accuracy"] == ev["step_accuracy"]
    assert again["step_f1"] == ev["step_f1"] or np.isnan(ev["step_f1"])

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"prompt": "Ana has 3 apples. Ana buys 2 more. How many?",
                               "response": "Ana starts with 3 apples.\nWhen adding 2: 3 + 2 = "
                                           "5.\nSo the answer is 5."}) + "\n")
    r = run_module(MODEL + ["--config.mode=score", f"--config.score.input={inp}",
                            f"--workdir={wd}"])
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = [json.loads(line) for line in open(os.path.join(wd, "scores.jsonl"))]
    assert 0.0 < row["reward"] < 1.0  # min over three step probabilities

    r = run_module(MODEL + ["--config.mode=export", f"--workdir={wd}"])
    assert r.returncode != 0 and "one label per step" in r.stderr
