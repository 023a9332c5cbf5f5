"""orbax checkpoints of the whole train state, restored onto the run's shardings."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves every ``every`` steps (and at the end); keeps the newest ``keep``.

    Restoring uses the live state as the target, so arrays come back with the same shardings
    and an interrupted run continues exactly where its last checkpoint left off.
    """

    def __init__(self, directory: str, every: int, keep: int = 2):
        self.directory = os.path.abspath(directory)
        self.every = int(every)
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def maybe_save(self, step: int, state, force: bool = False) -> bool:
        if not force and (self.every <= 0 or step % self.every):
            return False
        if self.manager.latest_step() == step:
            return False
        self.manager.save(step, args=ocp.args.StandardSave(state))
        return True

    def restore(self, state, step: int | None = None):
        """Restores into the structure and shardings of ``state`` (the freshly built one)."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            return None
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
        )
        return self.manager.restore(step, args=ocp.args.StandardRestore(target))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
