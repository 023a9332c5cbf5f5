"""DMoERM data and features: capability labels, per-member subsets, prompt and expert outputs.

The preparation half of :mod:`rewardjax.recipes.dmoerm.train`: which capability points a
training set rates and each pair's label on them (from ratings; judges: :mod:`.labels`), batch
plans over member-specific subsets
(:class:`SubsetPlans`), the concatenated capability datasets with sides oriented by the label
(:func:`oriented_dataset`), and the features computed by a trained model over encoded
sequences: the K experts' rewards and embeddings (:func:`expert_outputs`) and the router's prompt
features (:func:`router_inputs`).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from rewardjax.data import BatchPlan, Encoded, EncodedPairs, default_buckets, map_batches
from rewardjax.lora import score_experts
from rewardjax.models.pooling import pool
from rewardjax.sharding import axis_rules

# --------------------------------------------------------------------------- capability labels


def capability_labels_from_ratings(pairs, capability: str) -> np.ndarray:
    """Capability-point labels from per-response ratings (the simulator's ``Pair.meta``).

    Returns ``[N]`` int8: +1 where the chosen response rates higher on ``capability``
    (``meta["attrs_chosen"]`` vs ``meta["attrs_rejected"]``), -1 where the rejected one does,
    0 (dropped) for ties, NaN or missing ratings. A judge asked twice with the two responses
    swapped fits the same signature: +1 / -1 where both orders agree, 0 otherwise.
    """
    out = np.zeros((len(pairs),), np.int8)
    for i, p in enumerate(pairs):
        a = (p.meta.get("attrs_chosen") or {}).get(capability)
        b = (p.meta.get("attrs_rejected") or {}).get(capability)
        if a is None or b is None or np.isnan(a) or np.isnan(b) or a == b:
            continue
        out[i] = 1 if a > b else -1
    return out


def capabilities_of(pairs, exclude=()) -> list[str]:
    """Capability points rated on ``pairs`` (first-seen order), without ``exclude``."""
    names: list[str] = []
    for i, p in enumerate(pairs):
        attrs = p.meta.get("attrs_chosen")
        if not attrs:
            raise ValueError(f"training pair {i} ({p.meta.get('pair_id', '?')}) has no "
                             "capability ratings in meta['attrs_chosen']; DMoERM needs "
                             "capability labels: simulator ratings, or name the capabilities "
                             "with --config.dmoerm.capabilities and label them with a judge "
                             "(--config.dmoerm.capability_labels=judge)")
        names += [a for a in attrs if a not in names and a not in exclude]
    return names


# --------------------------------------------------------------------------- data plumbing


class SubsetPlans:
    """Per-member batch plans over member-specific subsets of one dataset.

    Duck-types :class:`~rewardjax.runtime.members_data.MemberPlans` for
    :func:`~rewardjax.runtime.members_data.collate_members`: member ``i`` draws shuffled batches
    of ``subsets[i]`` only (its category, or its capability's labelled pairs).
    """

    def __init__(self, lengths, subsets, batch_size: int, buckets, seeds):
        self.subsets = [np.asarray(s, np.int64) for s in subsets]
        for i, s in enumerate(self.subsets):
            if not len(s):
                raise ValueError(f"member {i} has no training pairs")
        lengths = np.asarray(lengths)
        self.batch_size = int(batch_size)
        self.plans = [BatchPlan(lengths[s], batch_size, buckets, seed=int(seed))
                      for s, seed in zip(self.subsets, seeds, strict=True)]

    def at_step(self, step: int):
        picks = [p.at_step(step) for p in self.plans]
        return max(b for b, _ in picks), [s[idx] for s, (_, idx) in zip(self.subsets, picks)]


def oriented_dataset(data: EncodedPairs, labels: dict, caps, mask) -> tuple[EncodedPairs, list]:
    """The capability datasets of ``caps`` concatenated: pair ``i`` (with ``mask[i]``) enters
    capability ``c``'s subset if ``labels[c][i] != 0``, sides swapped where it is -1."""
    chosen, rejected, pairs, subsets = [], [], [], []
    for c in caps:
        idx = np.flatnonzero(mask & (labels[c] != 0))
        subsets.append(np.arange(len(pairs), len(pairs) + len(idx)))
        for i in idx:
            good = labels[c][i] > 0
            chosen.append(data.chosen[i] if good else data.rejected[i])
            rejected.append(data.rejected[i] if good else data.chosen[i])
            pairs.append(data.pairs[i])
        if not len(idx):
            raise ValueError(f"capability {c!r} has no labelled pair among the selected ones")
    return EncodedPairs(chosen, rejected, pairs, data.stats), subsets


def prompt_sequences(data: EncodedPairs) -> list[Encoded]:
    """Each pair's prompt tokens (the chosen sequence up to where the response starts)."""
    out = []
    for e in data.chosen:
        n = max(int(e.response_start), 1)  # a prompt-less pair keeps its first token
        out.append(Encoded(e.ids[:n], e.type_ids[:n], n))
    return out


def _map_sequences(run, fn, seqs, config, batch_axis: int = 0) -> list[np.ndarray]:
    """``fn(batch)`` over length-bucketed batches of ``seqs`` (``data.buckets``,
    ``eval.batch_size``); outputs reassembled in order along ``batch_axis``."""
    return map_batches(fn, seqs, batch_size=int(config.eval.batch_size),
                       buckets=tuple(config.data.buckets) or default_buckets(
                           config.model.max_length),
                       pad_id=run.tokenizer.pad_token_id,
                       left=config.data.padding_side == "left", batch_axis=batch_axis)


def expert_outputs(run, params, frozen, seqs, config) -> tuple[np.ndarray, np.ndarray]:
    """Rewards ``[K, N]`` and pooled embeddings ``[K, N, D]`` of K stacked experts (members)
    on ``seqs``: one vmapped :func:`~rewardjax.lora.score_experts` call per batch."""
    def build():
        def fn(params, frozen, batch):
            with axis_rules(run.mesh, run.rules):
                return score_experts(run.graphdef, params, frozen, batch)

        return jax.jit(fn)

    experts = run.compiled("dmoerm/experts", build)
    r, z = _map_sequences(run, lambda b: experts(params, frozen, b), seqs, config, 1)
    return r, z


def prompt_features(run, state, seqs, config) -> np.ndarray:
    """Mean-pooled backbone hidden states ``[N, D]`` of prompt sequences (router inputs)."""
    def build():
        def fn(params, frozen, batch):
            with axis_rules(run.mesh, run.rules):
                model = nnx.merge(run.graphdef, params, frozen)
                kw = {"token_type_ids": batch["token_type_ids"]} if model.uses_token_types else {}
                hidden = model.backbone(batch["input_ids"], batch["attention_mask"],
                                        dropout_rng=None, dropout_rate=None, **kw)  # [B, T, D]
                return (pool(hidden, batch["attention_mask"], "mean"),)

        return jax.jit(fn)

    prompt = run.compiled("dmoerm/prompt", build)
    return _map_sequences(run, lambda b: prompt(state.params, state.frozen, b), seqs,
                          config)[0]


ROUTER_FEATURES = ("backbone", "words")


def router_inputs(run, data: EncodedPairs, config) -> np.ndarray:
    """The router's prompt features ``[N, F]`` (``dmoerm.router_features``): ``"backbone"``,
    the frozen pretrained backbone's mean-pooled prompt states; ``"words"``, which prompt
    token ids occur (hashed into ``dmoerm.router_buckets`` binary features)."""
    kind = config.dmoerm.router_features
    seqs = prompt_sequences(data)
    if kind == "backbone":
        return prompt_features(run, run.state, seqs, config)
    if kind == "words":
        x = np.zeros((len(seqs), int(config.dmoerm.router_buckets)), np.float32)
        for i, s in enumerate(seqs):
            x[i, s.ids % x.shape[1]] = 1.0
        return x
    raise ValueError(f"dmoerm.router_features={kind!r}: choose from {ROUTER_FEATURES}")
