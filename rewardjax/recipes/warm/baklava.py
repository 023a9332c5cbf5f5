"""Baklava initialisation of ensemble members (DESIGN §3, WARM).

Instead of one shared initialisation, member ``i`` starts from checkpoint ``steps[i]`` of one
earlier single-model fine-tuning run: the members share a fine-tuning trajectory (so their
weights stay linearly connected and averaging them is meaningful) while starting from
different points along it, which adds diversity at no extra training cost.

Typical use::

    train(config, first_workdir)  # one single-model run with checkpoints every k steps
    run = build_run(config, workdir, train_pairs)
    state, hypers = init_members_from_checkpoints(
        run, f"{first_workdir}/checkpoints", [100, 200, 300, 400], lr_scale=[1, 1, 1, 1])
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from rewardjax.runtime import Checkpointer, MemberHypers, TrainState, init_members
from rewardjax.runtime.members import member_shardings


def init_members_from_checkpoints(
    run, checkpoint_dir: str, steps: Sequence[int], **init_members_kwargs
) -> tuple[TrainState, MemberHypers]:
    """Members whose params are the checkpoints ``steps`` of one earlier single-model run.

    The member state is built by :func:`~rewardjax.runtime.members.init_members` with
    ``init="shared"`` and ``num_members=len(steps)``; its ``params`` are then replaced by the
    restored checkpoints' params stacked along the member axis (member ``i`` <- ``steps[i]``),
    placed with the member shardings. Everything else is fresh, as for a new run: optimizer
    state (the checkpoints' Adam moments belong to a different trajectory and learning-rate
    schedule point), step 0 and member rngs. ``frozen`` is taken from the first checkpoint
    (frozen weights never change during training, so every checkpoint holds the same ones).

    Args:
      run: a built run with the same model and trainable split as the checkpointed run
        (``run.state`` is the restore target: structure, dtypes and shardings).
      checkpoint_dir: the earlier run's checkpoint directory (``<workdir>/checkpoints``).
      steps: one checkpoint step per member; repeats are allowed.
      **init_members_kwargs: passed to ``init_members`` (``lr_scale``, ``dropout_rate``);
        ``init`` other than ``"shared"`` is refused, since the params are overwritten anyway.

    Returns:
      ``(member_state, hypers)`` as from ``init_members``.

    Raises:
      FileNotFoundError: ``checkpoint_dir`` does not exist.
      ValueError: no steps given, or some steps have no checkpoint (the message names the
        missing steps and the available ones).
    """
    steps = [int(s) for s in steps]
    if not steps:
        raise ValueError("steps is empty: name one checkpoint step per member")
    if init_members_kwargs.pop("init", "shared") != "shared":
        raise ValueError('Baklava members overwrite every param: use init="shared" (default)')
    if not os.path.isdir(checkpoint_dir):
        # Checked first: the Checkpointer would create an empty directory instead.
        raise FileNotFoundError(f"checkpoint directory {checkpoint_dir} does not exist")
    ckpt = Checkpointer(checkpoint_dir, 0)
    try:
        available = sorted(int(s) for s in ckpt.manager.all_steps())
        missing = sorted(set(steps) - set(available))
        if missing:
            raise ValueError(
                f"no checkpoint for steps {missing} in {ckpt.directory}; available steps: "
                f"{available} (train.keep_checkpoints bounds how many are kept)"
            )
        restored = {s: ckpt.restore(run.state, s) for s in dict.fromkeys(steps)}
    finally:
        ckpt.close()

    state, hypers = init_members(run, len(steps), init="shared", **init_members_kwargs)
    sh = member_shardings(run)
    stack = jax.jit(lambda *ps: jax.tree.map(lambda *xs: jnp.stack(xs), *ps),
                    out_shardings=sh.params)
    params = stack(*(restored[s].params for s in steps))  # [M, ...], member i <- steps[i]
    return state._replace(params=params, frozen=restored[steps[0]].frozen), hypers
