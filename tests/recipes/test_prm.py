"""PRM: the per-step loss pinned by hand, one forward per solution equal to one per step prefix,
the scorer's aggregates and padding, a step that compiles once."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rewardjax import recipes
from rewardjax.config import load_config_file
from rewardjax.data.steps import collate_steps, encode_step_records
from rewardjax.eval.process import aggregate
from rewardjax.recipes.prm import load_step_sets, text_pairs
from rewardjax.recipes.prm.scorer import PRMScorer, step_encoder
from rewardjax.recipes.prm.step import gather_positions, make_prm_step, step_bce
from rewardjax.runtime import ModelScorer, build_run
from tests.conftest import ROOT

CFG = os.path.join(ROOT, "configs", "prm.py")


def test_step_bce_by_hand():
    logits = jnp.array([[0.0, 2.0], [-1.0, 5.0]])
    labels = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])  # the last step is padding
    loss, m = step_bce(logits, labels, mask)
    # softplus(-0) = ln 2, softplus(2), softplus(-1): the three real steps' BCE
    expected = (0.6931472 + 2.1269280 + 0.3132617) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(m["step_accuracy"]) == pytest.approx(2 / 3)  # logit 2 predicts good wrongly
    assert float(m["steps"]) == 3


def test_gather_positions():
    h = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)  # [B, T, D]
    out = gather_positions(h, jnp.array([[3, 1], [0, 0]]))  # [B, S, D]
    np.testing.assert_array_equal(out[0, 0], h[0, 3])
    np.testing.assert_array_equal(out[0, 1], h[0, 1])
    np.testing.assert_array_equal(out[1, 1], h[1, 0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    config = load_config_file(CFG, "runlocal")
    config.prm.sim.num_train, config.prm.sim.num_test = 8, 4
    config.train.steps = 20  # the schedule's length: warmup 30 of 6 runlocal steps is ~0 lr
    (_, records), = load_step_sets("sim:train", config)
    run = build_run(config, str(tmp_path_factory.mktemp("prm")), text_pairs(records))
    return config, run, records


def test_one_forward_reads_every_step_like_a_forward_per_prefix(tiny):
    """Causal backbone: the logit at a step's last token of the whole solution equals the
    reward of the solution cut after that step (last-token pooling), for left and right
    padding."""
    config, run, records = tiny
    enc = step_encoder(run)
    seqs, _ = encode_step_records(records[:4], enc)
    scorer = PRMScorer.of(run, run.state, batch_size=3)
    probs = scorer.step_probs(seqs)  # [N, max_steps]
    from rewardjax.data import Encoded

    prefixes = [Encoded(e.ids[: end + 1], e.type_ids[: end + 1], e.response_start)
                for e in seqs for end in e.step_ends]
    per_prefix = jax.nn.sigmoid(ModelScorer.of(run, batch_size=3).rewards(prefixes))
    real = np.concatenate([probs[i, : len(e.step_ends)] for i, e in enumerate(seqs)])
    np.testing.assert_allclose(real, per_prefix, atol=2e-5)
    assert np.isnan(probs[0, len(seqs[0].step_ends):]).all()
    left = PRMScorer.of(run, run.state, batch_size=3)
    left.left = True
    np.testing.assert_allclose(left.step_probs(seqs), probs, atol=2e-5)
    out = scorer.score_encoded(seqs)
    np.testing.assert_allclose(out["reward"], aggregate(probs, "min"), rtol=1e-6)
    # a plain (prompt, response) is split at the separator into the same steps
    r = records[0]
    again = scorer.score([r.prompt], ["\n".join(r.steps)])
    np.testing.assert_allclose(again["steps"][0], probs[0], atol=1e-6)
    # pair sets: correct vs erroneous solutions of one prompt, scored by the aggregate
    from rewardjax.data import solution_pairs

    pairs = solution_pairs(records)
    report = scorer.evaluate(pairs)
    assert report["n"] == len(pairs) > 0 and 0.0 <= report["accuracy"] <= 1.0


def test_train_step_lowers_the_loss_and_compiles_once(tiny):
    config, run, records = tiny
    enc = step_encoder(run)
    seqs, _ = encode_step_records(records, enc)
    step = make_prm_step(run.graphdef, run.tx, mesh=run.mesh, rules=run.rules,
                         state_shardings=run.shardings, dropout=False,
                         trace_guard=chex.assert_max_traces(n=1))
    batch = run.place(collate_steps(seqs, np.arange(4), 128, 4, enc.max_steps,
                                    run.tokenizer.pad_token_id))
    state = jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, run.state)
    losses = []
    for _ in range(10):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
        assert float(m["finite"]) == 1.0 and float(m["steps"]) == sum(
            len(seqs[i].step_ends) for i in range(4))
    assert losses[-1] < losses[0]
    assert int(state.step) == 10


def test_registered_with_a_scorer_and_no_export(tmp_path):
    r = recipes.get("prm")
    assert r.load_scorer is not None and r.evaluate is not None
    with pytest.raises(ValueError, match="one label per step"):
        r.exporter()
    c = load_config_file(CFG, None)
    assert c.recipe == "prm" and c.prm.aggregate == "min" and c.data.train == "sim:train"
    from rewardjax.config import parse_reads

    for rule in parse_reads(r.reads):  # a misspelt declaration would hide a key
        node = c
        for part in rule.path.split("."):
            assert part in node, rule.path
            node = node[part]
    with pytest.raises(ValueError, match="unknown step simulator split 'test_id'"):
        load_step_sets("sim:test_id", c)
    path = tmp_path / "steps.jsonl"  # a TRL stepwise file as data.train / data.eval
    path.write_text('{"prompt": "p", "completions": ["a", "b"], "labels": [true, false]}\n')
    ((name, (rec,)),) = load_step_sets(str(path), c)
    assert name == str(path) and rec.labels == [True, False]
    c.data.format = "prm800k"
    with pytest.raises(Exception, match="question.problem"):
        load_step_sets(str(path), c)


def test_served_through_the_batcher_equals_offline_scoring(tiny):
    """The serve mode's batcher: fixed shapes, filler rows, one request's rows back in order."""
    from rewardjax.serve.batcher import Batcher

    config, run, records = tiny
    scorer = PRMScorer.of(run, run.state, batch_size=4)
    seqs, _ = encode_step_records(records[:3], step_encoder(run))
    offline = scorer.score_encoded(seqs)
    b = Batcher(scorer, max_batch_tokens=512, max_wait_ms=5, max_queue=16)
    b.start()
    try:
        rows = b.submit(seqs).future.result(timeout=300)
    finally:
        b.stop()
    np.testing.assert_allclose([float(r["reward"]) for r in rows], offline["reward"], atol=1e-6)
    np.testing.assert_allclose(np.stack([r["steps"] for r in rows]), offline["steps"],
                               atol=1e-6)
