"""Metrics to a JSONL file and TensorBoard, written from the host (process 0 only)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time

import jax
import numpy as np

from rewardjax.runtime.workdir import DiskFull, is_disk_full

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


class MetricsWriter:
    """Appends ``{"step", "split", ...metrics}`` lines to ``workdir/metrics.jsonl`` and mirrors
    scalars to TensorBoard (``workdir/tb``) when tensorboardX is installed."""

    def __init__(self, workdir: str, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        self._tb_dir = os.path.join(workdir, "tb")
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                try:
                    from tensorboardX import SummaryWriter

                    with _disk_full(self._tb_dir, "creating the TensorBoard event file"):
                        self.tb = SummaryWriter(self._tb_dir)
                except ImportError:  # optional
                    self.tb = None

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, "time": time.time(), **to_python(metrics)}
        with _disk_full(self.path, f"appending the metrics of step {int(step)}"):
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            with _disk_full(self._tb_dir, f"writing TensorBoard scalars of step {int(step)}"):
                for k, v in _flatten(metrics).items():
                    if isinstance(v, (int, float, np.floating, np.integer)) and \
                            math.isfinite(float(v)):
                        self.tb.add_scalar(metric_name(f"{split}/{k}"), float(v), int(step))

    def close(self) -> None:
        if self.tb is not None:
            with _disk_full(self._tb_dir, "closing the TensorBoard event file"):
                self.tb.close()


@contextlib.contextmanager
def _disk_full(path: str, what: str):
    """ENOSPC (a bare ``OSError`` naming no file) -> the one-line :class:`DiskFull`."""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e) or isinstance(e, DiskFull):
            raise
        raise DiskFull(path, f"{what}; free space and rerun") from e


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
