"""One scorer: encoded sequences or (prompt, response) pairs -> rewards.

Every trained reward model is used through a :class:`Scorer`: the eval, score and rewardbench
modes, best-of-n, PPO rewards and the judges. A recipe says how its workdir becomes one
(:class:`rewardjax.recipes.Recipe` ``load_scorer``); callers never ask which recipe made it.

Implementations here: :class:`ModelScorer` (one reward model: a run and its parameters),
:class:`MembersScorer` (stacked members: per-member rewards, combined like a prediction ensemble,
or the weight average) and :class:`NativeScorer` (a native export: single, multi-objective
ArmoRM, ensemble or DMoERM mixture).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import jax
import numpy as np

from rewardjax.data.batching import default_buckets, map_batches
from rewardjax.data.tokenize import EncodedPairs, encode_pairs
from rewardjax.runtime.scoring import pair_report
from rewardjax.runtime.step import make_score_fn


class Scorer(abc.ABC):
    """Rewards of sequences encoded by :attr:`encoder`.

    :meth:`score_encoded` is the one method to implement; it returns ``{"reward": [N], ...}``
    where further keys are per-sequence breakdowns (``members [N, M]``, ``objectives [N, K]``,
    ...). Everything else (texts, pairs, evaluation, the judge interface) is built on it.
    """

    encoder = None  # a SequenceEncoder: how (prompt, response) becomes token ids
    # Breakdowns with named columns: output key -> column names (e.g. "objectives" -> the K
    # objective names); the score mode writes these per response.
    labels: dict[str, list[str]] = {}
    step: int | None = None  # the training step of the scored parameters, when known
    # A set whose every pair the truncation policy drops: an error (native exports, as before),
    # or a report with n = 0 and NaN metrics (a training run's evaluation goes on).
    empty_is_error: bool = False

    @abc.abstractmethod
    def score_encoded(self, seqs) -> dict[str, np.ndarray]:
        """``{"reward": float32 [N], ...}`` for encoded sequences, in input order."""

    def rewards(self, seqs) -> np.ndarray:
        """Just the ``reward`` of :meth:`score_encoded` (``[0]`` for no sequences)."""
        if not seqs:
            return np.zeros((0,), np.float32)
        return np.asarray(self.score_encoded(list(seqs))["reward"], np.float32)

    def encode(self, items: Sequence[tuple], *, dropped: str = "error"):
        """``(prompt, response)`` items -> ``(seqs, kept indices)``. A response the truncation
        policy drops is an error (``dropped="error"``) or left out (``"skip"``)."""
        seqs, kept = [], []
        for i, (prompt, response) in enumerate(items):
            e = self.encoder.encode(prompt, response)
            if e is None:
                if dropped == "error":
                    raise ValueError(f"response {i} was dropped by the truncation policy "
                                     "(data.truncation=drop); use keep_end to score every one")
                continue
            seqs.append(e)
            kept.append(i)
        return seqs, kept

    def score(self, prompts: Sequence, responses: Sequence[str]) -> dict[str, np.ndarray]:
        """Scores ``(prompt, response)`` pairs encoded as at training time (every one kept)."""
        seqs, _ = self.encode(list(zip(prompts, responses)))
        return self.score_encoded(seqs)

    def score_items(self, items: Sequence[tuple]) -> np.ndarray:
        """Rewards ``[N]`` of ``(prompt, response)`` items; NaN where the truncation policy drops
        one (the judge interface: an unscorable response is an invalid verdict)."""
        seqs, kept = self.encode(items, dropped="skip")
        out = np.full((len(items),), np.nan, np.float32)
        if kept:
            out[kept] = self.rewards(seqs)
        return out

    def score_pairs(self, pairs_or_encoded):
        """``(r_chosen, r_rejected, encoded pairs)``; pairs the encoder drops are left out."""
        data = pairs_or_encoded
        if not isinstance(data, EncodedPairs):
            data = encode_pairs(data, self.encoder)
        r = self.rewards(data.chosen + data.rejected)
        n = len(data)
        return r[:n], r[n:], data

    def evaluate(self, pairs, *, num_bins: int = 10) -> dict:
        """Accuracy, calibration, groups and gold agreement over ``pairs``."""
        rc, rr, data = self.score_pairs(pairs)
        if not data.pairs and self.empty_is_error:
            raise ValueError("every pair was dropped by the truncation policy")
        return pair_report(rc, rr, data, num_bins=num_bins)  # n = 0: NaN metrics

    def evaluate_sets(self, eval_sets, *, num_bins: int = 10) -> dict[str, dict]:
        """:meth:`evaluate` over ``[(name, pairs, spec)]`` (``load_sets``)."""
        return {name: self.evaluate(pairs, num_bins=num_bins) for name, pairs, _ in eval_sets}


class ModelScorer(Scorer):
    """One reward model: a built run (graphdef, mesh, encoder) with ``params`` / ``frozen``.

    Batches by length (``data.buckets`` or the defaults for ``model.max_length``) with
    ``eval.batch_size`` rows; the jitted forward is built once per run.
    """

    def __init__(self, run, params, frozen, *, batch_size: int | None = None):
        self.run, self.params, self.frozen = run, params, frozen
        self.encoder = run.encoder
        c = run.config
        self.batch_size = int(batch_size or c.eval.batch_size)
        self.buckets = tuple(c.data.buckets) or default_buckets(c.model.max_length)
        self.left = c.data.padding_side == "left"

    @classmethod
    def of(cls, run, state=None, **kw) -> ModelScorer:
        """The scorer of ``state`` (default ``run.state``): its ``params`` and ``frozen``."""
        state = run.state if state is None else state
        return cls(run, state.params, state.frozen, **kw)

    def with_params(self, params) -> ModelScorer:
        """The same model with other trainable parameters (a member, an average, a point on an
        interpolation path), sharing the compiled forward."""
        return ModelScorer(self.run, params, self.frozen, batch_size=self.batch_size)

    def score_encoded(self, seqs) -> dict[str, np.ndarray]:
        run = self.run
        fn = run.compiled("score", lambda: make_score_fn(run.graphdef, mesh=run.mesh,
                                                        rules=run.rules))
        (r,) = map_batches(lambda b: fn(self.params, self.frozen, b), seqs,
                           batch_size=self.batch_size, buckets=self.buckets,
                           pad_id=run.tokenizer.pad_token_id, left=self.left) or [
            np.zeros((0,), np.float32)]
        return {"reward": r.astype(np.float32)}


class MembersScorer(Scorer):
    """Stacked members (a leading member axis on the trainable parameters) scored one by one
    with a shared forward. ``reward`` is the combination ``combine`` of the members' rewards
    (``mean``, ``median``, ``min``, ``uwo``, ``mean_minus_std``: a prediction ensemble) or, with
    ``combine="wa"``, the reward of the weight average (WARM); ``members [N, M]`` holds each
    member's reward either way."""

    def __init__(self, run, member_state, *, combine: str = "wa", lam: float = 0.5,
                 batch_size: int | None = None):
        from rewardjax.runtime.members import average_members, member_params

        self.num = int(jax.tree.leaves(member_state.params)[0].shape[0])
        self.base = ModelScorer(run, None, member_state.frozen, batch_size=batch_size)
        self.encoder = run.encoder
        self.members = [member_params(member_state, i) for i in range(self.num)]
        self.average = average_members(member_state) if combine == "wa" else None
        self.combine, self.lam = combine, float(lam)
        self.labels = {"members": [f"member_{i}" for i in range(self.num)]}

    def score_encoded(self, seqs) -> dict[str, np.ndarray]:
        from rewardjax.ensembles.predictions import combine

        members = np.stack([self.base.with_params(p).rewards(seqs) for p in self.members])
        if self.combine == "wa":
            reward = self.base.with_params(self.average).rewards(seqs)
        else:
            reward = np.asarray(combine(members, self.combine, lam=self.lam), np.float32)
        return {"reward": reward, "members": members.T}  # members [N, M]


class NativeScorer(Scorer):
    """A loaded native export (:class:`rewardjax.export.NativeModel`): its combined ``reward``
    and the kind's breakdown (``objectives``, ``members``, ``category_rewards``, ...)."""

    empty_is_error = True

    def __init__(self, model, *, batch_size: int = 16):
        self.model, self.batch_size = model, int(batch_size)
        self.encoder = model.encoder
        names = model.manifest.get("objectives")
        self.labels = {"objectives": list(names)} if names else {}

    def score_encoded(self, seqs) -> dict[str, np.ndarray]:
        if not seqs:
            return {"reward": np.zeros((0,), np.float32)}
        return self.model.score_encoded(list(seqs), self.batch_size)
