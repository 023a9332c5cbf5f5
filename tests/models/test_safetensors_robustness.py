"""Crafted safetensors files: one clear ValueError naming the file and tensor, never a bare
MemoryError / OverflowError / numpy reshape error, and no silent integer -> float casts."""

import json
import struct

import numpy as np
import pytest
from flax import nnx

from rewardjax.models import hf, registry


def _write(path, header, data=b"", header_length=None):
    """A safetensors file with ``header`` (a dict, or raw bytes) and ``data`` after it."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if header_length is None else header_length
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def _entry(dtype="F32", shape=(4,), offsets=(0, 16)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def _error(path, tensor=None) -> str:
    with pytest.raises(ValueError) as info:
        hf.read_safetensors(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    if tensor is not None:
        assert repr(tensor) in message
    return message


def test_header_length_beyond_the_file(tmp_path):
    # Before: f.read(2**63) -> MemoryError / OverflowError before any check ran.
    path = _write(tmp_path / "huge.safetensors", {"w": _entry()}, b"\0" * 16,
                  header_length=2 ** 63)
    assert "header length 9223372036854775808 bytes exceeds" in _error(path)
    path = _write(tmp_path / "short.safetensors", b"", header_length=1)
    assert "exceeds" in _error(path)
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01\x02")
    assert "shorter than the 8-byte header length" in _error(tmp_path / "tiny.safetensors")


def test_header_over_the_size_cap(tmp_path, monkeypatch):
    path = _write(tmp_path / "big.safetensors", {"w": _entry()}, b"\0" * 16)
    monkeypatch.setattr(hf, "MAX_HEADER_BYTES", 16)
    assert "exceeds the 16-byte limit" in _error(path)


@pytest.mark.parametrize("header", [b"[1, 2]", b"[" * 100_000, b"{oops"],
                         ids=["list", "deep", "broken"])
def test_header_that_is_not_a_json_object(tmp_path, header):
    # A list used to end in AttributeError; deep nesting in RecursionError.
    assert "not a safetensors file" in _error(_write(tmp_path / "bad.safetensors", header))


def test_offsets_past_the_end_of_the_file(tmp_path):
    # The span matches the shape, but the file stops after 8 data bytes: before, numpy failed
    # to reshape 2 floats into (4,) without naming the file or tensor.
    path = _write(tmp_path / "cut.safetensors", {"ok": _entry(shape=(2,), offsets=(0, 8)),
                                                 "w": _entry(offsets=(8, 24))}, b"\0" * 8)
    assert "data_offsets [8, 24] outside the data section of 8 bytes" in _error(path, "w")
    path = _write(tmp_path / "reversed.safetensors", {"w": _entry(offsets=(16, 0))}, b"\0" * 16)
    assert "outside the data section" in _error(path, "w")


@pytest.mark.parametrize("shape,needs", [
    ((2 ** 62 + 1, 4), str((2 ** 62 + 1) * 16)),  # int64 product wraps to exactly 4 elements
    ((-4, -1), "non-negative"),  # product 4: numpy used to fail inside reshape
    ((3,), "needs 12 bytes but data_offsets span 16"),
])
def test_shape_that_disagrees_with_the_byte_span(tmp_path, shape, needs):
    path = _write(tmp_path / "shape.safetensors", {"w": _entry(shape=shape)}, b"\0" * 16)
    assert needs in _error(path, "w")


@pytest.mark.parametrize("entry,problem", [
    (_entry(dtype="F7"), "unsupported dtype 'F7'"),
    ({"shape": [4], "data_offsets": [0, 16]}, "unsupported dtype None"),
    ({"dtype": "F32", "shape": [4]}, "data_offsets None"),
    ({"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}, "shape '4'"),
    ([1, 2], "header entry is a list"),
])
def test_unknown_dtype_or_malformed_entry(tmp_path, entry, problem):
    path = _write(tmp_path / "entry.safetensors", {"__metadata__": {"format": "pt"},
                                                   "model.w": entry}, b"\0" * 16)
    assert problem in _error(path, "model.w")


def test_well_formed_edge_cases_still_load(tmp_path):
    # A file whose tensors are all empty has a zero-length data section (np.memmap refuses it).
    path = _write(tmp_path / "empty.safetensors", {"e": _entry(shape=(0, 3), offsets=(0, 0))})
    got = hf.read_safetensors(path)
    assert got["e"].shape == (0, 3) and got["e"].dtype == np.float32
    assert got.files == {"e": str(path)}
    data = np.arange(4, dtype=np.float32).tobytes() + np.arange(2, dtype=np.int64).tobytes()
    path = _write(tmp_path / "mixed.safetensors",
                  {"w": _entry(), "ids": _entry("I64", (1, 2), (16, 32))}, data)
    got = hf.read_safetensors(path)
    np.testing.assert_array_equal(got["w"], [0, 1, 2, 3])
    assert got["ids"].dtype == np.int64  # integers are kept as they are, never cast


TINY = ("random:llama?hidden_size=16&num_layers=1&num_heads=2&num_kv_heads=1"
        "&intermediate_size=24&vocab_size=32")


def test_integer_parameter_is_refused_not_cast(tmp_path):
    spec = registry.resolve(TINY)
    params = nnx.state(registry.create(spec), nnx.Param).to_pure_dict()
    tensors = hf.llama_params_to_hf(spec.config, params)
    tensors["model.position_ids"] = np.arange(8, dtype=np.int64)[None]  # a buffer: ignored
    hf.save_checkpoint(tmp_path / "ok", spec.config.to_hf(), tensors)
    hf.llama_params_from_hf(spec.config, hf.load_tensors(tmp_path / "ok"))

    name = "model.layers.0.mlp.up_proj.weight"
    tensors[name] = np.ones(tensors[name].shape, np.int8)  # e.g. raw quantized codes
    hf.save_checkpoint(tmp_path / "int", spec.config.to_hf(), tensors)
    with pytest.raises(ValueError) as info:
        hf.llama_params_from_hf(spec.config, hf.load_tensors(tmp_path / "int"))
    message = str(info.value)
    assert repr(name) in message and "integer dtype int8" in message
    assert str(tmp_path / "int" / "model.safetensors") in message
    with pytest.raises(ValueError, match="integer dtype int8"):  # plain dicts: name only
        hf.llama_params_from_hf(spec.config, dict(tensors))


@pytest.mark.parametrize("shape", [(2 ** 64, 0), (0, 2 ** 62), (2 ** 31, 2 ** 31, 0)])
def test_zero_size_tensor_with_a_huge_dimension(tmp_path, shape):
    # Offsets [0, 0] match any zero-size shape; numpy then failed with "Maximum allowed
    # dimension exceeded" (or "array is too big"), naming neither file nor tensor.
    path = _write(tmp_path / "huge.safetensors", {"w": _entry(shape=shape, offsets=(0, 0))})
    assert "2**62 or more" in _error(path, "w")
