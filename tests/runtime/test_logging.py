"""Metric names every writer accepts: no TensorBoard warnings above the final table."""

import json
import logging

from rewardjax.runtime.logging import MetricsWriter, metric_name


def test_metric_names_are_legal_for_tensorboard():
    assert metric_name("eval/sim:test_id/accuracy") == "eval/sim_test_id/accuracy"
    assert metric_name("eval/Adversarial_*/by_group/a b") == "eval/Adversarial__/by_group/a_b"
    assert metric_name("train/loss-1.5") == "train/loss-1.5"


def test_writer_logs_no_illegal_name_warnings(tmp_path, caplog):
    with caplog.at_level(logging.DEBUG):
        w = MetricsWriter(str(tmp_path), tensorboard=True)
        w.write(3, "eval/sim:test_ood", {"accuracy": 0.5, "truncation": {"dropped": 0}})
        w.close()
    assert "illegal" not in caplog.text
    (row,) = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert row["split"] == "eval/sim:test_ood" and row["accuracy"] == 0.5  # data keeps its name
