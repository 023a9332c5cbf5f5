"""K LoRA experts on one frozen base, scored in one vmapped program (DMoERM phases 2-3).

Each expert is an adapter state from :func:`rewardjax.lora.inject.lora_state`: the LoRA
matrices and, if it was saved with one, its own reward head. :func:`stack_adapters` stacks K of
them on a leading ``expert`` axis; :func:`score_experts` ``jax.vmap``-s the forward over that
axis only, with the base weights passed unbatched (``in_axes=None``) so they are held once and
never copied K times.

Heads: whatever the stacked state holds is per-expert; everything else comes from the shared
``rest_state``. Stack states with the head for per-expert heads, without it for a shared one.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

EXPERT_AXIS = "expert"


def _flat_paths(state) -> list[tuple]:
    return [tuple(p) for p, _ in nnx.to_flat_state(state)]


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def stack_adapters(states: Sequence[nnx.State]) -> nnx.State:
    """Stacks K adapter states (same paths and shapes) along a new leading ``expert`` axis.

    The sharding names of each variable get ``"expert"`` prepended, so
    :func:`rewardjax.sharding.state_shardings` can place the stacked state.

    Raises:
      ValueError: for an empty list or states whose paths or shapes differ.
    """
    states = list(states)
    if not states:
        raise ValueError("stack_adapters needs at least one adapter state")
    ref = _flat_paths(states[0])
    for i, s in enumerate(states[1:], start=1):
        paths = _flat_paths(s)
        if paths != ref:
            diff = sorted(set(map(str, paths)) ^ set(map(str, ref)))
            raise ValueError(f"adapter state {i} has different paths than state 0: {diff[:6]}")
        for (p, a), (_, b) in zip(nnx.to_flat_state(states[0]), nnx.to_flat_state(s)):
            if a.shape != b.shape or a.dtype != b.dtype:
                raise ValueError(f"adapter state {i}: {'/'.join(map(str, p))} is "
                                 f"{b.dtype}{list(b.shape)}, state 0 has {a.dtype}{list(a.shape)}")

    def stack(*vs):
        value = jnp.stack([v.get_value() for v in vs])  # [K, ...]
        meta = {}
        for key in ("out_sharding", "sharding_names"):
            names = vs[0].get_metadata().get(key)
            if names is not None:
                meta[key] = (EXPERT_AXIS,) + tuple(names)
        return vs[0].replace(value, **meta)

    return jax.tree.map(stack, *states, is_leaf=_is_var)


def num_experts(stacked: nnx.State) -> int:
    leaves = jax.tree.leaves(stacked)
    if not leaves:
        raise ValueError("the stacked adapter state is empty")
    return int(leaves[0].shape[0])


def _without(rest: nnx.State, stacked: nnx.State) -> nnx.State:
    """``rest`` minus the paths the experts carry themselves (e.g. a head they override)."""
    own = set(_flat_paths(stacked))
    return nnx.from_flat_state([(p, v) for p, v in nnx.to_flat_state(rest) if tuple(p) not in own])


def _score_one(graphdef, adapter, rest, batch, dropout_rng):
    model = nnx.merge(graphdef, adapter, rest)
    z = model.features(batch["input_ids"], batch["attention_mask"],
                       token_type_ids=batch.get("token_type_ids"),
                       dropout_rng=dropout_rng)  # [B, D] float32
    return model.head(z), z  # [B] (or [B, O]), [B, D]


def score_experts(graphdef, stacked_lora: nnx.State, rest_state: nnx.State,
                  batch: dict[str, jax.Array], *, dropout_rng: jax.Array | None = None):
    """Rewards and pooled features of K experts in one vmapped forward.

    Jit it with the graph definition static, e.g. ``jax.jit(score_experts, static_argnums=0)``.

    Args:
      graphdef: from ``nnx.split`` of a ``RewardModel`` with LoRA applied
        (e.g. :func:`rewardjax.lora.inject.split_lora`).
      stacked_lora: :func:`stack_adapters` output; every leaf ``[K, ...]``.
      rest_state: everything else (base weights, and the head when it is shared); paths also
        present in ``stacked_lora`` are taken from the experts.
      batch: ``input_ids``, ``attention_mask`` ``[B, T]`` and optionally ``token_type_ids``.
      dropout_rng: if given, each expert gets its own key for the backbone's dropout.

    Returns:
      ``(rewards [K, B] (or [K, B, O]), features [K, B, D] float32)``.
    """
    rest = _without(rest_state, stacked_lora)
    k = num_experts(stacked_lora)
    keys = None if dropout_rng is None else jax.random.split(dropout_rng, k)

    def one(adapter, rest, batch, key):
        return _score_one(graphdef, adapter, rest, batch, key)

    # in_axes=None on the base state: one copy of the base weights serves every expert.
    return jax.vmap(one, in_axes=(0, None, None, None if keys is None else 0))(
        stacked_lora, rest, batch, keys)


def score_experts_loop(graphdef, stacked_lora: nnx.State, rest_state: nnx.State,
                       batch: dict[str, jax.Array], *, dropout_rng: jax.Array | None = None):
    """Reference for :func:`score_experts`: one forward per expert in a Python loop."""
    rest = _without(rest_state, stacked_lora)
    k = num_experts(stacked_lora)
    keys = None if dropout_rng is None else jax.random.split(dropout_rng, k)
    rewards, feats = [], []
    for i in range(k):
        adapter = jax.tree.map(lambda x, i=i: x[i], stacked_lora)
        r, z = _score_one(graphdef, adapter, rest, batch, None if keys is None else keys[i])
        rewards.append(r)
        feats.append(z)
    return jnp.stack(rewards), jnp.stack(feats)
