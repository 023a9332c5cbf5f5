"""Optimizer and learning-rate schedule from the ``train`` config section."""

from __future__ import annotations

import jax
import optax

SCHEDULES = ("cosine", "linear", "constant")


def make_schedule(
    lr: float, steps: int, warmup_steps: int, kind: str = "cosine", end_factor: float = 0.0
) -> optax.Schedule:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine / linear decay or constant."""
    warmup_steps = max(0, min(int(warmup_steps), int(steps)))
    decay_steps = max(1, int(steps) - warmup_steps)
    if kind == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=end_factor)
    elif kind == "linear":
        decay = optax.linear_schedule(lr, lr * end_factor, decay_steps)
    elif kind == "constant":
        decay = optax.constant_schedule(lr)
    else:
        raise ValueError(f"unknown schedule {kind!r}; choose from {SCHEDULES}")
    if warmup_steps == 0:
        return decay
    warm = optax.linear_schedule(0.0, lr, warmup_steps)
    return optax.join_schedules([warm, decay], [warmup_steps])


def decay_mask(params):
    """Weight decay on matrices only: biases, norms and other vectors are not decayed."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(cfg, steps: int | None = None) -> optax.GradientTransformation:
    """AdamW with clipping, schedule and optional gradient accumulation.

    Args:
      cfg: the ``train`` section (``lr``, ``warmup_steps``, ``schedule``, ``weight_decay``,
        ``b1``, ``b2``, ``eps``, ``clip_norm``, ``grad_accum``, ``steps``).
      steps: optimizer steps the schedule spans (default ``cfg.steps``).
    """
    steps = int(cfg.steps if steps is None else steps)
    if cfg.lr is None or cfg.warmup_steps is None or cfg.schedule is None:
        raise ValueError("train.lr / warmup_steps / schedule are unset: they follow the backbone; "
                         "resolve them first (rewardjax.runtime.setup.resolve_config) or set them")
    schedule = make_schedule(cfg.lr, steps, cfg.warmup_steps, cfg.schedule)
    parts = []
    if cfg.clip_norm and cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(
        optax.adamw(
            schedule,
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask,
        )
    )
    tx = optax.chain(*parts)
    if cfg.grad_accum > 1:
        # Each call consumes one micro-batch; the update lands every ``grad_accum`` calls.
        tx = optax.MultiSteps(tx, every_k_schedule=int(cfg.grad_accum))
    return tx
