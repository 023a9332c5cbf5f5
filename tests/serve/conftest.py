"""Tiny reward-model workdirs for the server tests, built without training: a run's initial
state moved off its init and saved as the newest checkpoint (what a trained workdir holds)."""

import jax
import numpy as np
import pytest

from rewardjax.data.sources import load_sets
from rewardjax.runtime.checkpoint import Checkpointer
from rewardjax.runtime.members import init_members
from rewardjax.runtime.setup import build_run
from tests.runtime.helpers import load_recipe

# Texts of several lengths (one per bucket of the runlocal model, 64 / 96 / 128 tokens).
TEXTS = [
    ("What is the capital of France?", "Paris."),
    ("hi", "hello there, how can I help you today?"),
    ("Tell me a long story about a cat.", " ".join(["the cat sat on the mat and purred"] * 6)),
    ("Explain gravity in detail please.", " ".join(["mass bends space and time"] * 15)),
    ("", "an answer without a prompt"),
]


def _moved(tree, rng, scale=0.05):
    def move(x):
        if not jax.numpy.issubdtype(x.dtype, jax.numpy.floating):
            return x
        return x + scale * rng.standard_normal(x.shape).astype(np.float32)

    return jax.tree.map(move, tree)


def _save(workdir, state, step=3):
    state = state._replace(step=jax.device_put(np.asarray(step, state.step.dtype),
                                               state.step.sharding))
    ckpt = Checkpointer(str(workdir / "checkpoints"), 1)
    ckpt.maybe_save(step, state, force=True)
    ckpt.close()


def serve_config(name="bt"):
    config = load_recipe(name, "runlocal")
    config.mode = "serve"
    config.train.progress = False
    config.serve.max_batch_tokens = 512  # rows 8 / 5 / 4 for buckets 64 / 96 / 128
    config.serve.max_wait_ms = 20.0
    return config


@pytest.fixture(scope="session")
def bt_workdir(tmp_path_factory):
    """``(config, workdir)`` of a single reward model (recipe bt)."""
    config = serve_config("bt")
    workdir = tmp_path_factory.mktemp("bt")
    pairs = load_sets(config.data.train, config.data)[0][1]
    run = build_run(config, str(workdir), pairs)
    rng = np.random.default_rng(0)
    _save(workdir, run.state._replace(params=_moved(run.state.params, rng),
                                      frozen=_moved(run.state.frozen, rng)))
    return config, str(workdir)


@pytest.fixture(scope="session")
def warm_workdir(tmp_path_factory):
    """``(config, workdir)`` of two stacked members (recipe warm: weight average + members)."""
    config = serve_config("warm")
    config.members.num = 2
    config.members.lr_scales = ""
    workdir = tmp_path_factory.mktemp("warm")
    pairs = load_sets(config.data.train, config.data)[0][1]
    run = build_run(config, str(workdir), pairs)
    state, _ = init_members(run, 2, init=config.members.init)
    rng = np.random.default_rng(1)
    _save(workdir, state._replace(params=_moved(state.params, rng, 0.2)))
    return config, str(workdir)
