"""A run's failure modes: NaN stops naming a good checkpoint, one owner and one identity per
workdir, damaged newest checkpoints skipped, a full disk reported in one line."""

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rewardjax.recipes.bt import train
from rewardjax.runtime import paths as paths_mod
from rewardjax.runtime import workdir as wd_mod
from rewardjax.runtime.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointMismatch,
    NonFiniteLoss,
)
from rewardjax.runtime.workdir import (
    DiskFull,
    RunIdentityMismatch,
    WorkdirBusy,
    WorkdirLock,
    atomic_write,
    run_identity,
)
from tests.runtime.helpers import load_recipe


def _config(**train):
    c = load_recipe("bt", "runlocal")
    c.data.eval = ""  # no evaluation: these tests are about the run's bookkeeping
    c.train.progress = False
    c.train.tensorboard = False
    c.train.lr, c.train.warmup_steps = 1e-3, 0
    for k, v in train.items():
        c.train[k] = v
    return c


def _saved_params(directory, step):
    mgr = ocp.CheckpointManager(directory)
    out = mgr.restore(step, args=ocp.args.StandardRestore())
    mgr.close()
    return jax.tree.map(np.asarray, out["params"])


def _corrupt(step_dir):
    """Truncates every array data file of an orbax step directory."""
    hit = 0
    for root, _, files in os.walk(step_dir):
        for f in files:
            if os.path.basename(root) == "d":
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.truncate(10)
                hit += 1
    assert hit, step_dir


# ----------------------------------------------------------------------------- 1. NaN guard


def test_nan_stop_names_an_older_finite_checkpoint_and_resume_step_uses_it(tmp_path, caplog):
    # Warmup 2: step 1 runs at lr 0 (checkpoint 1 sane), step 2 at 5e29 (checkpoint 2 holds
    # finite but exploded weights, the input of step 3), step 3 goes NaN.
    wd = str(tmp_path / "run")
    cfg = _config(lr=1e30, warmup_steps=2, checkpoint_every=1, keep_checkpoints=5)
    with pytest.raises(NonFiniteLoss) as err:
        train(cfg, wd)
    msg = str(err.value)
    assert "at step 3" in msg
    assert "Last good checkpoint: step 1 in " in msg, msg
    assert "step 2 in" not in msg and "None" not in msg
    assert "--config.train.resume_step=1" in msg and "--config.train.lr=" in msg
    ckpts = os.path.join(wd, "checkpoints")
    assert np.isfinite(max(np.abs(x).max() for x in jax.tree.leaves(_saved_params(ckpts, 2))))
    assert not os.path.exists(os.path.join(wd, ".lock"))  # released on the error too

    # Following the advice resumes from step 1 and finishes; step 2 is moved aside, not lost.
    caplog.set_level(logging.INFO, logger="rewardjax")
    cfg = _config(lr=1e-3, warmup_steps=2, checkpoint_every=1, keep_checkpoints=5,
                  resume_step=1, resume_changed=True)
    summary = train(cfg, wd)
    assert summary["steps"] == 6
    assert "resumed from step 1" in caplog.text
    assert os.path.isdir(os.path.join(wd, "checkpoints.discarded", "2"))
    for x in jax.tree.leaves(_saved_params(ckpts, 6)):
        assert np.all(np.isfinite(x)) and np.abs(x).max() < 1e3


def test_nan_stop_before_any_checkpoint_says_so(tmp_path):
    wd = str(tmp_path / "run")
    with pytest.raises(NonFiniteLoss) as err:
        train(_config(lr=1e30, checkpoint_every=5), wd)
    msg = str(err.value)
    assert "at step 2" in msg and "None" not in msg
    assert "No checkpoint was written yet (the first is due at step 5" in msg, msg
    assert "restarted in a fresh --workdir with a lower learning rate" in msg
    assert "--config.train.lr=" in msg


def test_one_nonfinite_error_type_for_every_loop():
    import rewardjax.runtime.trainer as trainer

    assert trainer.nonfinite_error("x", None, 1, None, lr=1.0).__class__ is NonFiniteLoss
    assert issubclass(NonFiniteLoss, RuntimeError) and issubclass(NonFiniteLoss, FloatingPointError)


# ----------------------------------------------------------------------------- 2. owner, identity


def test_second_lock_fails_naming_the_owner(tmp_path):
    first = WorkdirLock(str(tmp_path)).acquire()
    with pytest.raises(WorkdirBusy) as err:
        WorkdirLock(str(tmp_path)).acquire()
    msg = str(err.value)
    assert f"pid {os.getpid()} on {socket.gethostname()}, started " in msg
    assert os.path.join(str(tmp_path), ".lock") in msg
    # A training run on the held workdir stops at once, before writing anything.
    with pytest.raises(WorkdirBusy):
        train(_config(), str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".lock"]
    first.release()
    assert not os.path.exists(tmp_path / ".lock")


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                "started": time.time() - 60}))
    caplog.set_level(logging.WARNING, logger="rewardjax")
    mine = WorkdirLock(str(tmp_path)).acquire()
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "taking over the stale lock" in caplog.text and f"pid {dead.pid}" in caplog.text
    mine.release()
    # Another host's lock cannot be judged from here: it is respected.
    lock.write_text(json.dumps({"pid": dead.pid, "host": "elsewhere", "started": time.time()}))
    with pytest.raises(WorkdirBusy, match="on elsewhere"):
        WorkdirLock(str(tmp_path)).acquire()


def test_changed_settings_are_refused_before_anything_is_written(tmp_path, caplog):
    wd = str(tmp_path / "run")
    train(_config(steps=2, checkpoint_every=1), wd)
    cfg_path, ident_path = os.path.join(wd, "config.json"), os.path.join(wd, "run_identity.json")
    caplog.set_level(logging.INFO, logger="rewardjax")
    train(_config(steps=2, checkpoint_every=1, log_every=1), wd)  # same run: resumes
    assert "resumed from step 2" in caplog.text
    before = {p: (open(p).read(), os.stat(p).st_mtime_ns) for p in (cfg_path, ident_path)}

    with pytest.raises(RunIdentityMismatch) as err:
        train(_config(steps=2, checkpoint_every=1, lr=5e-3), wd)
    msg = str(err.value)
    assert "train.lr: 0.001 -> 0.005" in msg, msg
    assert "fresh --workdir" in msg and "--config.train.resume_changed=True" in msg
    for p, (text, mtime) in before.items():
        assert open(p).read() == text and os.stat(p).st_mtime_ns == mtime, p
    assert not os.path.exists(os.path.join(wd, ".lock"))

    train(_config(steps=2, checkpoint_every=1, lr=5e-3, resume_changed=True), wd)
    record = json.load(open(ident_path))
    assert record["identity"]["train.lr"] == 5e-3
    assert record["changes"][-1]["changed"]["train.lr"] == [1e-3, 5e-3]
    assert json.load(open(cfg_path))["train"]["lr"] == 5e-3


def test_identity_follows_data_file_content(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    cfg = _config()
    cfg.data.train = str(data)
    first = run_identity(cfg)
    assert first["train.lr"] == 1e-3 and first["backbone.hidden_size"] == 128
    assert "train.log_every" not in first and "train.progress" not in first
    # How a trained model is served changes nothing it computes: a workdir trained before the
    # serve section existed (or served with other settings) is the same run.
    assert not [k for k in first if k.startswith(("serve.", "score.", "rewardbench."))]
    data.write_text(json.dumps({"prompt": "a", "chosen": "B", "rejected": "c"}) + "\n")
    second = run_identity(cfg)
    key = f"data.content[{data}]"
    assert first[key] != second[key]


# ----------------------------------------------------------------------------- 3. damage, disk


def _small_checkpoints(directory, steps=(1, 2)):
    state = {"w": jnp.arange(64.0), "b": jnp.ones((3,))}
    ckpt = Checkpointer(directory, 1, keep=5)
    for s in steps:
        ckpt.maybe_save(s, jax.tree.map(lambda x, s=s: x * s, state))
    ckpt.close()
    return state


def test_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path, caplog):
    d = str(tmp_path / "ckpt")
    state = _small_checkpoints(d)
    _corrupt(os.path.join(d, "2"))
    caplog.set_level(logging.WARNING, logger="rewardjax")
    ckpt = Checkpointer(d, 1)
    out = ckpt.restore(state)
    np.testing.assert_array_equal(out["w"], np.arange(64.0))  # step 1's values
    line = next(r.getMessage() for r in caplog.records if "damaged" in r.getMessage())
    assert f"checkpoint {os.path.join(d, '2')} is damaged (ValueError: " in line
    assert line.endswith("falling back to step 1") and "tensorstore_spec" not in line
    ckpt.close()

    ckpt = Checkpointer(d, 1)
    with pytest.raises(CheckpointMismatch, match="another model or settings"):
        ckpt.restore({"w": jnp.arange(8.0), "b": jnp.ones((3,))})  # no fallback on a mismatch
    ckpt.close()

    _corrupt(os.path.join(d, "1"))
    ckpt = Checkpointer(d, 1)
    with pytest.raises(CheckpointError, match=f"no checkpoint in {d} can be restored"):
        ckpt.restore(state)
    ckpt.close()


def test_training_resumes_past_a_damaged_final_checkpoint(tmp_path, caplog):
    wd = str(tmp_path / "run")
    cfg = _config(steps=4, checkpoint_every=2, keep_checkpoints=3)
    train(cfg, wd)
    ckpts = os.path.join(wd, "checkpoints")
    want = _saved_params(ckpts, 4)
    _corrupt(os.path.join(ckpts, "4"))
    caplog.set_level(logging.INFO, logger="rewardjax")
    train(_config(steps=4, checkpoint_every=2, keep_checkpoints=3), wd)
    assert f"checkpoint {os.path.join(ckpts, '4')} is damaged" in caplog.text
    assert "resumed from step 2" in caplog.text
    assert os.path.isdir(os.path.join(wd, "checkpoints.damaged", "4"))
    got = _saved_params(ckpts, 4)  # steps 3-4 redone: the same parameters as before the damage
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a, b)


def _enospc(*_, **__):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_json_write_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    path.write_text('{"old": 1}')
    monkeypatch.setattr(paths_mod, "_fsync", _enospc)
    with pytest.raises(DiskFull) as err:
        atomic_write(str(path), '{"new": 2}')
    assert str(err.value) == (f"{path}: no space left on device while writing it (the previous "
                              "version is left as it was); free space and rerun")
    assert path.read_text() == '{"old": 1}'
    assert os.listdir(tmp_path) == ["summary.json"]  # no temp file left behind


def test_full_disk_checkpoint_save_is_one_line(tmp_path, monkeypatch):
    d = str(tmp_path / "ckpt")
    state = _small_checkpoints(d, steps=(1,))
    ckpt = Checkpointer(d, 1)
    monkeypatch.setattr(ckpt.manager, "save", _enospc)
    with pytest.raises(DiskFull) as err:
        ckpt.maybe_save(2, state)
    assert str(err.value) == (f"{os.path.join(d, '2')}: no space left on device while saving "
                              "checkpoint step 2; the last complete checkpoint, step 1, is "
                              "intact; free space and rerun")
    np.testing.assert_array_equal(ckpt.restore(state)["w"], np.arange(64.0))
    ckpt.close()


def test_full_disk_at_the_end_of_training(tmp_path, monkeypatch):
    real = paths_mod._fsync

    def fsync(fd):
        if ".summary.json." in os.readlink(f"/proc/self/fd/{fd}"):
            _enospc()
        real(fd)

    monkeypatch.setattr(paths_mod, "_fsync", fsync)
    wd = str(tmp_path / "run")
    with pytest.raises(DiskFull) as err:
        train(_config(steps=2, checkpoint_every=1), wd)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(os.path.join(wd, "summary.json") + ": no space")
    assert not os.path.exists(os.path.join(wd, "summary.json"))
    assert not os.path.exists(os.path.join(wd, ".lock"))
    assert np.isfinite(jax.tree.leaves(_saved_params(os.path.join(wd, "checkpoints"), 2))[0]).all()


# ----------------------------------------------------------------------------- 4. probe findings


def test_nan_advice_suggests_the_backbone_default_not_lr_over_10(tmp_path):
    from rewardjax.runtime.checkpoint import default_lr, nonfinite_error, suggested_lr

    cfg = _config()
    assert default_lr(cfg) == 1e-3  # bt runlocal: defaults.scratch.lr
    assert suggested_lr(1e30, 1e-3) == 1e-3 and suggested_lr(1e-3, 1e-3) == pytest.approx(1e-4)
    msg = str(nonfinite_error("x.", None, 2, None, lr=1e30, suggest_lr=1e-3))
    assert "--config.train.lr=0.001 (now 1e+30)" in msg, msg
    # A real stop: the run's config gives the default (the loops pass only lr).
    with pytest.raises(NonFiniteLoss) as err:
        train(_config(lr=1e30, checkpoint_every=5), str(tmp_path / "run"))
    assert "--config.train.lr=0.001 (now 1e+30)" in str(err.value), str(err.value)


def test_missing_item_dir_of_the_newest_step_falls_back(tmp_path, caplog):
    d = str(tmp_path / "ckpt")
    state = _small_checkpoints(d, steps=(1, 2, 3))
    import shutil

    shutil.rmtree(os.path.join(d, "3", "default"))
    caplog.set_level(logging.WARNING, logger="rewardjax")
    ckpt = Checkpointer(d, 1)
    out, damaged = ckpt._restore_newest(state)
    np.testing.assert_array_equal(out["w"], np.arange(64.0) * 2)  # step 2, intact
    assert damaged == [3]
    assert f"checkpoint {os.path.join(d, '3')} is damaged" in caplog.text
    ckpt.close()


def _drop_tree_metadata_entry(step_dir):
    path = os.path.join(step_dir, "default", "_METADATA")
    meta = json.load(open(path))
    meta["tree_metadata"].pop(sorted(meta["tree_metadata"])[0])
    json.dump(meta, open(path, "w"))


def test_damaged_metadata_of_the_newest_step_is_damage_not_a_model_change(tmp_path, caplog):
    d = str(tmp_path / "ckpt")
    state = _small_checkpoints(d, steps=(1, 2))
    _drop_tree_metadata_entry(os.path.join(d, "2"))
    caplog.set_level(logging.WARNING, logger="rewardjax")
    ckpt = Checkpointer(d, 1)
    out, damaged = ckpt._restore_newest(state)
    np.testing.assert_array_equal(out["w"], np.arange(64.0))  # step 1
    assert damaged == [2]
    ckpt.close()
    # Every step unfit: a genuine model change, no fallback.
    _drop_tree_metadata_entry(os.path.join(d, "1"))
    ckpt = Checkpointer(d, 1)
    with pytest.raises(CheckpointMismatch, match="another model or settings"):
        ckpt.restore(state)
    ckpt.close()


def test_restored_nonfinite_step_is_treated_as_damage(tmp_path, caplog):
    # Garbled bytes in a chunk file can decode without error (the zstd stream does not always
    # notice); the probe's run got NaN in Adam's state that way. Step 2 here holds what such a
    # garbled file decodes to: NaN among finite values.
    d = str(tmp_path / "ckpt")
    state = {"w": jnp.arange(64.0), "opt": {"mu": jnp.ones((8,))}}
    ckpt = Checkpointer(d, 1, keep=5)
    ckpt.maybe_save(1, state)
    ckpt.maybe_save(2, {"w": state["w"] * 2, "opt": {"mu": jnp.ones((8,)).at[3].set(jnp.nan)}})
    ckpt.close()
    caplog.set_level(logging.WARNING, logger="rewardjax")
    ckpt = Checkpointer(d, 1)
    out = ckpt.resume(state)
    np.testing.assert_array_equal(out["w"], np.arange(64.0))  # step 1, finite
    line = next(r.getMessage() for r in caplog.records if "damaged" in r.getMessage())
    assert f"checkpoint {os.path.join(d, '2')} is damaged (ValueError: restored arrays hold " \
           "NaN/inf" in line and line.endswith("falling back to step 1"), line
    assert os.path.isdir(os.path.join(d + ".damaged", "2"))
    ckpt.close()
    aside = Checkpointer(d + ".damaged", 1)  # asked for by train.resume_step: refused
    with pytest.raises(CheckpointError, match=r"resume_step=2: .* holds non-finite values"):
        aside.resume(state, step=2)
    aside.close()


def test_full_disk_in_metrics_is_one_line_naming_metrics_jsonl(tmp_path):
    from rewardjax.runtime.logging import MetricsWriter

    w = MetricsWriter(str(tmp_path), tensorboard=False)
    w.path = "/dev/full"  # every write: ENOSPC
    with pytest.raises(DiskFull) as err:
        w.write(3, "train", {"loss": 0.5})
    assert str(err.value) == ("/dev/full: no space left on device while appending the metrics "
                              "of step 3; free space and rerun")


def test_full_disk_on_the_command_line_ends_the_process_after_one_line(tmp_path, monkeypatch,
                                                                       capsys):
    exits = []

    def hard_exit(code):
        exits.append(code)
        raise SystemExit(code)

    @wd_mod.owns_workdir
    def recipe(config, workdir):
        raise DiskFull(os.path.join(workdir, "checkpoints", "6"), "saving checkpoint step 6")

    wd = str(tmp_path / "run")
    with pytest.raises(DiskFull):  # from Python: raised as before
        recipe(_config(), wd)
    monkeypatch.setattr(wd_mod, "_from_cli", lambda: True)
    monkeypatch.setattr(wd_mod.os, "_exit", hard_exit)
    with pytest.raises(SystemExit):
        recipe(_config(), wd)
    assert exits == [1]
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"DiskFull: {wd}/checkpoints/6: no space left on device while saving checkpoint step 6")
    assert not os.path.exists(os.path.join(wd, ".lock"))


def test_refused_model_change_keeps_the_previous_identity(tmp_path):
    wd = str(tmp_path / "run")
    train(_config(steps=2, checkpoint_every=1), wd)
    paths = [os.path.join(wd, n) for n in ("run_identity.json", "config.json")]
    before = [open(p).read() for p in paths]
    other = _config(steps=2, checkpoint_every=1, resume_changed=True)
    other.model.path = other.model.path.replace("hidden_size=128", "hidden_size=64")
    with pytest.raises(CheckpointMismatch):
        train(other, wd)
    assert [open(p).read() for p in paths] == before
    assert train(_config(steps=2, checkpoint_every=1), wd)["steps"] == 2  # not refused


def _record(path, text):
    path.write_text(json.dumps({"prompt": "a", "chosen": text, "rejected": "c"}) + "\n")


def test_identity_of_globs_and_directories_follows_what_the_loader_reads(tmp_path):
    globd = tmp_path / "globd"
    globd.mkdir()
    _record(globd / "a.jsonl", "b")
    cfg = _config()
    cfg.data.train = str(globd / "*.jsonl")
    key = f"data.content[{cfg.data.train}]"
    first = run_identity(cfg)[key]
    assert first.startswith("sha256:") and first.endswith("(1 file(s))"), first
    _record(globd / "a.jsonl", "B")
    assert run_identity(cfg)[key] != first

    cfg.data.train = str(globd)
    key = f"data.content[{cfg.data.train}]"
    first = run_identity(cfg)[key]
    (globd / "README.md").write_text("notes")  # files the loader skips change nothing
    (globd / ".hidden.jsonl").write_text("x")
    (globd / "sub").mkdir()
    _record(globd / "sub" / "x.jsonl", "b")
    assert run_identity(cfg)[key] == first
    with open(os.path.join(os.fsencode(str(globd)), b"\xff.jsonl"), "w") as f:  # not UTF-8
        f.write(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    assert run_identity(cfg)[key].endswith("(2 file(s))")


def test_workdir_that_is_a_file_is_one_clear_line(tmp_path):
    path = tmp_path / "afile"
    path.write_text("x")
    with pytest.raises(NotADirectoryError) as err:
        train(_config(), str(path))
    assert str(err.value).startswith(f"--workdir {path} is an existing file, not a directory")
