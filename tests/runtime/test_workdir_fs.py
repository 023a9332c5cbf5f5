"""The workdir layer (rewardjax.runtime.paths) on a non-local filesystem.

A fake ``gs://`` bucket (fsspec's in-memory filesystem behind etils.epath's fsspec backend, so no
network) holds a whole bt run: train, eval, score and export. Everything but the orbax
checkpoints must land in the bucket and nothing in a local folder named ``gs:``. Checkpoints stay
on the local disk here: orbax writes arrays through TensorStore's own ``gcs`` driver, which no
offline fake reaches. A scan of the package keeps bare ``open`` / ``os.makedirs`` out of
workdir code.
"""

import ast
import json
import os
import socket

import pytest
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem

from rewardjax import modes
from rewardjax.runtime import checkpoint, paths
from rewardjax.runtime.logging import MetricsWriter
from rewardjax.runtime.workdir import WorkdirBusy, WorkdirLock
from tests.runtime.helpers import ROOT, load_recipe


class FakeGCS(MemoryFileSystem):
    """An in-memory bucket: ``gs://bucket/x`` is the key ``/bucket/x``."""

    protocol = ("gs", "gcs")

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        if path.startswith("gs://"):
            path = "/" + path[len("gs://"):]
        return super()._strip_protocol(path)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """The fake bucket's filesystem; the test runs in an empty local directory (``cwd``)."""
    fs = FakeGCS(global_store=False, skip_instance_cache=True)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # epath: fsspec for gs://
    monkeypatch.setattr(epath_backend.fsspec_backend, "fs", lambda path: fs)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return fs


@pytest.fixture
def local_checkpoints(tmp_path, monkeypatch):
    """Sends orbax's ``gs://`` checkpoint directories to ``tmp_path/orbax`` (module docstring)."""
    real_init = checkpoint.Checkpointer.__init__

    def init(self, directory, *args, **kwargs):
        d = os.fspath(directory)
        if d.startswith("gs://"):
            d = str(tmp_path / "orbax" / d[len("gs://"):])
        real_init(self, d, *args, **kwargs)

    monkeypatch.setattr(checkpoint.Checkpointer, "__init__", init)
    return tmp_path / "orbax"


def _no_local_scheme_folder(tmp_path):
    made = [os.path.join(d, n) for d, dirs, _ in os.walk(tmp_path) for n in dirs if n == "gs:"]
    assert not made, f"workdir files went to a local folder named like the scheme: {made}"
    assert not os.path.exists(os.path.join(ROOT, "gs:"))


def test_a_recipe_run_writes_every_workdir_file_to_the_bucket(bucket, local_checkpoints,
                                                              tmp_path):
    wd = "gs://bucket/runs/bt"
    config = load_recipe("bt", "runlocal")
    config.train.steps, config.train.log_every, config.train.checkpoint_every = 2, 1, 2
    summary = modes.run(config, wd)

    names = set(paths.listdir(wd))
    assert {"config.json", "run_identity.json", "summary.json", "metrics.jsonl", "tokenizer",
            "tb"} <= names, names
    assert ".lock" not in names  # the marker is released
    assert paths.read_json(f"{wd}/summary.json")["steps"] == summary["steps"] == 2
    assert json.loads(paths.read_text(f"{wd}/config.json"))["train"]["steps"] == 2
    rows = paths.read_jsonl(f"{wd}/metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2]
    assert {r["split"] for r in rows} >= {"train", "summary"}
    assert any(n.startswith("events.out.tfevents") for n in paths.listdir(f"{wd}/tb"))
    assert paths.listdir(f"{wd}/tokenizer")
    assert os.listdir(local_checkpoints / "bucket" / "runs" / "bt" / "checkpoints") == ["2"]

    # the other modes read the run back from the bucket (config, tokenizer) and write there too
    inputs = tmp_path / "responses.jsonl"
    inputs.write_text("".join(json.dumps({"prompt": f"question {i}", "response": f"answer {i}"})
                              + "\n" for i in range(3)))
    for mode in ("eval", "score", "export"):
        c = load_recipe("bt", "runlocal")
        c.mode = mode
        c.score.input = str(inputs)
        modes.run(c, wd)
    assert paths.read_json(f"{wd}/eval.json")["steps"] == 2
    assert [r["response"] for r in paths.read_jsonl(f"{wd}/scores.jsonl")] == [
        f"answer {i}" for i in range(3)]
    assert "config.json" in paths.listdir(f"{wd}/export")
    _no_local_scheme_folder(tmp_path)


def test_urls_stay_urls():
    # os.path.abspath("gs://b/run") is "<cwd>/gs:/b/run": where a bucket workdir used to go
    assert paths.normalize("gs://b/run/") == "gs://b/run" and not paths.is_local("gs://b/run")
    assert paths.normalize("run") == os.path.abspath("run") and paths.is_local("run")
    assert paths.is_within("gs://b/run/checkpoints", "gs://b/run")
    assert not paths.is_within("gs://b/run2", "gs://b/run")


def test_the_lock_on_an_object_store_is_a_marker(bucket):
    wd = "gs://bucket/locked"
    lock = WorkdirLock(wd).acquire()
    assert json.loads(paths.read_text(f"{wd}/.lock"))["pid"] == os.getpid()
    with pytest.raises(WorkdirBusy, match="lock marker"):
        WorkdirLock(wd).acquire()  # its owner (this process) is alive
    lock.release()
    assert not paths.exists(f"{wd}/.lock")
    paths.write_json(f"{wd}/.lock", {"pid": 2 ** 22 + 1, "host": socket.gethostname(),
                                     "started": 0.0})  # a dead owner on this host: stale
    WorkdirLock(wd).acquire().release()


def test_metrics_on_an_object_store_are_buffered_and_flushed(bucket):
    wd = "gs://bucket/metrics"
    w = MetricsWriter(wd, tensorboard=False, flush_secs=3600)
    w.write(1, "train", {"loss": 0.5})
    assert not paths.exists(f"{wd}/metrics.jsonl")  # an object store cannot append: buffered
    w.write(2, "train", {"loss": 0.25})
    w.close()
    assert [r["loss"] for r in paths.read_jsonl(f"{wd}/metrics.jsonl")] == [0.5, 0.25]
    w = MetricsWriter(wd, tensorboard=False, flush_secs=0)  # a resumed run appends
    w.write(3, "train", {"loss": 0.125})
    assert [r["step"] for r in paths.read_jsonl(f"{wd}/metrics.jsonl")] == [1, 2, 3]


def test_staged_and_copied_directories_round_trip(bucket, tmp_path):
    with paths.staged_dir("gs://bucket/x/export") as local:
        assert paths.is_local(local)
        os.makedirs(os.path.join(local, "sub"))
        with open(os.path.join(local, "sub", "a.txt"), "w") as f:
            f.write("A")
    assert paths.read_text("gs://bucket/x/export/sub/a.txt") == "A"
    with paths.local_copy("gs://bucket/x/export") as local:
        with open(os.path.join(local, "sub", "a.txt")) as f:
            assert f.read() == "A"
    assert not os.path.exists(local)
    _no_local_scheme_folder(tmp_path)


# ----------------------------------------------------------------------------- no bare open

_CHECKED = {"open", "os.open", "os.makedirs", "os.mkdir", "io.open", "np.save", "np.savez",
            "np.savez_compressed"}
# Where a bare open / makedirs is right: the path layer itself, the local lock, and code that
# only sees data inputs or a local directory the runtime hands it (staged_dir / local_copy),
# since those floors sit below runtime/ and cannot import the path layer.
_ALLOWED = {
    "rewardjax/runtime/paths.py": "the path layer",
    "rewardjax/runtime/workdir.py:_pid_start_time": "/proc",
    "rewardjax/runtime/workdir.py:_pid_alive": "/proc",
    "rewardjax/runtime/workdir.py:WorkdirLock.acquire": "local lock: O_CREAT | O_EXCL",
    "rewardjax/runtime/workdir.py:WorkdirLock._handle_existing": "local lock",
    "rewardjax/runtime/workdir.py:_fingerprint": "hashes the data input files",
    "rewardjax/data/io.py": "data inputs; data files written by data preparation",
    "rewardjax/data/features.py": "feature cache, a local directory (armorm.data)",
    "rewardjax/eval/bon_pools.py": "AlpacaEval pools (input)",
    "rewardjax/eval/rewardbench.py": "builds RewardBench files from $REWARDJAX_DATA",
    "rewardjax/models/hf.py": "backbone checkpoints (input); HF export into a staged dir",
    "rewardjax/export/hf_export.py": "a staged local export directory",
    "rewardjax/export/native.py": "a staged local export directory",
    "rewardjax/export/native_load.py": "a local copy of an export",
    "rewardjax/heads/gating.py": "ArmoRM heads in a staged / copied local directory",
}


def _calls(tree):
    """``(qualified function name, dotted callee)`` of every call in a module."""
    out = []

    def visit(node, scope):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, scope + [child.name])
                continue
            if isinstance(child, ast.Call):
                out.append((".".join(scope), ast.unparse(child.func)))
            visit(child, scope)

    visit(tree, [])
    return out


def test_no_bare_open_or_makedirs_outside_the_path_layer():
    found = []
    for d, _, files in os.walk(os.path.join(ROOT, "rewardjax")):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(d, name), ROOT).replace(os.sep, "/")
            if rel in _ALLOWED:
                continue
            with open(os.path.join(d, name), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for scope, callee in _calls(tree):
                if callee in _CHECKED and f"{rel}:{scope}" not in _ALLOWED:
                    found.append(f"{rel}:{scope or '<module>'}: {callee}(...)")
    assert not found, ("workdir files must go through rewardjax.runtime.paths (write_json, "
                       "write_text, staged_dir, ...); bare calls:\n  " + "\n  ".join(found))
