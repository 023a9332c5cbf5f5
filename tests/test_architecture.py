"""The package's floors (DESIGN.md §1): `lint-imports` checks the import contracts declared in
pyproject.toml ([tool.importlinter]), lazy imports inside functions included."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lint_imports() -> str:
    """The `lint-imports` of this interpreter's environment (import-linter, a test extra)."""
    here = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    found = here if os.path.isfile(here) else shutil.which("lint-imports")
    assert found, 'lint-imports not found: pip install -e ".[test]" (import-linter>=2.1)'
    return found


def test_import_contracts_hold():
    env = dict(os.environ)
    # Analyse this checkout's rewardjax, whatever else is installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    r = subprocess.run([_lint_imports(), "--no-cache"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"import contracts broken (pyproject.toml):\n{r.stdout}{r.stderr}"
    assert "0 broken" in r.stdout, r.stdout


def test_lazy_public_names_never_shadow_a_submodule():
    """``from rewardjax.eval import bon_curves`` would give the function until the submodule of
    that name is imported, then the module: a public name must not be a submodule's name."""
    import importlib
    import pkgutil

    for name in ("data", "eval", "rl", "runtime"):
        package = importlib.import_module(f"rewardjax.{name}")
        submodules = {m.name for m in pkgutil.iter_modules(package.__path__)}
        assert not set(package.__all__) & submodules, name
        for public in package.__all__:  # and every name resolves
            assert getattr(package, public) is not None
