"""Linear-probe initialisation of the reward head (WARM, DESIGN §3).

WARM fine-tunes its members from one shared initialisation whose reward head is a linear probe
fitted on the frozen backbone's features, so that fine-tuning starts from a head that already
ranks the pairs sensibly instead of a random one (less feature distortion early in training).

Typical use::

    run = build_run(config, workdir, train_pairs)
    state = init_head_by_probe(run, run.state, train_pairs, config)
    # WARM: every member starts from the probed head
    members, hypers = init_members(dataclasses.replace(run, state=state), 4)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rewardjax.data.batching import default_buckets, map_batches
from rewardjax.data.tokenize import EncodedPairs, encode_pairs
from rewardjax.runtime.state import path_str
from rewardjax.sharding import axis_rules

HEAD_KERNEL = "head/kernel"
HEAD_BIAS = "head/bias"


def _features_fn(run):
    """``features(params, frozen, batch) -> [B, D]`` over the run's model, jitted."""

    def features(params, frozen, batch):
        with axis_rules(run.mesh, run.rules):
            model = nnx.merge(run.graphdef, params, frozen)
            return model.features(
                batch["input_ids"], batch["attention_mask"],
                token_type_ids=batch["token_type_ids"],
            )

    return jax.jit(features)


def encoded_features(run, state, seqs, config) -> np.ndarray:
    """Pooled float32 features ``[N, D]`` of encoded sequences (same order out as in),
    batched by length like every scorer (:func:`rewardjax.data.batching.map_batches`)."""
    fn = run.compiled("features", lambda: _features_fn(run))
    out = map_batches(lambda b: fn(state.params, state.frozen, b), seqs,
                      batch_size=int(config.eval.batch_size),
                      buckets=tuple(config.data.buckets) or default_buckets(
                          config.model.max_length),
                      pad_id=run.tokenizer.pad_token_id, left=config.data.padding_side == "left")
    return out[0].astype(np.float32) if out else np.zeros((0, 0), np.float32)


def pair_features(run, state, pairs_or_encoded, config) -> tuple[np.ndarray, np.ndarray]:
    """Pooled backbone features of every pair's chosen and rejected response.

    Args:
      run: a built :class:`~rewardjax.runtime.setup.Run`.
      state: a (single-model) train state; only ``params`` and ``frozen`` are read.
      pairs_or_encoded: a list of ``Pair`` (tokenized with ``run.encoder``; pairs the encoder
        drops are dropped here too) or an already encoded
        :class:`~rewardjax.data.tokenize.EncodedPairs`.
      config: the run config (``data.buckets``, ``eval.batch_size``, ``data.padding_side``).

    Returns:
      ``(z_chosen, z_rejected)``, each float32 ``[N, D]`` numpy arrays on the host, row ``i``
      for kept pair ``i``.
    """
    data = pairs_or_encoded
    if not isinstance(data, EncodedPairs):
        data = encode_pairs(data, run.encoder)
    n = len(data)
    z = encoded_features(run, state, data.chosen + data.rejected, config)
    return z[:n], z[n:]


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit(d, l2, lr, steps: int):
    """Adam on the L2-regularised BT logistic loss of ``d @ w``; deterministic (w starts at 0)."""
    tx = optax.adam(lr)

    def loss(w):
        return jnp.mean(jax.nn.softplus(-(d @ w))) + 0.5 * l2 * jnp.sum(w * w)

    def body(_, carry):
        w, opt = carry
        g = jax.grad(loss)(w)
        upd, opt = tx.update(g, opt, w)
        return optax.apply_updates(w, upd), opt

    w0 = jnp.zeros((d.shape[1],), jnp.float32)
    w, _ = jax.lax.fori_loop(0, steps, body, (w0, tx.init(w0)))
    return w


def fit_linear_probe(
    z_chosen, z_rejected, *, l2: float = 1e-3, steps: int = 500, lr: float = 0.05
) -> tuple[jax.Array, jax.Array]:
    """Bradley-Terry logistic regression of the preference on the feature difference.

    Minimises ``mean(softplus(-(z_c - z_r) @ w)) + l2/2 * ||w||^2`` full-batch with Adam from
    ``w = 0`` for ``steps`` steps (one jitted loop; deterministic). The differences are first
    divided by their root-mean-square (one scalar), which makes the learning rate meaningful
    whatever the feature scale; ``l2`` therefore acts on the weights in those normalised units.
    The returned kernel is rescaled back so that ``z @ kernel`` is the probe's reward.

    The bias cancels in the BT likelihood (``r_c - r_r`` does not depend on it), so it is not
    identifiable from preferences and is returned as 0.

    Args:
      z_chosen: ``[N, D]`` features of the chosen responses.
      z_rejected: ``[N, D]`` features of the rejected responses.
      l2: L2 penalty (on the normalised-unit weights); keeps the solution finite when the
        pairs are linearly separable.
      steps: Adam steps.
      lr: Adam learning rate.

    Returns:
      ``(kernel [D, 1], bias [1])``, float32.
    """
    d = jnp.asarray(z_chosen, jnp.float32) - jnp.asarray(z_rejected, jnp.float32)
    if d.ndim != 2 or d.shape[0] == 0:
        raise ValueError(f"need [N, D] features with N > 0, got shape {d.shape}")
    scale = jnp.sqrt(jnp.mean(d * d)) + 1e-12
    w = _fit(d / scale, jnp.float32(l2), jnp.float32(lr), int(steps)) / scale
    return w[:, None], jnp.zeros((1,), jnp.float32)


def _replace_leaves(tree, new: dict):
    """``tree`` with the leaves whose path is a key of ``new`` replaced (dtype and sharding of
    the old leaf kept); returns ``(tree, names replaced)``."""
    done = []

    def f(path, x):
        name = path_str(path).removesuffix("/value")  # nnx.State paths end in the Variable's
        if name not in new:
            return x
        done.append(name)
        v = jnp.asarray(new[name]).astype(x.dtype)
        if v.shape != x.shape:
            raise ValueError(f"{name}: probe gives shape {v.shape}, model has {x.shape} "
                             "(the probe fits a single-output head)")
        return jax.device_put(v, x.sharding)

    return jax.tree_util.tree_map_with_path(f, tree), done


def init_head_by_probe(run, state, pairs, config, **probe_kwargs):
    """``state`` with its reward head replaced by a linear probe on the frozen features.

    Features come from ``state``'s backbone (:func:`pair_features`); the probe is
    :func:`fit_linear_probe`. The head may sit in ``params`` (trainable) or ``frozen``; each
    new leaf keeps the old one's dtype and sharding. Nothing else changes (``state`` itself
    is not modified; optimizer state is left as is, which for a fresh state is all zeros).

    Args:
      run: a built run whose model has a single-output ``LinearHead``.
      state: a single-model train state (e.g. ``run.state``).
      pairs: training pairs (or :class:`~rewardjax.data.tokenize.EncodedPairs`).
      config: the run config.
      **probe_kwargs: passed to :func:`fit_linear_probe` (``l2``, ``steps``, ``lr``).

    Returns:
      The new train state.
    """
    z_c, z_r = pair_features(run, state, pairs, config)
    kernel, bias = fit_linear_probe(z_c, z_r, **probe_kwargs)
    new = {HEAD_KERNEL: kernel, HEAD_BIAS: bias}
    params, done_p = _replace_leaves(state.params, new)
    frozen, done_f = _replace_leaves(state.frozen, new)
    missing = set(new) - set(done_p) - set(done_f)
    if missing:
        raise ValueError(f"model has no {sorted(missing)} leaves: the probe needs a LinearHead")
    return state._replace(params=params, frozen=frozen)
