"""DMoERM's capability labels from a judge chosen by config (dmoerm.capability_labels=judge)."""

import numpy as np
import pytest

from rewardjax.data.records import Pair
from rewardjax.judge import HTTPJudge, RewardModelJudge
from rewardjax.recipes.dmoerm.labels import JudgeLabeler, build_judge, make_labeler
from tests.runtime.helpers import load_recipe

PAIRS = [
    Pair([{"role": "user", "content": "q0"}], "long answer here", "short"),
    Pair([{"role": "user", "content": "q1"}], "tiny", "a much longer answer"),
    Pair([{"role": "user", "content": "q2"}], "same", "same"),
]


def test_judge_labels_follow_both_orders_and_count():
    # A length judge: prefers the longer response whatever the order, ties on equal lengths.
    judge = RewardModelJudge(lambda items: np.asarray([len(r) for _, r in items], np.float32))
    labeler = JudgeLabeler(judge)
    labels = labeler(PAIRS, "helpfulness")
    np.testing.assert_array_equal(labels, [1, -1, 0])  # chosen longer, rejected longer, tie
    assert labeler.counts["helpfulness"].as_dict()["kept"] == 2
    assert labeler.counts["helpfulness"].as_dict()["dropped_tie"] == 1
    labeler(PAIRS, "helpfulness")  # counts add up over calls (train set, then eval sets)
    assert labeler.counts["helpfulness"].as_dict()["kept"] == 4


def test_config_picks_the_judge_and_the_key_comes_from_the_environment(monkeypatch):
    config = load_recipe("dmoerm", "runlocal")
    assert make_labeler(config, "/tmp/x").__name__ == "capability_labels_from_ratings"
    config.dmoerm.capability_labels = "judge"
    config.dmoerm.judge.url = "http://127.0.0.1:9/v1"
    monkeypatch.setenv("REWARDJAX_JUDGE_KEY", "sk-test-abcdef123456")
    labeler = make_labeler(config, "/tmp/x")
    assert isinstance(labeler.judge, HTTPJudge)
    assert labeler.judge._key.reveal() == "sk-test-abcdef123456"
    assert "sk-test" not in config.to_json()  # the key never enters config.json
    config.dmoerm.judge.kind = "rm"
    with pytest.raises(ValueError, match="dmoerm.judge.rm_workdir"):
        build_judge(config.dmoerm.judge, "/tmp/x")
    config.dmoerm.judge.kind = "oracle"
    with pytest.raises(ValueError, match="dmoerm.judge.kind='oracle'"):
        make_labeler(config, "/tmp/x")
