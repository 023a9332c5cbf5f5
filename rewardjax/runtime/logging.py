"""Metrics to a JSONL file and TensorBoard, written from the host (process 0 only).

Both go through the workdir's path layer (:mod:`rewardjax.runtime.paths`), so a ``gs://``
workdir gets its ``metrics.jsonl`` and ``tb/`` event files in the bucket. Object stores cannot
append: there the metrics lines are buffered and the file rewritten whole at most every
``flush_secs`` (and at :meth:`MetricsWriter.close`), and TensorBoard's event files are written
through the same layer (a tensorboardX writer factory for the URL's scheme), each flush
rewriting the file as tensorboardX's own ``gs://`` writer does.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import time

import numpy as np

from rewardjax.runtime import paths
from rewardjax.runtime.paths import disk_full

_ILLEGAL = re.compile(r"[^A-Za-z0-9_.\-/]")


def metric_name(name: str) -> str:
    """A scalar name every writer accepts (TensorBoard allows ``[A-Za-z0-9_./-]``): eval-set
    names such as ``sim:test_id`` or ``Adversarial_*`` become ``sim_test_id``, ..."""
    return _ILLEGAL.sub("_", name)


def to_python(x):
    """Numpy / jax scalars and arrays to JSON-friendly Python values (NaN -> None)."""
    if isinstance(x, dict):
        return {k: to_python(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_python(v) for v in x]
    if hasattr(x, "shape") and getattr(x, "shape", None) == ():
        x = x.item()
    elif hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def finish_run(writer: MetricsWriter, step: int, workdir: str, summary: dict, table) -> dict:
    """The end of every training story: each eval set's results (``summary["eval"]``) and the
    summary to the metrics writer, the writer closed, and on process 0 ``summary.json`` written
    and ``table(summary)`` printed. Returns ``summary``."""
    for name, res in (summary.get("eval") or {}).items():
        writer.write(step, f"eval/{name}", res)
    writer.write(step, "summary", summary)
    writer.close()
    if paths.is_main_process():
        paths.write_json(os.path.join(workdir, "summary.json"), to_python(summary))
        print(table(summary))
    return summary


class MetricsWriter:
    """Appends ``{"step", "split", ...metrics}`` lines to ``workdir/metrics.jsonl`` and mirrors
    scalars to TensorBoard (``workdir/tb``) when tensorboardX is installed (module docstring:
    non-local workdirs)."""

    def __init__(self, workdir: str, tensorboard: bool = True, flush_secs: float = 30.0):
        self.enabled = paths.is_main_process()
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        self._tb_dir = os.path.join(workdir, "tb")
        self._pending: list[str] = []  # lines not yet in a non-local metrics.jsonl
        self._flush_secs, self._flushed = float(flush_secs), time.time()
        if self.enabled:
            paths.makedirs(workdir)
            if tensorboard:
                try:
                    from tensorboardX import SummaryWriter

                    if not paths.is_local(self._tb_dir):
                        _route_tensorboard(self._tb_dir)
                    with disk_full(self._tb_dir, "creating the TensorBoard event file"):
                        self.tb = SummaryWriter(self._tb_dir)
                except ImportError:  # optional
                    self.tb = None

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, "time": time.time(), **to_python(metrics)}
        line = json.dumps(row) + "\n"
        if paths.is_local(self.path):
            with disk_full(self.path, f"appending the metrics of step {int(step)}"):
                paths.append_text(self.path, line)
        else:
            self._pending.append(line)
            if time.time() - self._flushed >= self._flush_secs:
                self.flush()
        if self.tb is not None:
            with disk_full(self._tb_dir, f"writing TensorBoard scalars of step {int(step)}"):
                for k, v in _flatten(metrics).items():
                    if isinstance(v, (int, float, np.floating, np.integer)) and \
                            math.isfinite(float(v)):
                        self.tb.add_scalar(metric_name(f"{split}/{k}"), float(v), int(step))

    def flush(self) -> None:
        """Writes the buffered lines of a non-local ``metrics.jsonl``."""
        if self._pending:
            paths.append_text(self.path, "".join(self._pending))
            self._pending = []
        self._flushed = time.time()

    def close(self) -> None:
        self.flush()
        if self.tb is not None:
            with disk_full(self._tb_dir, "closing the TensorBoard event file"):
                self.tb.close()


class _EventFile:
    """A tensorboardX event file on the path layer: bytes buffered, the file written whole on
    every flush (tensorboardX flushes every two minutes and on close)."""

    def __init__(self, path: str):
        self.path, self.buffer = path, io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        paths.write_bytes(self.path, self.buffer.getvalue(), every_process=True)

    def close(self) -> None:
        self.flush()


class _EventFiles:
    """tensorboardX's writer-factory interface (``record_writer.register_writer_factory``)."""

    def open(self, path: str) -> _EventFile:
        return _EventFile(path)

    def directory_check(self, path: str) -> None:
        paths.makedirs(path)


def _route_tensorboard(url: str) -> None:
    """Sends tensorboardX's files under ``url``'s scheme (``gs``, ``s3``...) through the path
    layer instead of its own cloud clients (google-cloud-storage, boto3) or a local folder."""
    from tensorboardX import record_writer

    record_writer.register_writer_factory(url.split("://", 1)[0], _EventFiles())


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            v = to_python(v)
            if isinstance(v, (int, float)):
                out[key] = v
    return out
