"""Who owns a workdir and which run it holds; its files go through :mod:`.paths`.

A training run starts with :func:`start_run` (the :func:`owns_workdir` decorator on a recipe's
``train(config, workdir)``):

* ``<workdir>/.lock`` (``O_CREAT | O_EXCL``) holds the owner's pid, host and start time; a second
  run stops at once naming them. A lock whose pid is dead on this host (or reused by a younger
  process) is stale and taken over. A workdir on an object store (``gs://``) has no atomic
  create-if-absent through :mod:`etils.epath`: there ``.lock`` is a best-effort marker (checked,
  written, read back), which stops a second run started after the first but not two started
  in the same second.
* ``<workdir>/run_identity.json`` records the settings that define the run (model and backbone
  config, data specs and a fingerprint of their files, seed, optimizer, loss, LoRA, recipe
  sections). A later start whose settings differ is refused before anything is written, naming
  the keys, unless ``train.resume_changed=True``.
* ``config.json`` is written whole or not at all (:func:`~.paths.write_text`): a crash or a
  full disk never leaves half a file behind.

The path API (:mod:`rewardjax.runtime.paths`) is re-exported here, so a recipe imports its
workdir helpers from one place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import functools
import glob
import hashlib
import json
import logging
import os
import re
import socket
import sys
import time

from rewardjax.runtime import paths
from rewardjax.runtime.paths import (
    DiskFull,
    append_text,
    atomic_write,
    copy_tree,
    disk_full,
    exists,
    is_disk_full,
    is_local,
    is_main_process,
    isdir,
    isfile,
    listdir,
    local_copy,
    makedirs,
    mtime,
    read_json,
    read_jsonl,
    read_npz,
    read_text,
    staged_dir,
    write_json,
    write_jsonl,
    write_npz,
    write_text,
)

__all__ = [
    "DiskFull", "RunIdentityMismatch", "WorkdirBusy", "WorkdirLock", "append_text",
    "atomic_write", "copy_tree", "disk_full", "exists", "is_disk_full", "is_local",
    "is_main_process", "isdir", "isfile", "listdir", "local_copy", "makedirs", "mtime",
    "owns_workdir", "read_json", "read_jsonl", "read_npz", "read_text", "run_identity",
    "staged_dir", "start_run", "write_json", "write_jsonl", "write_npz", "write_text",
]

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
IDENTITY_NAME = "run_identity.json"
# Sections and keys that change how a run is watched, not what it computes; ``*.workdir`` is
# where another run lives (rl.proxy.workdir: a copied workdir may point at the original's).
_SKIP_SECTIONS = {"mode", "mesh", "eval", "score", "export", "rewardbench", "serve", "defaults"}
_OPERATIONAL = re.compile(r"(^|\.)(log_every|eval_every|checkpoint_every|keep_checkpoints|progress"
                          r"|tensorboard|debug_\w+|resume_\w+|compare_with|cache_dir|workdir)$")
_HASH_LIMIT = 512 << 20  # bytes of data files hashed per start; beyond: size + mtime


class WorkdirBusy(RuntimeError):
    """Another live run holds the workdir's lock."""


class RunIdentityMismatch(ValueError):
    """The workdir holds a run with other settings."""


# ----------------------------------------------------------------------------- the lock


def _pid_start_time(pid: int) -> float | None:
    """Epoch seconds at which ``pid`` started (Linux /proc), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an unreaped (killed) child still answers kill(0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _owner_gone(owner: dict) -> bool:
    """True if the lock's owner is certainly gone: same host, pid dead or reused since."""
    if owner.get("host") != socket.gethostname():
        return False
    pid = int(owner.get("pid", -1))
    if pid <= 0 or not _pid_alive(pid):
        return True
    started = _pid_start_time(pid)
    return started is not None and started > float(owner.get("started", 0)) + 2.0


def _describe(owner: dict) -> str:
    when = datetime.datetime.fromtimestamp(float(owner.get("started", 0))).isoformat(
        sep=" ", timespec="seconds")
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {when}"


class WorkdirLock:
    """``<workdir>/.lock``: one live run per workdir (see the module docstring)."""

    def __init__(self, workdir: str):
        self.workdir = paths.normalize(workdir)
        self.path = os.path.join(self.workdir, LOCK_NAME)
        self._text: str | None = None

    def acquire(self) -> WorkdirLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        text = json.dumps(me)
        if not paths.is_local(self.path):
            return self._mark(text)
        for _ in range(50):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing()
                continue
            try:
                os.write(fd, text.encode())
                os.fsync(fd)
            except OSError as e:
                os.close(fd)
                os.unlink(self.path)
                if e.errno == errno.ENOSPC:
                    raise DiskFull(self.path, "taking the workdir lock") from e
                raise
            os.close(fd)
            self._text = text
            return self
        raise WorkdirBusy(f"{self.workdir}: could not take the lock {self.path}; another run "
                          "keeps taking it")

    def _handle_existing(self) -> None:
        """Returns to retry (stale lock set aside, or it vanished); raises if it is held."""
        try:
            with open(self.path) as f:
                seen = f.read()
            age = time.time() - os.path.getmtime(self.path)
        except FileNotFoundError:
            return
        try:
            owner = json.loads(seen)
        except ValueError:  # being written right now, or its writer died before writing
            if age < 10.0:
                time.sleep(0.1)
                return
            owner = {"pid": -1, "host": socket.gethostname(), "started": 0}
        if not _owner_gone(owner):
            raise WorkdirBusy(
                f"{self.workdir} is in use by another run ({_describe(owner)}; lock "
                f"{self.path}): wait for it to finish, use another --workdir, or delete the lock "
                "if that run is gone")
        aside = f"{self.path}.stale.{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else set it aside first
        with open(aside) as f:
            taken = f.read()
        if taken != seen:  # a live run took the lock between our read and the rename
            os.rename(aside, self.path)
            return
        os.unlink(aside)
        log.warning("taking over the stale lock %s (%s is gone)", self.path, _describe(owner))

    def _mark(self, text: str) -> WorkdirLock:
        """The best-effort marker of a non-local workdir (module docstring): refuses a live
        owner's marker, takes over a stale one, writes ours and reads it back."""
        if paths.exists(self.path):
            seen = paths.read_text(self.path)
            try:
                owner = json.loads(seen)
            except ValueError:
                owner = {"pid": -1, "host": socket.gethostname(), "started": 0}
            if not _owner_gone(owner):
                raise WorkdirBusy(
                    f"{self.workdir} is in use by another run ({_describe(owner)}; lock marker "
                    f"{self.path}): wait for it to finish, use another --workdir, or delete the "
                    "marker if that run is gone")
            log.warning("taking over the stale lock marker %s (%s is gone)", self.path,
                        _describe(owner))
        paths.write_text(self.path, text, every_process=True)
        if paths.read_text(self.path) != text:
            raise WorkdirBusy(f"{self.workdir}: another run wrote the lock marker {self.path} "
                              "at the same time; start one run per workdir")
        self._text = text
        return self

    def release(self) -> None:
        if self._text is None:
            return
        try:
            mine = paths.read_text(self.path) == self._text
            if mine:
                paths.remove(self.path)
            else:
                log.warning("lock %s was taken over by another run; leaving it", self.path)
        except FileNotFoundError:
            pass
        self._text = None


# ----------------------------------------------------------------------------- identity


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _spec_files(path: str) -> tuple[list[str], str] | None:
    """The files the loader reads for a local data spec (``rewardjax.data.io.iter_sources``: a
    file, the record files of a directory, a glob's matches) and the base their names are
    relative to; None if nothing is there."""
    from rewardjax.data.io import scan_directory

    if any(ch in path for ch in "*?[") and not os.path.exists(path):
        files = []
        for match in sorted(glob.glob(path)):
            files += scan_directory(match)[0] if os.path.isdir(match) else [match]
        return (files, os.path.dirname(path)) if files else None
    if os.path.isdir(path):
        return scan_directory(path)[0], path
    return ([path], path) if os.path.exists(path) else None


def _fingerprint(files: list[str], base: str, budget: list[int]) -> str:
    """sha256 over files' names (relative to ``base``) and contents while ``budget`` bytes
    last, then sizes and mtimes."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(os.fsencode(os.path.relpath(f, base)) + b"\0")
        if st.st_size <= budget[0]:
            budget[0] -= st.st_size
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return f"sha256:{h.hexdigest()[:16]} ({len(files)} file(s))"


def _data_files(config) -> dict:
    from rewardjax.data.sources import expand, split_specs

    out, budget = {}, [_HASH_LIMIT]
    data = config.get("data")
    for key in ("train", "eval"):
        for spec in split_specs(data.get(key, "") if data is not None else ""):
            if spec.startswith(("sim:", "hf:")):
                continue
            found = _spec_files(expand(spec.partition("@")[0]))
            out[f"data.content[{spec}]"] = _fingerprint(*found, budget) if found else "missing"
    return out


def _backbone(config) -> dict:
    """The backbone's config, resolved from ``model.path``; fills the settings that follow the
    backbone (``train.lr`` ...) first, as ``build_run`` would, so they enter the identity."""
    model = config.get("model")
    if model is None or not model.get("path"):
        return {}
    from rewardjax.models import registry
    from rewardjax.runtime.defaults import resolve_defaults

    spec = registry.resolve(model.path)
    if config.get("train") is not None:
        resolve_defaults(config, spec)
    cfg = dataclasses.asdict(spec.config) if dataclasses.is_dataclass(spec.config) else \
        {"repr": repr(spec.config)}
    return {f"backbone.{k}": v for k, v in cfg.items()}


def run_identity(config) -> dict[str, object]:
    """The flat ``{key: value}`` settings that define the run of ``config``."""
    backbone = _backbone(config)
    flat = _flatten(json.loads(config.to_json_best_effort()))
    keep = {k: v for k, v in flat.items()
            if k.split(".")[0] not in _SKIP_SECTIONS and not _OPERATIONAL.search(k)}
    ident = {**keep, **backbone, **_data_files(config)}
    return json.loads(json.dumps(ident, sort_keys=True, default=str))


def _has_state(workdir: str) -> bool:
    """True if a run left anything beyond its lock, identity and config in ``workdir``."""
    ignore = {LOCK_NAME, IDENTITY_NAME, "config.json"}
    return any(n not in ignore and not n.startswith(".") for n in paths.listdir(workdir))


def check_identity(config, workdir: str, write: bool = True) -> bool:
    """Refuses (before anything is written) a workdir that holds a run with other settings;
    records the identity at the first start (and, when ``write``, after an accepted change).

    Returns True if the record of an accepted change (``train.resume_changed`` on a workdir
    with saved state) waits: :func:`start_run` writes it once the checkpoint fits the state."""
    record = identity_record(config, workdir)
    if record is None:
        return False
    if write and record is not _DEFER:
        write_json(os.path.join(workdir, IDENTITY_NAME), record, every_process=True)
    return record is _DEFER


_DEFER = object()


def identity_record(config, workdir: str, defer: bool = True):
    """The ``run_identity.json`` record to write (None: unchanged); raises
    :class:`RunIdentityMismatch` for refused changes. An accepted change on a workdir with saved
    state gives ``_DEFER`` when ``defer`` (the restore must show that it fits first)."""
    path = os.path.join(workdir, IDENTITY_NAME)
    now = run_identity(config)
    record = {"identity": now, "created": time.time(), "changes": []}
    if paths.isfile(path):
        try:
            old = read_json(path)
            before = dict(old["identity"])
        except (ValueError, KeyError, TypeError) as e:
            raise RunIdentityMismatch(f"{path} is unreadable ({e}); move it away to record this "
                                      "run's settings afresh") from e
        diff = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if not diff:
            return None
        listed = "; ".join(f"{k}: {json.dumps(before.get(k))[:60]} -> {json.dumps(now.get(k))[:60]}"
                           for k in diff[:8]) + ("; ..." if len(diff) > 8 else "")
        train = config.get("train")
        if train is not None and train.get("resume_changed", False):
            if defer:
                log.warning("train.resume_changed=True: continuing %s with changed settings: %s",
                            workdir, listed)
                if _has_state(workdir):
                    return _DEFER
        elif _has_state(workdir):
            raise RunIdentityMismatch(
                f"{workdir} holds a run with other settings ({path} differs in {len(diff)} "
                f"key(s): {listed}); nothing was written. Use a fresh --workdir for a new run, "
                "or pass --config.train.resume_changed=True to continue this one on purpose")
        else:
            log.info("%s saved nothing yet; recording the new settings (%s)", workdir, listed)
        record = dict(old, identity=now, changes=old.get("changes", []) + [
            {"at": time.time(), "changed": {k: [before.get(k), now.get(k)] for k in diff}}])
    elif _has_state(workdir):
        log.info("%s has no %s (an older run); recording this run's settings", workdir,
                 IDENTITY_NAME)
    return record


# ----------------------------------------------------------------------------- the run


@contextlib.contextmanager
def start_run(config, workdir: str):
    """Locks ``workdir``, checks / records the run identity, writes ``config.json``; releases
    the lock at the end, also on errors, after waiting for checkpoints still being written.

    With ``train.resume_changed=True`` on a workdir with saved state, the new identity and
    ``config.json`` are written only once a checkpoint of it restores (or saves): a change the
    checkpoint does not fit leaves the previous run's records as they were."""
    import jax

    from rewardjax.runtime import checkpoint

    if paths.exists(workdir) and not paths.isdir(workdir):
        raise NotADirectoryError(f"--workdir {workdir} is an existing file, not a directory; "
                                 "name a directory (new or a previous run's)")
    makedirs(workdir)
    primary = jax.process_index() == 0
    lock = WorkdirLock(workdir).acquire() if primary else None
    before = checkpoint.open_checkpointers()
    saved_run = dict(checkpoint._RUN)

    def record():
        if primary:
            rec = identity_record(config, workdir, defer=False)
            if rec is not None:
                write_json(os.path.join(workdir, IDENTITY_NAME), rec)
            # eval / score / export reload the run from this
            write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

    try:
        deferred = check_identity(config, workdir, write=primary)
        if deferred:
            checkpoint._RUN["on_fit"] = record
        elif primary:
            write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
        checkpoint._RUN.update(default_lr=checkpoint.default_lr(config),
                               workdir=paths.normalize(workdir))
        yield
        if checkpoint._RUN["on_fit"] is record:  # nothing restored or saved: write it now
            checkpoint._RUN["on_fit"] = None
            record()
    except BaseException:
        checkpoint.close_all(exclude=before)  # no save thread outlives the error
        raise
    finally:
        checkpoint._RUN.update(saved_run)
        if lock is not None:
            lock.release()


def _from_cli() -> bool:
    """True when this process is ``python -m rewardjax.main``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "rewardjax.main"


def owns_workdir(train_fn):
    """Decorates a recipe's ``train(config, workdir, ...)`` with :func:`start_run`.

    On the command line a full disk ends the process at once after its one line: orbax's other
    failed writes would otherwise print their errors at interpreter shutdown."""

    @functools.wraps(train_fn)
    def wrapper(config, workdir, *args, **kwargs):
        try:
            with start_run(config, workdir):
                return train_fn(config, workdir, *args, **kwargs)
        except DiskFull as e:
            if not _from_cli():
                raise
            sys.stdout.flush()
            sys.stderr.write(f"DiskFull: {e}\n")
            sys.stderr.flush()
            os._exit(1)  # the lock is released: start_run's finally ran

    return wrapper
