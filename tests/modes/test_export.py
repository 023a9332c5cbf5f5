"""The ``export`` mode: restores a workdir's checkpoint and picks the HF or the native format."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from rewardjax.data.tokenize import encode_pairs
from rewardjax.export import NotExportable, load_native, read_rewardjax_block
from rewardjax.modes.export import run as export_run
from rewardjax.runtime.checkpoint import Checkpointer
from rewardjax.runtime.scorer import ModelScorer
from rewardjax.runtime.setup import build_run
from tests.export.test_hf_export import BERT, LLAMA, PAIRS, _config, _perturbed, _with_head_bias


def test_export_run_restores_the_checkpoint_and_falls_back_to_native(tmp_path):
    """``export_run``: newest checkpoint, normalisation over data.eval, native for mean-BERT."""
    eval_file = tmp_path / "eval.jsonl"
    with open(eval_file, "w") as f:
        for p in PAIRS:
            f.write(json.dumps({"prompt": p.prompt, "chosen": p.chosen,
                                "rejected": p.rejected}) + "\n")
    config = _config(BERT)  # mean pooling: no exact HF form
    config.data.eval = str(eval_file)
    config.export = ml_collections.ConfigDict({"dir": str(tmp_path / "out"), "format": "auto"})
    workdir = tmp_path / "work"
    run = build_run(config, str(workdir), PAIRS)
    state = _perturbed(run, seed=3)
    state = state._replace(step=jax.device_put(np.int32(7), state.step.sharding))
    ckpt = Checkpointer(str(workdir / "checkpoints"), 1)
    ckpt.maybe_save(7, state, force=True)
    ckpt.close()
    result = export_run(config, str(workdir))
    assert result["format"] == "native" and result["dir"] == str(tmp_path / "out")
    data = encode_pairs(PAIRS, run.encoder)
    want = ModelScorer.of(run, state).rewards(data.chosen + data.rejected)
    loaded = load_native(result["dir"])
    np.testing.assert_allclose(loaded.score_encoded(data.chosen + data.rejected)["reward"],
                               want, atol=1e-6)
    norm = loaded.manifest["normalisation"]
    assert norm["mean"] == pytest.approx(float(want.mean()), abs=1e-6)
    assert norm["count"] == len(want) and loaded.manifest["meta"]["step"] == 7


def test_export_run_llama_with_head_bias_goes_native_unless_dropped(tmp_path):
    """``format=auto`` never writes shifted HF scores: native, unless export.drop_bias."""
    eval_file = tmp_path / "eval.jsonl"
    with open(eval_file, "w") as f:
        for p in PAIRS:
            f.write(json.dumps({"prompt": p.prompt, "chosen": p.chosen,
                                "rejected": p.rejected}) + "\n")
    config = _config(LLAMA)
    config.data.eval = str(eval_file)
    config.export.stats = "none"
    workdir = tmp_path / "work"
    run = build_run(config, str(workdir), PAIRS)
    state = _with_head_bias(_perturbed(run, seed=5), 0.5)
    ckpt = Checkpointer(str(workdir / "checkpoints"), 1)
    ckpt.maybe_save(0, state, force=True)
    ckpt.close()

    config.export.dir = str(tmp_path / "auto")
    assert export_run(config, str(workdir))["format"] == "native"
    config.export.format, config.export.dir = "hf", str(tmp_path / "hf")
    with pytest.raises(NotExportable, match="export.drop_bias=True"):
        export_run(config, str(workdir))
    config.export.drop_bias = True
    for fmt in ("hf", "auto"):
        config.export.format, config.export.dir = fmt, str(tmp_path / f"dropped_{fmt}")
        result = export_run(config, str(workdir))
        assert result["format"] == "hf"
        assert read_rewardjax_block(result["dir"])["dropped_bias"] == pytest.approx(0.5)
