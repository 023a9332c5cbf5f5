"""End-to-end training: CLI modes, exact resume after a kill, NaN guard, config errors."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import ROOT, run_module

CFG = os.path.join(ROOT, "configs", "bt.py")


def _final_params(workdir):
    mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    step = mgr.latest_step()
    restored = mgr.restore(step, args=ocp.args.StandardRestore())
    mgr.close()
    return step, restored


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    common = [
        f"--config={CFG}:runlocal",
        "--config.train.progress=False",
        "--config.train.steps=8",
        "--config.train.checkpoint_every=3",
    ]
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    r = run_module(common + [f"--workdir={straight}"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_module(common + [f"--workdir={killed}", "--config.train.debug_kill_at_step=5"])
    assert r.returncode == -9, (r.returncode, r.stderr[-3000:])  # really killed
    _, mid = _final_params(killed)
    assert 0 < int(np.asarray(mid["step"])) < 8
    r = run_module(common + [f"--workdir={killed}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step" in r.stderr
    sa, a = _final_params(straight)
    sb, b = _final_params(killed)
    assert sa == sb == 8
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_cli_train_eval_score_and_outputs(tmp_path):
    wd = str(tmp_path / "run")
    r = run_module([f"--config={CFG}:runlocal", "--config.train.progress=False", f"--workdir={wd}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "eval set" in r.stdout and "sim:test_ood" in r.stdout
    summary = json.load(open(os.path.join(wd, "summary.json")))
    assert summary["steps"] == 6
    assert set(summary["eval"]) == {"sim:test_id", "sim:test_ood"}
    ev = summary["eval"]["sim:test_id"]
    for key in ("accuracy", "ece", "ace", "mce", "reward_mean", "reward_std", "gold_accuracy"):
        assert key in ev
    assert ev["by_group"] and ev["by_category"]  # per source and per category breakdowns
    rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    assert any(row["split"] == "train" for row in rows)
    assert os.path.isdir(os.path.join(wd, "tb"))

    r = run_module([f"--config={CFG}:runlocal", "--config.mode=eval", f"--workdir={wd}"])
    assert r.returncode == 0, r.stderr[-3000:]
    ev2 = json.load(open(os.path.join(wd, "eval.json")))["eval"]["sim:test_id"]
    assert ev2["accuracy"] == pytest.approx(ev["accuracy"])

    inp = tmp_path / "samples.jsonl"
    inp.write_text(
        json.dumps({"prompt": "What is the capital of France?", "response": "Paris."})
        + "\n"
        + json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello there"},
                ]
            }
        )
        + "\n"
    )
    out = tmp_path / "scores.jsonl"
    r = run_module(
        [
            f"--config={CFG}:runlocal",
            "--config.mode=score",
            f"--config.score.input={inp}",
            f"--config.score.output={out}",
            f"--workdir={wd}",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    scored = [json.loads(line) for line in open(out)]
    assert len(scored) == 2 and all(np.isfinite(s["reward"]) for s in scored)
    assert scored[0]["response"] == "Paris."


def test_misspelt_config_key_is_an_error(tmp_path):
    r = run_module([f"--config={CFG}:runlocal", "--config.train.stepz=3", f"--workdir={tmp_path}"])
    assert r.returncode != 0
    assert "stepz" in r.stderr


def test_bad_input_file_error_names_file_and_record(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n'
    )
    r = run_module(
        [
            f"--config={CFG}:runlocal",
            f"--config.data.train={bad}",
            "--config.data.eval=",
            f"--workdir={tmp_path / 'w'}",
        ]
    )
    assert r.returncode != 0
    assert "bad.jsonl" in r.stderr and "2" in r.stderr and "rejected" in r.stderr


def test_warm_recipe_trains_members_and_writes_the_table(tmp_path):
    wd = str(tmp_path / "warm")
    cfg = os.path.join(ROOT, "configs", "warm.py")
    r = run_module([f"--config={cfg}:runlocal", "--config.train.progress=False",
                    "--config.members.interpolation_points=3", f"--workdir={wd}"])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.load(open(os.path.join(wd, "warm.json")))
    for name, rows in out["interpolation"].items():  # the endpoints are the members exactly
        assert [row["t"] for row in rows] == [0.0, 0.5, 1.0]
        assert rows[0]["accuracy"] == pytest.approx(out["results"][name]["member_0"]["accuracy"])
        assert rows[-1]["accuracy"] == pytest.approx(out["results"][name]["member_1"]["accuracy"])
    assert out["members"] == 2 and out["steps"] == 6
    assert set(out["results"]) == {"train_corrupted", "train_clean", "sim:test_id",
                                   "sim:test_ood"}
    for res in out["results"].values():
        assert set(res) == {"member_0", "member_1", "WA", "ENS", "ENS_min", "ENS_uwo"}
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in res.values())
    assert "train_corrupted" in r.stdout and "WA" in r.stdout


def test_warm_with_probe_init_and_baklava_members(tmp_path):
    base = str(tmp_path / "base")
    r = run_module([f"--config={CFG}:runlocal", "--config.train.progress=False",
                    f"--workdir={base}"])
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = os.path.join(ROOT, "configs", "warm.py")
    wd = str(tmp_path / "warm")
    r = run_module([f"--config={cfg}:runlocal", "--config.train.progress=False",
                    "--config.members.probe_init=True",
                    f"--config.members.baklava={base}/checkpoints:3,6", f"--workdir={wd}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.load(open(os.path.join(wd, "warm.json")))["members"] == 2
