"""DPO implicit reward: against an explicit log-softmax over transformers' logits of the same
tiny random Llama weights, with and without a reference, summed and averaged."""

import json

import numpy as np
import pytest

from rewardjax import modes, recipes
from rewardjax.config import UnreadConfigKeys
from rewardjax.data.tokenize import build_wordlevel_tokenizer
from rewardjax.main import run as main_run
from rewardjax.recipes.dpo import ResponseEncoder
from tests.runtime.helpers import load_recipe

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["what is the capital of france", "paris is the capital", "tell me a joke",
         "why did the chicken cross the road", "to get to the other side", "hello there",
         "no thanks"]
ITEMS = [  # (prompt, response): different prompt and response lengths in one batch
    ([{"role": "user", "content": "what is the capital of france"}], "paris is the capital"),
    ([{"role": "user", "content": "tell me a joke"}], "why did the chicken cross the road"),
    ([{"role": "user", "content": "hello there"},
      {"role": "assistant", "content": "hello"},
      {"role": "user", "content": "tell me a joke"}], "no"),
]
BETA = 0.5


def _save_lm(directory, tok, seed):
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False, rms_norm_eps=1e-5)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # HF init leaves norms at 1: perturb everything
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    tok = build_wordlevel_tokenizer(TEXTS)  # carries a chat template with an end-of-turn token
    policy = _save_lm(root / "policy", tok, seed=0)
    reference = _save_lm(root / "reference", tok, seed=1)
    return tok, (str(root / "policy"), policy), (str(root / "reference"), reference)


def _ids(out):
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _by_hand(tok, model, prompt, response):
    """Σ log-softmax(logits)[t-1, token t] over the tokens the full rendering adds after the
    prompt's rendering (with the generation prompt), in float64."""
    head = _ids(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))
    full = _ids(tok.apply_chat_template(
        prompt + [{"role": "assistant", "content": response}], tokenize=True))
    assert full[:len(head)] == head
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0].double()
    logp = torch.log_softmax(logits, -1).numpy()
    total = sum(logp[t - 1, full[t]] for t in range(len(head), len(full)))
    return total, full[len(head):]


def _scorer(policy, reference="", reduce="sum"):
    config = load_recipe("dpo", "runlocal")
    config.dpo.policy, config.dpo.reference = policy, reference
    config.dpo.beta, config.dpo.reduce = BETA, reduce
    config.model.max_length = 64
    config.eval.batch_size = 2  # two batches, the last one filled with padding rows
    return recipes.get("dpo").scorer(config, "/nonexistent", "score")


def test_reward_equals_log_softmax_by_hand(models):
    tok, (p_dir, p_model), (r_dir, r_model) = models
    pi, ref, counts = [], [], []
    for prompt, response in ITEMS:
        a, resp_ids = _by_hand(tok, p_model, prompt, response)
        b, _ = _by_hand(tok, r_model, prompt, response)
        pi.append(a)
        ref.append(b)
        counts.append(len(resp_ids))
        # The template matters: the response part ends with its end-of-turn token, which the
        # bare response text does not hold.
        assert resp_ids[-1] == tok.convert_tokens_to_ids("<|end|>")
        assert len(resp_ids) > len(tok(response, add_special_tokens=False)["input_ids"])
    pi, ref, counts = np.asarray(pi), np.asarray(ref), np.asarray(counts)
    prompts, responses = [p for p, _ in ITEMS], [r for _, r in ITEMS]

    out = _scorer(p_dir, r_dir).score(prompts, responses)
    np.testing.assert_array_equal(out["response_tokens"], counts)
    np.testing.assert_allclose(out["logps"][:, 0], pi, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["logps"][:, 1], ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["reward"], BETA * (pi - ref), rtol=0, atol=1e-5)

    free = _scorer(p_dir).score(prompts, responses)  # reference-free (RewardBench)
    np.testing.assert_allclose(free["reward"], BETA * pi, rtol=0, atol=1e-5)
    assert free["logps"].shape == (3, 1)

    mean = _scorer(p_dir, r_dir, reduce="mean").score(prompts, responses)
    np.testing.assert_allclose(mean["reward"], BETA * (pi - ref) / counts, rtol=0, atol=1e-6)


def test_score_mode_writes_rewards_and_train_refuses(models, tmp_path):
    _, (p_dir, _), (r_dir, _) = models
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"prompt": p[-1]["content"], "response": r}) + "\n"
                           for p, r in ITEMS[:2]))
    config = load_recipe("dpo", "runlocal")
    config.dpo.policy, config.dpo.reference = p_dir, r_dir
    config.model.max_length = 64
    config.mode = "score"
    config.score.input = str(inp)
    out = main_run(config, str(tmp_path / "wd"))
    rows = [json.loads(line) for line in open(out)]
    assert len(rows) == 2 and all(np.isfinite(r["reward"]) for r in rows)
    assert set(rows[0]["logps"]) == {"policy", "reference"}
    config.mode = "train"
    with pytest.raises(ValueError, match="scores an existing policy"):
        main_run(config, str(tmp_path / "wd2"))
    with pytest.raises(ValueError, match="no reward-model checkpoint to export"):
        recipes.get("dpo").exporter("export")


def test_template_that_rewrites_the_prompt_is_an_error():
    tok = build_wordlevel_tokenizer(TEXTS)
    # The last message is marked, so the prompt renders differently once a response follows.
    tok.chat_template = ("{% for m in messages %}{% if loop.last %}<|end|> {% endif %}"
                         "{{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    enc = ResponseEncoder(tok, 64)
    with pytest.raises(ValueError, match="cannot be told apart"):
        enc.encode([{"role": "user", "content": "hello there"}], "no thanks")
    assert enc.encode([], "no thanks").response_start == 0  # no prompt: nothing to tell apart


def test_keys_it_never_reads_are_refused():
    config = load_recipe("dpo", "runlocal")
    for mode in ("score", "eval", "rewardbench"):
        config.mode = mode
        modes.check_overrides(config, ["dpo.policy", "dpo.beta", "dpo.reduce", "model.max_length",
                                       "model.dtype", "eval.batch_size", "seed", "train.progress"])
        with pytest.raises(UnreadConfigKeys, match=r"model.path: the policy is dpo.policy"):
            modes.check_overrides(config, ["model.path"])
        with pytest.raises(UnreadConfigKeys, match="trains nothing"):
            modes.check_overrides(config, ["train.steps"])
