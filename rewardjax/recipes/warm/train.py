"""The WARM story: M members trained at once, averaged, and compared with their ensemble.

Members start from one shared initialisation and differ by data order, learning rate and
dropout (Ramé et al.); the weight average (WA) is one model, the prediction ensemble (ENS) the
mean of the members' rewards. Under label corruption the table splits the training pairs into
corrupted and clean ones: accuracy on the corrupted pairs *against their flipped labels* measures
memorisation (lower is better).
"""

from __future__ import annotations

import logging
import os
import time

import jax
import numpy as np

from rewardjax.data import (
    corrupt_labels,
    default_buckets,
    encode_pairs,
    load_sets,
    load_train_pairs,
)
from rewardjax.ensembles.predictions import combine
from rewardjax.eval import pair_metrics
from rewardjax.runtime import (
    Checkpointer,
    MemberPlans,
    MetricsWriter,
    ModelScorer,
    Part,
    Trainer,
    average_members,
    build_run,
    collate_members,
    gold_agreement,
    init_members,
    make_member_step,
    member_params,
    owns_workdir,
    place_members,
    to_python,
    write_json,
)

log = logging.getLogger(__name__)


def _floats(text: str, m: int, name: str) -> list[float] | None:
    if not text:
        return None
    vals = [float(v) for v in str(text).split(",") if v.strip()]
    if len(vals) != m:
        raise ValueError(f"members.{name} needs {m} comma-separated values, got {text!r}")
    return vals


def evaluation_subsets(train_pairs, eval_sets, limit: int, seed: int):
    """``{name: pairs}``: corrupted / clean training pairs (capped at ``limit``) and eval sets."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, want in (("train_corrupted", True), ("train_clean", False)):
        sub = [p for p in train_pairs if p.meta.get("corrupted") is want]
        if len(sub) > limit:
            sub = [sub[i] for i in sorted(rng.choice(len(sub), limit, replace=False))]
        if sub:
            out[name] = sub
    out.update({name: pairs for name, pairs, _ in eval_sets})
    return out


def compare_models(run, member_state, encoded, config) -> dict[str, dict[str, dict]]:
    """``{subset: {model: metrics}}`` for every member, WA and the prediction ensembles of the
    members' rewards: ENS (mean), ENS_min (worst case) and ENS_uwo (mean − 0.5·variance).

    ``encoded`` maps subset names to their tokenized pairs (``encode_pairs``)."""
    m = int(jax.tree.leaves(member_state.params)[0].shape[0])
    models = {f"member_{i}": member_params(member_state, i) for i in range(m)}
    models["WA"] = average_members(member_state)
    results, scorer = {}, ModelScorer.of(run, member_state)
    for name, data in encoded.items():
        n = len(data)
        seqs = data.chosen + data.rejected
        scores = {k: scorer.with_params(p).rewards(seqs) for k, p in models.items()}
        member_r = np.stack([scores[f"member_{i}"] for i in range(m)])  # [M, 2n]
        for label, method in (("ENS", "mean"), ("ENS_min", "min"), ("ENS_uwo", "uwo")):
            scores[label] = np.asarray(combine(member_r, method))
        res = {}
        for model, r in scores.items():
            rc, rr = r[:n], r[n:]
            met = pair_metrics(rc, rr, num_bins=config.eval.num_bins)
            met.pop("by_group", None)
            gold = gold_agreement(data.pairs, rc, rr)
            if gold is not None:
                met["gold_accuracy"] = gold
            res[model] = met
        results[name] = res
    return results


def interpolation_curve(run, member_state, encoded, config, points: int) -> dict[str, list]:
    """Mode-connectivity curve: accuracy of ``(1 - t) * member_0 + t * member_{M-1}`` on each
    subset for ``points`` values of t in [0, 1] (t = 0 and 1 are the two members exactly)."""
    from rewardjax.ensembles.weights import interpolation_path

    m = int(jax.tree.leaves(member_state.params)[0].shape[0])
    ts, trees = interpolation_path(member_params(member_state, 0),
                                   member_params(member_state, m - 1), points)
    curve, scorer = {}, ModelScorer.of(run, member_state)
    for name, data in encoded.items():
        n, seqs = len(data), data.chosen + data.rejected
        rows = []
        for t, params in zip(ts, trees):
            r = scorer.with_params(params).rewards(seqs)
            row = {"t": float(t), "accuracy": pair_metrics(r[:n], r[n:])["accuracy"]}
            gold = gold_agreement(data.pairs, r[:n], r[n:])
            if gold is not None:
                row["gold_accuracy"] = gold
            rows.append(row)
        curve[name] = rows
    return curve


def format_warm_table(results: dict, key: str = "accuracy") -> str:
    models = list(next(iter(results.values())).keys())
    width = max(len(s) for s in results) + 2
    lines = [f"{key}:", f"{'subset':<{width}}" + "".join(f"{m:>10}" for m in models)]
    for subset, res in results.items():
        cells = "".join(f"{res[m].get(key, float('nan')):>10.3f}" for m in models)
        lines.append(f"{subset:<{width}}{cells}")
    return "\n".join(lines)


@owns_workdir  # lock, run identity, config.json (eval / score / bon reload the run from it)
def train_warm(config, workdir: str) -> dict:
    """Trains ``members.num`` reward models in one program, then writes the WARM table."""
    t_start = time.time()
    tcfg, mcfg = config.train, config.members
    train_pairs = load_train_pairs(config.data)
    train_pairs = corrupt_labels(train_pairs, mcfg.flip_rate, seed=config.seed)
    eval_sets = load_sets(config.data.eval, config.data)
    run = build_run(config, workdir, train_pairs)
    m = int(mcfg.num)
    if mcfg.probe_init:  # WARM: the shared head starts from a linear probe on frozen features
        from rewardjax.runtime.probe import init_head_by_probe

        run.state = init_head_by_probe(run, run.state, train_pairs, config)
    kwargs = dict(lr_scale=_floats(mcfg.lr_scales, m, "lr_scales"),
                  dropout_rate=_floats(mcfg.dropout_rates, m, "dropout_rates"))
    if mcfg.baklava:  # "<checkpoint dir>:<step>,<step>,...": members from one earlier run
        from rewardjax.recipes.warm.baklava import init_members_from_checkpoints

        directory, _, steps = mcfg.baklava.rpartition(":")
        steps = [int(v) for v in steps.split(",") if v.strip()]
        if len(steps) != m:
            raise ValueError(f"members.baklava names {len(steps)} steps for {m} members")
        state, hypers = init_members_from_checkpoints(run, directory, steps, **kwargs)
    else:
        state, hypers = init_members(run, m, init=mcfg.init, **kwargs)
    data = encode_pairs(train_pairs, run.encoder)
    buckets = tuple(config.data.buckets) or default_buckets(config.model.max_length)
    plans = MemberPlans(data.lengths(), tcfg.batch_size, buckets,
                        seeds=[config.seed * 1000 + i for i in range(m)])
    step_fn = make_member_step(run, dropout=tcfg.dropout, sequential=mcfg.sequential)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), tcfg.checkpoint_every,
                        tcfg.keep_checkpoints)
    writer = MetricsWriter(workdir, tensorboard=tcfg.tensorboard)
    pad_id, left = run.tokenizer.pad_token_id, config.data.padding_side == "left"
    total = int(tcfg.steps)
    trainer = Trainer(
        lambda state, batch: step_fn(state, batch, hypers),
        lambda s: place_members(run, collate_members(data, plans, s, pad_id, left)),
        total_steps=total, parts=[Part(ckpt)], writer=writer, train=tcfg,
        name="train", reduce="last")
    state = trainer.fit(trainer.restore(state, tcfg.get("resume_step")))

    subsets = evaluation_subsets(train_pairs, eval_sets, mcfg.eval_train_max, config.seed)
    # Tokenize each subset once; every member, WA and the curve score the same sequences.
    encoded = {name: encode_pairs(pairs, run.encoder) for name, pairs in subsets.items()}
    results = compare_models(run, state, encoded, config)
    summary = {"members": m, "steps": int(state.step), "flip_rate": mcfg.flip_rate,
               "results": results}
    if mcfg.interpolation_points >= 2:
        summary["interpolation"] = interpolation_curve(run, state, encoded, config,
                                                       mcfg.interpolation_points)
    summary["wall_time_s"] = time.time() - t_start
    writer.write(total, "warm", summary)
    writer.close()
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "warm.json"), to_python(summary))
        print(format_warm_table(results, "accuracy"))
        if any("gold_accuracy" in r for res in results.values() for r in res.values()):
            print(format_warm_table(results, "gold_accuracy"))
        for name, rows in summary.get("interpolation", {}).items():
            pts = "  ".join(f"t={r['t']:.2f}: {r['accuracy']:.3f}" for r in rows)
            print(f"member_0 -> member_{m - 1} on {name}: {pts}")
        print(f"wall {summary['wall_time_s']:.1f}s; details in {workdir}/warm.json")
    return summary
