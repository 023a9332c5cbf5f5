"""Pretrained weights land on the sharded state; LoRA adapters and the head keep their init."""

import os

import jax
import numpy as np
import pytest
from flax import nnx

from rewardjax.lora import LoRAConfig, apply_lora, trainable_regex_for_lora
from rewardjax.models import registry
from rewardjax.models.reward_model import build_reward_model
from rewardjax.runtime.defaults import resolve_defaults
from rewardjax.runtime.optim import make_optimizer
from rewardjax.runtime.setup import load_pretrained
from rewardjax.runtime.state import init_state
from rewardjax.sharding import DEFAULT_RULES, make_mesh
from tests.models.golden_checkpoints import golden_checkpoint
from tests.runtime.helpers import ROOT, load_recipe

GOLDEN = os.path.join(ROOT, "tests", "models", "golden")


@pytest.mark.parametrize("name", ["llama", "bert"])
@pytest.mark.parametrize("lora", [False, True])
def test_load_pretrained_into_sharded_state(name, lora):
    spec = registry.resolve(golden_checkpoint(name))
    assert spec.load_weights is not None

    def build():
        m = build_reward_model(registry.create(spec, seed=3), spec.hidden_size,
                               is_causal=spec.is_causal, seed=3)
        if lora:
            apply_lora(m, LoRAConfig(rank=4, alpha=8.0), seed=3)
        return m

    trainable = trainable_regex_for_lora() if lora else ".*"
    weights = lambda g, p, f, sh: load_pretrained(spec, p, f, sh)  # noqa: E731
    config = load_recipe()
    resolve_defaults(config, spec)  # the pretrained backbone's fine-tuning rate
    tx = make_optimizer(config.train)
    graphdef, state, _ = init_state(build, tx, make_mesh(), DEFAULT_RULES, seed=0,
                                    trainable=trainable, weights=weights)
    model = nnx.merge(graphdef, state.params, state.frozen)
    loaded = spec.load_weights()
    ours = nnx.state(model.backbone, nnx.Param).to_pure_dict()

    def check(a, b, path=()):
        for k, v in b.items():
            if isinstance(v, dict):
                check(a[k], v, path + (k,))
            else:
                np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(v), err_msg=str(path))

    check(ours, loaded)
    if lora:
        lora_leaves = jax.tree.leaves(nnx.state(model, nnx.LoRAParam))
        assert lora_leaves
        # B starts at zero, so the adapted model scores exactly like the plain pretrained one
        b_leaves = [x for p, x in jax.tree_util.tree_leaves_with_path(
            nnx.state(model, nnx.LoRAParam)) if "lora_b" in jax.tree_util.keystr(p)]
        assert all(not np.asarray(b).any() for b in b_leaves)
        assert all(k.startswith("head") or "lora" in k for k in
                   ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(state.params)])
