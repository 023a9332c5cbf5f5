"""Workdir files on any filesystem: local paths and cloud URLs (``gs://``, ``s3://``) alike.

Every read and write of a workdir (configs, metrics, summaries, scores, exports, plots, the
fitted tokenizer, ArmoRM heads) goes through here, on :class:`etils.epath.Path`, the path type
orbax uses: a ``--workdir=gs://bucket/run`` puts everything in the bucket next to the
checkpoints instead of into a local folder named ``gs:``.

* Writes are whole or nothing where the filesystem allows it: on a local disk a temp file in the
  same directory, fsync, ``os.replace``; on an object store a plain write (an object appears
  only once its upload completes, and a rename there is a copy).
* Only process 0 writes (:func:`is_main_process`): with several hosts each would write the same
  file; ``every_process=True`` is for the rare file that each process writes under its own
  name.
* A full local disk raises :class:`DiskFull`, one line naming the file.
* Libraries that only write to local directories (HF tokenizers, the exporters, ArmoRM heads)
  get a local directory from :func:`staged_dir`, copied to the workdir when they are done;
  :func:`local_copy` is the reading side.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np
from etils import epath

PathLike = str | os.PathLike


class DiskFull(OSError):
    """ENOSPC while writing ``path``; the message is one line naming it."""

    def __init__(self, path: str, what: str):
        super().__init__(errno.ENOSPC, "no space left on device", path)
        self.what = what

    def __str__(self) -> str:
        return f"{self.filename}: no space left on device while {self.what}"


def is_disk_full(exc: BaseException) -> bool:
    """True if ``exc`` or anything it was raised from is an out-of-space error (orbax and
    TensorStore re-raise it as other types, keeping the text)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or \
                "no space left on device" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def disk_full(path: PathLike, what: str):
    """ENOSPC (often a bare ``OSError`` naming no file) -> the one-line :class:`DiskFull`."""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e) or isinstance(e, DiskFull):
            raise
        raise DiskFull(str(path), f"{what}; free space and rerun") from e


# ----------------------------------------------------------------------------- names


def path(p: PathLike) -> epath.Path:
    """``p`` (a local path or a URL such as ``gs://bucket/run``) as an :class:`epath.Path`."""
    return epath.Path(p)


def is_local(p: PathLike) -> bool:
    """True for a path on this machine's filesystem, False for a URL (``gs://``, ``s3://``)."""
    return "://" not in os.fspath(p)


def normalize(p: PathLike) -> str:
    """An absolute local path, or the URL without a trailing slash."""
    return os.path.abspath(p) if is_local(p) else os.fspath(p).rstrip("/")


def is_within(child: PathLike, parent: PathLike) -> bool:
    """True if ``child`` is ``parent`` or lies under it (local paths and URLs)."""
    c, p = normalize(child), normalize(parent)
    return c == p or c.startswith(p.rstrip("/") + "/")


def is_main_process() -> bool:
    """True on process 0, the one that writes the workdir's files on several hosts."""
    import jax

    return jax.process_index() == 0


# ----------------------------------------------------------------------------- queries


def exists(p: PathLike) -> bool:
    return path(p).exists()


def isdir(p: PathLike) -> bool:
    return path(p).is_dir()


def isfile(p: PathLike) -> bool:
    q = path(p)
    return q.exists() and not q.is_dir()


def listdir(p: PathLike) -> list[str]:
    """The names in directory ``p``, sorted."""
    return sorted(c.name for c in path(p).iterdir())


def mtime(p: PathLike) -> float:
    """Seconds since the epoch of ``p``'s last change (object stores: whole seconds)."""
    return os.path.getmtime(p) if is_local(p) else float(path(p).stat().mtime)


def makedirs(p: PathLike) -> None:
    """Creates directory ``p`` and its parents (object stores: a no-op or a marker)."""
    with disk_full(p, "creating the directory"):
        path(p).mkdir(parents=True, exist_ok=True)


def remove(p: PathLike, missing_ok: bool = True) -> None:
    path(p).unlink(missing_ok=missing_ok)


# ----------------------------------------------------------------------------- reading


def read_bytes(p: PathLike) -> bytes:
    return path(p).read_bytes()


def read_text(p: PathLike) -> str:
    return path(p).read_text(encoding="utf-8")


def read_json(p: PathLike):
    return json.loads(read_text(p))


def read_jsonl(p: PathLike) -> list:
    return [json.loads(line) for line in read_text(p).splitlines() if line.strip()]


def read_npz(p: PathLike) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(read_bytes(p))) as f:
        return {k: f[k] for k in f.files}


# ----------------------------------------------------------------------------- writing


def _fsync(fd: int) -> None:  # a seam for tests (simulated full disks)
    os.fsync(fd)


def _write_local(p: str, data: bytes) -> None:
    """Temp file in the same directory, fsync, ``os.replace``: whole or not at all."""
    p = os.path.abspath(p)
    directory, name = os.path.split(p)
    fd, tmp = None, None
    try:
        os.makedirs(directory, exist_ok=True)
        # os.open, not mkstemp: the file gets the usual umask permissions, not 0600
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        with os.fdopen(fd, "wb") as f:
            fd = None
            f.write(data)
            f.flush()
            _fsync(f.fileno())
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            kept = "the previous version is left as it was" if os.path.exists(p) else \
                "nothing was written"
            raise DiskFull(p, f"writing it ({kept}); free space and rerun") from e
        raise
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_bytes(p: PathLike, data: bytes, *, every_process: bool = False) -> None:
    """Writes ``data`` to ``p`` whole or not at all (module docstring); process 0 only unless
    ``every_process``. A full disk raises :class:`DiskFull` and leaves the old file."""
    if not (every_process or is_main_process()):
        return
    if is_local(p):
        _write_local(os.fspath(p), data)
        return
    q = path(p)
    q.parent.mkdir(parents=True, exist_ok=True)
    q.write_bytes(data)


def write_text(p: PathLike, text: str, *, every_process: bool = False) -> None:
    """:func:`write_bytes` of ``text`` in UTF-8."""
    write_bytes(p, text.encode("utf-8"), every_process=every_process)


def write_json(p: PathLike, obj, indent: int = 2, *, every_process: bool = False) -> None:
    """``json.dumps(obj)`` to ``p`` through :func:`write_text`."""
    write_text(p, json.dumps(obj, indent=indent), every_process=every_process)


def write_jsonl(p: PathLike, rows, *, every_process: bool = False) -> None:
    """One JSON line per row of ``rows`` (any iterable), written whole."""
    write_text(p, "".join(json.dumps(r) + "\n" for r in rows), every_process=every_process)


def write_npz(p: PathLike, *, compressed: bool = False, every_process: bool = False,
              **arrays) -> None:
    """``np.savez`` (or ``savez_compressed``) of ``arrays`` to ``p``, written whole."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    write_bytes(p, buf.getvalue(), every_process=every_process)


def append_text(p: PathLike, text: str, *, every_process: bool = False) -> None:
    """Appends ``text`` to ``p``. Locally an append; object stores cannot append, so there the
    object is read and written again whole (callers batch their appends)."""
    if not (every_process or is_main_process()):
        return
    if is_local(p):
        with open(p, "a", encoding="utf-8") as f:
            f.write(text)
        return
    before = read_text(p) if exists(p) else ""
    write_text(p, before + text, every_process=True)


def atomic_write(p: PathLike, text: str) -> None:
    """``text`` to ``p`` whole or not at all, from whichever process calls it (the old name of
    :func:`write_text` with ``every_process=True``; callers choose the process)."""
    write_text(p, text, every_process=True)


# ----------------------------------------------------------------------------- directories


def copy_tree(src: PathLike, dst: PathLike) -> None:
    """Copies directory ``src`` into ``dst`` (created), file by file, either side local or not;
    existing files of ``dst`` are overwritten, others kept."""
    makedirs(dst)
    for child in path(src).iterdir():
        target = os.path.join(os.fspath(dst), child.name)
        if child.is_dir():
            copy_tree(child, target)
        else:
            write_bytes(target, child.read_bytes(), every_process=True)


@contextlib.contextmanager
def staged_dir(target: PathLike, *, every_process: bool = False) -> Iterator[str]:
    """A local directory for a writer that only knows local files, holding ``target`` in the
    end: ``target`` itself when it is local, else a temp directory copied to ``target`` when
    the block succeeds (process 0 only unless ``every_process``)."""
    if is_local(target):
        os.makedirs(target, exist_ok=True)
        yield os.fspath(target)
        return
    with tempfile.TemporaryDirectory(prefix="rewardjax-stage-") as tmp:
        yield tmp
        if every_process or is_main_process():
            copy_tree(tmp, target)


@contextlib.contextmanager
def local_copy(src: PathLike) -> Iterator[str]:
    """A local path holding ``src`` (a file or a directory) for readers that only know local
    files: ``src`` itself when it is local, else a temp copy removed after the block."""
    if is_local(src):
        yield os.fspath(src)
        return
    tmp = tempfile.mkdtemp(prefix="rewardjax-read-")
    try:
        local = os.path.join(tmp, path(src).name or "copy")
        if isdir(src):
            copy_tree(src, local)
        else:
            with open(local, "wb") as f:
                f.write(read_bytes(src))
        yield local
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
