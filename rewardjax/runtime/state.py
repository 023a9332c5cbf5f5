"""Train state and its sharded initialisation.

Parameters are split once into ``params`` (trained) and ``frozen`` (everything else, e.g. a
frozen backbone) by a regex over parameter paths; both travel in the state so a checkpoint
restores the whole model.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rewardjax.sharding import state_shardings


class TrainState(NamedTuple):
    step: jax.Array  # [] int32, micro-steps taken
    params: Any  # nnx.State of trained Params
    frozen: Any  # nnx.State of everything else
    opt_state: Any
    rng: jax.Array  # [2] uint32 raw key: checkpointable as a plain array


def path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def trainable_filter(pattern: str):
    """An ``nnx`` filter: Params whose ``a/b/c`` path matches ``pattern`` (``re.search``)."""
    rx = re.compile(pattern)

    def f(path, value) -> bool:
        return isinstance(value, nnx.Param) and bool(rx.search(path_str(path)))

    return f


def split_model(model: nnx.Module, trainable: str = ".*"):
    """``(graphdef, params, frozen)``; raises if the pattern selects nothing."""
    graphdef, params, frozen = nnx.split(model, trainable_filter(trainable), ...)
    if not jax.tree.leaves(params):
        names = [path_str(p) for p, _ in nnx.to_flat_state(nnx.state(model))][:8]
        raise ValueError(
            f"train.trainable={trainable!r} matches no parameter; paths look like {names}"
        )
    return graphdef, params, frozen


def count_params(tree) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))


def init_state(
    build_model,
    tx: optax.GradientTransformation,
    mesh,
    rules,
    *,
    seed: int,
    trainable: str = ".*",
    weights=None,
):
    """Builds the sharded train state without ever materialising it unsharded.

    Args:
      build_model: zero-argument callable returning the NNX model (random init).
      tx: the optimizer.
      mesh, rules: where and how to shard (see :mod:`rewardjax.sharding`).
      seed: run seed (rng of the state).
      trainable: regex over parameter paths selecting what is trained.
      weights: optional callable ``(graphdef, params, frozen, shardings) -> (params, frozen)``
        that overwrites pretrained parts after the sharded random init.

    Returns:
      ``(graphdef, state, state_shardings)``.
    """
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(build_model)
    graphdef, a_params, a_frozen = split_model(abstract, trainable)
    p_sh = state_shardings(a_params, mesh, rules)
    f_sh = state_shardings(a_frozen, mesh, rules)

    def init_params():
        with nnx.use_eager_sharding(False):
            _, p, f = split_model(build_model(), trainable)
        return p, f

    params, frozen = jax.jit(init_params, out_shardings=(p_sh, f_sh))()
    if weights is not None:
        params, frozen = weights(graphdef, params, frozen, (p_sh, f_sh))
    # Moments are created from the sharded params inside jit, so XLA gives them the params'
    # shardings; counts come out replicated. The state's shardings are read back from it.
    opt_state = jax.jit(tx.init)(params)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    # Scalars (step counts) come out on a single device; give them the mesh's replicated
    # sharding so the state's shardings equal the step's out_shardings (no second trace).
    opt_state = jax.tree.map(
        lambda x: x if isinstance(x.sharding, jax.sharding.NamedSharding)
        else jax.device_put(x, replicated), opt_state)
    state = TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), replicated),
        params=params,
        frozen=frozen,
        opt_state=opt_state,
        rng=jax.device_put(jax.random.PRNGKey(seed), replicated),
    )
    return graphdef, state, shardings_of(state)


def shardings_of(tree):
    """The concrete shardings of a pytree of arrays (same structure)."""
    return jax.tree.map(lambda x: x.sharding, tree)
