"""The MORE story: one sub-batch per preference source, λ from the sources' head gradients.

Every step (one jitted program):

1. pooled features ``z`` of all K·b pairs, once (``RewardModel.features``), ``[K, b, 2, D]``;
2. per source t, the gradient ``g_t`` of its Bradley-Terry loss with respect to the reward head
   only, on ``stop_gradient(z)`` (vmapped over K);
3. momentum + l2 normalisation per source and the min-norm λ (:mod:`rewardjax.losses.more`);
4. loss ``Σ_t λ_t ℓ_t`` with λ constant; its gradient reaches the head directly and the
   backbone through the vjp of step 1, so whatever ``train.trainable`` selects is trained.

``more.mode = "multitask"`` runs the same sampler, step and budget with λ fixed at 1/K (plain
mixing), so the two differ only in the weights. λ is written to ``metrics.jsonl`` every step
(split ``"lambda"``), alongside the min-norm λ the gradients asked for in either mode.

Checkpoints: the model's TrainState goes to ``checkpoints/`` exactly as in the BT loop (so the
eval and score modes read a MORE run unchanged); the per-source momentum goes to
``checkpoints_momentum/`` at the same steps, so resume continues the same run.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rewardjax.data import (
    collate_pairs,
    default_buckets,
    encode_pairs,
    load_sets,
    load_train_pairs,
    split_specs,
)
from rewardjax.data.source_batches import SourceBatchPlan
from rewardjax.losses.bradley_terry import bradley_terry_loss
from rewardjax.losses.more import (
    MomentumState,
    gram_matrix,
    min_norm_weights_from_gram,
    source_momentum,
)
from rewardjax.recipes import Recipe, register
from rewardjax.recipes.bt import _param_counts
from rewardjax.runtime import (
    Checkpointer,
    MetricsWriter,
    ModelScorer,
    Part,
    Trainer,
    TrainState,
    build_run,
    checkpoint_scorer,
    export_checkpoint,
    finish_run,
    format_table,
    owns_workdir,
    shardings_of,
)
from rewardjax.runtime.step import guarded_update
from rewardjax.sharding import axis_rules

log = logging.getLogger(__name__)

MODES = ("more", "multitask")
PER_SOURCE = ("lambda", "minnorm_lambda", "source_loss", "source_accuracy")


class MoreState(NamedTuple):
    train: TrainState
    momentum: MomentumState  # per-source head-gradient momentum, leaves [K, ...]


def _head_params(graphdef, params, frozen):
    """``(head_graphdef, head Params, rest of the head)`` of the merged model."""
    model = nnx.merge(graphdef, params, frozen)
    return nnx.split(model.head, nnx.Param, ...)


def init_momentum(run, num_sources: int, alpha: float) -> MomentumState:
    """Zero momentum shaped like the reward head's Params with a leading ``[K]``, replicated."""
    head = jax.eval_shape(lambda p, f: _head_params(run.graphdef, p, f)[1],
                          run.state.params, run.state.frozen)
    stacked = jax.tree.map(lambda x: jnp.zeros((num_sources,) + x.shape, jnp.float32), head)
    replicated = jax.sharding.NamedSharding(run.mesh, jax.sharding.PartitionSpec())
    return jax.device_put(source_momentum(alpha).init(stacked), replicated)


def make_more_step(graphdef, tx, loss_cfg, more_cfg, num_sources: int, sub_batch: int, *,
                   mesh, rules, state_shardings, dropout: bool = True, trace_guard=None):
    """Returns ``step(state: MoreState, batch) -> (state, metrics)``, jitted with donation.

    ``batch`` rows are source-major (:class:`~rewardjax.data.source_batches.SourceBatchPlan`).
    Per-source metrics (``lambda``, ``minnorm_lambda``, ``source_loss``, ``source_accuracy``)
    are ``[K]``; the rest are scalars. A non-finite loss, gradient or λ leaves the whole state
    (momentum included) unchanged and reports ``finite = 0``.
    """
    mode = str(more_cfg.mode)
    if mode not in MODES:
        raise ValueError(f"more.mode must be one of {MODES}, got {mode!r}")
    k, b = int(num_sources), int(sub_batch)
    normalize = str(more_cfg.get("normalize", "l2"))
    if normalize not in ("l2", "none"):
        raise ValueError(f"more.normalize must be 'l2' or 'none', got {normalize!r}")
    momentum = source_momentum(float(more_cfg.alpha), normalize=normalize == "l2")
    solver_kw = dict(clamp=(float(more_cfg.clamp_low), float(more_cfg.clamp_high)),
                     max_iters=int(more_cfg.fw_max_iters), tol=float(more_cfg.fw_tol),
                     away_steps=bool(more_cfg.fw_away_steps))

    def bt(rc, rr, w, m):
        return bradley_terry_loss(rc, rr, margin=m, center_coef=loss_cfg.center_coef, weights=w)

    def step(state: MoreState, batch):
        ts = state.train
        with axis_rules(mesh, rules):
            rng = jax.random.fold_in(ts.rng, ts.step)
            n, two, length = batch["input_ids"].shape  # n = K * b pairs
            w = batch["weights"].reshape(k, b)
            margin = loss_cfg.margin + (batch["margin"] if loss_cfg.use_data_margin else 0.0)
            margin = jnp.broadcast_to(jnp.asarray(margin, jnp.float32), (n,)).reshape(k, b)

            def features(params):
                model = nnx.merge(graphdef, params, ts.frozen)
                flat = {key: batch[key].reshape(n * two, length)
                        for key in ("input_ids", "attention_mask", "token_type_ids")}
                z = model.features(flat["input_ids"], flat["attention_mask"],
                                   token_type_ids=flat["token_type_ids"],
                                   dropout_rng=rng if dropout else None)  # [2n, D]
                return z.reshape(k, b, two, z.shape[-1])  # [K, b, 2, D]

            # One backbone forward; its vjp carries the weighted loss back into the backbone.
            z, features_vjp = jax.vjp(features, ts.params)

            head_def, head_p, head_rest = _head_params(graphdef, ts.params, ts.frozen)

            def source_loss(hp, z_t, w_t, m_t):  # z_t [b, 2, D]
                r = nnx.merge(head_def, hp, head_rest)(z_t)  # [b, 2]
                return bt(r[:, 0], r[:, 1], w_t, m_t)[0]

            grads_k = jax.vmap(jax.grad(source_loss), in_axes=(None, 0, 0, 0))(
                head_p, jax.lax.stop_gradient(z), w, margin)  # head Params, leaves [K, ...]
            unit, new_momentum = momentum.update(grads_k, state.momentum)
            gram = gram_matrix(unit)  # [K, K]
            minnorm = min_norm_weights_from_gram(gram, **solver_kw)  # [K]
            lam = minnorm if mode == "more" else jnp.full((k,), 1.0 / k, jnp.float32)
            lam = jax.lax.stop_gradient(lam)

            def total_loss(params, z):
                r = nnx.merge(graphdef, params, ts.frozen).head(z)  # [K, b, 2]
                losses, mets = jax.vmap(bt)(r[..., 0], r[..., 1], w, margin)  # [K]
                return jnp.sum(lam * losses), (losses, mets)

            (loss, (losses, mets)), (g_head, g_z) = jax.value_and_grad(
                total_loss, argnums=(0, 1), has_aux=True)(ts.params, z)
            (g_backbone,) = features_vjp(g_z)
            grads = jax.tree.map(jnp.add, g_head, g_backbone)
            grad_norm = optax.global_norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.all(jnp.isfinite(lam))
            params, opt_state = guarded_update(tx, grads, ts.opt_state, ts.params, finite)
            new_state = MoreState(
                train=TrainState(step=ts.step + 1, params=params, frozen=ts.frozen,
                                 opt_state=opt_state, rng=ts.rng),
                momentum=jax.tree.map(lambda a, c: jnp.where(finite, a, c), new_momentum,
                                      state.momentum),
            )
            off = ~jnp.eye(k, dtype=bool)
            norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 1e-30))  # [K]
            cos = gram / (norms[:, None] * norms[None, :])  # [K, K]
            metrics = {
                "loss": loss,
                "mean_source_loss": jnp.mean(losses),
                "accuracy": jnp.mean(mets["accuracy"]),
                "reward_margin": jnp.mean(mets["reward_margin"]),
                # Mean cosine between the sources' (momentum) directions: < 0 means conflict.
                "direction_cos": jnp.sum(jnp.where(off, cos, 0.0)) / max(k * (k - 1), 1),
                "lambda": lam,
                "minnorm_lambda": minnorm,
                "source_loss": losses,
                "source_accuracy": mets["accuracy"],
                "grad_norm": grad_norm,
                "finite": finite.astype(jnp.float32),
                "real_tokens": jnp.sum(batch["attention_mask"] * batch["weights"][:, None, None]),
            }
            return new_state, metrics

    if trace_guard is not None:  # e.g. chex.assert_max_traces(n=1) in tests
        step = trace_guard(step)
    return jax.jit(step, in_shardings=(state_shardings, None),
                   out_shardings=(state_shardings, None), donate_argnums=(0,))


def _named(metrics: dict, sources: list[str]) -> dict[str, float]:
    """``{"lambda": [K]}`` -> ``{"lambda/<source>": float}``; scalars pass through."""
    out = {}
    for key, v in metrics.items():
        if key in PER_SOURCE:
            out.update({f"{key}/{s}": float(x) for s, x in zip(sources, np.asarray(v))})
        else:
            out[key] = float(v)
    return out


def _restore(ckpt: Checkpointer, mckpt: Checkpointer, state: MoreState,
             resume_step: int | None = None) -> MoreState | None:
    train = ckpt.resume(state.train, resume_step)
    if train is None:
        return None
    step = int(train.step)
    mckpt.discard_after(step)  # momentum saved after the restored step belongs to no state
    if step in mckpt.manager.all_steps():
        momentum = mckpt.restore(state.momentum, step)
    else:  # killed between the two saves: only this momentum (≈ one step's gradient) is lost
        log.warning("no momentum checkpoint at step %d; restarting the momentum from zero", step)
        momentum = state.momentum
    return MoreState(train, momentum)


@owns_workdir  # lock, run identity, config.json
def train_more(config, workdir: str) -> dict:
    """Trains a reward model with MORE (or plain multi-task mixing); returns the summary."""
    t_start = time.time()
    tcfg, mcfg = config.train, config.more
    train_pairs = load_train_pairs(config.data)
    eval_sets = load_sets(config.data.eval, config.data)
    run = build_run(config, workdir, train_pairs)

    data = encode_pairs(train_pairs, run.encoder)
    buckets = tuple(config.data.buckets) or default_buckets(config.model.max_length)
    order = split_specs(mcfg.sources) or None
    sources = order or sorted({p.source for p in data.pairs})
    from rewardjax.config import per_source_batch  # train.batch_size: pairs over all sources

    sub_batch = per_source_batch(tcfg.batch_size, mcfg.sub_batch, len(sources))
    plan = SourceBatchPlan([p.source for p in data.pairs], data.lengths(), sub_batch, buckets,
                           seed=config.seed, order=order)
    log.info("MORE (%s): %d sources x %d pairs a step: %s", mcfg.mode, plan.num_sources,
             sub_batch, ", ".join(f"{s} ({len(m)})" for s, m in zip(plan.sources, plan.members)))
    pad_id = run.tokenizer.pad_token_id
    left = config.data.padding_side == "left"

    state = MoreState(run.state, init_momentum(run, plan.num_sources, mcfg.alpha))
    train_step = make_more_step(run.graphdef, run.tx, config.loss, mcfg, plan.num_sources,
                                sub_batch, mesh=run.mesh, rules=run.rules,
                                state_shardings=shardings_of(state), dropout=tcfg.dropout)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), tcfg.checkpoint_every,
                        tcfg.keep_checkpoints)
    mckpt = Checkpointer(os.path.join(workdir, "checkpoints_momentum"), tcfg.checkpoint_every,
                         tcfg.keep_checkpoints)
    restored = _restore(ckpt, mckpt, state, tcfg.get("resume_step"))
    if restored is not None:
        state = restored
        log.info("resumed from step %d", int(state.train.step))
    writer = MetricsWriter(workdir, tensorboard=tcfg.tensorboard)
    total = int(tcfg.steps) * int(tcfg.grad_accum)
    lam_sum, lam_n = np.zeros(plan.num_sources), 0

    def batch_at(step):
        length, idx = plan.at_step(step)
        return run.place(collate_pairs(data, idx, length, plan.batch_size, pad_id, left))

    def record_lambda(done, state, metrics):  # every step: λ is MORE's story
        nonlocal lam_sum, lam_n
        lam = np.asarray(metrics["lambda"], np.float64)
        lam_sum, lam_n = lam_sum + lam, lam_n + 1
        writer.write(done, "lambda", dict(zip(plan.sources, lam.tolist())))

    trainer = Trainer(
        train_step, batch_at, total_steps=total, writer=writer, train=tcfg,
        name="train", parts=[Part(mckpt, of=lambda s: s.momentum, main=False),
                             Part(ckpt, of=lambda s: s.train)],
        row_fn=lambda metrics: _named(metrics, plan.sources),
        postfix_fn=lambda row: {"loss": f"{row['loss']:.3f}", "acc": f"{row['accuracy']:.3f}",
                                "lam": ",".join(f"{row[f'lambda/{s}']:.2f}"
                                                for s in plan.sources)},
        eval_fn=(lambda state: ModelScorer.of(run, state.train).evaluate_sets(
            eval_sets, num_bins=config.eval.num_bins)) if eval_sets else None,
        nonfinite_message=lambda step, m: (
            f"non-finite loss, gradient or λ at step {step} (loss={m['loss']}, "
            f"grad_norm={m['grad_norm']}, lambda={m['lambda']}); the update was skipped and "
            "the run stopped."),
        step_of=lambda state: int(state.train.step),
    )
    trainer.add_hook(record_lambda, every=1)
    state = trainer.fit(state)

    results = ModelScorer.of(run, state.train).evaluate_sets(
        eval_sets, num_bins=config.eval.num_bins) if eval_sets else {}
    summary: dict[str, Any] = {
        "mode": str(mcfg.mode),
        "steps": int(state.train.step),
        "wall_time_s": time.time() - t_start,
        "train_pairs": len(data),
        "sources": {s: len(m) for s, m in zip(plan.sources, plan.members)},
        "sub_batch": sub_batch,
        # Over the steps this process ran (all of them unless it resumed).
        "lambda_mean": dict(zip(plan.sources, (lam_sum / max(lam_n, 1)).tolist())),
        "truncation": data.stats.as_dict(),
        "train_real_tokens_per_s": trainer.tokens / max(trainer.train_time, 1e-9),
        "eval": results,
        "params": _param_counts(state.train),
    }

    def table(s):
        lam = ", ".join(f"{k} {v:.3f}" for k, v in s["lambda_mean"].items())
        return format_table(s) + "\nmean λ: " + lam

    return finish_run(writer, total, workdir, summary, table)


register(Recipe("more", train=train_more, load_scorer=checkpoint_scorer,
                export=export_checkpoint,
                reads=("more", "!data.packing: one padded sub-batch per source, never packed",
                       "!data.shared_prefix: one padded sub-batch per source, never packed",
                       "!data.pack_segments: MORE's batches are never packed")))
