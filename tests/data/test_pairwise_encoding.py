"""The [prompt, A, B] rendering: markers, token types, the fair truncation policy and its
counts, both-order batches."""

import numpy as np
import pytest

from rewardjax.data import Pair, build_wordlevel_tokenizer
from rewardjax.data.pairwise import (
    PairwiseEncoder,
    collate_orders,
    encode_orders,
    response_cap,
)

WORDS = [f"w{i}" for i in range(60)]


def tokenizer(bert: bool):
    tok = build_wordlevel_tokenizer([" ".join(WORDS) + " user response a b : yes no"])
    if bert:  # the encoder frame: [CLS] ... [SEP]
        tok.add_special_tokens({"cls_token": "[CLS]", "sep_token": "[SEP]"})
    return tok


def prompt(n):
    return [{"role": "user", "content": " ".join(WORDS[:n])}]


def words(ids, tok):
    return tok.convert_ids_to_tokens([int(i) for i in ids])


def test_pair_rendering_segments_and_markers():
    tok = tokenizer(bert=True)
    e = PairwiseEncoder(tok, 64).encode_triple(prompt(2), "yes", "no")
    assert words(e.ids, tok) == ["[CLS]", "user", ":", "w0", "w1", "[SEP]",
                                 "response", "a", ":", "yes", "[SEP]",
                                 "response", "b", ":", "no", "[SEP]"]
    assert e.type_ids.tolist() == [0] * 6 + [1] * 10  # prompt segment 1, responses segment 2
    assert e.response_start == 6
    with pytest.raises(ValueError, match="pairwise preference model compares two responses"):
        PairwiseEncoder(tok, 64).encode(prompt(2), "yes")  # no single-response encoding


def test_plain_rendering_for_tokenizers_without_an_encoder_frame():
    tok = tokenizer(bert=False)
    enc = PairwiseEncoder(tok, 64, mode="chat")  # a chat template does not wrap the triple
    assert enc.mode == "plain"
    e = enc.encode_triple(prompt(1), "yes", "no")
    assert words(e.ids, tok) == ["[BOS]", "user", ":", "w0", "response", "a", ":", "yes",
                                 "response", "b", ":", "no", "[EOS]"]
    assert not e.type_ids.any()
    e = enc.encode_triple([], "yes", "no")  # no prompt
    assert words(e.ids, tok)[:3] == ["[BOS]", "response", "a"]
    with pytest.raises(ValueError, match="cls and sep"):
        PairwiseEncoder(tok, 64, mode="pair")


def test_keep_end_truncation_by_hand_and_the_same_in_both_orders():
    tok = tokenizer(bert=True)
    # frame: [CLS] [SEP] + "response a :" [SEP] + "response b :" [SEP] = 10 tokens, budget 40.
    enc = PairwiseEncoder(tok, 50)
    a, b = " ".join(WORDS[20:50]), " ".join(WORDS[50:55])  # 30 and 5 tokens
    # prompt "user : w0 .. w19" = 22 tokens; 57 > 40: the prompt keeps max(40 - 35, 40 // 4)
    # = 10 tokens (its end), the responses share 30: B (5) whole, A cut to 25 (its start).
    e = enc.encode_triple(prompt(20), a, b)
    toks = words(e.ids, tok)
    assert len(toks) == 50
    assert toks[1:11] == WORDS[10:20] and toks[11] == "[SEP]"
    assert toks[15:40] == WORDS[20:45]  # A: 25 tokens from its start
    assert toks[44:49] == WORDS[50:55]
    assert enc.stats.as_dict() == {"sequences": 1, "prompt_truncated": 1,
                                   "response_truncated": 1, "dropped": 0, "tokens_removed": 17}
    swapped = words(enc.encode_triple(prompt(20), b, a).ids, tok)
    assert swapped[1:11] == toks[1:11]  # same prompt tokens
    assert swapped[15:20] == WORDS[50:55] and swapped[24:49] == WORDS[20:45]
    # two long responses are cut to the same length
    long_b = " ".join(WORDS[25:55])
    e = enc.encode_triple(prompt(20), a, long_b)
    toks = words(e.ids, tok)
    assert len(toks) == 50  # 10 frame + 10 prompt + 15 + 15
    assert toks[15:30] == WORDS[20:35] and toks[34:49] == WORDS[25:40]
    assert enc.stats.response_truncated == 4  # 1 + 1 (the swapped order) + 2


def test_response_cap_water_fills_symmetrically():
    assert response_cap(30, 5, 30) == 25
    assert response_cap(5, 30, 30) == 25
    assert response_cap(30, 30, 30) == 15
    assert response_cap(30, 30, 31) == 15
    assert response_cap(3, 4, 10) == 4  # fits: nothing cut
    assert response_cap(15, 16, 30) == 15


def test_drop_policy_counts_and_orders_drop_together():
    tok = tokenizer(bert=True)
    enc = PairwiseEncoder(tok, 30, policy="drop")
    assert enc.encode_triple(prompt(20), "yes", "no") is None
    assert enc.stats.dropped == 1
    pairs = [Pair(prompt(2), "yes", "no"), Pair(prompt(20), "yes", "no")]
    data = encode_orders(pairs, enc)
    assert len(data) == 1 and data.stats.dropped == 2 and data.stats.sequences == 4
    with pytest.raises(ValueError, match="max_length=12 leaves 2 tokens"):
        PairwiseEncoder(tok, 12)


def test_collate_orders_puts_both_orders_of_a_pair_in_one_row():
    tok = tokenizer(bert=True)
    pairs = [Pair(prompt(2), "yes", "no"), Pair(prompt(3), "w9 w8", "no")]
    data = encode_orders(pairs, PairwiseEncoder(tok, 64))
    batch = collate_orders(data, np.array([1]), 32, 2, tok.pad_token_id)
    assert batch["input_ids"].shape == (2, 2, 32)
    assert batch["weights"].tolist() == [1.0, 0.0] and batch["index"].tolist() == [1, -1]
    n = len(data.ab[1].ids)
    np.testing.assert_array_equal(batch["input_ids"][0, 0, :n], data.ab[1].ids)  # chosen first
    np.testing.assert_array_equal(batch["input_ids"][0, 1, :n], data.ba[1].ids)  # chosen second
    assert batch["attention_mask"][0, 0].sum() == n and not batch["attention_mask"][1].any()
    assert words(data.ba[1].ids, tok)[10:12] == ["no", "[SEP]"]
