"""Training on packed batches: same loss and gradients as unpacked, and a full run resumes."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from rewardjax.data.batching import collate_pairs
from rewardjax.data.packing import collate_packed_pairs
from rewardjax.losses.bradley_terry import bradley_terry_loss
from rewardjax.main import run as main_run
from rewardjax.runtime.step import pair_rewards, real_tokens
from tests.runtime.helpers import load_recipe, tiny_run


def _loss_and_grads(run, batch):
    def loss_fn(params):
        model = nnx.merge(run.graphdef, params, run.state.frozen)
        rc, rr = pair_rewards(model, batch)
        margin = batch["margin"]  # per-pair data margins must follow the pairs into packing
        return bradley_terry_loss(rc, rr, margin=margin, center_coef=0.01,
                                  weights=batch["weights"])[0]

    return jax.jit(jax.value_and_grad(loss_fn))(run.state.params)


def test_packed_step_matches_unpacked(tmp_path):
    config, run, data = tiny_run(tmp_path)
    idx = np.asarray([3, 11, 0, 25, 7, 40])  # 6 real pairs + 2 filler rows in a batch of 8
    for i, j in enumerate(idx):
        data.pairs[j].margin = 0.1 * (i + 1)
    pad = run.tokenizer.pad_token_id
    length = config.model.max_length
    unpacked = collate_pairs(data, idx, length, 8, pad)
    # Simulator responses nearly fill max_length, so rows twice as long hold several each.
    packed = collate_packed_pairs(data, idx, 8, 2 * length, 4, pad, rows=8)
    used = int((packed["segment_lengths"].sum(1) > 0).sum())
    assert used < 8 and (packed["attention_mask"][used:] == 0).all()  # empty rows at the end
    assert (packed["segment_lengths"][:used] > 0).sum(1).min() >= 2  # really packed
    assert packed["attention_mask"].sum() == unpacked["attention_mask"].sum()

    lu, gu = _loss_and_grads(run, run.place(unpacked))
    lp, gp = _loss_and_grads(run, run.place(packed))
    np.testing.assert_allclose(float(lp), float(lu), rtol=1e-5, atol=1e-5)
    flat_u, flat_p = jax.tree.leaves(gu), jax.tree.leaves(gp)
    assert len(flat_u) == len(flat_p) > 0
    for a, b in zip(flat_u, flat_p):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)

    # the train step's throughput metric counts the same real tokens
    assert float(real_tokens(packed)) == float(real_tokens(unpacked)) == sum(
        len(data.chosen[i].ids) + len(data.rejected[i].ids) for i in idx
    )


def _final_params(workdir):
    mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    step = mgr.latest_step()
    restored = mgr.restore(step, args=ocp.args.StandardRestore())
    mgr.close()
    return step, restored


def test_packed_run_trains_and_resumes(tmp_path, caplog):
    config = load_recipe("bt", "runlocal")
    config.data.packing = True
    config.data.pack_segments = 4
    config.data.eval = ""  # training only: keeps the test short
    config.train.steps = 4
    config.train.checkpoint_every = 2
    config.train.progress = False
    config.train.tensorboard = False
    wd = str(tmp_path / "run")
    summary = main_run(config, wd)
    assert summary["steps"] == 4 and summary["train_pairs"] > 0
    rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert train_rows and all(np.isfinite(r["loss"]) for r in train_rows)
    assert all(r["real_tokens"] > 0 for r in train_rows)
    step, straight = _final_params(wd)
    assert step == 4

    # Lose the last checkpoint: the rerun resumes from step 2 and must end identically.
    shutil.rmtree(os.path.join(wd, "checkpoints", "4"))
    with caplog.at_level("INFO", logger="rewardjax"):
        main_run(config, wd)
    assert "resumed from step 2" in caplog.text
    step, resumed = _final_params(wd)
    assert step == 4
    for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
