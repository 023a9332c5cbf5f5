"""A trained PRM as a :class:`~rewardjax.runtime.Scorer`: solution rewards and per-step ones.

``score_encoded`` returns ``reward [N]`` (the solution score: ``prm.aggregate`` of the step
probabilities: min, last or product) and ``steps [N, prm.max_steps]``: P(good) of every step,
NaN after a solution's last step (solutions differ in length; one fixed width keeps the serve
mode's batches one shape). A plain ``(prompt, response)`` is split into steps at
``prm.step_separator``; a sequence encoded without step positions (the server's warm-up) is read
as one step at its last token. Pair sets (``evaluate_sets``) therefore work as for any reward
model, and :meth:`PRMScorer.evaluate_steps` reports the process metrics
(:mod:`rewardjax.eval.process`) on step-labelled sets.
"""

from __future__ import annotations

import numpy as np

from rewardjax.data import (
    BatchPlan,
    EncodedPairs,
    EncodedSteps,
    StepEncoder,
    collate_steps,
    default_buckets,
    encode_step_records,
)
from rewardjax.data.tokenize import TruncationStats
from rewardjax.eval.process import aggregate, pad_steps, process_report
from rewardjax.recipes.prm.step import make_prm_score_fn
from rewardjax.runtime import Scorer


def step_encoder(run) -> StepEncoder:
    p = run.config.prm
    return StepEncoder(run.encoder, str(p.step_separator), int(p.max_steps))


class PRMScorer(Scorer):
    """A run (graphdef, mesh, tokenizer) with PRM parameters."""

    def __init__(self, run, params, frozen, *, batch_size: int | None = None):
        c = run.config
        self.run, self.params, self.frozen = run, params, frozen
        self.encoder = step_encoder(run)
        self.how = str(c.prm.aggregate)
        aggregate(np.zeros((1, 1)), self.how)  # an unknown aggregate fails here, not mid-run
        self.batch_size = int(batch_size or c.eval.batch_size)
        self.buckets = tuple(c.data.buckets) or default_buckets(c.model.max_length)
        self.left = c.data.padding_side == "left"

    @classmethod
    def of(cls, run, state, **kw) -> PRMScorer:
        return cls(run, state.params, state.frozen, **kw)

    def step_probs(self, seqs) -> np.ndarray:
        """P(good) ``[N, max_steps]``, NaN where a solution has no step."""
        run, s_max = self.run, self.encoder.max_steps
        fn = run.compiled("prm_score", lambda: make_prm_score_fn(run.graphdef, mesh=run.mesh,
                                                                rules=run.rules))
        seqs = [e if getattr(e, "step_ends", None) is not None and len(e.step_ends)
                else _one_step(e) for e in seqs]
        out = np.full((len(seqs), s_max), np.nan, np.float32)
        if not seqs:
            return out
        plan = BatchPlan([len(e.ids) for e in seqs], self.batch_size, self.buckets,
                         shuffle=False)
        pad = run.tokenizer.pad_token_id
        for length, idx in plan.epoch(0):
            batch = collate_steps(seqs, idx, length, self.batch_size, s_max, pad, self.left)
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids",
                                            "step_pos")}
            p = np.asarray(fn(self.params, self.frozen, inputs))  # [B, S]
            for row, i in enumerate(idx):
                k = len(seqs[i].step_ends)
                out[i, :k] = p[row, :k]
        return out

    def score_encoded(self, seqs) -> dict[str, np.ndarray]:
        probs = self.step_probs(list(seqs))
        return {"reward": aggregate(probs, self.how), "steps": probs}

    def score_pairs(self, pairs_or_encoded):
        """As :meth:`Scorer.score_pairs`, each response split into steps; the truncation
        counts map onto the pair report's (``response_truncated``: solutions that lost steps)."""
        if isinstance(pairs_or_encoded, EncodedPairs):
            return super().score_pairs(pairs_or_encoded)
        before = self.encoder.stats.as_dict()
        chosen, rejected, kept = [], [], []
        for pair in pairs_or_encoded:
            c = self.encoder.encode(pair.prompt, pair.chosen)
            r = self.encoder.encode(pair.prompt, pair.rejected)
            if c is not None and r is not None:
                chosen.append(c)
                rejected.append(r)
                kept.append(pair)
        d = {k: v - before[k] for k, v in self.encoder.stats.as_dict().items()}
        stats = TruncationStats(sequences=d["solutions"], prompt_truncated=d["prompt_truncated"],
                                response_truncated=d["solutions_truncated"], dropped=d["dropped"],
                                tokens_removed=d["tokens_removed"])
        return super().score_pairs(EncodedPairs(chosen, rejected, kept, stats))

    def padding(self) -> tuple[int, tuple[int, ...]]:
        return self.batch_size, tuple(self.buckets)

    def set_rows(self, rows: int) -> None:
        self.batch_size = int(rows)

    def evaluate_steps(self, records, threshold: float = 0.5) -> dict:
        """:func:`rewardjax.eval.process.process_report` over step-labelled records (the steps
        truncation keeps; its counts under ``truncation``)."""
        before = dict(self.encoder.stats.as_dict())
        seqs, kept = encode_step_records(records, self.encoder)
        after = self.encoder.stats.as_dict()
        probs = self.step_probs(seqs)
        labels = pad_steps([e.labels.astype(np.float32) for e in seqs], 1.0)
        labels = labels if labels.size else np.zeros_like(probs)
        width = labels.shape[1]
        report = process_report(probs[:, :width], labels, threshold)
        report["truncation"] = {k: after[k] - before[k] for k in after}
        return report

    def evaluate_step_sets(self, step_sets, threshold: float = 0.5) -> dict[str, dict]:
        return {name: self.evaluate_steps(recs, threshold) for name, recs in step_sets}


def _one_step(e):
    return EncodedSteps(e.ids, e.type_ids, e.response_start,
                        step_ends=np.asarray([len(e.ids) - 1], np.int32))
