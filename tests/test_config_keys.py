"""Config keys mean one thing (issue 13): ``train.steps``, ``train.batch_size`` and ``seed`` size
every recipe alike, and a key set on the command line that the recipe and mode never read stops
the run before any work."""

import os
import re

import numpy as np
import pytest

from rewardjax import modes, recipes
from rewardjax.config import (
    UnreadConfigKeys,
    check_unread,
    decide,
    parse_reads,
    per_source_batch,
    read_rules,
)
from tests.conftest import ROOT, run_module
from tests.runtime.helpers import load_recipe

# configs/<file>.py -> the recipe it runs
CONFIGS = {"bt": "bt", "more": "more", "warm": "warm", "armorm": "armorm", "dmoerm": "dmoerm",
           "bon": "bon", "ppo": "ppo", "elastic_reset": "ppo", "prm": "prm", "odin": "odin",
           "pairwise": "pairwise", "dpo": "dpo"}
SHARED = ("train.steps", "train.batch_size", "seed")


def check(name, keys, mode="train", arg="runlocal"):
    config = load_recipe(name, arg)
    config.mode = mode
    modes.check_overrides(config, keys)


# ----------------------------------------------------------------------------- the checker


def test_a_key_another_recipe_reads_is_refused_naming_key_recipe_and_reader():
    with pytest.raises(UnreadConfigKeys) as err:
        check("warm", ["data.packing", "members.num", "train.progress"])
    msg = str(err.value)
    assert err.value.keys == ["data.packing"]
    assert "recipe 'warm' in --config.mode=train never reads this key" in msg, msg
    assert "--config.data.packing: each member's batch is length-bucketed, never packed" in msg
    assert re.search(r"read by recipes? bt\b", msg) and "Remove it" in msg
    # configs/bt.py has no `more` section (the flag parser refuses --config.more.alpha there);
    # the checker itself names the recipe that reads it.
    with pytest.raises(UnreadConfigKeys, match=r"--config\.more\.alpha: read by recipe more"):
        check_unread(["more.alpha"], recipe="bt", mode="train",
                     recipe_reads=recipes.get("bt").reads, readers=modes.readers)


def test_read_keys_pass():
    check("bt", ["train.steps", "train.batch_size", "seed", "data.packing", "loss.margin",
                 "model.path", "train.progress", "mode"])
    check("more", ["more.alpha", "more.sub_batch", "train.batch_size"])
    check("armorm", ["armorm.stage2.lr", "train.steps", "train.batch_size", "model.path"])
    check("ppo", ["rl.epochs", "lora.rank", "train.lr", "train.steps", "data.sim.num_train"])
    check("bt", ["score.input", "score.output", "model.path", "train.trainable"], mode="score")
    modes.check_overrides(load_recipe("bt"), [])  # nothing set: nothing to check


def test_recipe_exclusions_and_mode_sections_are_refused_with_what_to_do():
    cases = [
        ("armorm", "train", "train.lr", "the gate's optimizer is armorm.stage2.*"),
        ("ppo", "train", "train.checkpoint_every", "set rl.checkpoint_every (RL iterations)"),
        ("dmoerm", "train", "lora.rank", "set by dmoerm.lora_*"),
        ("bon", "train", "train.steps", "bon trains nothing"),
        ("bt", "train", "score.input", "read by --config.mode=score"),
        ("bt", "eval", "train.steps", "train.* only applies to --config.mode=train"),
        ("bt", "eval", "export.dir", "read by --config.mode=export"),
    ]
    for name, mode, key, hint in cases:
        with pytest.raises(UnreadConfigKeys) as err:
            check(name, [key, "train.progress", "seed"], mode=mode)
        assert err.value.keys == [key], (name, key)
        assert f"--config.{key}: " in str(err.value) and hint in str(err.value), str(err.value)


def test_longest_declared_path_decides_and_the_recipe_wins_ties():
    rules = parse_reads(("train", "!train: only the gate", "train.steps", "!data.sim"))
    assert decide("train.lr", rules).read is False
    assert decide("train.lr", rules).hint == "only the gate"
    assert decide("train.steps", rules).read and decide("data.sim.seed", rules).read is False
    assert decide("model.path", rules) is None
    # Other modes read the trained model, not the training section.
    rules = read_rules("eval", recipes.get("warm").reads)
    assert decide("members.num", rules).read and decide("model.dtype", rules).read
    assert decide("train.lr", rules) is None and decide("loss.margin", rules) is None


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_every_recipe_declares_real_keys_and_reads_the_shared_ones(config_name):
    config = load_recipe(config_name, "runlocal")
    recipe = recipes.get(config.recipe)
    assert config.recipe == CONFIGS[config_name]
    for rule in parse_reads(recipe.reads):  # a misspelt declaration would hide a key
        node = config
        for part in rule.path.split("."):
            assert part in node, (config_name, rule.path)
            node = node[part]
    # The progress switch (passed to every run by .ci/smoke and benchmarks/runlocal_numbers.py)
    # and the seed are accepted in every mode.
    for mode in modes.available():
        config.mode = mode
        if mode == "train" or recipe.load_scorer is not None:
            modes.check_overrides(config, ["train.progress", "seed", "mode"])
    config.mode = "train"
    if config.recipe in ("bon", "dpo"):  # trains nothing: the sizes are refused, not ignored
        with pytest.raises(UnreadConfigKeys):
            modes.check_overrides(config, ["train.steps"])
    else:
        modes.check_overrides(config, list(SHARED))


# ----------------------------------------------------------------------------- what they mean


def test_more_batch_is_pairs_over_all_sources():
    assert per_source_batch(6, 0, 3) == 2  # runlocal: 3 simulator sources x 2 pairs
    assert per_source_batch(18, 6, 3) == 6
    with pytest.raises(ValueError, match=r"multiple of 3 \(e\.g\. 15 or 18\)"):
        per_source_batch(16, 0, 3)
    with pytest.raises(ValueError, match=r"--config\.train\.batch_size=12"):
        per_source_batch(18, 4, 3)
    for arg, total in (("runlocal", 6), ("", 18), ("data=hh", 16), ("data=hh,runlocal", 4)):
        config = load_recipe("more", arg)  # the per-source sizes of before: 2, 6, 8, 2
        assert (config.train.batch_size, config.more.sub_batch) == (total, 0), arg


def test_ppo_steps_are_policy_updates_and_batch_size_prompts_per_update():
    from rewardjax.recipes.ppo import train as ppo

    config = load_recipe("ppo", "runlocal")
    assert (config.train.steps, config.train.batch_size) == (3, 2)  # 3 iterations x 1 x 1, 2
    config = load_recipe("ppo", "")
    assert (config.train.steps, config.train.batch_size) == (600, 4)  # 150 x 2 x 2, 8 / 2
    assert (ppo.iterations(config), ppo.rollout_prompts(config)) == (150, 8)
    assert load_recipe("elastic_reset", "").rl.elastic_reset.every == 37  # 150 // 4
    config.train.steps = 601
    with pytest.raises(ValueError, match=r"train.steps=601 .* multiple of 4 \(e.g. 600 or 604\)"):
        ppo.iterations(config)


class _Stop(Exception):
    """Raised where a recipe would start training: its plan is resolved by then."""


def _plan_of_trainer_recipe(name, tmp_path, monkeypatch, **overrides):
    """``(total steps, step 0's batch)`` of the first loop ``name``'s runlocal starts
    (``runtime.trainer.Trainer``), through ``rewardjax.main.run`` with ``overrides`` checked."""
    from rewardjax.main import run
    from rewardjax.runtime.trainer import Trainer

    seen = {}

    def fit(self, state):
        seen["total"] = self.total
        seen["batch"] = {k: np.asarray(v) for k, v in self.batch_at(0).items()}
        raise _Stop

    monkeypatch.setattr(Trainer, "fit", fit)
    config = load_recipe(name, "runlocal")
    config.train.progress = config.train.tensorboard = False
    for key, value in overrides.items():
        section, _, leaf = key.rpartition(".")
        (config[section] if section else config)[leaf] = value
    with pytest.raises(_Stop):
        run(config, str(tmp_path / f"{name}_{overrides.get('seed', 0)}"),
            overrides=sorted(overrides))
    return seen["total"], seen["batch"]


@pytest.mark.parametrize("name,shape", [
    ("bt", (5,)),  # 5 pairs a step
    ("more", (6,)),  # 3 sources x 2 pairs
    ("warm", (2, 5)),  # 2 members x 5 pairs each
    ("dmoerm", (1, 5)),  # the single RM, the first full fine-tune
])
def test_train_steps_batch_size_and_seed_reach_the_loop(name, shape, tmp_path, monkeypatch):
    total, batch = _plan_of_trainer_recipe(name, tmp_path, monkeypatch, **{
        "train.steps": 2, "train.batch_size": 6 if name == "more" else 5, "seed": 0})
    assert total == 2 and batch["weights"].shape == shape, (total, batch["weights"].shape)
    if name in ("bt", "warm"):  # the data order follows the seed
        _, other = _plan_of_trainer_recipe(name, tmp_path, monkeypatch, **{
            "train.steps": 2, "train.batch_size": 5, "seed": 1})
        ids, other_ids = batch["input_ids"], other["input_ids"]
        assert ids.shape != other_ids.shape or (ids != other_ids).any()


def test_armorm_trains_the_gate_for_train_steps(tmp_path, monkeypatch):
    from rewardjax.main import run
    from rewardjax.recipes.armorm import train as armorm

    seen = []

    def train_gate(module, x, rc, rr, cfg, seed, *args, **kw):
        seen.append((int(cfg.steps), int(cfg.batch_size), float(cfg.lr), seed))
        raise _Stop

    monkeypatch.setattr(armorm, "train_gate", train_gate)
    config = load_recipe("armorm", "runlocal")
    config.armorm.cache_dir = str(tmp_path / "cache")
    config.data.buckets = (128,)  # one feature program to compile
    config.train.tensorboard = False
    config.train.steps, config.train.batch_size, config.seed = 2, 8, 3
    with pytest.raises(_Stop):
        run(config, str(tmp_path / "w"), overrides=["train.steps", "train.batch_size", "seed"])
    assert seen == [(2, 8, config.armorm.stage2.lr, 3)]
    config.train.steps = 20
    fixed = armorm.gate_config(config)
    assert (fixed.steps, fixed.batch_size) == (20, 8) and "steps" not in config.armorm.stage2


def test_ppo_run_makes_train_steps_updates(tmp_path, monkeypatch):
    from rewardjax.main import run
    from rewardjax.recipes.ppo import train as ppo

    seen = {}
    make_optimizer = ppo.make_optimizer

    def optimizer(cfg, steps=None):
        seen["updates"] = steps
        return make_optimizer(cfg, steps=steps)

    def reset(rl):
        raise _Stop

    class Runner(ppo.Runner):
        def __init__(self, config, *args):
            super().__init__(config, *args)
            seen["rows"] = self.rows

    monkeypatch.setattr(ppo, "make_optimizer", optimizer)
    monkeypatch.setattr(ppo, "make_reset", reset)
    monkeypatch.setattr(ppo, "Runner", Runner)
    config = load_recipe("ppo", "runlocal")
    config.rl.proxy.kind, config.rl.gold.kind = "length", ""  # no reward model to train first
    config.rl.minibatches = 2
    config.train.steps, config.train.batch_size = 4, 3
    with pytest.raises(_Stop):
        run(config, str(tmp_path / "w"), overrides=["train.steps", "train.batch_size"])
    assert seen == {"updates": 4, "rows": 6}  # 2 iterations x 1 epoch x 2 minibatches; 3 x 2


# ----------------------------------------------------------------------------- the command line


def test_cli_refuses_an_unread_key_before_any_work(tmp_path):
    workdir = tmp_path / "w"
    r = run_module([f"--config={os.path.join(ROOT, 'configs', 'warm.py')}:runlocal",
                    "--config.data.packing=True", "--config.train.progress=False",
                    f"--workdir={workdir}"], timeout=300)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "recipe 'warm' in --config.mode=train never reads this key" in out, out[-3000:]
    assert "--config.data.packing: each member's batch is length-bucketed" in out
    assert "Traceback" not in out  # a usage error, not a crash
    assert not workdir.exists()  # nothing was written
