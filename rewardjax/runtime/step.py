"""Pure, jitted steps: one Bradley-Terry training step and batched scoring."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding

from rewardjax.losses.bradley_terry import bradley_terry_loss
from rewardjax.runtime.state import TrainState
from rewardjax.sharding import axis_rules, logical_to_spec


def pair_rewards(model, batch: dict[str, jax.Array], dropout_rng=None):
    """Rewards of chosen and rejected, each ``[B]``.

    An unpacked batch (``[B, 2, L]`` arrays) runs one forward over ``[2B, L]`` rows. A packed
    batch (it has ``segment_ids``; see ``rewardjax.data.packing``) runs one forward over its
    ``[R, L]`` rows, scores every slot ``[R, S]`` and picks each pair's two slots by its
    ``(row, slot)`` indices. A shared-prefix batch (it has ``parts``; see
    ``rewardjax.data.shared_prefix``) holds ``[prompt | chosen | rejected]`` in one segment and
    reads both rewards at their last tokens.
    """
    if "parts" in batch:
        return shared_pair_rewards(model, batch, dropout_rng)
    if "segment_ids" in batch:
        return packed_pair_rewards(model, batch, dropout_rng)
    b, two, length = batch["input_ids"].shape
    flat = {
        k: batch[k].reshape(b * two, length)
        for k in ("input_ids", "attention_mask", "token_type_ids")
    }
    r = model(
        flat["input_ids"],
        flat["attention_mask"],
        token_type_ids=flat["token_type_ids"],
        dropout_rng=dropout_rng,
    )  # [2B] (or [2B, K] for a K-output head)
    r = r.reshape((b, two) + r.shape[1:])
    return r[:, 0], r[:, 1]


def packed_pair_rewards(model, batch: dict[str, jax.Array], dropout_rng=None):
    """``(r_chosen [B], r_rejected [B])`` from a packed batch."""
    if not hasattr(model, "packed_rewards"):
        raise TypeError(f"{type(model).__name__} cannot score packed batches (no packed_rewards)")
    r = model.packed_rewards(
        batch["input_ids"],
        batch["attention_mask"],
        batch["segment_ids"],
        num_segments=batch["segment_lengths"].shape[1],  # static S
        token_type_ids=batch["token_type_ids"],
        dropout_rng=dropout_rng,
    )  # [R, S]
    ci, ri = batch["chosen_index"], batch["rejected_index"]  # [B, 2] (row, slot)
    return r[ci[:, 0], ci[:, 1]], r[ri[:, 0], ri[:, 1]]


def shared_pair_rewards(model, batch: dict[str, jax.Array], dropout_rng=None):
    """``(r_chosen [B], r_rejected [B])`` from a shared-prefix batch: one forward over its rows,
    the head on the ``2B`` last tokens ``chosen_token`` then ``rejected_token``."""
    if not hasattr(model, "token_rewards"):
        raise TypeError(f"{type(model).__name__} cannot score shared-prefix batches "
                        "(no token_rewards)")
    b = batch["chosen_token"].shape[0]
    read_at = jnp.concatenate([batch["chosen_token"], batch["rejected_token"]])  # [2B, 2]
    r = model.token_rewards(batch["input_ids"], batch["attention_mask"], batch["segment_ids"],
                            batch["parts"], batch["positions"], read_at,
                            dropout_rng=dropout_rng)  # [2B]
    return r[:b], r[b:]


def real_tokens(batch: dict[str, jax.Array]) -> jax.Array:
    """Tokens of the real (weight > 0) pairs of a batch, without padding, counted as the pairs'
    chosen + rejected tokens: a shared-prefix batch processes fewer (its prompts once), and
    that saving is what its tokens/s shows."""
    if "pair_tokens" in batch:
        return jnp.sum(batch["pair_tokens"])
    if "segment_ids" in batch:  # filler pairs are never packed
        return jnp.sum(batch["attention_mask"])
    return jnp.sum(batch["attention_mask"] * batch["weights"][:, None, None])


HOST_ONLY_KEYS = ("index",)  # bookkeeping that stays on the host


def batch_shardings(mesh, rules, batch_like: dict[str, Any]):
    """Batch arrays are split over the ``batch`` logical axis (data and fsdp mesh axes)."""

    def one(x):
        names = ("batch",) + (None,) * (len(x.shape) - 1)
        return NamedSharding(mesh, logical_to_spec(names, rules, mesh, x.shape))

    return {k: one(v) for k, v in batch_like.items() if k not in HOST_ONLY_KEYS}


def batch_axis_size(mesh, rules) -> int:
    """How many ways the ``batch`` logical axis is split on ``mesh`` (rows must divide by it)."""
    spec = logical_to_spec(("batch",), rules, mesh)
    axes = spec[0] if len(spec) else None
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return int(np.prod([mesh.shape[a] for a in axes]))


def place_batch(batch: dict[str, np.ndarray], mesh, rules) -> dict[str, jax.Array]:
    """Places a global host batch on the mesh; with several hosts each feeds its own rows."""
    n, pid = jax.process_count(), jax.process_index()
    out = {}
    for k, sh in batch_shardings(mesh, rules, batch).items():
        x = batch[k]
        if n > 1:
            rows = x.shape[0] // n
            local = x[pid * rows : (pid + 1) * rows]
            out[k] = jax.make_array_from_process_local_data(sh, local, x.shape)
        else:
            out[k] = jax.device_put(x, sh)
    return out


def bt_update(graphdef, tx, loss_cfg, *, params, opt_state, rng, batch, frozen, step,
              dropout: bool, lr_scale=None, dropout_rate=None, guard: bool = True,
              pair_loss=None):
    """One Bradley-Terry update of one reward model: the step every trainer of a BT model runs
    (:func:`make_train_step` jits it for one model, ``runtime.members`` vmaps it over stacked
    members).

    The step's rng is ``fold_in(rng, step)`` so it depends only on the step number (exact
    resume). A non-finite loss or gradient keeps ``params`` and ``opt_state`` and reports
    ``finite = 0``; ``guard=False`` returns the new ones anyway (a vmapped caller guards every
    member at once).

    Args:
      lr_scale: multiplies the final update (a member's learning-rate scale; ``None``: 1). AdamW
        applies the learning rate last (after clipping, moments and the decoupled weight decay),
        so scaling the update by s is AdamW at rate s * lr_t, weight decay included (up to float
        rounding); under MultiSteps the skipped micro-steps emit zeros, which stay zeros.
      dropout_rate: a traced rate overriding the backbone's configured ones (members).
      pair_loss: ``(model, r_chosen, r_rejected, batch) -> (loss, metrics)`` replacing the
        Bradley-Terry loss (a recipe's own loss on the same pair rewards, e.g. ODIN's); ``None``:
        :func:`bradley_terry_loss` with ``loss_cfg``.

    Returns:
      ``(params, opt_state, metrics)``.
    """
    key = jax.random.fold_in(rng, step)

    def loss_fn(p):
        model = nnx.merge(graphdef, p, frozen)
        forward = model
        if dropout and dropout_rate is not None:  # see models.llama.dropout_rates
            forward = functools.partial(model, dropout_rate=dropout_rate)
        rc, rr = pair_rewards(forward, batch, key if dropout else None)  # [B], [B]
        if pair_loss is not None:
            return pair_loss(model, rc, rr, batch)
        margin = loss_cfg.margin + (batch["margin"] if loss_cfg.use_data_margin else 0.0)
        return bradley_terry_loss(rc, rr, margin=margin, center_coef=loss_cfg.center_coef,
                                  weights=batch["weights"])

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    metrics = dict(metrics, grad_norm=grad_norm, finite=finite.astype(jnp.float32),
                   real_tokens=real_tokens(batch))
    new_params, new_opt = guarded_update(tx, grads, opt_state, params,
                                         finite if guard else None, lr_scale)
    return new_params, new_opt, metrics


def guarded_update(tx: optax.GradientTransformation, grads, opt_state, params, finite=None,
                   lr_scale=None):
    """``(params, opt_state)`` after one ``tx`` update, or the old ones unchanged where
    ``finite`` (a scalar bool) is false (``None``: always update).

    The choice is a ``lax.cond`` on the whole state, not an elementwise ``where`` over every
    parameter and moment: the select was an extra pass over params + optimizer state each
    micro-step (about 5% of a SmolLM2 step in the XLA trace); the update itself is unchanged.
    ``lr_scale`` multiplies the final update (see :func:`bt_update`).
    """

    def update(params, opt_state, grads):
        updates, new_opt = tx.update(grads, opt_state, params)
        if lr_scale is not None:
            updates = jax.tree.map(lambda u: (u * lr_scale).astype(u.dtype), updates)
        return optax.apply_updates(params, updates), new_opt

    if finite is None:
        return update(params, opt_state, grads)
    return jax.lax.cond(finite, update, lambda p, o, g: (p, o), params, opt_state, grads)


def make_train_step(
    graphdef,
    tx: optax.GradientTransformation,
    loss_cfg,
    *,
    mesh,
    rules,
    state_shardings,
    dropout: bool = True,
    trace_guard=None,
    pair_loss=None,
) -> Callable:
    """Returns ``train_step(state, batch) -> (state, metrics)``: :func:`bt_update` on a
    :class:`TrainState`, jitted with donation."""

    def step(state: TrainState, batch):
        with axis_rules(mesh, rules):
            params, opt_state, metrics = bt_update(
                graphdef, tx, loss_cfg, params=state.params, opt_state=state.opt_state,
                rng=state.rng, batch=batch, frozen=state.frozen, step=state.step,
                dropout=dropout, pair_loss=pair_loss)
            return TrainState(step=state.step + 1, params=params, frozen=state.frozen,
                              opt_state=opt_state, rng=state.rng), metrics

    if trace_guard is not None:  # e.g. chex.assert_max_traces(n=1) in tests
        step = trace_guard(step)
    return jax.jit(
        step,
        in_shardings=(state_shardings, None),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )


def make_score_fn(graphdef, *, mesh, rules) -> Callable:
    """Returns ``score(params, frozen, batch) -> rewards [B]`` for ``[B, L]`` batches, jitted.

    The rewards come back replicated over the mesh: with several processes (``--multihost``) a
    batch-sharded output would span devices another process owns and could not be read here.
    """

    def score(params, frozen, batch):
        with axis_rules(mesh, rules):
            model = nnx.merge(graphdef, params, frozen)
            return model(
                batch["input_ids"], batch["attention_mask"], token_type_ids=batch["token_type_ids"]
            )

    if mesh is None:
        return jax.jit(score)
    return jax.jit(score, out_shardings=NamedSharding(mesh, jax.sharding.PartitionSpec()))
