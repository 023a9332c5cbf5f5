"""build_run refuses settings that would silently produce wrong numbers."""

import numpy as np
import pytest

from rewardjax.config import base_config
from rewardjax.data.sources import load_sets
from rewardjax.runtime.setup import build_run


def test_encoder_max_length_beyond_learned_positions_is_an_error(tmp_path):
    c = base_config()
    c.model.path = ("random:bert?hidden_size=32&num_layers=1&num_heads=2&intermediate_size=64"
                    "&max_position_embeddings=64")
    c.model.max_length = 128
    c.data.sim.num_train, c.data.sim.num_eval = 16, 8
    pairs = load_sets("sim:train", c.data)[0][1]
    with pytest.raises(ValueError, match="64 learned positions"):
        build_run(c, str(tmp_path), pairs)
    c.model.max_length = 64
    build_run(c, str(tmp_path), pairs)  # fits: builds


def test_reward_model_drops_the_untied_lm_head(tmp_path, caplog):
    """An untied causal backbone is built without its next-token head: nothing to hold or train,
    the checkpoint's ``lm_head.weight`` is skipped without a warning, and asking the reward
    model's backbone for logits says why it cannot."""
    from flax import nnx

    from tests.models.golden_checkpoints import golden_checkpoint

    c = base_config()
    c.model.path = golden_checkpoint("llama")
    c.model.max_length = 32
    c.model.fit_tokenizer = True  # the golden checkpoint ships no tokenizer
    c.data.sim.num_train, c.data.sim.num_eval = 16, 8
    pairs = load_sets("sim:train", c.data)[0][1]  # the golden checkpoint has no tokenizer
    with caplog.at_level("WARNING"):
        run = build_run(c, str(tmp_path), pairs)
    assert not [r for r in caplog.records if "unused" in r.getMessage()]
    paths = [p for tree in (run.state.params, run.state.frozen)
             for p, _ in nnx.to_flat_state(tree)]
    assert paths and not [p for p in paths if "lm_head" in map(str, p)]
    loaded = run.spec.load_weights()
    assert "lm_head" in loaded  # the checkpoint has one; the reward model does not keep it
    model = nnx.merge(run.graphdef, run.state.params, run.state.frozen)
    np.testing.assert_array_equal(np.asarray(model.backbone.embed.embedding[...]),
                                  loaded["embed"]["embedding"])
    with pytest.raises(ValueError, match="without its lm_head"):
        model.backbone.logits(np.zeros((1, 2, run.spec.hidden_size), np.float32))


def test_pretrained_weights_with_nan_are_refused(tmp_path):
    """A checkpoint holding NaN/inf trained into ``NonFiniteLoss at step 1 ... lower the learning
    rate``; the load now names the checkpoint and the tensor."""
    import shutil

    from rewardjax.models import hf
    from tests.models.golden_checkpoints import golden_checkpoint

    ckpt = tmp_path / "llama_nan"
    shutil.copytree(golden_checkpoint("llama"), ckpt)
    tensors = dict(hf.read_safetensors(ckpt / "model.safetensors"))
    name = next(k for k in tensors if k.endswith("layers.0.self_attn.q_proj.weight"))
    bad = np.array(tensors[name], np.float32)
    bad[0, 1], bad[1, 0] = np.nan, np.inf
    tensors[name] = bad
    hf.save_safetensors(ckpt / "model.safetensors", tensors)
    c = base_config()
    c.model.path = str(ckpt)
    c.model.max_length = 32
    c.model.fit_tokenizer = True  # the golden checkpoint ships no tokenizer
    c.data.sim.num_train, c.data.sim.num_eval = 16, 8
    pairs = load_sets("sim:train", c.data)[0][1]
    with pytest.raises(ValueError) as err:
        build_run(c, str(tmp_path / "work"), pairs)
    for part in (str(ckpt), "NaN/inf", "q_proj", "2 of", "corrupt or badly converted"):
        assert part in str(err.value), (part, str(err.value))
