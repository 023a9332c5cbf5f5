"""The recipe registry: every shipped recipe registers itself; modes find recipes through it."""

import sys
import types

import pytest

from rewardjax import modes, recipes


def test_every_shipped_recipe_registers_under_its_module_name():
    names = recipes.available()
    assert {"bt", "more", "warm", "armorm", "dmoerm", "bon", "ppo"} <= set(names)
    for name in names:
        recipe = recipes.get(name)
        assert recipe.name == name and callable(recipe.train)
        # A workdir is either scorable or says why not.
        assert recipe.load_scorer is not None or recipe.no_scorer


def test_unknown_recipe_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown recipe 'nope'.*'bt'"):
        recipes.get("nope")


def test_a_recipe_outside_the_package_registers_on_import(monkeypatch):
    module = types.ModuleType("my_lab_recipe")
    calls = []

    def train(config, workdir):
        calls.append(workdir)
        return {"ok": True}

    module.__dict__["_register"] = lambda: recipes.register(recipes.Recipe("mine", train=train))
    monkeypatch.setitem(sys.modules, "my_lab_recipe", module)
    module._register()  # what importing the module would do
    assert recipes.get("mine").train is train
    # Named by module path: importing it registers, the dotted name resolves to that recipe.
    other = types.ModuleType("my_lab.other")
    monkeypatch.setitem(sys.modules, "my_lab.other", other)
    monkeypatch.setattr(recipes.importlib, "import_module", lambda name: recipes.register(
        recipes.Recipe("other", train=train, no_scorer="a test")))
    assert recipes.get("my_lab.other").name == "other"


def test_modes_without_a_scorer_name_what_the_workdir_holds(tmp_path):
    from tests.runtime.helpers import load_recipe

    config = load_recipe("bon", "runlocal")
    config.mode = "eval"
    with pytest.raises(ValueError, match=r"--config.mode=eval reads one reward model's workdir "
                                         r"\(recipes .*bt.*\); a 'bon' workdir does not hold "
                                         r"one: it holds best-of-n curves"):
        modes.run(config, str(tmp_path))


def test_unknown_mode_lists_the_modes():
    from tests.runtime.helpers import load_recipe

    config = load_recipe("bt", "runlocal")
    with config.unlocked():
        config.mode = "serve_later"
    with pytest.raises(ValueError, match="unknown mode 'serve_later'; choose from eval, export, "
                                         "rewardbench, score, serve, train"):
        modes.run(config, "/nonexistent")
