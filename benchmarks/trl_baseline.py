"""The baselines the throughput benchmarks measure rewardjax against, in the same process tree.

* :func:`run_trl`: Hugging Face TRL's ``RewardTrainer`` itself (``pip install trl``) on a
  pre-tokenised ``chosen_ids`` / ``rejected_ids`` dataset: its own collator (both sides of every
  pair padded to the batch's longest sequence), its own loss, ``transformers.Trainer``'s AdamW,
  linear schedule, clipping, bf16 autocast when asked. Step times come from a callback; real
  tokens from the attention masks the trainer actually fed to the model.
* :func:`run_torch_reference`: the same step written out in plain PyTorch, for machines without
  TRL (issue 2's stand-in; it matched TRL's published CPU figures within 10%).

Both return ``{"real_tokens_per_s", "padded_tokens_per_s", "real_fraction", "seconds", "steps"}``
over the timed steps (the first ``warmup`` steps are excluded).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time

import numpy as np


def trl_available() -> bool:
    return all(importlib.util.find_spec(m) for m in ("trl", "datasets", "accelerate"))


def id_tokenizer(pad_id: int = 0):
    """A tokenizer that only knows its pad token: enough for TRL on pre-tokenised ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[PAD]": pad_id, "[UNK]": pad_id + 1}, unk_token="[UNK]"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _summary(records, times, warmup):
    """``records``: (real, padded) tokens per step; ``times``: step end timestamps."""
    if len(times) <= warmup:
        raise RuntimeError(f"only {len(times)} steps ran; need more than warmup={warmup}")
    real = sum(r for r, _ in records[warmup + 1 : len(times)])
    padded = sum(p for _, p in records[warmup + 1 : len(times)])
    dt = times[-1] - times[warmup]
    steps = len(times) - 1 - warmup
    return {
        "real_tokens_per_s": real / dt,
        "padded_tokens_per_s": padded / dt,
        "real_fraction": real / padded,
        "seconds": dt,
        "steps": steps,
    }


def run_trl(model, tokenizer, seqs, batch_size, steps, warmup, *, bf16=False,
            gradient_checkpointing=False, lr=2e-5, seed=0):
    """Trains ``model`` (a ``*ForSequenceClassification`` with ``num_labels=1``) with TRL.

    ``seqs`` is a list of ``(chosen_ids, rejected_ids)``; they are cycled so that
    ``warmup + steps + 1`` optimizer steps run. Time is measured between step ends, so data
    loading and collation (part of what TRL costs) are inside the figure.
    """
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    total = warmup + steps + 1
    need = total * batch_size
    rows = [seqs[i % len(seqs)] for i in range(need)]
    data = Dataset.from_dict({
        "chosen_ids": [[int(t) for t in a] for a, _ in rows],
        "rejected_ids": [[int(t) for t in b] for _, b in rows],
    })
    records, times = [], []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            times.append(time.perf_counter())

    class CountingTrainer(RewardTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            mask = inputs["attention_mask"]
            records.append((int(mask.sum()), int(mask.numel())))
            return super().compute_loss(model, inputs, *args, **kwargs)

    with tempfile.TemporaryDirectory() as out:
        args = RewardConfig(
            output_dir=out,
            per_device_train_batch_size=batch_size,
            max_steps=total,
            learning_rate=lr,
            weight_decay=0.0,
            max_grad_norm=1.0,
            logging_steps=10**9,
            save_strategy="no",
            report_to=[],
            bf16=bf16,
            gradient_checkpointing=gradient_checkpointing,
            max_length=None,
            disable_dropout=True,
            dataloader_drop_last=True,
            seed=seed,
            use_cpu=not torch.cuda.is_available(),
        )
        trainer = CountingTrainer(model=model, args=args, train_dataset=data,
                                  processing_class=tokenizer, callbacks=[StepClock()])
        trainer.train()
    return _summary(records, times, warmup)


def run_trl_like(model, seqs, batch_size, steps, warmup, *, bf16=False, lr=2e-5, seed=0,
                 pad_id=0):
    """What ``RewardTrainer`` runs per step, without TRL installed: its collation (both sides
    padded to the batch's longest sequence), ``-logsigmoid`` loss on the sequence-classification
    logits, clipping at 1.0 and AdamW (fused on GPU), under bf16 autocast when asked."""
    import torch

    dev = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0,
                            fused=dev.type == "cuda")
    model.train()
    order = np.random.default_rng(seed).permutation(len(seqs))
    records, times = [], []
    for i in range(warmup + steps + 1):
        idx = order[(i * batch_size) % len(seqs) :][:batch_size]
        rows = [seqs[j][0] for j in idx] + [seqs[j][1] for j in idx]
        longest = max(len(r) for r in rows)
        ids = np.full((len(rows), longest), pad_id, np.int64)
        mask = np.zeros((len(rows), longest), np.int64)
        for k, r in enumerate(rows):
            ids[k, : len(r)] = r
            mask[k, : len(r)] = 1
        ids, mask = torch.from_numpy(ids).to(dev), torch.from_numpy(mask).to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        chosen, rejected = torch.chunk(logits.float().squeeze(-1), 2)
        loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        _sync()
        records.append((int(mask.sum()), int(mask.numel())))
        times.append(time.perf_counter())
    return _summary(records, times, warmup)


def torch_bt_step(enc, head, opt, params, ids, mask, *, amp=False):
    """One plain-PyTorch BT step: mean-pooled linear head on encoder ``enc``, rows ``[2B, T]``
    (chosen then rejected), clipping at 1.0, then ``opt``; bf16 autocast with ``amp``."""
    import torch

    dev = ids.device.type
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
        h = enc(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        r = head((h.float() * m).sum(1) / m.sum(1).clamp(min=1)).squeeze(-1)
    n = r.shape[0] // 2
    loss = torch.nn.functional.softplus(-(r[:n] - r[n:])).mean()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    _sync()
    return loss


def torch_reference_model(enc, lr=2e-5):
    """``(head, optimizer, params)`` for :func:`torch_bt_step` on encoder ``enc``."""
    import torch

    dev = next(enc.parameters()).device
    head = torch.nn.Linear(enc.config.hidden_size, 1).to(dev)
    params = list(enc.parameters()) + list(head.parameters())
    enc.eval()  # dropout off, as on the JAX side
    return head, torch.optim.AdamW(params, lr=lr, weight_decay=0.0), params


def run_torch_reference(enc, seqs, batch_size, steps, warmup, seed=0, lr=2e-5):
    """The TRL step in plain PyTorch on random batches padded to their longest sequence."""
    import torch

    head, opt, params = torch_reference_model(enc, lr)
    order = np.random.default_rng(seed).permutation(len(seqs))

    def batch(i):
        idx = order[(i * batch_size) % len(seqs) :][:batch_size]
        rows = [seqs[j][0] for j in idx] + [seqs[j][1] for j in idx]
        longest = max(len(r) for r in rows)  # pad to the longest sequence of the batch (TRL)
        ids = np.zeros((len(rows), longest), np.int64)
        mask = np.zeros((len(rows), longest), np.int64)
        for k, r in enumerate(rows):
            ids[k, : len(r)] = r
            mask[k, : len(r)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)

    records, times = [], []
    for i in range(warmup + steps + 1):
        ids, mask = batch(i)
        torch_bt_step(enc, head, opt, params, ids, mask)
        records.append((int(mask.sum()), int(mask.numel())))
        times.append(time.perf_counter())
    return _summary(records, times, warmup)


def matmul_peak_gflops(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """Best achieved GFLOP/s of one square matmul in PyTorch: the MFU denominator on a CPU."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    dt = getattr(torch, dtype)
    a = torch.randn(n, n, device=dev, dtype=dt)
    b = torch.randn(n, n, device=dev, dtype=dt)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync()
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        _sync()
        best = min(best, (time.perf_counter() - t0) / 4)
    return 2 * n**3 / best / 1e9
