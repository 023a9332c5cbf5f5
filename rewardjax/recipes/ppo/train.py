"""Recipe ``ppo``: RL fine-tuning of a LoRA policy against a reward model (PPO or RLOO), with
optional Elastic Reset, evaluated against a held-out gold reward.

One iteration, top to bottom (``train_ppo``):

1. **Rollout.** ``train.batch_size x rl.minibatches`` training prompts (a pure function of seed
   and step, so a resumed run sees the same ones), each sampled ``rl.samples_per_prompt`` times
   at temperature 1
   with the KV-cache sampler (``rl/sampling.py``): the samples are on-policy, so the sampler's
   log-probabilities are those of π itself.
2. **Scores.** Responses are decoded to text and scored by the proxy reward model (re-tokenized
   with its own tokenizer, ``rl/rewards.py``), optionally whitened / clipped; the gold reward is
   computed as well, for logging only.
3. **Old statistics.** One jitted call gives, per response token, log π, V and log π_ref
   (π_ref = the initial LoRA = the base model, ``rl/policy.py``).
4. **Update** (one jitted call, ``rl/ppo_update.py``): per-token rewards ``−β·KL_t`` plus the
   score at the last token (KL estimator k1 or k3), GAE and whitened advantages (PPO), or the
   leave-one-out advantage of the KL-penalised sequence reward (RLOO); then ``rl.epochs`` passes
   over ``rl.minibatches`` shuffled minibatches, one AdamW step each (so ``train.batch_size`` is
   the prompts of one update, and ``train.steps`` counts updates: the run makes
   ``train.steps / (rl.epochs x rl.minibatches)`` iterations). With Elastic Reset, the EMA
   of the policy is updated after every optimizer step and, at the end of every
   ``rl.elastic_reset.every``-th iteration, the policy becomes the EMA and the EMA the initial
   policy; the value head, the optimizer state and the KL anchor are not touched (DESIGN §3).
5. **KL control.** β fixed, or adapted towards ``rl.kl_target`` (Ziegler et al.).
6. **Evaluation** every ``rl.eval_every`` iterations (and before the first) on held-out prompts:
   proxy and gold score, KL(π‖π_init) as the mean over responses of Σ_t (log π − log π_ref)
   under π's own samples, response length.

Decisions. Elastic Reset averages the LoRA factors A and B, not their product: the merged
update of averaged factors is not the average of merged updates, but stays rank-r and close to
it while the factors move slowly (d near 1). The reset period is counted in RL iterations and
converted to optimizer steps (× epochs × minibatches) so the reset lands at the end of an
iteration, while the EMA still moves after every optimizer step.

Outputs in the workdir: ``metrics.jsonl`` (``train`` rows every iteration, ``eval`` rows),
``checkpoints/`` (resume is exact: same prompts, keys, β), ``summary.json``, and the plots
``rl_reward_vs_kl.png`` (proxy and gold against KL) and ``rl_pareto.png`` (gold against KL with
the non-dominated evaluations highlighted), each also drawing the runs of ``rl.compare_with``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rewardjax.averaging.ema import elastic_reset
from rewardjax.config import whole_parts
from rewardjax.eval import plots
from rewardjax.lora import LoRAConfig
from rewardjax.models import registry
from rewardjax.recipes.ppo.rewards import build_scorer, shape_scores
from rewardjax.rl import build_policy, init_rl_state, make_update, sampling
from rewardjax.rl import objectives as O
from rewardjax.rl.policy import (
    make_sample,
    make_stats,
    reference_params,
    response_mask,
    split_policy,
)
from rewardjax.runtime import (
    Checkpointer,
    MetricsWriter,
    Part,
    Trainer,
    make_optimizer,
    owns_workdir,
    read_json,
    to_python,
    write_json,
)
from rewardjax.runtime.workdir import isfile, read_jsonl

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Policy:
    """The split policy, its tokenizer and the prompts it is trained and evaluated on."""

    graphdef: Any
    params: dict
    frozen: Any
    tokenizer: Any
    train_prompts: list[str]
    train_ids: list[list[int]]
    eval_prompts: list[str]
    eval_ids: list[list[int]]
    dropped_prompts: int


# ----------------------------------------------------------------------------- setup


def load_prompts(config) -> tuple[list[str], list[str], list[str]]:
    """``(train prompts, eval prompts, texts to fit a word-level tokenizer on)``."""
    rl = config.rl
    if rl.prompts == "sim":
        from rewardjax.data.sources import load_spec

        train_pairs, _ = load_spec("sim:train", config.data)
        eval_pairs, _ = load_spec("sim:test_id", config.data)
        firsts = lambda ps: list(dict.fromkeys(p.prompt[0]["content"] for p in ps))  # noqa: E731
        texts = [t for p in train_pairs for t in (p.prompt[0]["content"], p.chosen, p.rejected)]
        return firsts(train_pairs), firsts(eval_pairs)[:int(rl.num_eval_prompts)], texts
    from rewardjax.eval.bon_pools import read_prompts

    prompts = read_prompts(rl.prompts)
    # Which prompts are held out is the data, not the run's randomness: data.split_seed, so
    # several seeds of a run evaluate on the same prompts.
    order = np.random.default_rng(int(config.data.split_seed)).permutation(len(prompts))
    prompts = [prompts[i] for i in order]
    n_eval = int(rl.num_eval_prompts)
    return prompts[n_eval:], prompts[:n_eval], prompts


def build_policy_run(config) -> Policy:
    """Backbone (+ pretrained weights), tokenizer, LoRA, value head, encoded prompts."""
    rl = config.rl
    train_prompts, eval_prompts, texts = load_prompts(config)
    spec = registry.resolve(rl.policy)
    tok = spec.tokenizer
    if tok is None:  # a random backbone: a word-level vocabulary fitted on the prompt texts
        from rewardjax.data.tokenize import build_wordlevel_tokenizer

        tok = build_wordlevel_tokenizer(texts, vocab_size=int(rl.policy_vocab_size))
        spec = dataclasses.replace(spec, config=dataclasses.replace(spec.config,
                                                                    vocab_size=len(tok)))
    lm, _ = registry.load_backbone(spec, seed=int(config.seed))
    lora = LoRAConfig(rank=int(config.lora.rank), alpha=float(config.lora.alpha),
                      targets=config.lora.targets)
    graphdef, params, frozen = split_policy(build_policy(lm, lora, seed=int(config.seed)))
    # Over-long prompts are dropped (and counted), never cut: a cut prompt loses its question.
    limit, dropped, encoded = int(rl.max_prompt_length), 0, {}
    for name, prompts in (("train", train_prompts), ("eval", eval_prompts)):
        ids = [sampling.encode_prompt(tok, q, 10 ** 6) for q in prompts]
        keep = [i for i, s in enumerate(ids) if len(s) <= limit]
        dropped += len(ids) - len(keep)
        encoded[name] = ([prompts[i] for i in keep], [ids[i] for i in keep])
    if not encoded["train"][0] or not encoded["eval"][0]:
        raise ValueError(f"no training or evaluation prompt fits rl.max_prompt_length={limit}")
    return Policy(graphdef, params, frozen, tok, *encoded["train"], *encoded["eval"], dropped)


def sampling_config(config, tok) -> sampling.SamplingConfig:
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    # Temperature 1 and no truncation: PPO's ratios and the KL estimates assume samples from π.
    return sampling.SamplingConfig(max_new_tokens=int(config.rl.max_new_tokens), temperature=1.0,
                                   eos_ids=sampling.default_eos_ids(tok), pad_id=int(pad))


def updates_per_iteration(rl) -> int:
    return int(rl.epochs) * int(rl.minibatches)


def iterations(config) -> int:
    """RL iterations of the run: ``train.steps`` optimizer updates of the policy, each iteration
    making ``rl.epochs x rl.minibatches`` of them."""
    steps, per = int(config.train.steps), updates_per_iteration(config.rl)
    return whole_parts(steps, per, f"train.steps={steps} optimizer updates do not make whole RL "
                       f"iterations of rl.epochs x rl.minibatches = {per} updates")


def rollout_prompts(config) -> int:
    """Prompts sampled per iteration: ``train.batch_size`` (the prompts of one update) for each
    of the ``rl.minibatches`` minibatches."""
    return int(config.train.batch_size) * int(config.rl.minibatches)


def make_reset(rl):
    """The Elastic Reset transform over the LoRA params, or None when switched off."""
    if int(rl.elastic_reset.every) <= 0:
        return None
    return elastic_reset(float(rl.elastic_reset.decay),
                         int(rl.elastic_reset.every) * updates_per_iteration(rl))


# ----------------------------------------------------------------------------- rollouts


class Runner:
    """Rollouts and evaluations of one policy: host-side glue around the jitted functions."""

    def __init__(self, config, policy: Policy, proxy, gold):
        self.config, self.rl, self.policy = config, config.rl, policy
        self.proxy, self.gold = proxy, gold
        self.cfg = sampling_config(config, policy.tokenizer)
        self.sample = make_sample(policy.graphdef, self.cfg)
        self.stats = make_stats(policy.graphdef)
        self.ref = reference_params(policy.params)
        self.prompts = rollout_prompts(config)
        self.rows = self.prompts * int(self.rl.samples_per_prompt)

    def prompts_at(self, step: int) -> list[int]:
        """Training prompt indices of an iteration: a pure function of (seed, step)."""
        rng = np.random.default_rng([int(self.config.seed), int(step)])
        n = len(self.policy.train_prompts)
        return rng.choice(n, self.prompts, replace=n < self.prompts)

    def rollout(self, params, prompts: list[str], ids: list[list[int]], key) -> dict:
        """Samples one response per prompt row and everything the update needs (host arrays)."""
        pids, pmask = sampling.left_pad(ids, int(self.rl.max_prompt_length), self.cfg.pad_id)
        frozen = self.policy.frozen
        out = self.sample(params, frozen, pids, pmask, key)
        rmask = response_mask(out.lengths, out.tokens.shape[1])
        st, ref_logp = self.stats(params, self.ref, frozen, pids, pmask, out.tokens, rmask)
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        texts = [self.policy.tokenizer.decode(tokens[i, :lengths[i]], skip_special_tokens=True)
                 for i in range(len(prompts))]
        proxy = np.asarray(self.proxy(prompts, texts), np.float32)
        gold = np.asarray(self.gold(prompts, texts), np.float32) if self.gold else None
        m = np.asarray(rmask, np.float32)
        logp = np.asarray(st.logprobs) * m
        ref = np.asarray(ref_logp) * m
        return {"prompt_ids": pids, "prompt_mask": pmask, "response": tokens,
                "mask": np.asarray(rmask), "old_logp": logp, "ref_logp": ref,
                "values": np.asarray(st.values) * m, "proxy": proxy, "gold": gold,
                "texts": texts, "lengths": lengths, "finished": np.asarray(out.finished),
                "kl_k1": (logp - ref).sum(-1),
                "kl_k3": (np.asarray(O.kl_per_token(logp, ref, "k3")) * m).sum(-1)}

    def train_batch(self, params, step: int, key) -> tuple[dict, dict]:
        idx = np.repeat(self.prompts_at(step), int(self.rl.samples_per_prompt))
        prompts = [self.policy.train_prompts[i] for i in idx]
        r = self.rollout(params, prompts, [self.policy.train_ids[i] for i in idx], key)
        scores = shape_scores(r["proxy"], whiten=bool(self.rl.reward_whiten),
                              clip=float(self.rl.reward_clip))
        batch = {k: jnp.asarray(r[k]) for k in ("prompt_ids", "prompt_mask", "response", "mask",
                                                 "old_logp", "ref_logp", "values")}
        batch["scores"] = jnp.asarray(scores)
        return batch, r

    def evaluate(self, params) -> dict:
        """Proxy, gold, KL to the initial policy and length on the held-out prompts (fixed keys,
        chunks of the training batch size so nothing recompiles)."""
        prompts, ids = self.policy.eval_prompts, self.policy.eval_ids
        parts = []
        for start in range(0, len(prompts), self.rows):
            chunk = list(range(start, min(start + self.rows, len(prompts))))
            pad = chunk + [chunk[-1]] * (self.rows - len(chunk))
            key = jax.random.fold_in(jax.random.key(int(self.config.seed) + 7919), start)
            r = self.rollout(params, [prompts[i] for i in pad], [ids[i] for i in pad], key)
            parts.append({k: v[:len(chunk)] for k, v in r.items()
                          if k in ("proxy", "gold", "kl_k1", "kl_k3", "lengths", "finished")
                          and v is not None})
            texts = r["texts"][:len(chunk)]
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        out = {"proxy": float(cat["proxy"].mean()), "proxy_std": float(cat["proxy"].std()),
               "kl": float(cat["kl_k1"].mean()), "kl_k3": float(cat["kl_k3"].mean()),
               "length": float(cat["lengths"].mean()),
               "finished": float(cat["finished"].mean()), "n": len(prompts),
               "example": texts[-1][:300]}
        if "gold" in cat:
            out.update(gold=float(cat["gold"].mean()), gold_std=float(cat["gold"].std()))
        return out


# ----------------------------------------------------------------------------- the recipe


@owns_workdir  # lock, run identity, config.json
def train_ppo(config, workdir: str) -> dict:
    """Trains the policy; returns the summary (also in ``summary.json``)."""
    t_start = time.time()
    rl = config.rl
    if rl.algo not in ("ppo", "rloo"):
        raise ValueError(f"unknown rl.algo {rl.algo!r}; choose ppo or rloo")
    if rl.algo == "rloo" and int(rl.samples_per_prompt) < 2:
        raise ValueError("rl.algo='rloo' needs rl.samples_per_prompt >= 2")
    steps = iterations(config)  # train.steps updates, rl.epochs x rl.minibatches an iteration
    rows = rollout_prompts(config) * int(rl.samples_per_prompt)  # minibatches split it evenly

    policy = build_policy_run(config)
    proxy = build_scorer(rl.proxy, "proxy", workdir, int(config.seed))
    gold = build_scorer(rl.gold, "gold", workdir, int(config.seed)) if rl.gold.kind else None
    runner = Runner(config, policy, proxy, gold)
    tx = make_optimizer(config.train, steps=steps * updates_per_iteration(rl))  # train.steps
    reset_tx = make_reset(rl)
    update = make_update(policy.graphdef, tx, reset_tx, rl)
    state = init_rl_state(policy.params, tx, reset_tx, float(rl.kl_coef))

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), int(rl.checkpoint_every),
                        config.train.keep_checkpoints)
    writer = MetricsWriter(workdir, tensorboard=config.train.tensorboard)
    base_key = jax.random.key(int(config.seed))
    cpu = [time.process_time()]  # train rows carry the CPU seconds since the previous row (all
    # threads; an evaluation in between is included)

    def iteration(state, step):
        """Rollouts with the current policy, the update, the KL controller: one row."""
        key = jax.random.fold_in(base_key, step)
        batch, r = runner.train_batch(state.params, step, jax.random.fold_in(key, 0))
        state, metrics = update(state, policy.frozen, batch, jax.random.fold_in(key, 1))
        metrics = jax.device_get(metrics)
        kl = float(np.mean(r["kl_k1"]))
        ctl = O.update_kl(O.KLController(float(state.kl_coef), rl.kl_target or None,
                                         float(rl.kl_horizon)), kl, rows)
        state = state._replace(kl_coef=jnp.asarray(ctl.coef, jnp.float32))
        row = {**metrics, "proxy": float(r["proxy"].mean()), "kl": kl,
               "kl_k3": float(np.mean(r["kl_k3"])), "length": float(np.mean(r["lengths"])),
               "kl_coef": float(ctl.coef), "cpu_s": time.process_time() - cpu[0]}
        cpu[0] = time.process_time()
        if r["gold"] is not None:
            row["gold"] = float(r["gold"].mean())
        return state, row

    trainer = Trainer(
        iteration, lambda step: step, total_steps=steps, parts=[Part(ckpt)], writer=writer,
        train=config.train, name="train", reduce="last", log_every=1,
        postfix_fn=lambda row: {"proxy": f"{row['proxy']:.3f}", "kl": f"{row['kl']:.2f}"},
        nonfinite_message=lambda step, m: (f"non-finite loss or gradient at iteration {step}; "
                                           "the update was skipped and the run stopped."),
        nonfinite_kw={"every_key": "rl.checkpoint_every", "unit": "iteration"})
    trainer.add_hook(lambda done, state, m: writer.write(done, "eval",
                                                         runner.evaluate(state.params)),
                     every=int(rl.eval_every), at_end=True)
    state = trainer.restore(state, config.train.get("resume_step"))
    if int(state.step) == 0:
        writer.write(0, "eval", runner.evaluate(state.params))
    state = trainer.fit(state)
    writer.close()
    history = read_eval_history(workdir)
    summary = {"steps": int(state.step), "algo": rl.algo,
               "elastic_reset": int(rl.elastic_reset.every) > 0, "wall_time_s":
               time.time() - t_start, "prompts": {"train": len(policy.train_prompts),
               "eval": len(policy.eval_prompts), "dropped_too_long": policy.dropped_prompts},
               "final_eval": history[-1] if history else {}}
    summary["plots"] = write_plots(workdir, rl.compare_with)
    write_json(os.path.join(workdir, "summary.json"), to_python(summary))
    print(format_history(history))
    return summary


# ----------------------------------------------------------------------------- reporting


def read_eval_history(workdir: str) -> list[dict]:
    """The ``eval`` rows of ``metrics.jsonl`` by step (a resumed run's repeats: the last one)."""
    by_step = {}
    for row in read_jsonl(os.path.join(workdir, "metrics.jsonl")):
        if row.get("split") == "eval":
            by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]


def run_label(workdir: str) -> str:
    """``PPO`` / ``RLOO`` with ``+ER(n)`` when Elastic Reset was on, from the run's config."""
    try:
        rl = read_json(os.path.join(workdir, "config.json"))["rl"]
        label = rl["algo"].upper()
        if int(rl["elastic_reset"]["every"]) > 0:
            label += f" + Elastic Reset (n={rl['elastic_reset']['every']})"
        return label
    except (OSError, KeyError, ValueError):
        return os.path.basename(os.path.normpath(workdir))


def write_plots(workdir: str, compare_with: str = "") -> list[str]:
    """``rl_reward_vs_kl.png`` and ``rl_pareto.png`` for this run and the ``compare_with`` runs
    (comma-separated workdirs)."""
    runs = {}
    for d in [workdir] + [w.strip() for w in str(compare_with or "").split(",") if w.strip()]:
        hist = read_eval_history(d) if isfile(os.path.join(d, "metrics.jsonl")) else []
        if hist:
            name = run_label(d)
            name = name if name not in runs else f"{name} ({os.path.basename(d)})"
            runs[name] = {"step": [h["step"] for h in hist], "kl": [h["kl"] for h in hist],
                          "proxy": [h["proxy"] for h in hist],
                          "gold": [h.get("gold", float("nan")) for h in hist]}
    if not runs:
        return []
    paths = [plots.plot_reward_vs_kl(os.path.join(workdir, "rl_reward_vs_kl.png"), runs),
             plots.plot_pareto(os.path.join(workdir, "rl_pareto.png"), runs)]
    return [p for p in paths if p is not None]


def format_history(history: list[dict]) -> str:
    lines = [f"{'step':>6}{'proxy':>9}{'gold':>9}{'KL':>8}{'len':>7}"]
    for h in history:
        gold = h.get("gold")
        lines.append(f"{h['step']:>6}{h['proxy']:>9.4f}{'' if gold is None else f'{gold:.4f}':>9}"
                     f"{h['kl']:>8.3f}{h['length']:>7.1f}")
    return "\n".join(lines)
