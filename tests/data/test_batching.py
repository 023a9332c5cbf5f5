import numpy as np
import pytest

from rewardjax.data.batching import BatchPlan, bucket_of, collate_pairs, default_buckets
from rewardjax.data.records import Pair
from rewardjax.data.tokenize import (
    SequenceEncoder,
    build_wordlevel_tokenizer,
    encode_pairs,
)


@pytest.fixture(scope="module")
def tok():
    words = " ".join(f"w{i}" for i in range(200))
    return build_wordlevel_tokenizer([words, "hello world how are you fine thanks"])


def test_buckets():
    assert default_buckets(512) == (64, 96, 160, 256, 384, 512)
    assert default_buckets(100) == (64, 100)
    assert default_buckets(192) == (64, 96, 160, 192)
    assert default_buckets(40) == (40,)
    assert bucket_of(65, (64, 128)) == 128
    with pytest.raises(ValueError, match="exceeds"):
        bucket_of(129, (64, 128))


def test_plan_is_a_pure_function_of_seed_and_step():
    lengths = np.random.default_rng(0).integers(5, 500, size=103)
    a = BatchPlan(lengths, 8, (64, 128, 256, 512), seed=3)
    b = BatchPlan(lengths, 8, (64, 128, 256, 512), seed=3)
    steps = [0, 5, a.batches_per_epoch - 1, a.batches_per_epoch, 3 * a.batches_per_epoch + 2]
    for s in reversed(steps):  # order of access must not matter
        la, ia = a.at_step(s)
        lb, ib = b.at_step(s)
        assert la == lb and np.array_equal(ia, ib)
    # each epoch covers every example exactly once, every batch fits its bucket
    seen = np.concatenate([idx for _, idx in a.epoch(1)])
    assert sorted(seen.tolist()) == list(range(103))
    for length, idx in a.epoch(1):
        assert len(idx) <= 8 and (lengths[idx] <= length).all()
    # epochs differ
    assert not np.array_equal(np.concatenate([i for _, i in a.epoch(0)]), seen)


def test_truncation_keeps_prompt_end_and_response_start_and_counts(tok):
    enc = SequenceEncoder(tok, 16)
    prompt = [{"role": "user", "content": " ".join(f"w{i}" for i in range(30))}]
    e = enc.encode(prompt, "w100 w101 w102")
    toks = tok.convert_ids_to_tokens(e.ids.tolist())
    assert len(toks) == 16
    assert "w29" in toks and "w0" not in toks  # prompt start cut, end kept
    assert toks[-4:-1] == ["w100", "w101", "w102"]
    assert enc.stats.prompt_truncated == 1 and enc.stats.response_truncated == 0
    long_resp = " ".join(f"w{i}" for i in range(100, 140))
    e = enc.encode(prompt, long_resp)
    toks = tok.convert_ids_to_tokens(e.ids.tolist())
    assert len(toks) == 16 and "w100" in toks and "w139" not in toks  # response end cut
    assert enc.stats.response_truncated == 1


def test_drop_policy_counts(tok):
    enc = SequenceEncoder(tok, 10, policy="drop")
    pairs = [
        Pair([{"role": "user", "content": "hello"}], "fine", "thanks"),
        Pair([{"role": "user", "content": " ".join(["w1"] * 40)}], "fine", "thanks"),
    ]
    data = encode_pairs(pairs, enc)
    assert len(data) == 1 and data.stats.dropped == 2  # both sides of the long pair


def test_collate_shapes_and_filler_rows(tok):
    enc = SequenceEncoder(tok, 32)
    pairs = [
        Pair([{"role": "user", "content": "hello world"}], "fine thanks", "w1 w2 w3", margin=0.5)
    ] * 3
    data = encode_pairs(pairs, enc)
    b = collate_pairs(data, np.array([0, 2]), 32, 4, tok.pad_token_id)
    assert b["input_ids"].shape == (4, 2, 32)
    np.testing.assert_array_equal(b["weights"], [1, 1, 0, 0])
    np.testing.assert_array_equal(b["margin"], [0.5, 0.5, 0, 0])
    assert b["attention_mask"][2:].sum() == 0
    left = collate_pairs(data, np.array([0]), 32, 1, tok.pad_token_id, left=True)
    assert left["attention_mask"][0, 0, -1] == 1 and left["attention_mask"][0, 0, 0] == 0
