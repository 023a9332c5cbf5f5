"""The golden tiny checkpoints as HF directories, materialised once per test session.

The weights are kept as ``<name>_weights.npz`` (HF tensor names) next to each ``config.json``
rather than as committed ``.safetensors`` files; writing them out here also exercises
``hf.save_safetensors`` -> ``hf.load_tensors`` on every run.
"""

import functools
import os
import shutil
import tempfile

import numpy as np

from rewardjax.models import hf

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


@functools.cache
def golden_checkpoint(name: str) -> str:
    """Path of an HF checkpoint directory (config.json + model.safetensors) for ``name``."""
    out = os.path.join(tempfile.mkdtemp(prefix="rewardjax_golden_"), name)
    shutil.copytree(os.path.join(GOLDEN, name), out)
    with np.load(os.path.join(GOLDEN, f"{name}_weights.npz")) as weights:
        hf.save_safetensors(os.path.join(out, "model.safetensors"), dict(weights))
    return out
