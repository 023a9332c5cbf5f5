"""Shared bits for the training tests: a tiny run built in-process."""

import importlib.util
import os

import numpy as np

from rewardjax.data.batching import collate_pairs
from rewardjax.data.sources import load_sets
from rewardjax.data.tokenize import encode_pairs
from rewardjax.runtime.setup import build_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_recipe(name="bt", arg="runlocal"):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def tiny_run(workdir, config=None, **mesh_shape):
    config = config or load_recipe()
    if mesh_shape:
        config.mesh.shape.update(mesh_shape)
    pairs = load_sets(config.data.train, config.data)[0][1]
    run = build_run(config, str(workdir), pairs)
    data = encode_pairs(pairs, run.encoder)
    return config, run, data


def fixed_batch(run, data, rows=8, length=128, start=0):
    idx = np.arange(start, start + rows)
    return collate_pairs(data, idx, length, rows, run.tokenizer.pad_token_id)
