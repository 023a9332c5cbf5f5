"""M reward models trained as one compiled program (ensembles, WARM).

The member state is a :class:`~rewardjax.runtime.state.TrainState` whose ``params``,
``opt_state`` and ``rng`` carry a leading member axis ``M``, while ``frozen`` (a frozen backbone
or a LoRA base) is held once and ``step`` is shared. :func:`make_member_step` ``jax.vmap``-s one
Bradley-Terry update over the member axis with ``frozen`` and ``step`` broadcast
(``in_axes=None``), so the base weights are never copied M times (DESIGN §2).

Members can differ by (DESIGN §3, WARM / ensembles):

- initialisation: ``init="shared"`` (one shared init, WARM) or ``init="seed"`` (own head);
- data order: :class:`~rewardjax.runtime.members_data.MemberPlans`, one shuffling seed each;
- hyperparameters: :class:`MemberHypers` (learning-rate scale, dropout rate), traced values,
  so different settings do not recompile;
- dropout randomness: member rng ``fold_in(run rng, i)``, step rng ``fold_in(member rng, step)``.

Typical use::

    state, hypers = init_members(run, 4, lr_scale=[0.5, 1, 1, 2])
    plans = MemberPlans(data.lengths(), batch_size, buckets, seeds=[0, 1, 2, 3])
    step = make_member_step(run)
    for s in range(steps):
        batch = place_members(run, collate_members(data, plans, s, pad_id))
        state, metrics = step(state, batch, hypers)  # metrics: dict of [M]
    warm = average_members(state)  # nnx.merge(run.graphdef, warm, state.frozen)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rewardjax.ensembles import weights as ens_weights
from rewardjax.heads.scalar import LinearHead
from rewardjax.runtime.state import TrainState, path_str
from rewardjax.runtime.step import HOST_ONLY_KEYS, bt_update
from rewardjax.sharding import axis_rules

INITS = ("shared", "seed")


class MemberHypers(NamedTuple):
    """Per-member hyperparameters, each ``[M]`` float32 (traced: changing them never retraces).

    Attributes:
      lr_scale: multiplies the member's learning rate (schedule and weight decay included).
      dropout_rate: the backbone's hidden and attention dropout rate for the member (used only
        when the step is built with ``dropout=True``).
    """

    lr_scale: jax.Array  # [M]
    dropout_rate: jax.Array  # [M]


def _prepend_member_axis(shardings):
    """Each leaf's ``NamedSharding`` with a replicated member axis in front of its spec."""
    return jax.tree.map(lambda s: NamedSharding(s.mesh, PartitionSpec(None, *s.spec)), shardings)


def member_shardings(run) -> TrainState:
    """Shardings of a member state: stacked leaves keep their parameter sharding on the trailing
    axes with the member axis replicated; ``frozen`` keeps the run's shardings."""
    replicated = NamedSharding(run.mesh, PartitionSpec())
    return TrainState(
        step=replicated,
        params=_prepend_member_axis(run.shardings.params),
        frozen=run.shardings.frozen,
        opt_state=_prepend_member_axis(run.shardings.opt_state),
        rng=replicated,
    )


def _leaf_names(tree) -> list[str]:
    return [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _fresh_heads(run, seeds: Sequence[int]) -> dict[str, jax.Array]:
    """Stacked re-initialised reward heads, ``{leaf path: [M, ...]}``.

    Head ``i`` uses ``key(seeds[i] + 1)`` like ``build_reward_model(seed=...)``, so a member with
    the run's own seed gets exactly the run's initial head.
    """
    frozen_head = [n for n in _leaf_names(run.state.frozen) if n.startswith("head/")]
    if frozen_head:
        raise ValueError(
            f'init="seed" re-initialises the reward head per member, but the head is frozen '
            f"({frozen_head[:2]}) and frozen weights are shared: make the head trainable "
            f"(train.trainable) or use init=\"shared\""
        )
    model = nnx.merge(run.graphdef, run.state.params, run.state.frozen)
    if not isinstance(model.head, LinearHead):
        raise NotImplementedError(f'init="seed" supports LinearHead, not {type(model.head)}')
    d, k = model.head.kernel.shape

    def build():  # jitted like the run's own init, so seed i reproduces its numbers exactly
        with nnx.use_eager_sharding(False):
            return ens_weights.stack([
                nnx.state(LinearHead(d, k, rngs=nnx.Rngs(params=jax.random.key(int(s) + 1))),
                          nnx.Param)
                for s in seeds
            ])

    stacked = jax.jit(build)()
    return {f"head/{n}": x for n, x in zip(_leaf_names(stacked), jax.tree.leaves(stacked))}


def init_members(
    run,
    num_members: int,
    *,
    init: str = "shared",
    seeds: Sequence[int] | None = None,
    lr_scale: Sequence[float] | None = None,
    dropout_rate: Sequence[float] | None = None,
) -> tuple[TrainState, MemberHypers]:
    """M members stacked from the run's state, placed on the run's mesh.

    Args:
      run: a built :class:`~rewardjax.runtime.setup.Run`; ``run.state`` is read, never donated.
      num_members: M.
      init: ``"shared"``: every member starts from ``run.state.params`` (WARM's one shared
        initialisation; diversity comes from data order and hyperparameters). ``"seed"``:
        member ``i`` re-initialises the reward head with ``seeds[i]`` (everything else shared).
      seeds: head seeds for ``init="seed"`` (default ``config.seed + i``, so member 0 keeps the
        run's head); ignored for ``"shared"``.
      lr_scale: ``[M]`` learning-rate multipliers (default 1).
      dropout_rate: ``[M]`` dropout rates (default the backbone config's ``hidden_dropout``).

    Returns:
      ``(member_state, hypers)``. ``member_state.params / opt_state`` leaves are ``[M, ...]``
      (optimizer state copied from ``run.state``), ``rng`` is ``[M, 2]`` with
      ``rng[i] = fold_in(run rng, i)``, ``step`` is the run's, and ``frozen`` is the very same
      ``run.state.frozen`` (no member axis, no copy).
    """
    m = int(num_members)
    if m < 1:
        raise ValueError(f"num_members must be >= 1, got {num_members}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose from {INITS}")
    heads = None
    if init == "seed":
        seeds = [run.config.seed + i for i in range(m)] if seeds is None else list(seeds)
        if len(seeds) != m:
            raise ValueError(f"{len(seeds)} seeds for {m} members")
        heads = _fresh_heads(run, seeds)

    def stack(params, opt_state, rng, heads):
        bcast = lambda x: jnp.broadcast_to(x, (m,) + x.shape)  # [M, ...]
        params = jax.tree.map(bcast, params)
        if heads is not None:
            params = jax.tree_util.tree_map_with_path(
                lambda p, x: heads.get(path_str(p), x), params)
        rngs = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(m))  # [M, 2]
        return params, jax.tree.map(bcast, opt_state), rngs

    sh = member_shardings(run)
    params, opt_state, rngs = jax.jit(stack, out_shardings=(sh.params, sh.opt_state, sh.rng))(
        run.state.params, run.state.opt_state, run.state.rng, heads)
    # The step is donated by the member step: a copy keeps run.state usable.
    step = jax.device_put(run.state.step, sh.step, may_alias=False)
    state = TrainState(step=step, params=params, frozen=run.state.frozen,
                       opt_state=opt_state, rng=rngs)
    default_rate = float(getattr(run.spec.config, "hidden_dropout", 0.0) or 0.0)
    hypers = make_hypers(run, m, lr_scale=lr_scale, dropout_rate=dropout_rate,
                         default_dropout=default_rate)
    return state, hypers


def make_hypers(run, num_members: int, *, lr_scale=None, dropout_rate=None,
                default_dropout: float = 0.0) -> MemberHypers:
    """:class:`MemberHypers` as replicated ``[M]`` float32 arrays on the run's mesh."""

    def vec(x, default, name):
        v = np.full((num_members,), default, np.float32) if x is None else np.asarray(x, np.float32)
        if v.shape != (num_members,):
            raise ValueError(f"{name} must have {num_members} entries, got shape {v.shape}")
        return v

    lr = vec(lr_scale, 1.0, "lr_scale")
    rate = vec(dropout_rate, default_dropout, "dropout_rate")
    if np.any(lr < 0) or np.any((rate < 0) | (rate >= 1)):
        raise ValueError(f"need lr_scale >= 0 and 0 <= dropout_rate < 1, got {lr}, {rate}")
    replicated = NamedSharding(run.mesh, PartitionSpec())
    return MemberHypers(*(jax.device_put(v, replicated) for v in (lr, rate)))


def guard_members(finite: jax.Array, new, old):
    """``new`` where member ``i`` is finite (``finite[i]``), else ``old``, for ``[M, ...]`` trees.

    Selecting with an ``[M]`` predicate inside ``vmap`` broadcasts it to every leaf's full shape
    on every step; here the common all-finite case takes ``new`` as is under ``lax.cond`` and
    only a step with a bad member pays for the per-member select.
    """

    def select(new, old):
        return jax.tree.map(
            lambda a, b: jnp.where(finite.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)

    return jax.lax.cond(jnp.all(finite), lambda n, o: n, select, new, old)


def make_member_step(run, *, dropout: bool = True, sequential: bool = False,
                     trace_guard=None) -> Callable:
    """Returns ``step(member_state, batch, hypers) -> (member_state, metrics)``.

    ``batch`` is a stacked ``[M, B, 2, L]`` batch (see ``members_data.place_members``);
    ``metrics`` are ``[M]`` per key. Params, optimizer state and rng are donated; ``frozen`` is
    passed through untouched (neither donated nor copied), so it stays shared with ``run.state``.

    Args:
      run: the built run (graph, optimizer, loss config, mesh).
      dropout: apply dropout at ``hypers.dropout_rate`` (off: deterministic forward).
      sequential: update one member at a time instead of all at once under ``vmap``, for when
        M members' activations and gradients do not fit. It runs the same
        :func:`~rewardjax.runtime.step.bt_update` on member ``i``'s slice (same batch rows, rng,
        hyperparameters, shared step) and writes it back in place; members never interact, so
        the result equals the vmapped step up to float reduction order. Either mode, for a member
        with ``lr_scale = 1`` (and no dropout, or a rate equal to the backbone's configured ones),
        equals ``run.train_step`` applied to ``TrainState(step, params[i], frozen,
        opt_state[i], rng[i])`` on batch ``i``.
      trace_guard: e.g. ``chex.assert_max_traces(n=1)`` in tests.
    """
    sh = member_shardings(run)
    dyn_sh = (sh.step, sh.params, sh.opt_state, sh.rng)
    update = functools.partial(bt_update, run.graphdef, run.tx, run.config.loss,
                               dropout=dropout)

    def one(params, opt_state, rng, batch, lr_scale, dropout_rate, frozen, step, guard=True):
        return update(params=params, opt_state=opt_state, rng=rng, batch=batch,
                      lr_scale=lr_scale, dropout_rate=dropout_rate, frozen=frozen, step=step,
                      guard=guard)

    def vmapped(dyn, frozen, batch, hypers):
        step, params, opt_state, rng = dyn
        with axis_rules(run.mesh, run.rules):
            # frozen and step broadcast: one copy of the base serves every member.
            new_params, new_opt, metrics = jax.vmap(
                functools.partial(one, guard=False), in_axes=(0, 0, 0, 0, 0, 0, None, None))(
                params, opt_state, rng, batch, hypers.lr_scale, hypers.dropout_rate, frozen, step)
            new_params, new_opt = guard_members(metrics["finite"] > 0, (new_params, new_opt),
                                                (params, opt_state))
        return (step + 1, new_params, new_opt, rng), metrics

    def single(dyn, frozen, batch, hypers, i):
        step, params, opt_state, rng = dyn

        def take(t):  # member i's slice, [M, ...] -> [...]
            return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), t)

        with axis_rules(run.mesh, run.rules):
            p, o, metrics = one(take(params), take(opt_state), take(rng), take(batch),
                                hypers.lr_scale[i], hypers.dropout_rate[i], frozen, step)
        # Written back in place (the state is donated): memory stays one state plus one
        # member's activations and gradients.
        put = lambda t, v: jax.tree.map(
            lambda x, y: jax.lax.dynamic_update_index_in_dim(x, y.astype(x.dtype), i, 0), t, v)
        return (step, put(params, p), put(opt_state, o), rng), metrics

    fn = single if sequential else vmapped
    if trace_guard is not None:
        fn = trace_guard(fn)
    jitted = jax.jit(fn, in_shardings=(dyn_sh, sh.frozen, None, None) + (None,) * sequential,
                     out_shardings=(dyn_sh, None), donate_argnums=(0,))
    bump = jax.jit(lambda s: s + 1, out_shardings=sh.step, donate_argnums=(0,))

    def step(member_state: TrainState, batch: dict, hypers: MemberHypers):
        batch = {k: v for k, v in batch.items() if k not in HOST_ONLY_KEYS}
        dyn = (member_state.step, member_state.params, member_state.opt_state, member_state.rng)
        if sequential:
            per_member = []
            for i in range(num_members(member_state)):
                dyn, m = jitted(dyn, member_state.frozen, batch, hypers, np.int32(i))
                per_member.append(m)
            dyn = (bump(dyn[0]),) + dyn[1:]
            metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *per_member)  # [M] per key
        else:
            dyn, metrics = jitted(dyn, member_state.frozen, batch, hypers)
        new_step, params, opt_state, rng = dyn
        return TrainState(step=new_step, params=params, frozen=member_state.frozen,
                          opt_state=opt_state, rng=rng), metrics

    return step


def num_members(member_state: TrainState) -> int:
    """M, the size of the member axis."""
    return ens_weights.num_members(member_state.params)


def member_params(member_state: TrainState, i: int):
    """Member ``i``'s params (``nnx.merge(run.graphdef, params, member_state.frozen)``)."""
    return ens_weights.member(member_state.params, i)


def average_members(member_state: TrainState):
    """WARM's final model: the uniform average of the members' params (float32 accumulation).

    Usable as ``nnx.merge(run.graphdef, average_members(state), state.frozen)``.
    """
    return ens_weights.uniform_average(member_state.params)
