"""orbax checkpoints of the whole train state, restored onto the run's shardings.

Also what every training loop shares when things go wrong: the one :class:`NonFiniteLoss`
error and its message (:func:`nonfinite_error`, naming the last *good* checkpoint), falling
back past a damaged newest checkpoint, and a one-line error for a full disk.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import logging
import os
import re
import shutil
import time
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from rewardjax.runtime import paths
from rewardjax.runtime.paths import DiskFull, is_disk_full

log = logging.getLogger(__name__)

# orbax's words for "this checkpoint was written for another state", not damage.
_MISMATCH = re.compile(r"not compatible with the stored shape|tree structures do not match")
_OPEN: weakref.WeakSet = weakref.WeakSet()
# The running workdir's backbone-following ``train.lr`` default (set by ``start_run``) and what
# to write once its checkpoint is known to fit (a ``resume_changed`` identity, see workdir.py).
_RUN = {"default_lr": None, "workdir": None, "on_fit": None}


class _QuietDiskFull(logging.Filter):
    """Drops orbax's own reports of a full disk (each failed save thread logs a traceback of
    ~100 lines): :class:`DiskFull` says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" not in record.pathname:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        return not ((exc is not None and is_disk_full(exc))
                    or is_disk_full(RuntimeError(record.getMessage())))


_QUIET = _QuietDiskFull()


class NonFiniteLoss(RuntimeError, FloatingPointError):
    """A step produced a NaN/inf loss or gradient; the run stopped (every loop raises this)."""


class CheckpointError(RuntimeError):
    """No checkpoint of a directory can be restored (or the one asked for is missing)."""


class CheckpointMismatch(ValueError):
    """A checkpoint does not fit the run's state (another model or settings wrote it)."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line`` of an error, without TensorStore's spec dumps; a long line keeps
    its start (the error code) and its end (the file and the reason)."""
    text = (str(exc).strip().splitlines() or [""])[0].split(" [tensorstore_spec")[0]
    if len(text) > limit:
        head = limit // 4
        text = text[:head] + " ... " + text[-(limit - head - 5):]
    return f"{type(exc).__name__}: {text}"


def _drop_tracebacks(exc: BaseException | None) -> None:
    """Frees what a failed async save's tracebacks hold (unfinished orbax coroutines), so they
    are collected now and not at interpreter shutdown, where each prints an ImportError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__
    gc.collect()


def open_checkpointers() -> set[int]:
    return {id(c) for c in _OPEN}


def close_all(exclude: set[int] = frozenset()) -> None:
    """Waits for and closes the open checkpointers not in ``exclude`` (on an error path, so
    no async save is still running when the interpreter shuts down); errors only logged."""
    for c in list(_OPEN):
        if id(c) not in exclude:
            try:
                c.close()
            except Exception as e:  # noqa: BLE001 -- the error being raised matters more
                log.warning("closing %s: %s", c.directory, first_line(e))


def _finite(state) -> bool:
    """True if every float array of ``state`` is finite (one reduction, one device sync)."""
    leaves = [x for x in jax.tree.leaves(state)
              if hasattr(x, "dtype") and np.issubdtype(x.dtype, np.inexact)]
    if not leaves:
        return True
    return bool(jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves])))


class Checkpointer:
    """Saves every ``every`` steps (and at the end); keeps the newest ``keep``.

    Restoring uses the live state as the target, so arrays come back with the same shardings
    and an interrupted run continues exactly where its last checkpoint left off.
    """

    def __init__(self, directory: str, every: int, keep: int = 2):
        self.directory = paths.normalize(directory)  # a gs:// URL stays one (orbax: epath)
        self.every = int(every)
        self._pending: int | None = None
        self._closed = False
        self._keep = keep
        self._fits = False  # a restore or a save showed the directory fits this run
        try:
            self.manager = self._new_manager()
        except Exception as e:
            if is_disk_full(e):
                raise DiskFull(self.directory, "creating the checkpoint directory") from e
            raise
        _OPEN.add(self)
        logging.getLogger("absl").addFilter(_QUIET)  # once: a set of filters

    def _new_manager(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=self._keep, create=True))

    def _fresh_manager(self) -> None:
        """A failed restore can leave orbax's manager (its handler registry) bound to the
        failing step's layout; the next attempt gets a new one."""
        with contextlib.suppress(Exception):
            self.manager.close()
        self.manager = self._new_manager()

    def _fitted(self) -> None:
        """This directory's checkpoint fits the run: commits what waited for that (the new run
        identity of a ``resume_changed`` start), once, for the run's own checkpoints only."""
        if self._fits:
            return
        self._fits = True
        workdir, on_fit = _RUN["workdir"], _RUN["on_fit"]
        if on_fit is not None and workdir and paths.is_within(self.directory, workdir):
            _RUN["on_fit"] = None
            on_fit()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def maybe_save(self, step: int, state, force: bool = False) -> bool:
        if not force and (self.every <= 0 or step % self.every):
            return False
        if self.manager.latest_step() == step:
            return False
        with self._disk_guard(step):
            self._pending = step
            saved = bool(self.manager.save(step, args=ocp.args.StandardSave(state)))
        self._fitted()
        return saved

    # ------------------------------------------------------------------------- restoring

    def restore(self, state, step: int | None = None):
        """Restores into the structure and shardings of ``state`` (the freshly built one).

        Without ``step``: the newest step that restores; a damaged one is logged (directory and
        error) and the next older one tried. None if there is no checkpoint.
        """
        if step is not None:
            return self._restore(state, step)
        return self._restore_newest(state)[0]

    def resume(self, state, step: int | None = None):
        """The training loops' restore: ``step`` (``train.resume_step``) exactly, or the newest
        intact step. Steps newer than the one restored (damaged, or discarded by the user's
        ``resume_step``) are moved aside, since orbax skips saving a step at or below its
        newest one; nothing moves unless a restore succeeded."""
        if step is None:
            out, damaged = self._restore_newest(state)
            self._set_aside(damaged, "damaged")
            if out is not None:
                self._fitted()
            return out
        step = int(step)
        if step not in self.manager.all_steps():
            raise CheckpointError(f"train.resume_step={step}: {self.directory} has no step {step} "
                                  f"(saved: {self.steps() or 'none'})")
        out = self._restore(state, step)
        if not _finite(out):
            raise CheckpointError(f"train.resume_step={step}: {self._step_dir(step)} holds "
                                  "non-finite values (damaged); resume from another step")
        self.discard_after(step)
        self._fitted()
        return out

    def discard_after(self, step: int) -> None:
        """Moves the steps newer than ``step`` aside (a resume from an older step)."""
        self._set_aside([s for s in self.steps() if s > step], "discarded")

    def _restore(self, state, step: int):
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
        )
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(target))
        except ValueError as e:
            if _MISMATCH.search(str(e)):
                raise CheckpointMismatch(
                    f"{self._step_dir(step)} does not fit this run's state ({first_line(e)}): it "
                    "was written by a run with another model or settings; use a fresh --workdir"
                ) from e
            raise

    def _restore_newest(self, state):
        """``(state, [steps that failed])``: the newest step that restores with finite values.

        A step that does not fit the state is only a model change if no older step fits
        either: damaged metadata reads the same, so older steps are tried first."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        failed = []
        for i, s in enumerate(steps):
            try:
                out = self._restore(state, s)
                if not _finite(out):
                    raise ValueError("restored arrays hold NaN/inf (garbled data files)")
                if failed:
                    log.warning("restored %s; newer step(s) %s are damaged",
                                self._step_dir(s), [f for f, _ in failed])
                return out, [f for f, _ in failed]
            except Exception as e:  # noqa: BLE001 -- any read error: try the older step
                nxt = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else \
                    "no older step to fall back to"
                if isinstance(e, CheckpointMismatch):
                    log.warning("checkpoint %s does not fit this run's state (%s); %s",
                                self._step_dir(s), first_line(e.__cause__ or e),
                                f"trying step {steps[i + 1]} to tell damage from a model change"
                                if i + 1 < len(steps) else "no older step to compare with")
                else:
                    log.warning("checkpoint %s is damaged (%s); %s", self._step_dir(s),
                                first_line(e), nxt)
                failed.append((s, e))
                self._fresh_manager()
        mismatch = [e for _, e in failed if isinstance(e, CheckpointMismatch)]
        if mismatch:  # no step fits, and a readable one says why: another model or settings
            raise mismatch[0]
        if failed:
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be restored ("
                + "; ".join(f"step {s}: {first_line(e, 200)}" for s, e in failed)
                + "); start again in a fresh --workdir") from failed[0][1]
        return None, []

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _set_aside(self, steps: list[int], kind: str) -> None:
        if not steps:
            return
        root = f"{self.directory}.{kind}"
        if jax.process_index() == 0:
            paths.makedirs(root)
            for s in steps:
                dest = os.path.join(root, str(s))
                if paths.exists(dest):
                    dest += f"-{int(time.time())}"
                paths.path(self._step_dir(s)).rename(dest)
        if jax.process_count() > 1:
            from orbax.checkpoint import multihost

            multihost.sync_global_processes(f"rewardjax_set_aside_{kind}")
        self.manager.reload()
        log.warning("moved %s checkpoint step(s) %s of %s aside to %s", kind, sorted(steps),
                    self.directory, root)

    # ------------------------------------------------------------------------- the NaN guard

    def last_good_step(self, failing_step: int, state) -> int | None:
        """The newest saved step older than ``failing_step``'s input (the state after step
        ``failing_step - 1``) whose saved arrays are all finite; restores to check, so call
        it on the failure path only."""
        self.wait()
        for s in sorted(self.manager.all_steps(), reverse=True):
            if s >= failing_step - 1:
                continue
            try:
                saved = self._restore(state, s)
            except Exception as e:  # noqa: BLE001
                log.warning("checkpoint %s cannot be read (%s)", self._step_dir(s), first_line(e))
                continue
            if all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(saved)
                   if np.issubdtype(x.dtype, np.inexact)):
                return s
        return None

    # ------------------------------------------------------------------------- lifecycle

    @contextlib.contextmanager
    def _disk_guard(self, step: int | None):
        """A full disk during a save (or the wait for one) -> one :class:`DiskFull` line."""
        try:
            yield
        except Exception as e:
            if not is_disk_full(e):
                raise
            # A save fails in the background: the error may surface at the next save, so the
            # step comes from the temp directory orbax names when it does.
            named = re.search(re.escape(self.directory) + r"/(\d+)\.orbax-checkpoint-tmp",
                              str(e))
            s = int(named.group(1)) if named else (self._pending if step is None else step)
            for tmp in glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*")):
                shutil.rmtree(tmp, ignore_errors=True)  # give back what the failed save took
            _drop_tracebacks(e)
            done = [x for x in self.manager.all_steps() if x != s]
            kept = (f"the last complete checkpoint, step {max(done)}, is intact" if done
                    else "no earlier checkpoint exists")
            raise DiskFull(self._step_dir(s),
                           f"saving checkpoint step {s}; {kept}; free space and rerun") from e

    def wait(self) -> None:
        with self._disk_guard(None):
            self.manager.wait_until_finished()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        with self._disk_guard(None):
            try:
                self.manager.wait_until_finished()
            finally:
                self.manager.close()


def default_lr(config) -> float | None:
    """The ``train.lr`` that follows ``config``'s backbone (``defaults.scratch.lr``, or
    ``defaults.finetune.*`` for a pretrained one, as :func:`resolve_defaults`); None if unknown."""
    try:
        d, model = config.get("defaults"), config.get("model")
        if d is None or model is None or not model.get("path"):
            return None
        from rewardjax.models import registry
        from rewardjax.runtime.defaults import finetune_lr

        spec = registry.resolve(model.path)
        if spec.load_weights is None:
            return float(d.scratch.lr)
        lora = config.get("lora")
        if lora is not None and lora.get("enabled", False):
            return float(d.finetune.lora_lr)
        return float(finetune_lr(d.finetune, spec))
    except Exception:  # noqa: BLE001 -- only advice: fall back to lr / 10
        return None


def suggested_lr(lr: float, default: float | None) -> float:
    """What a NaN stop suggests: the backbone default when ``lr`` is above it, else ``lr / 10``
    (so following the advice converges instead of dividing a huge rate by 10 each time)."""
    return float(default) if default and lr > default else lr / 10


def nonfinite_error(what: str, ckpt: Checkpointer | None, failing_step: int, state, *,
                    lr: float | None, lr_key: str = "train.lr",
                    every_key: str = "train.checkpoint_every",
                    resume_key: str | None = "train.resume_step",
                    unit: str = "step", suggest_lr: float | None = None) -> NonFiniteLoss:
    """The :class:`NonFiniteLoss` for a stop at ``failing_step``: ``what`` went wrong, which
    checkpoint is the last good one (:meth:`Checkpointer.last_good_step`) and how to resume
    from it safely, or that there is none and the run must restart with a lower rate.
    ``suggest_lr`` (default: the running config's :func:`default_lr` for ``train.lr``) is the
    rate to suggest when ``lr`` is above it."""
    if suggest_lr is None and lr_key == "train.lr":
        suggest_lr = _RUN["default_lr"]
    lower = (f"e.g. --config.{lr_key}={suggested_lr(lr, suggest_lr):.3g} (now {lr:.3g})" if lr
             else f"--config.{lr_key}=<lower>")
    if ckpt is None:
        return NonFiniteLoss(f"{what} This stage writes no checkpoint; rerun with a lower "
                             f"learning rate, {lower}")
    good = ckpt.last_good_step(failing_step, state)
    saved = ckpt.steps()
    if good is not None:
        if resume_key:
            how = (f"rerun with --config.{resume_key}={good} --config.train.resume_changed=True "
                   f"and a lower learning rate, {lower}")
        else:
            how = (f"move the newer step directories of {ckpt.directory} aside and rerun with "
                   f"--config.train.resume_changed=True and a lower learning rate, {lower}")
        return NonFiniteLoss(f"{what} Last good checkpoint: {unit} {good} in {ckpt.directory} "
                             f"(finite, older than this {unit}'s input); resume from {unit} "
                             f"{good}: {how}")
    if not saved:
        due = (f"the first is due at {unit} {ckpt.every}, {every_key}={ckpt.every}"
               if ckpt.every > 0 else f"{every_key}={ckpt.every}: only the final one is saved")
        return NonFiniteLoss(f"{what} No checkpoint was written yet ({due}); the run must be "
                             "restarted in a fresh --workdir with a lower learning rate, "
                             f"{lower}")
    return NonFiniteLoss(f"{what} No good checkpoint is kept: saved {unit}(s) {saved} in "
                         f"{ckpt.directory} are this {unit}'s input, newer, or not finite; the "
                         "run must be restarted in a fresh --workdir with a lower learning "
                         f"rate, {lower}")
