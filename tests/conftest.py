import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_dir() -> str:
    return os.environ.get("REWARDJAX_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))


@pytest.fixture
def shared_data():
    d = data_dir()
    if not os.path.isdir(d):
        pytest.skip(f"shared data not found at {d} (set REWARDJAX_DATA)")
    return d


def run_module(args, env=None, timeout=600):
    """Runs ``python -m rewardjax.main ...`` in a subprocess from the repo root."""
    import subprocess

    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("JAX_PLATFORMS", "cpu")
    return subprocess.run([sys.executable, "-m", "rewardjax.main", *args], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
