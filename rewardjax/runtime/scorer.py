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
import copy
import json
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
    # True for a pairwise preference model (:class:`PairwiseScorer`): it compares responses and
    # has no per-response reward (score mode, PPO rewards and serving refuse it).
    pairwise: bool = False

    @abc.abstractmethod
    def score_encoded(self, seqs) -> dict[str, np.ndarray]:
        """``{"reward": float32 [N], ...}`` for encoded sequences, in input order."""

    def padding(self) -> tuple[int, tuple[int, ...]] | None:
        """``(rows, bucket lengths)``: every forward of :meth:`score_encoded` runs on
        ``[rows, bucket]`` arrays, so a server can warm each shape up and fill it (the serve
        mode); ``None`` when this scorer does not pad to fixed shapes."""
        return None

    def set_rows(self, rows: int) -> None:
        """Later forwards run ``rows`` sequences each (one compiled shape per value)."""
        raise NotImplementedError(f"{type(self).__name__} has no fixed batch rows")

    def reward_only(self) -> Scorer:
        """A scorer of the same ``reward`` without breakdowns that cost forwards of their own
        (a WARM workdir's per-member rewards: M forwards besides the weight average's one);
        itself when breakdowns are free or the reward needs them."""
        return self

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

    def group_scores(self, groups: Sequence[tuple]) -> list[np.ndarray]:
        """Per group ``(prompt, [texts])`` one score per text, higher = preferred, comparable
        within the group (RewardBench rows). Here the rewards, each distinct (prompt, text)
        scored once; every text must be scored (a dropped one is an error)."""
        index: dict = {}
        items, keys = [], []
        for prompt, texts in groups:
            for text in texts:
                key = (json.dumps(prompt, sort_keys=True), text)
                if key not in index:
                    index[key] = len(items)
                    items.append((prompt, text))
                keys.append(index[key])
        r = self.score([p for p, _ in items], [t for _, t in items])["reward"] if items else []
        r = np.asarray(r, np.float64)[np.asarray(keys, np.int64)] if keys else np.zeros((0,))
        return np.split(r, np.cumsum([len(t) for _, t in groups])[:-1]) if groups else []


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

    def padding(self) -> tuple[int, tuple[int, ...]]:
        return self.batch_size, tuple(self.buckets)

    def set_rows(self, rows: int) -> None:
        self.batch_size = int(rows)


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
        self.members_off = False

    def reward_only(self) -> Scorer:
        if self.combine != "wa":  # a prediction ensemble's reward is made of the members
            return self
        other = copy.copy(self)
        other.members_off, other.labels = True, {}
        return other

    def score_encoded(self, seqs) -> dict[str, np.ndarray]:
        from rewardjax.ensembles.predictions import combine

        if self.members_off:  # reward_only(): the weight average's forward alone
            return {"reward": self.base.with_params(self.average).rewards(seqs)}
        members = np.stack([self.base.with_params(p).rewards(seqs) for p in self.members])
        if self.combine == "wa":
            reward = self.base.with_params(self.average).rewards(seqs)
        else:
            reward = np.asarray(combine(members, self.combine, lam=self.lam), np.float32)
        return {"reward": reward, "members": members.T}  # members [N, M]

    def padding(self) -> tuple[int, tuple[int, ...]]:
        return self.base.padding()

    def set_rows(self, rows: int) -> None:
        self.base.set_rows(rows)  # each member's scorer is made from ``base`` per call


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
        out = self.model.score_encoded(list(seqs), self.batch_size)
        if self.model.kind == "ensemble":  # the model's [M, N] as every scorer's [N, M]
            out = {**out, "members": np.asarray(out["members"]).T}
        return out

    def padding(self) -> tuple[int, tuple[int, ...]]:
        return self.batch_size, default_buckets(int(self.model.manifest["encoding"]["max_length"]))

    def set_rows(self, rows: int) -> None:
        self.batch_size = int(rows)


class PairwiseScorer(Scorer):
    """A pairwise preference model: ``[prompt, A, B]`` -> the logit of P(A better).

    Every comparison is asked in both orders and symmetrised,
    ``P_sym(A > B) = (P(A | A, B) + 1 - P(B | B, A)) / 2``, so ``P_sym(B > A) = 1 - P_sym(A > B)``
    whatever order the caller uses (the judges' position swap, DESIGN §3). There is no
    per-response reward: :meth:`score_encoded` (and so ``score`` / ``rewards`` / ``score_items``)
    raises a clear error, which is what the score mode, PPO rewards and serving get.

    Args:
      base: scores sequences encoded by ``encoder`` (:meth:`Scorer.rewards`); its output is the
        logit of P(A better) (e.g. a :class:`ModelScorer` of the trained run).
      encoder: a :class:`rewardjax.data.pairwise.PairwiseEncoder`.
    """

    pairwise = True

    def __init__(self, base: Scorer, encoder):
        self.base, self.encoder = base, encoder
        self.step = base.step

    def score_encoded(self, seqs) -> dict[str, np.ndarray]:
        from rewardjax.data.pairwise import NO_REWARD

        raise ValueError(NO_REWARD)

    def padding(self):
        """A reward server batches single responses, which this model cannot score."""
        from rewardjax.data.pairwise import NO_REWARD

        raise ValueError(NO_REWARD)

    def logits_encoded(self, seqs) -> np.ndarray:
        """Logits of P(A better) ``[N]`` for encoded triples."""
        return self.base.rewards(seqs)

    def encode_orders(self, pairs):
        """Pairs (or an ``EncodedOrders``) -> ``EncodedOrders``; dropped pairs left out."""
        from rewardjax.data.pairwise import EncodedOrders, encode_orders

        return pairs if isinstance(pairs, EncodedOrders) else encode_orders(pairs, self.encoder)

    def order_logits(self, data) -> tuple[np.ndarray, np.ndarray]:
        """``(z_ab, z_ba)``: logits with the first response shown first, then second."""
        z = self.logits_encoded(data.ab + data.ba)
        return z[: len(data)], z[len(data):]

    def compare(self, prompts: Sequence, a: Sequence[str], b: Sequence[str]) -> dict:
        """``{"p": P_sym(a > b), "logit": its log-odds, "p_ab": P(a | a, b), "p_ba":
        P(b | b, a)}``, each ``[N]`` float64; every triple must be encoded (a dropped one is
        an error)."""
        from rewardjax.data.pairwise import encode_orders
        from rewardjax.data.records import Pair
        from rewardjax.eval.pairwise_bon import symmetric_logit

        pairs = [Pair(list(p), x, y, meta={"record": i})
                 for i, (p, x, y) in enumerate(zip(prompts, a, b, strict=True))]
        data = encode_orders(pairs, self.encoder)
        if len(data) != len(pairs):
            raise ValueError(f"{len(pairs) - len(data)} comparisons were dropped by the "
                             "truncation policy (data.truncation=drop); use keep_end")
        za, zb = self.order_logits(data)
        sig = lambda z: 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))  # noqa: E731
        logit = symmetric_logit(za, zb)
        return {"p": sig(logit), "logit": logit, "p_ab": sig(za), "p_ba": sig(zb)}

    def evaluate(self, pairs, *, num_bins: int = 10) -> dict:
        """As :meth:`Scorer.evaluate` with ``P_sym(chosen > rejected)`` in place of
        ``σ(r_chosen - r_rejected)``: accuracy is ``P_sym > 0.5`` (a tie at exactly 0.5 is wrong,
        like a reward tie), calibration over both orientations, ``reward_margin`` the mean
        log-odds; ``order`` holds the one-order accuracies and the flip rate
        (:func:`rewardjax.eval.pairwise_bon.order_report`)."""
        from rewardjax.eval.pairwise_bon import order_report, symmetric_logit

        data = self.encode_orders(pairs)
        if not data.pairs and self.empty_is_error:
            raise ValueError("every pair was dropped by the truncation policy")
        za, zb = self.order_logits(data)
        s = symmetric_logit(za, zb)
        res = pair_report(s, np.zeros_like(s), data, num_bins=num_bins)
        groups = [res] + list(res["by_group"].values()) + list(res.get("by_category", {}).values())
        for g in groups:  # moments of rewards this model has not got
            g.pop("reward_mean", None)
            g.pop("reward_std", None)
        res["order"] = order_report(za, zb)
        return res

    def group_scores(self, groups: Sequence[tuple]) -> list[np.ndarray]:
        """Per group ``(prompt, [texts])``: 0 for the first text and
        ``logit P_sym(text_i > text_0)`` for the others, so the order within a group is the
        model's verdict against the first text (RewardBench: the chosen one). Each distinct
        comparison is asked once (both orders)."""
        index: dict = {}
        prompts, others, anchors, keys = [], [], [], []
        for prompt, texts in groups:
            for text in texts[1:]:
                key = (json.dumps(prompt, sort_keys=True), texts[0], text)
                if key not in index:
                    index[key] = len(prompts)
                    prompts.append(prompt)
                    others.append(text)
                    anchors.append(texts[0])
                keys.append(index[key])
        s = np.zeros((0,))
        if prompts:
            s = self.compare(prompts, others, anchors)["logit"][np.asarray(keys, np.int64)]
        out, i = [], 0
        for _, texts in groups:
            out.append(np.concatenate([[0.0], s[i:i + len(texts) - 1]]))
            i += len(texts) - 1
        return out
