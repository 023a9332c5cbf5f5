"""Settings that follow the backbone: a pretrained checkpoint fine-tunes, a random one trains.

A recipe's learning rate for its tiny random simulator model (1e-3) destroys a pretrained
encoder's features in a few steps, and a pretrained model's position table bounds the sequence
length. So ``train.lr``, ``train.warmup_steps``, ``train.schedule``, ``train.dropout``,
``model.max_length`` and ``model.pooling="auto"`` are resolved here, once, from the backbone,
unless the user (or the recipe, on purpose) set them:

* random backbone: ``defaults.scratch.*`` (recipes set these for their embedded default model);
* pretrained backbone (a checkpoint, GGUF file or weight package): ``defaults.finetune.*`` -
  a learning rate by trained-parameter count (or ``finetune.lora_lr`` with LoRA), warmup as a
  fraction of the steps, linear decay, dropout off (as TRL's ``RewardTrainer``), the max length
  from the checkpoint's position table (capped), and the pooling that trained best for its
  family (``benchmarks/quality_vs_trl.py`` measures these choices).

The run logs the effective values and where each came from.
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)


def _params_estimate(spec) -> int:
    """Backbone parameters from its config (embeddings + layers), without building it."""
    c = spec.config
    h, layers = int(c.hidden_size), int(c.num_layers)
    inter = int(getattr(c, "intermediate_size", 4 * h))
    return int(c.vocab_size) * h + layers * (4 * h * h + 3 * h * inter)


def finetune_lr(cfg, spec) -> float:
    """The fine-tuning learning rate for a pretrained backbone of this size."""
    n = _params_estimate(spec)
    for limit, lr in zip(cfg.size_limits, cfg.size_lrs):
        if n <= float(limit):
            return float(lr)
    return float(cfg.size_lrs[-1])


def resolve_defaults(config, spec) -> dict[str, str]:
    """Fills the unset fields of ``config`` in place for backbone ``spec``; returns
    ``{field: "value (source)"}`` for the log. Idempotent: set fields are never changed."""
    pretrained = spec.load_weights is not None
    d = config.defaults.finetune if pretrained else config.defaults.scratch
    kind = "pretrained-backbone default" if pretrained else "random-backbone default"
    chosen: dict[str, str] = {}

    def fill(section, key, value, why=kind):
        if section[key] is None:
            section[key] = value
            chosen[f"{section_name(section)}.{key}"] = f"{value} ({why})"
        else:
            chosen.setdefault(f"{section_name(section)}.{key}", f"{section[key]} (set)")

    def section_name(section):
        return "train" if section is config.train else "model"

    if pretrained:
        lora = bool(config.lora.enabled)
        lr = float(d.lora_lr) if lora else finetune_lr(d, spec)
        fill(config.train, "lr", lr, kind + (" with LoRA" if lora else
                                              f", ~{_params_estimate(spec) / 1e6:.0f}M params"))
        steps = int(config.train.steps)
        fill(config.train, "warmup_steps", int(math.ceil(float(d.warmup_fraction) * steps)),
             f"{kind}: {d.warmup_fraction:g} of {steps} steps")
        positions = getattr(spec.config, "max_position_embeddings", None) or int(d.max_length)
        fill(config.model, "max_length", int(min(int(positions), int(d.max_length))),
             f"{kind}: the checkpoint's {positions} positions, capped at {int(d.max_length)}")
    else:
        fill(config.train, "lr", float(d.lr))
        fill(config.train, "warmup_steps", int(d.warmup_steps))
        fill(config.model, "max_length", int(d.max_length))
    fill(config.train, "schedule", str(d.schedule))
    fill(config.train, "dropout", bool(d.dropout))
    if config.model.pooling == "auto":
        family = "causal" if spec.is_causal else "encoder"
        pooling = str(d[f"pooling_{family}"])
        config.model.pooling = pooling
        chosen["model.pooling"] = f"{pooling} (auto for a {'pretrained ' if pretrained else ''}" \
                                  f"{family} backbone)"
    return chosen


def log_effective(chosen: dict[str, str], path: str) -> None:
    if chosen:
        log.info("effective settings for model.path=%s: %s", path,
                 ", ".join(f"{k}={v}" for k, v in chosen.items()))
