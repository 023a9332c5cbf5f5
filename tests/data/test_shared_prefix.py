"""Shared-prefix layout: what is shared, truncation that keeps prompts equal, the packed rows."""

import numpy as np
import pytest

from rewardjax.data.records import Pair
from rewardjax.data.shared_prefix import (
    SharedPrefixBatches,
    collate_shared_pairs,
    common_prefix,
    plan_prefixes,
    sharing_enabled,
)
from rewardjax.data.tokenize import SequenceEncoder, build_wordlevel_tokenizer, encode_pairs

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _tok():
    return build_wordlevel_tokenizer([" ".join(WORDS)])


def _text(rng, n):
    return " ".join(rng.choice(WORDS, size=n))


def _pairs(n=12, seed=0, prompt_words=(3, 30), response_words=(1, 25)):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = [{"role": "user", "content": _text(rng, int(rng.integers(*prompt_words)))}]
        if rng.random() < 0.5:  # multi-turn: the whole transcript is the shared prompt
            prompt += [{"role": "assistant", "content": _text(rng, 3)},
                       {"role": "user", "content": _text(rng, 4)}]
        out.append(Pair(prompt, _text(rng, int(rng.integers(*response_words))),
                        _text(rng, int(rng.integers(*response_words)))))
    return out


def test_common_prefix():
    a, b = np.array([1, 2, 3, 4]), np.array([1, 2, 5])
    assert common_prefix(a, b) == 2
    assert common_prefix(a, a) == 3  # identical: each side keeps its last token
    assert common_prefix(np.array([1, 2]), np.array([1, 2, 3])) == 1  # one is a prefix
    assert common_prefix(np.array([7]), np.array([8, 9])) == 0


@pytest.mark.parametrize("mode", ["chat", "plain"])
def test_prefix_covers_the_rendered_prompt(mode):
    enc = SequenceEncoder(_tok(), 512, mode=mode)
    data = encode_pairs(_pairs(), enc, same_prompt=True)
    prefix, stats = plan_prefixes(data, 512)
    assert stats.shared == len(data) and stats.prompt_differs == stats.too_long == 0
    for p, c, r in zip(prefix, data.chosen, data.rejected):
        assert p >= c.response_start == r.response_start  # the template's markup included
        np.testing.assert_array_equal(c.ids[:p], r.ids[:p])
    assert stats.tokens_saved == prefix.sum()
    assert stats.tokens == data.real_tokens()


def test_truncation_keeps_prompts_equal():
    """keep_end cuts the prompt's start by each side's response length; a pair's two prompts
    must be cut alike to be shared. Encoded on their own, truncated pairs share nothing."""
    pairs = _pairs(n=20, seed=3, prompt_words=(20, 60), response_words=(2, 40))
    apart = encode_pairs(pairs, SequenceEncoder(_tok(), 48, mode="chat"))
    together_enc = SequenceEncoder(_tok(), 48, mode="chat")
    together = encode_pairs(pairs, together_enc, same_prompt=True)
    assert apart.stats.prompt_truncated > 0 and together.stats.prompt_truncated > 0
    _, s_apart = plan_prefixes(apart, 96)
    _, s_together = plan_prefixes(together, 96)
    assert s_apart.prompt_differs > 0  # counted, laid out as two sequences
    assert s_together.prompt_differs == 0 and s_together.shared == len(together)
    for c, r in zip(together.chosen, together.rejected):
        assert len(c.ids) <= 48 and len(r.ids) <= 48
        assert c.response_start == r.response_start
        np.testing.assert_array_equal(c.ids[: c.response_start], r.ids[: r.response_start])
    # untruncated pairs are encoded exactly as before
    short = _pairs(n=6, seed=1, prompt_words=(2, 5), response_words=(1, 4))
    a = encode_pairs(short, SequenceEncoder(_tok(), 48, mode="chat"))
    b = encode_pairs(short, SequenceEncoder(_tok(), 48, mode="chat"), same_prompt=True)
    for x, y in zip(a.chosen + a.rejected, b.chosen + b.rejected):
        np.testing.assert_array_equal(x.ids, y.ids)
    # drop: both sides of an over-length pair go, counted as before
    dropped = encode_pairs(pairs, SequenceEncoder(_tok(), 48, "drop", mode="chat"),
                           same_prompt=True)
    assert dropped.stats.dropped > 0 and len(dropped) < len(pairs)


def test_collate_layout():
    enc = SequenceEncoder(_tok(), 128, mode="chat")
    data = encode_pairs(_pairs(n=10, seed=5), enc, same_prompt=True)
    prefix, _ = plan_prefixes(data, 256)
    prefix[4] = 0  # one pair in the two-sequence form
    idx = np.array([4, 0, 7, 2, 9])
    b = collate_shared_pairs(data, prefix, idx, 6, 256, 3, pad_id=0)
    assert b["input_ids"].shape[0] < len(idx)  # several pairs per row
    assert (b["attention_mask"] == (b["segment_ids"] > 0)).all()
    for k, i in enumerate(idx):
        c, r, p = data.chosen[i], data.rejected[i], prefix[i]
        (rc, cc), (rr, cr) = b["chosen_token"][k], b["rejected_token"][k]
        seg_c, seg_r = b["segment_ids"][rc, cc], b["segment_ids"][rr, cr]
        assert (rc == rr and seg_c == seg_r) == (p > 0)
        # rebuild each sequence from its row: tokens visible to its last token, by position
        for (row, col), seq, part in (((rc, cc), c, 1), ((rr, cr), r, 2)):
            seg = b["segment_ids"][row]
            keep = (seg == seg[col]) & (np.arange(len(seg)) <= col)
            if p > 0:
                keep &= (b["parts"][row] == 0) | (b["parts"][row] == part)
            np.testing.assert_array_equal(b["input_ids"][row][keep], seq.ids)
            np.testing.assert_array_equal(b["positions"][row][keep], np.arange(len(seq.ids)))
    assert b["pair_tokens"].sum() == sum(len(data.chosen[i].ids) + len(data.rejected[i].ids)
                                         for i in idx)
    assert b["weights"].tolist() == [1.0] * 5 + [0.0] and b["index"][-1] == -1


def test_batches_follow_the_packed_plan():
    from rewardjax.data.packing import PackedPairBatches

    enc = SequenceEncoder(_tok(), 128, mode="chat")
    data = encode_pairs(_pairs(n=30, seed=2), enc, same_prompt=True)
    shared = SharedPrefixBatches(data, 8, 256, 4, 0, seed=3)
    packed = PackedPairBatches(data, 8, 256, 4, 0, seed=3)
    for step in (0, 5):
        a, b = shared.at_step(step), packed.at_step(step)
        np.testing.assert_array_equal(a["index"], b["index"])  # same pairs, same order
        assert a["input_ids"].shape[0] in shared.ladder
        assert a["attention_mask"].sum() < b["attention_mask"].sum()


def test_sharing_enabled():
    on = dict(packing=True, is_causal=True, pooling="last")
    assert sharing_enabled("auto", **on) and sharing_enabled("on", **on)
    assert not sharing_enabled("off", **on) and not sharing_enabled(False, **on)
    assert not sharing_enabled("auto", **dict(on, is_causal=False))
    assert not sharing_enabled("auto", **dict(on, packing=False))
    assert not sharing_enabled("auto", **dict(on, pooling="mean"))
    with pytest.raises(ValueError, match="encoder"):
        sharing_enabled("on", **dict(on, is_causal=False))
    with pytest.raises(ValueError, match="data.packing"):
        sharing_enabled(True, **dict(on, packing=False))
    with pytest.raises(ValueError, match="pooling"):
        sharing_enabled("on", **dict(on, pooling="mean"))
    with pytest.raises(ValueError, match="choose auto"):
        sharing_enabled("sometimes", **on)
