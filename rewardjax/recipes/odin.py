"""ODIN (Chen et al. 2024): a reward model with the length signal split off into its own head.

The model is the BT reward model with a two-output linear head on the shared pooled features:
column 0 is ``r_Q`` (quality), column 1 ``r_L`` (length). Training runs the shared BT step
(:func:`rewardjax.runtime.bt_update`) with ODIN's loss in place of plain BT
(:func:`rewardjax.losses.odin.odin_loss` through ``pair_loss``): BT on ``r_Q + r_L``, plus
``odin.length_weight · (|ρ(r_Q, ℓ)| − ρ(r_L, ℓ))`` and ``odin.ortho_weight · |w_Q · w_L|``. So
checkpoints, resume, packing, the non-finite guard and evaluation are bt's.

Response length ``ℓ`` (``odin.length_unit``): ``tokens`` (default), the response's tokens as the
model sees them (after truncation; a template's closing tokens are counted too, a constant that
does not change a correlation), or ``chars``, the response text's characters.

Only ``r_Q`` is used downstream: the scorer's ``reward`` is ``r_Q`` (``length_reward`` is
``r_L``, ``heads`` both), and ``export`` writes the backbone with the quality head alone, as bt
would (an HF sequence-classification checkpoint where an exact one exists, else native).
"""

from __future__ import annotations

import functools
import logging

import jax
import numpy as np
from flax import nnx

from rewardjax.data import encode_pairs
from rewardjax.heads.scalar import LinearHead, PoolerHead
from rewardjax.losses.odin import odin_loss
from rewardjax.recipes import Recipe, register
from rewardjax.recipes.bt import fit_pairs
from rewardjax.runtime import (
    ModelScorer,
    build_run,
    export_model,
    owns_workdir,
)
from rewardjax.runtime.load import restore_newest

log = logging.getLogger(__name__)

LENGTH_UNITS = ("tokens", "chars")
HEADS = ["quality", "length"]


def response_lengths(data, unit: str = "tokens") -> np.ndarray:
    """``[N, 2]`` float32 lengths of each encoded pair's (chosen, rejected) responses."""
    if unit == "tokens":
        sides = [[len(e.ids) - e.response_start for e in seqs]
                 for seqs in (data.chosen, data.rejected)]
    elif unit == "chars":
        sides = [[len(p.chosen) for p in data.pairs], [len(p.rejected) for p in data.pairs]]
    else:
        raise ValueError(f"odin.length_unit must be one of {LENGTH_UNITS}, got {unit!r}")
    return np.asarray(sides, np.float32).T.reshape(len(data), 2)


def with_lengths(batch: dict, lengths: np.ndarray) -> dict:
    """``batch`` plus ``response_length [B, 2]`` of its pairs (0 on filler rows)."""
    idx = batch["index"]
    out = np.where((idx >= 0)[:, None], lengths[np.maximum(idx, 0)], 0.0).astype(np.float32)
    return dict(batch, response_length=out)


def output_layer(head) -> LinearHead:
    """The linear layer whose two columns are ``w_Q`` and ``w_L`` (BERT's pooler head wraps
    it after its shared tanh layer)."""
    return head.out if isinstance(head, PoolerHead) else head


def make_pair_loss(odin_cfg, loss_cfg):
    """``(model, r_chosen [B, 2], r_rejected [B, 2], batch) -> (loss, metrics)`` for
    :func:`rewardjax.runtime.bt_update`."""
    length_weight = float(odin_cfg.length_weight)
    ortho_weight = float(odin_cfg.ortho_weight)

    def pair_loss(model, rc, rr, batch):
        kernel = output_layer(model.head).kernel[...]  # [D, 2]
        margin = loss_cfg.margin + (batch["margin"] if loss_cfg.use_data_margin else 0.0)
        lengths = batch["response_length"]  # [B, 2]
        return odin_loss(rc, rr, lengths[:, 0], lengths[:, 1], kernel[:, 0], kernel[:, 1],
                         length_weight=length_weight, ortho_weight=ortho_weight,
                         margin=margin, center_coef=loss_cfg.center_coef,
                         weights=batch["weights"])

    return pair_loss


class OdinScorer(ModelScorer):
    """ODIN's reward model: ``reward`` = ``r_Q``, ``length_reward`` = ``r_L``, ``heads [N, 2]``
    (quality, length)."""

    labels = {"heads": HEADS}

    def score_encoded(self, seqs) -> dict[str, np.ndarray]:
        both = np.asarray(super().score_encoded(seqs)["reward"], np.float32).reshape(-1, 2)
        return {"reward": both[:, 0], "length_reward": both[:, 1], "heads": both}

    def with_params(self, params) -> OdinScorer:
        return OdinScorer(self.run, params, self.frozen, batch_size=self.batch_size)


@owns_workdir  # lock, run identity, config.json
def train(config, workdir: str) -> dict:
    """Trains an ODIN reward model (bt's story with ODIN's head, loss and length reports);
    returns the final summary (also in summary.json)."""
    ocfg = config.odin
    summary = fit_pairs(
        config, workdir, num_outputs=2, pair_loss=make_pair_loss(ocfg, config.loss),
        batch_extras=lambda data: functools.partial(
            with_lengths, lengths=response_lengths(data, str(ocfg.length_unit))),
        scorer_of=OdinScorer.of, set_metrics=length_correlations,
        postfix_fn=lambda row: {k: f"{row[k]:.3f}" for k in
                                ("loss", "quality_accuracy", "corr_quality_length") if k in row},
    )
    if jax.process_index() == 0:
        for name, res in summary["eval"].items():
            print(f"{name}: spearman(r_Q, length) {res['spearman_quality_length']:+.3f}  "
                  f"spearman(r_L, length) {res['spearman_length_length']:+.3f}")
    return summary


def length_correlations(scorer: OdinScorer, pairs) -> dict[str, float]:
    """Spearman correlations of ``r_Q`` and ``r_L`` with the response length in tokens over
    every response of ``pairs`` (chosen and rejected)."""
    from scipy.stats import spearmanr

    data = encode_pairs(pairs, scorer.encoder)
    if not data.pairs:
        return {"spearman_quality_length": float("nan"), "spearman_length_length": float("nan")}
    out = scorer.score_encoded(data.chosen + data.rejected)
    lengths = response_lengths(data).T.reshape(-1)  # chosen then rejected, as scored
    return {"spearman_quality_length": float(spearmanr(out["reward"], lengths)[0]),
            "spearman_length_length": float(spearmanr(out["length_reward"], lengths)[0])}


def load_trained_odin(config, workdir: str):
    """``(run, state)``: the two-head model and its newest checkpoint."""
    run = build_run(config, workdir, num_outputs=2)
    run.state = restore_newest(workdir, run.state, "train into --workdir first")
    return run, run.state


def load_scorer(config, workdir: str) -> OdinScorer:
    run, state = load_trained_odin(config, workdir)
    scorer = OdinScorer.of(run, state)
    scorer.step = int(state.step)
    return scorer


def quality_model(config, workdir: str):
    """``(run, state)`` of a plain one-output reward model holding ODIN's backbone and its
    quality head (column 0): what bt's loaders and exporters read."""
    _, odin = load_trained_odin(config, workdir)
    run = build_run(config, workdir)  # the same backbone with a scalar head
    for src, dst in ((odin.params, run.state.params), (odin.frozen, run.state.frozen)):
        nnx.replace_by_pure_dict(dst, _take_quality(jax.device_get(src.to_pure_dict()),
                                                    dst.to_pure_dict()))
    return run, run.state._replace(step=odin.step)


def _take_quality(odin: dict, scalar: dict, path=()) -> dict:
    """ODIN's leaves in the scalar model's structure: head leaves keep their first output."""
    out = {}
    for key, target in scalar.items():
        if key not in odin:
            raise ValueError(f"ODIN checkpoint has no {'/'.join(map(str, path + (key,)))}")
        value = odin[key]
        if isinstance(target, dict):
            out[key] = _take_quality(value, target, path + (key,))
            continue
        value = np.asarray(value)
        if value.shape != tuple(target.shape):
            if path[:1] != ("head",) or value.shape[-1] != 2 or target.shape[-1] != 1:
                raise ValueError(f"{'/'.join(map(str, path + (key,)))}: ODIN shape "
                                 f"{value.shape} vs scalar {tuple(target.shape)}")
            value = value[..., :1]  # r_Q
        out[key] = value
    return out


def export(config, workdir: str, opts: dict) -> dict:
    """The quality head ``r_Q`` with its backbone, exported like a bt model."""
    run, state = quality_model(config, workdir)
    return export_model(run, state, opts, workdir)


register(Recipe("odin", train=train, load_scorer=load_scorer, export=export, reads=("odin",)))
