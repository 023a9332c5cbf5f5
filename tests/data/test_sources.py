"""Config data specs: simulator splits, fixed @train/@heldout splits, names and errors."""

import json

import pytest

from rewardjax.config import base_config, parse_arg
from rewardjax.data.records import DataError
from rewardjax.data.sources import load_sets, load_train_pairs, spec_name, split_specs


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
    assert spec_name("/x/llmbar/Adversarial_*.json") == "Adversarial"


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


def test_glob_spec_reads_matching_files_sorted(tmp_path):
    _write(tmp_path / "Adv_b.jsonl", 3)
    _write(tmp_path / "Adv_a.jsonl", 2)
    _write(tmp_path / "Natural.jsonl", 5)
    [(name, pairs, stats)] = load_sets(f"{tmp_path}/Adv_*.jsonl", _cfg())
    assert name == "Adv" and len(pairs) == 5
    assert [p.source.split("/")[-1] for p in pairs] == ["Adv_a"] * 2 + ["Adv_b"] * 3
    assert len(stats["files"]) == 2
    with pytest.raises(DataError, match="no file matches"):
        load_sets(f"{tmp_path}/Nope_*.jsonl", _cfg())


def test_train_and_eval_limits_take_fixed_subsets_in_order(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write(a, 30)
    _write(b, 30)
    cfg = _cfg()
    cfg.train = f"{a},{b}"
    assert len(load_train_pairs(cfg)) == 60  # 0 = no cap
    cfg.train_limit = 25
    first, again = load_train_pairs(cfg), load_train_pairs(cfg)
    assert len(first) == 25 and [p.chosen for p in first] == [p.chosen for p in again]
    order = [(p.source.split("/")[-1], int(p.chosen.split()[1])) for p in first]
    assert order == sorted(order)  # original order kept
    assert {s for s, _ in order} == {"a", "b"}  # drawn from the concatenation
    cfg.eval_limit = 7
    sets = load_sets(f"{a},{b}", cfg)
    assert [len(p) for _, p, _ in sets] == [7, 7] and sets[0][2]["subsampled"] == 7
    assert len(load_sets(str(a), cfg, limit=0)[0][1]) == 30
    cfg.train = ""
    with pytest.raises(ValueError, match="data.train is empty"):
        load_train_pairs(cfg)


def _trl_file(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def test_odd_records_policy_is_a_config_key_and_errors_name_the_flag(tmp_path):
    """A user's TRL file with one whitespace-only response and one identical pair: an error
    naming file, record and the --config flag by default; dropped and counted with the flag."""
    path = str(tmp_path / "mine.jsonl")
    _trl_file(path, [{"prompt": "q0", "chosen": "a", "rejected": "b"},
                     {"prompt": "q1", "chosen": "a", "rejected": "   "},
                     {"prompt": "q2", "chosen": "same", "rejected": "same"},
                     {"prompt": "q3", "chosen": "c", "rejected": "d"}])
    cfg = _cfg()
    with pytest.raises(DataError) as err:
        load_train_pairs(dict_cfg(cfg, train=path))
    msg = str(err.value)
    assert "mine.jsonl" in msg and "record 2" in msg and "--config.data.odd_records=drop" in msg
    report = {}
    pairs = load_train_pairs(dict_cfg(cfg, train=path, odd_records="drop"), report=report)
    assert [p.prompt[0]["content"] for p in pairs] == ["q0", "q3"]
    (stats,) = report.values()
    assert (stats["read"], stats["kept"], stats["dropped_empty"], stats["dropped_identical"]) == (
        4, 2, 1, 1)
    with pytest.raises(ValueError, match="--config.data.odd_records='skip'"):
        load_train_pairs(dict_cfg(cfg, train=path, odd_records="skip"))


def test_identical_pair_is_an_error_in_strict_mode(tmp_path):
    path = str(tmp_path / "same.jsonl")
    _trl_file(path, [{"prompt": "q", "chosen": "same", "rejected": "same"}])
    with pytest.raises(DataError, match="identical.*odd_records=drop"):
        load_train_pairs(dict_cfg(_cfg(), train=path, odd_records="error"))


def dict_cfg(cfg, **values):
    cfg = cfg.copy_and_resolve_references()
    for k, v in values.items():
        cfg[k] = v
    return cfg


def test_margins_with_use_data_margin_off_warn_naming_the_flag(tmp_path, caplog):
    import logging

    from rewardjax.data.sources import margin_warning

    path = str(tmp_path / "m.jsonl")
    _trl_file(path, [{"prompt": "q0", "chosen": "a", "rejected": "b", "margin": 2.0},
                     {"prompt": "q1", "chosen": "c", "rejected": "d", "margin": 0.5},
                     {"prompt": "q2", "chosen": "e", "rejected": "f"}])
    report = {}
    load_train_pairs(dict_cfg(_cfg(), train=path), report=report)
    log = logging.getLogger("rewardjax.recipes.bt")
    with caplog.at_level(logging.WARNING):
        if warning := margin_warning(report, use_data_margin=False):
            log.warning(warning)
    assert "--config.loss.use_data_margin=True" in caplog.text
    assert "2 training record(s) carry a 'margin'" in caplog.text
    assert caplog.records[0].levelno == logging.WARNING
    assert margin_warning(report, use_data_margin=True) is None
    assert margin_warning({"x": {"with_margin": 0}}, use_data_margin=False) is None


def test_at_sign_inside_a_path_is_not_a_split_suffix(tmp_path):
    for sub in ("user@host", "plain"):
        (tmp_path / sub).mkdir()
    inside = tmp_path / "user@host" / "prefs.jsonl"
    versioned = tmp_path / "plain" / "prefs@v2.jsonl"
    named = tmp_path / "plain" / "prefs@final"
    for path in (inside, versioned, named):
        _write(path, 50)
    for path in (inside, versioned, named):
        [(name, pairs, stats)] = load_sets(str(path), _cfg())
        assert len(pairs) == 50 and "split" not in stats
    (_, train, _), (_, held, _) = load_sets(f"{inside}@train,{versioned}@heldout", _cfg())
    assert (len(train), len(held)) == (40, 10)
    assert spec_name(f"{inside}@heldout") == "prefs@heldout"
    assert spec_name(str(versioned)) == "prefs@v2"
    with pytest.raises(ValueError, match="unknown split suffix @test"):
        load_sets(f"{inside}@test", _cfg())
