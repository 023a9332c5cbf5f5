"""ODIN: response lengths in the batch, the two-head step, the scorer (r_Q), exact resume, and
the export of the quality head alone."""

import json
import os
import shutil
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rewardjax import recipes
from rewardjax.data.tokenize import Encoded, EncodedPairs, TruncationStats
from rewardjax.export import load_native
from rewardjax.main import run as main_run
from rewardjax.recipes.odin import OdinScorer, quality_model, response_lengths, with_lengths
from rewardjax.runtime import ModelScorer
from tests.runtime.helpers import load_recipe

TINY = "random:llama?hidden_size=32&num_layers=1&num_heads=2&num_kv_heads=1&intermediate_size=64"


def _enc(n, start):
    return Encoded(np.arange(n, dtype=np.int32), np.zeros(n, np.int32), start)


def test_response_lengths_and_batch_column():
    pairs = [types.SimpleNamespace(chosen="abcd", rejected="ab"),
             types.SimpleNamespace(chosen="x", rejected="xyz12")]
    data = EncodedPairs([_enc(10, 4), _enc(7, 6)], [_enc(5, 4), _enc(12, 2)], pairs,
                        TruncationStats())
    np.testing.assert_array_equal(response_lengths(data), [[6, 1], [1, 10]])
    np.testing.assert_array_equal(response_lengths(data, "chars"), [[4, 2], [1, 5]])
    with pytest.raises(ValueError, match="length_unit"):
        response_lengths(data, "words")
    batch = with_lengths({"index": np.array([1, -1, 0])}, response_lengths(data))
    np.testing.assert_array_equal(batch["response_length"], [[1, 10], [0, 0], [6, 1]])


def _config(steps=4):
    config = load_recipe("odin", "runlocal")
    config.model.path = TINY
    config.train.steps = steps
    config.train.checkpoint_every = 2
    config.train.log_every = 1
    config.train.progress = False
    config.train.tensorboard = False
    config.model.max_length = 64
    config.data.eval = "sim:test_id"
    config.data.sim.num_eval = 16
    config.odin.length_weight = 2.0
    config.odin.ortho_weight = 0.5
    return config


def _final(workdir):
    mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    step = mgr.latest_step()
    restored = mgr.restore(step, args=ocp.args.StandardRestore())
    mgr.close()
    return step, [np.asarray(x) for x in jax.tree.leaves(restored["params"])]


def test_end_to_end_scorer_resume_and_export(tmp_path):
    wd = str(tmp_path / "run")
    summary = main_run(_config(), wd)
    assert summary["steps"] == 4
    ev = summary["eval"]["sim:test_id"]
    assert {"accuracy", "spearman_quality_length", "spearman_length_length"} <= set(ev)
    rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert len(train_rows) == 4
    for r in train_rows:  # ODIN's terms are logged every step, and they add up to the loss
        for key in ("ranking_loss", "length_loss", "ortho_loss", "corr_quality_length",
                    "corr_length_length", "quality_accuracy"):
            assert np.isfinite(r[key])
        assert r["loss"] == pytest.approx(
            r["ranking_loss"] + 2.0 * r["length_loss"] + 0.5 * r["ortho_loss"], abs=1e-5)

    # The scorer's reward is column 0 of the two-head model, length_reward column 1.
    config = _config()
    scorer = recipes.get("odin").scorer(config, wd, "eval")
    assert isinstance(scorer, OdinScorer) and scorer.step == 4
    prompts = [[{"role": "user", "content": "how are you"}]] * 3
    responses = ["fine thanks", "i am well thank you for asking so kindly", "ok"]
    out = scorer.score(prompts, responses)
    seqs, _ = scorer.encode(list(zip(prompts, responses)))
    raw = ModelScorer(scorer.run, scorer.params, scorer.frozen).score_encoded(seqs)["reward"]
    assert raw.shape == (3, 2)
    np.testing.assert_array_equal(out["reward"], raw[:, 0])
    np.testing.assert_array_equal(out["length_reward"], raw[:, 1])
    assert scorer.evaluate_sets([("x", [], {})])["x"]["n"] == 0

    # Export: the backbone with the quality head alone scores r_Q.
    run, state = quality_model(config, wd)
    kernel = np.asarray(jax.device_get(state.params["head"]["kernel"][...]))
    odin_kernel = np.asarray(jax.device_get(scorer.params["head"]["kernel"][...]))
    assert kernel.shape[-1] == 1
    np.testing.assert_array_equal(kernel[:, 0], odin_kernel[:, 0])
    opts = {"dir": str(tmp_path / "export"), "format": "native", "stats": "none",
            "drop_bias": False}
    result = recipes.get("odin").exporter()(config, wd, opts)
    got = load_native(result["dir"]).score(prompts, responses)["reward"]
    np.testing.assert_allclose(got, out["reward"], rtol=1e-5, atol=1e-5)

    # Lose the last checkpoint: the resumed run reproduces steps 3-4 exactly.
    _, straight = _final(wd)
    shutil.rmtree(os.path.join(wd, "checkpoints", "4"))
    main_run(_config(), wd)
    step, resumed = _final(wd)
    assert step == 4
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)


def test_odin_keys_are_read_in_training_and_scoring_modes():
    from rewardjax import modes

    config = load_recipe("odin", "runlocal")
    for mode in ("train", "eval", "score", "export", "rewardbench"):
        config.mode = mode
        modes.check_overrides(config, ["odin.length_weight", "odin.ortho_weight", "seed"])
