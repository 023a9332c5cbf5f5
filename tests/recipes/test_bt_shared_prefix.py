"""The bt recipe on shared-prefix rows: the step's loss and gradients equal plain packing on the
simulator's real chat encoding, and a run trains, reports its sharing and refuses encoders."""

import jax
import numpy as np
import pytest
from flax import nnx

from rewardjax.data.packing import collate_packed_pairs
from rewardjax.data.shared_prefix import collate_shared_pairs, plan_prefixes
from rewardjax.data.tokenize import encode_pairs
from rewardjax.losses.bradley_terry import bradley_terry_loss
from rewardjax.main import run as main_run
from rewardjax.recipes.bt import make_batches, shares_prefix
from rewardjax.runtime.step import pair_rewards, real_tokens
from tests.runtime.helpers import load_recipe, tiny_run


def _loss_and_grads(run, batch):
    def loss_fn(params):
        model = nnx.merge(run.graphdef, params, run.state.frozen)
        rc, rr = pair_rewards(model, batch)
        return bradley_terry_loss(rc, rr, center_coef=0.01, weights=batch["weights"])[0]

    return jax.jit(jax.value_and_grad(loss_fn))(run.state.params)


def test_shared_step_matches_packed(tmp_path):
    config = load_recipe("bt", "runlocal")
    config.data.packing = True
    config, run, _ = tiny_run(tmp_path, config)
    assert shares_prefix(config, run)  # auto: a packed causal backbone pooling the last token
    pairs = [p for p in _train_pairs(config)][:40]
    data = encode_pairs(pairs, run.encoder, same_prompt=True)
    length = 2 * config.model.max_length
    prefix, stats = plan_prefixes(data, length)
    assert stats.shared == len(data)
    idx = np.arange(6)
    pad = run.tokenizer.pad_token_id
    packed = collate_packed_pairs(data, idx, 8, length, 4, pad, rows=8)
    shared = collate_shared_pairs(data, prefix, idx, 8, length, 4, pad, rows=8)
    assert float(real_tokens(shared)) == float(real_tokens(packed))
    lp, gp = _loss_and_grads(run, run.place(packed))
    ls, gs = _loss_and_grads(run, run.place(shared))
    np.testing.assert_allclose(float(ls), float(lp), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gs), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
    # simulator responses nearly fill model.max_length: most shared segments would not fit one
    # row, and those pairs keep the two-sequence form (counted)
    sharing = make_batches(config, run, data).sharing
    assert sharing.pairs == len(data) and sharing.too_long > 0


def _train_pairs(config):
    from rewardjax.data.sources import load_sets

    return load_sets(config.data.train, config.data)[0][1]


def test_shared_run_trains_and_reports(tmp_path):
    config = load_recipe("bt", "runlocal")
    config.data.packing = True
    config.data.eval = ""
    config.train.steps = 2
    config.train.progress = False
    config.train.tensorboard = False
    summary = main_run(config, str(tmp_path / "run"))
    assert summary["steps"] == 2
    sharing = summary["shared_prefix"]
    assert sharing["pairs"] == summary["train_pairs"]
    assert sharing["shared"] + sharing["too_long"] + sharing["prompt_differs"] == sharing["pairs"]
    assert sharing["shared"] > 0 and sharing["tokens_saved"] > 0


def test_encoder_refuses_explicit_sharing(tmp_path):
    config = load_recipe("bt", "runlocal")
    config.model.path = ("random:bert?hidden_size=32&num_layers=1&num_heads=2"
                         "&intermediate_size=64")
    config.data.packing = True
    config.data.shared_prefix = "on"
    config.data.eval = ""
    with pytest.raises(ValueError, match="encoders keep the two-sequence form"):
        main_run(config, str(tmp_path / "run"))
