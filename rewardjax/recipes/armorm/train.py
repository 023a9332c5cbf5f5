"""The ArmoRM story (Wang et al.; DESIGN §3): frozen features -> per-objective ridge ->
verbosity debiasing -> gating MLP trained with Bradley-Terry -> comparison with fixed weights.

1. Features (:mod:`rewardjax.runtime.features`): the response's and the prompt's feature from the
   frozen backbone, computed once per (backbone, texts) and cached on disk
   (:mod:`rewardjax.data.features`).
2. Stage 1: one ridge regression per objective (the attribute ratings in ``Pair.meta``, NaN =
   missing, masked), α per objective chosen on a validation split of the training pairs.
3. Debiasing: ``r'_i = r_i - λ_i r_verbose``, λ_i the smallest grid value making the Spearman
   correlation with ``r_verbose`` at most ``armorm.debias_threshold`` on the reference set.
4. Stage 2: ``R = β g(x)ᵀ r'`` trained with the BT loss on the preference labels, backbone and
   regression frozen, on the *debiased* ``r'`` (DESIGN decision): ``train.steps`` updates of
   ``train.batch_size`` pairs (the gate is the recipe's trained model), the optimizer of
   ``armorm.stage2``. Ablations with the same budget: fixed prompt-independent simplex weights,
   and the gate on raw ``r``.
5. Table: accuracy / gold accuracy per model and eval set, Spearman with verbosity before and
   after debiasing per objective; the heads are saved with the debiasing matrix.

The features, objective labels and validation split are prepared in
:mod:`rewardjax.recipes.armorm.data`.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from rewardjax.data import load_sets, load_train_pairs
from rewardjax.eval import pair_metrics
from rewardjax.heads import regression as ridge
from rewardjax.heads.gating import ArmoRMHead, build_gate, gated_score
from rewardjax.losses.bradley_terry import bradley_terry_loss
from rewardjax.recipes.armorm.data import (
    compute_features,
    drop_labels,
    objective_labels,
    objective_names,
    split_validation,
)
from rewardjax.runtime import (
    MetricsWriter,
    Trainer,
    gold_agreement,
    make_optimizer,
    owns_workdir,
    staged_dir,
    to_python,
    write_json,
)
from rewardjax.runtime.workdir import write_npz

# ----------------------------------------------------------------------------- stage 2


def gate_config(config):
    """The gate's training settings: ``train.steps`` updates of ``train.batch_size`` pairs (the
    shared keys: the gate is the model this recipe trains) with the optimizer, logging and early
    stopping of ``armorm.stage2``."""
    cfg = config.armorm.stage2.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.steps, cfg.batch_size = int(config.train.steps), int(config.train.batch_size)
    return cfg


def train_gate(module, x, r_chosen, r_rejected, cfg, seed: int, writer=None, name: str = "",
               val=None):
    """Bradley-Terry training of a gate (or fixed weights) on frozen objective scores.

    Args:
      module: a :class:`GatingMLP` / :class:`FixedWeights` (left unchanged).
      x: ``[N, D]`` prompt features; ``r_chosen`` / ``r_rejected``: ``[N, K]`` objective scores.
      cfg: ``steps``, ``batch_size``, ``log_every``, ``select_every`` and the optimizer fields
        of ``train`` (``make_optimizer``): :func:`gate_config`.
      seed: data order (epoch permutations are ``default_rng((seed, epoch))``).
      val: optional ``(x, r_chosen, r_rejected)`` of validation pairs. With
        ``cfg.select_every > 0`` the parameters with the lowest validation BT loss among those
        seen every ``select_every`` steps are returned (early stopping).

    Returns:
      ``(trained module, metrics)``: the last logged training metrics, plus ``best_step`` and
      ``val_loss`` / ``val_accuracy`` of the returned parameters when selecting on ``val``.
    """
    graphdef, params = nnx.split(module, nnx.Param)
    tx = make_optimizer(cfg, int(cfg.steps))
    opt_state = tx.init(params)
    x = jnp.asarray(x, jnp.float32)
    rc, rr = jnp.asarray(r_chosen, jnp.float32), jnp.asarray(r_rejected, jnp.float32)

    def loss_on(p, xs, cs, rs, w=None):
        m = nnx.merge(graphdef, p)
        g = m.weights(xs)  # [B, K], shared by both responses of a pair
        beta = m.beta[...]
        return bradley_terry_loss(gated_score(g, beta, cs)[0], gated_score(g, beta, rs)[0],
                                  weights=w)

    n, bs = x.shape[0], int(cfg.batch_size)
    per_epoch = -(-n // bs)

    @jax.jit
    def update(params, opt_state, idx, w):
        (loss, metrics), grads = jax.value_and_grad(
            lambda p: loss_on(p, x[idx], rc[idx], rr[idx], w), has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, dict(metrics, beta=params["beta"][...],
                                       finite=jnp.isfinite(loss))

    def batch_at(s):
        """Epoch permutations ``default_rng((seed, epoch))``; the last batch of an epoch is
        padded with weight-0 rows."""
        e, i = divmod(s, per_epoch)
        idx = np.random.default_rng((seed, e)).permutation(n)[i * bs:(i + 1) * bs]
        w = np.zeros((bs,), np.float32)
        w[:len(idx)] = 1.0
        return np.pad(idx, (0, bs - len(idx))), w

    def step_fn(state, batch):
        params, opt_state, s = state
        params, opt_state, m = update(params, opt_state, *batch)
        return (params, opt_state, s + 1), m

    every = int(cfg.get("select_every", 0)) if val is not None else 0
    best, best_params = {"val_loss": np.inf}, params
    trainer = Trainer(
        step_fn, batch_at, total_steps=int(cfg.steps), parts=[], writer=writer,
        train=ml_collections.ConfigDict({"progress": False, "log_every": int(cfg.log_every),
                                         "lr": cfg.lr}),
        name=f"stage2/{name}", row_fn=lambda m: {k: float(m[k]) for k in
                                                 ("loss", "accuracy", "beta")},
        last_keys=("beta",), step_of=lambda state: state[2],
        nonfinite_message=lambda s, m: f"stage 2 ({name}): non-finite loss at step {s}; stopped.",
        nonfinite_kw={"lr_key": "armorm.fixed_lr" if name.startswith("fixed")
                      else "armorm.stage2.lr"})
    if every:
        val = tuple(jnp.asarray(v, jnp.float32) for v in val)
        val_metrics = jax.jit(lambda p: loss_on(p, *val)[1])

        def select(done, state, _):  # early stopping on the validation BT loss
            nonlocal best, best_params
            vm = jax.device_get(val_metrics(state[0]))
            if float(vm["loss"]) < best["val_loss"]:
                best = {"best_step": done, "val_loss": float(vm["loss"]),
                        "val_accuracy": float(vm["accuracy"])}
                best_params = state[0]
            if writer is not None:
                writer.write(done, f"stage2/{name}/val", {k: float(vm[k])
                                                          for k in ("loss", "accuracy")})

        trainer.add_hook(select, every=every, at_end=True)
    params, _, _ = trainer.fit((params, opt_state, 0))
    last = dict(trainer.last_row)
    if every:
        return nnx.merge(graphdef, best_params), dict(last, **best)
    return nnx.merge(graphdef, params), last


# ----------------------------------------------------------------------------- the story


@owns_workdir  # lock, run identity, config.json
def train_armorm(config, workdir: str) -> dict:
    """Trains ArmoRM on frozen features; returns the summary (also ``summary.json``)."""
    t_start = time.time()
    acfg = config.armorm
    train_pairs = load_train_pairs(config.data)
    eval_sets = {name: pairs for name, pairs, _ in load_sets(config.data.eval, config.data)}

    # 1. Features (cached); the validation split is drawn after, so it can change freely.
    feats = compute_features(config, workdir, {"train": train_pairs, **eval_sets}, train_pairs)
    fit_idx, val_idx = split_validation(len(train_pairs), acfg.val_fraction, config.data.split_seed)
    ftr = feats.pop("train")
    sets = {"fit": ({k: v[fit_idx] for k, v in ftr.items()}, [train_pairs[i] for i in fit_idx]),
            "val": ({k: v[val_idx] for k, v in ftr.items()}, [train_pairs[i] for i in val_idx])}
    sets.update({name: (feats[name], pairs) for name, pairs in eval_sets.items()})

    # 2. Stage 1: ridge per objective, α on the validation split, missing labels masked.
    names = objective_names(train_pairs)
    if acfg.verbosity_objective not in names:
        raise ValueError(f"armorm.verbosity_objective={acfg.verbosity_objective!r} is not "
                         f"among the training data's objectives {names}")
    v_idx = names.index(acfg.verbosity_objective)
    labels = {}
    for name, (_, pairs) in sets.items():
        yc, yr = objective_labels(pairs, names)
        labels[name] = np.concatenate([yc, yr])  # rows: chosen then rejected
    for i, name in enumerate(("fit", "val")):  # only the training labels go missing
        labels[name] = drop_labels(labels[name], acfg.label_missing_rate, config.seed + i)
    rows = {name: np.concatenate([f["chosen"], f["rejected"]]) for name, (f, _) in sets.items()}
    alphas = [float(a) for a in acfg.alphas.split(",")] if acfg.alphas else ridge.DEFAULT_ALPHAS
    fit = ridge.fit_objectives(rows["fit"], labels["fit"], rows["val"], labels["val"], alphas)
    r = {name: ridge.predict(fit, z) for name, z in rows.items()}  # [2N, K] each

    # 3. Verbosity debiasing on the reference set.
    if acfg.reference not in r:
        raise ValueError(f"armorm.reference={acfg.reference!r}; choose from {sorted(r)}")
    grid = np.round(np.arange(0.0, acfg.debias_max + 1e-9, acfg.debias_step), 6)
    deb = ridge.fit_debias(r[acfg.reference], v_idx, acfg.debias_threshold, grid)
    rp = {name: ridge.apply_debias(v, deb.matrix) for name, v in r.items()}
    objectives_table = _objectives_table(names, v_idx, fit, deb, r, rp, labels)

    # 4. Stage 2 (and ablations) on the fit pairs, same budget for every model.
    writer = MetricsWriter(workdir, tensorboard=config.train.tensorboard)
    d, k = rows["fit"].shape[1], len(names)
    hp = dict(temperature=float(acfg.temperature), beta_init=float(acfg.beta_init))
    gate_hp = dict(hp, hidden=int(acfg.gate_hidden), depth=int(acfg.gate_depth),
                   seed=int(config.seed))
    plan = {"gate": ("gate", gate_hp, True)}
    if acfg.fixed_ablation:
        plan["fixed"] = ("fixed", hp, True)
    if acfg.raw_ablation:
        plan["gate_raw"] = ("gate", gate_hp, False)
    nf = len(fit_idx)
    heads, stage2 = {}, {}
    for label, (kind, kw, debiased) in plan.items():
        scores = rp["fit"] if debiased else r["fit"]
        cfg = gate_config(config)
        if kind == "fixed" and acfg.fixed_lr:
            cfg.lr = float(acfg.fixed_lr)
        t = time.time()
        vs, nv = (rp if debiased else r)["val"], len(val_idx)
        module, last = train_gate(build_gate(kind, d, k, **kw), sets["fit"][0]["prompt"],
                                  scores[:nf], scores[nf:], cfg, config.seed, writer, label,
                                  val=(sets["val"][0]["prompt"], vs[:nv], vs[nv:]))
        stage2[label] = dict(last, seconds=time.time() - t)
        heads[label] = ArmoRMHead(names, fit.weights, fit.bias,
                                  deb.matrix if debiased else np.eye(k), v_idx, module, kind,
                                  dict(kw))

    # 5. Evaluation: every head (plus uniform weights) on validation and eval sets.
    results, weights_by_cat, paired = {}, {}, {}
    for name, (f, pairs) in sets.items():
        if name == "fit":
            continue
        n = len(pairs)
        res = {"uniform": _pair_report(pairs, rp[name][:n].mean(1), rp[name][n:].mean(1),
                                       config)}
        rewards = {}
        for label, head in heads.items():
            sc = head.score(np.concatenate([f["prompt"], f["prompt"]]), rows[name])
            rewards[label] = sc["reward"]
            res[label] = _pair_report(pairs, sc["reward"][:n], sc["reward"][n:], config)
            if label == "gate":
                weights_by_cat[name] = _weights_by_category(pairs, sc["weights"][:n], names)
                _save_contributions(workdir, name, sc, n, names)
        if "fixed" in rewards:
            paired[name] = _discordant(pairs, rewards["gate"], rewards["fixed"])
        results[name] = res
        for label, met in res.items():
            # ":" is not a legal TensorBoard name ("sim:test_id").
            writer.write(int(config.train.steps), f"eval/{name.replace(':', '_')}/{label}", met)

    for label, head in heads.items():
        if jax.process_index() == 0:
            with staged_dir(os.path.join(workdir, "armorm", label)) as local:  # a local writer
                head.save(local, {
                    "alphas": fit.alphas.tolist(), "lambdas": deb.lambdas.tolist(),
                    "features": {"path": config.model.path, "overrides": config.model.overrides,
                                 "max_length": int(config.model.max_length)}})
    summary = {
        "wall_time_s": time.time() - t_start, "objectives": names,
        "pairs": {"fit": len(fit_idx), "val": len(val_idx),
                  **{n: len(p) for n, p in eval_sets.items()}},
        "stage2": stage2, "eval": results, "objectives_table": objectives_table,
        "gate_weights_by_category": weights_by_cat, "gate_vs_fixed": paired,
    }
    writer.write(int(config.train.steps), "summary", {"wall_time_s": summary["wall_time_s"]})
    writer.close()
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "summary.json"), to_python(summary))
        print(format_armorm(summary))
    return summary


# ----------------------------------------------------------------------------- reports


def _pair_report(pairs, rc, rr, config) -> dict:
    met = pair_metrics(rc, rr, num_bins=config.eval.num_bins)
    met.pop("by_group", None)
    gold = gold_agreement(pairs, rc, rr)
    if gold is not None:
        met["gold_accuracy"] = gold
    return met


def _discordant(pairs, r_a, r_b) -> dict:
    """Paired comparison of two models on the same pairs (McNemar's counts): how many pairs
    only the first / only the second ranks right, against the labels and against gold."""
    n = len(pairs)
    sa, sb = np.sign(r_a[:n] - r_a[n:]), np.sign(r_b[:n] - r_b[n:])  # ties are never right
    truth = {"label": np.ones(n)}
    gold = [(p.meta.get("gold_chosen"), p.meta.get("gold_rejected")) for p in pairs]
    if n and all(g is not None and b is not None for g, b in gold):
        truth["gold"] = np.sign(np.subtract(*np.asarray(gold, np.float64).T))
    out = {}
    for key, t in truth.items():
        keep = t != 0  # gold ties carry no verdict
        ok_a, ok_b = (sa == t)[keep], (sb == t)[keep]
        out[key] = {"only_first": int(np.sum(ok_a & ~ok_b)),
                    "only_second": int(np.sum(~ok_a & ok_b))}
    return out


def _masked_spearman(a, b) -> float:
    m = np.isfinite(a) & np.isfinite(b)
    return ridge.spearman(a[m], b[m]) if m.sum() > 2 else float("nan")


def _objectives_table(names, v_idx, fit, deb, r, rp, labels) -> dict:
    """Per objective: α, λ, Spearman with r_verbose (reference set, and every eval set) before
    and after debiasing, Spearman with the true verbosity rating, and with its own label."""
    out = {}
    for j, a in enumerate(names):
        row = {"alpha": float(fit.alphas[j]), "lambda": float(deb.lambdas[j]),
               "ref_before": float(deb.corr_before[j]), "ref_after": float(deb.corr_after[j]),
               "reached": bool(deb.reached[j])}
        for name in r:
            if name == "fit":
                continue
            true_v = labels[name][:, v_idx]
            row[name] = {
                "before": ridge.spearman(r[name][:, j], r[name][:, v_idx]),
                "after": ridge.spearman(rp[name][:, j], r[name][:, v_idx]),
                "true_verbosity_before": _masked_spearman(r[name][:, j], true_v),
                "true_verbosity_after": _masked_spearman(rp[name][:, j], true_v),
                "label": _masked_spearman(r[name][:, j], labels[name][:, j]),
            }
        out[a] = row
    return out


def _weights_by_category(pairs, g, names) -> dict:
    cats = np.asarray([p.category or "-" for p in pairs])
    return {c: dict(zip(names, np.round(g[cats == c].mean(0), 4).tolist()))
            for c in sorted(set(cats.tolist()))}


def _save_contributions(workdir, name, sc, n, names) -> None:
    """Per-response interpretability output for an eval set (``contributions_<name>.npz``)."""
    if jax.process_index() != 0:
        return
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    write_npz(os.path.join(workdir, f"contributions_{safe}.npz"), objectives=np.asarray(names),
              reward_chosen=sc["reward"][:n], reward_rejected=sc["reward"][n:],
              contributions_chosen=sc["contributions"][:n],
              contributions_rejected=sc["contributions"][n:], weights=sc["weights"][:n])


def format_armorm(summary: dict) -> str:
    """The two tables: models x eval sets, and objectives' Spearman with verbosity."""
    lines = [f"ArmoRM  wall {summary['wall_time_s']:.1f}s  pairs {summary['pairs']}",
             f"{'set':<14}{'model':<10}{'acc':>8}{'gold':>8}{'ece':>8}"]
    for name, res in summary["eval"].items():
        for label, m in res.items():
            gold = m.get("gold_accuracy")
            lines.append(f"{name[:13]:<14}{label:<10}{m['accuracy']:>8.3f}"
                         f"{'' if gold is None else f'{gold:.3f}':>8}{m['ece']:>8.3f}")
    for name, c in summary.get("gate_vs_fixed", {}).items():
        lines.append(f"{name}: pairs only the gate / only fixed ranks right: " + ", ".join(
            f"{k} {v['only_first']}/{v['only_second']}" for k, v in c.items()))
    sets = [s for s in summary["eval"] if s != "val"]
    head = f"{'objective':<13}{'alpha':>9}{'lambda':>7}{'ref b/a':>14}"
    head += "".join(f"{s[:18] + ' b/a':>22}" for s in sets)
    lines += ["Spearman(objective, r_verbose) before/after debiasing", head]
    for a, row in summary["objectives_table"].items():
        line = (f"{a[:12]:<13}{row['alpha']:>9.2g}{row['lambda']:>7.2f}"
                f"{row['ref_before']:>7.2f}/{row['ref_after']:<6.2f}")
        line += "".join(f"{row[s]['before']:>15.2f}/{row[s]['after']:<6.2f}" for s in sets)
        lines.append(line)
    return "\n".join(lines)
