"""Config data specs: simulator splits, fixed @train/@heldout splits, names and errors."""

import json

import pytest

from rewardjax.config import base_config, parse_arg
from rewardjax.data.sources import load_sets, spec_name, split_specs


def _cfg():
    c = base_config()
    c.data.sim.num_train, c.data.sim.num_eval = 40, 20
    return c.data


def _write(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}))
            f.write("\n")


def test_split_specs_and_names():
    assert split_specs(" a.jsonl , sim:train,,") == ["a.jsonl", "sim:train"]
    assert spec_name("/x/y/harmless-base-test.jsonl.gz@heldout") == "harmless-base-test@heldout"
    assert spec_name("/x/llmbar/") == "llmbar"
    assert spec_name("sim:test_ood") == "sim:test_ood"


def test_simulator_specs():
    sets = load_sets("sim:train,sim:test_id,sim:test_ood", _cfg())
    assert [name for name, _, _ in sets] == ["sim:train", "sim:test_id", "sim:test_ood"]
    assert [len(p) for _, p, _ in sets] == [40, 20, 20]
    with pytest.raises(ValueError, match="unknown simulator split"):
        load_sets("sim:valid", _cfg())


def test_train_and_heldout_partition_the_file(tmp_path):
    path = tmp_path / "prefs.jsonl"
    _write(path, 50)
    (_, train, _), (_, held, _) = load_sets(f"{path}@train,{path}@heldout", _cfg())
    assert len(train) == 40 and len(held) == 10
    assert not {p.chosen for p in train} & {p.chosen for p in held}
    with pytest.raises(ValueError, match="@test"):
        load_sets(f"{path}@test", _cfg())


def test_parse_arg():
    assert parse_arg("runlocal, data=hh,model=minilm") == {
        "runlocal": "1", "data": "hh", "model": "minilm"}
    assert parse_arg(None) == {}
