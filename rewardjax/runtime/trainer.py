"""The one training loop every recipe uses.

A recipe supplies its step (``(state, batch) -> (state, metrics)``, jitted), its batches
(``step -> placed batch``, a pure function of the step so a resumed run sees the same data) and
optionally its evaluation; the :class:`Trainer` owns everything around them: restore-or-init,
the non-finite stop naming the last good checkpoint, metrics at ``train.log_every`` (averaged
over the window, or the last step's values), checkpoints at ``train.checkpoint_every``,
evaluation at ``train.eval_every``, hooks at any cadence, the progress bar, throughput and the
``train.debug_kill_at_step`` kill used by the resume tests::

    trainer = Trainer(step_fn, batch_at, total_steps=1000, parts=[Part(ckpt)], writer=writer,
                      train=config.train, eval_fn=lambda state: scorer_of(state).evaluate_sets(..))
    state = trainer.fit(trainer.restore(run.state))
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import tqdm

from rewardjax.runtime.checkpoint import Checkpointer, nonfinite_error

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Part:
    """One checkpointed part of the training state: ``of(state)`` is saved in ``ckpt``.
    Parts save in list order; the non-finite stop names the first ``main`` one."""

    ckpt: Checkpointer
    of: Callable[[Any], Any] = lambda state: state
    main: bool = True


@dataclasses.dataclass
class Hook:
    fn: Callable[[int, Any, dict], None]  # (steps done, state, host metrics)
    every: int
    at_end: bool  # also after the last step when it is not a multiple of ``every``


class Trainer:
    """Runs ``step_fn`` from the state's step to ``total_steps``.

    Args:
      step_fn: ``(state, batch) -> (state, metrics)``; ``metrics["finite"]`` (a bool or one per
        member) guards the update, ``metrics["real_tokens"]`` (optional) feeds tokens/s.
      batch_at: ``step -> batch`` ready for ``step_fn`` (placed on the mesh).
      total_steps: the step the run ends at.
      parts: the checkpointed parts (:class:`Part`), saved in this order.
      writer: a :class:`~rewardjax.runtime.logging.MetricsWriter` (or ``None``).
      train: the ``train`` config section (``log_every``, ``eval_every``, ``progress``,
        ``debug_kill_at_step``, ``lr``).
      name: metrics split of the training rows (``train``, ``train/<stage>``) and bar label.
      reduce: ``"mean"``: a logged row averages the scalar metrics since the last row (plus
        ``tokens_per_s``); ``"last"``: the last step's metrics as lists (stacked members).
      row_fn: ``metrics -> {name: float}`` for the averaged row (default: every metric).
      last_keys: row entries reported at their last value instead of averaged (e.g. a learned
        scale).
      log_every: overrides ``train.log_every`` (a recipe with its own cadence key).
      postfix_fn: ``row -> {name: str}`` for the progress bar.
      eval_fn: ``state -> {set name: metrics}``, run every ``train.eval_every`` steps before the
        last (the recipe evaluates the final state itself).
      nonfinite_message: ``(step, metrics) -> str``, what went wrong at a non-finite step.
      nonfinite_kw: passed to :func:`~rewardjax.runtime.checkpoint.nonfinite_error` (``lr_key``,
        ``resume_key``, ...).
    """

    def __init__(self, step_fn, batch_at, *, total_steps: int, parts: Sequence[Part], writer,
                 train, name: str = "train", reduce: str = "mean",
                 row_fn: Callable[[dict], dict] | None = None, last_keys: Sequence[str] = (),
                 log_every: int | None = None,
                 postfix_fn: Callable[[dict], dict] | None = None,
                 eval_fn: Callable[[Any], dict] | None = None,
                 nonfinite_message: Callable[[int, dict], str] | None = None,
                 nonfinite_kw: dict | None = None, step_of: Callable[[Any], int] | None = None):
        if reduce not in ("mean", "last"):
            raise ValueError(f"reduce must be mean or last, got {reduce!r}")
        self.step_fn, self.batch_at, self.total = step_fn, batch_at, int(total_steps)
        self.parts, self.writer, self.cfg = list(parts), writer, train
        self.name, self.reduce = name, reduce
        self.row_fn = row_fn or (lambda m: {k: float(v) for k, v in m.items()})
        self.last_keys = tuple(last_keys)
        self.log_every = int(log_every or train.log_every)
        self.postfix_fn = postfix_fn or _default_postfix
        self.eval_fn = eval_fn
        self.nonfinite_message = nonfinite_message or _default_message
        self.nonfinite_kw = dict(nonfinite_kw or {})
        self.nonfinite_kw.setdefault("lr", train.get("lr"))
        self.step_of = step_of or (lambda state: int(np.max(jax.device_get(state.step))))
        self.hooks: list[Hook] = []
        self.last_row: dict = {}  # the last metrics row written
        self.tokens = 0.0  # real tokens of the steps after the first (compiling) one
        self.t_first: float | None = None

    def add_hook(self, fn: Callable[[int, Any, dict], None], *, every: int = 1,
                 at_end: bool = False) -> None:
        """Calls ``fn(steps_done, state, host_metrics)`` after every ``every``-th step (and after
        the last step with ``at_end``), before that step's metrics row and checkpoint."""
        self.hooks.append(Hook(fn, int(every), bool(at_end)))

    def restore(self, state, resume_step: int | None = None):
        """Restore-or-init: the newest intact checkpoint of the (single) part, or ``state``."""
        if len(self.parts) != 1:
            raise ValueError("restore() handles one checkpointed part; restore several yourself")
        restored = self.parts[0].ckpt.resume(state, resume_step)
        if restored is not None:
            log.info("%s: resumed from step %d", self.name, self.step_of(restored))
            return restored
        return state

    @property
    def train_time(self) -> float:
        """Seconds since the end of the first step this process ran (0 before it)."""
        return time.time() - (self.t_first or time.time())

    def fit(self, state):
        """Trains to ``total_steps``; returns the final state (every part saved, closed)."""
        cfg, total = self.cfg, self.total
        start = self.step_of(state)
        sums: dict[str, float] = {}
        count = 0
        bar = tqdm.tqdm(total=total, initial=start, desc=self.name,
                        disable=not cfg.progress, dynamic_ncols=True)
        for step in range(start, total):
            state, metrics = self.step_fn(state, self.batch_at(step))
            metrics = jax.device_get(metrics)
            done = step + 1
            if not np.all(metrics["finite"]):
                head = next((p for p in self.parts if p.main), None)
                raise nonfinite_error(self.nonfinite_message(done, metrics),
                                      head.ckpt if head else None, done,
                                      head.of(state) if head else state, **self.nonfinite_kw)
            if self.t_first is None:
                self.t_first = time.time()  # throughput excludes the first (compiling) step
            elif "real_tokens" in metrics:
                self.tokens += float(np.sum(metrics["real_tokens"]))
            for hook in self.hooks:
                if done % hook.every == 0 or (hook.at_end and done == total):
                    hook.fn(done, state, metrics)
            if self.reduce == "mean":
                row_now = self.row_fn(metrics)
                for k, v in row_now.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
            bar.update(1)
            if done % self.log_every == 0 or done == total:
                if self.reduce == "mean":
                    row = {k: (row_now[k] if k in self.last_keys else v / count)
                           for k, v in sums.items()}
                    if "real_tokens" in metrics:
                        row["tokens_per_s"] = self.tokens / max(time.time() - self.t_first,
                                                                1e-9)
                    sums, count = {}, 0
                else:
                    row = {k: np.asarray(v).tolist() for k, v in metrics.items()}
                self.last_row = row
                if self.writer is not None:
                    self.writer.write(done, self.name, row)
                bar.set_postfix(**self.postfix_fn(row))
            for part in self.parts:
                part.ckpt.maybe_save(done, part.of(state), force=done == total)
            if (self.eval_fn is not None and cfg.get("eval_every") and done != total
                    and done % cfg.eval_every == 0):
                for set_name, res in self.eval_fn(state).items():
                    self.writer.write(done, f"eval/{set_name}", res)
            if cfg.get("debug_kill_at_step") and done == cfg.debug_kill_at_step:
                for part in self.parts:
                    part.ckpt.wait()  # a kill after the saves landed; resuming must match
                os.kill(os.getpid(), signal.SIGKILL)
        bar.close()
        for part in self.parts:
            part.ckpt.close()
        return state


def _default_postfix(row: dict) -> dict:
    out = {}
    for key in ("loss", "accuracy"):
        if key in row:
            out["acc" if key == "accuracy" else key] = f"{float(np.mean(row[key])):.3f}"
    return out


def _default_message(step: int, metrics: dict) -> str:
    finite = np.asarray(metrics["finite"], bool)
    if finite.ndim:
        return (f"non-finite loss for members {np.flatnonzero(~finite).tolist()} at step "
                f"{step}; stopped.")
    return (f"non-finite loss or gradient at step {step} (loss={metrics.get('loss')}, "
            f"grad_norm={metrics.get('grad_norm')}); the update was skipped and the run stopped.")
