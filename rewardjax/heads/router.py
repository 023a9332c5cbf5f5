"""DMoERM's outer layer: a router from prompt features to task categories (top-1, hard).

The router is a small classifier on a fixed feature vector per prompt (DMoERM uses the pooled
prompt representation of a frozen backbone, see :mod:`rewardjax.recipes.dmoerm.train`). Its
inputs are standardised with statistics fitted once on the training features and stored in the
module (:class:`FeatureStats`, not trained by gradient), so the router works whatever the
feature scale of the backbone. Routing is hard: each prompt goes to ``argmax`` of the logits,
and only that category's reward model scores the responses.

Typical use::

    router = fit_router(train_feats, train_labels, num_categories=5, hidden=0)
    categories = route(router, eval_feats)          # [N] int
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


class FeatureStats(nnx.Variable):
    """Standardisation statistics: fitted from data, never updated by the optimizer."""


class Router(nnx.Module):
    """``logits = MLP((x - shift) / scale)``: a linear classifier, or one hidden ReLU layer.

    Args:
      features: input width D.
      num_categories: C, the number of task categories.
      hidden: width of the hidden layer; 0 means a linear router.
      rngs: initialisation rngs (``params`` stream).
    """

    def __init__(self, features: int, num_categories: int, hidden: int = 0, *, rngs: nnx.Rngs):
        if num_categories < 1 or features < 1 or hidden < 0:
            raise ValueError(f"need features >= 1, num_categories >= 1 and hidden >= 0; got "
                             f"{features}, {num_categories}, {hidden}")
        self.shift = FeatureStats(jnp.zeros((features,), jnp.float32))
        self.scale = FeatureStats(jnp.ones((features,), jnp.float32))
        self.hidden = nnx.Linear(features, hidden, rngs=rngs) if hidden else nnx.data(None)
        self.out = nnx.Linear(hidden or features, num_categories, rngs=rngs)
        self.num_categories = num_categories

    def __call__(self, x: jax.Array) -> jax.Array:
        """Category logits ``[B, C]`` (float32) for features ``x [B, D]``."""
        h = (x.astype(jnp.float32) - self.shift[...]) / self.scale[...]  # [B, D]
        if self.hidden is not None:
            h = jax.nn.relu(self.hidden(h))  # [B, H]
        return self.out(h)  # [B, C]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of integer ``labels [B]`` under ``logits [B, C]`` (float32)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, C]
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1))


def top1(logits: jax.Array) -> jax.Array:
    """Hard routing: the index of the largest logit ``[B]`` (ties go to the lower index)."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "steps"))
def _fit(graphdef, params, rest, x, y, l2, lr, steps: int):
    """Full-batch Adam on cross-entropy + ``l2/2 * ||kernels||^2``; deterministic."""
    tx = optax.adam(lr)

    def loss(p):
        logits = nnx.merge(graphdef, p, rest)(x)
        kernels = [v for path, v in jax.tree_util.tree_leaves_with_path(p)
                   if "kernel" in jax.tree_util.keystr(path)]
        return cross_entropy(logits, y) + 0.5 * l2 * sum(jnp.sum(k * k) for k in kernels)

    def body(_, carry):
        p, opt = carry
        g = jax.grad(loss)(p)
        upd, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, upd), opt

    params, _ = jax.lax.fori_loop(0, steps, body, (params, tx.init(params)))
    return params


def fit_router(features, labels, num_categories: int, *, hidden: int = 0, steps: int = 300,
               lr: float = 1e-2, l2: float = 1e-4, seed: int = 0) -> Router:
    """Trains a :class:`Router` with cross-entropy on ``(features, labels)``.

    The standardisation statistics are the features' per-dimension mean and std (floored at
    1e-6, so a constant dimension is harmless). Training is full-batch Adam for ``steps`` steps
    in one jitted loop, so the result depends only on the data and ``seed``.

    Args:
      features: ``[N, D]`` prompt features.
      labels: ``[N]`` category ids in ``[0, num_categories)``.
      num_categories: C.
      hidden: hidden width (0: linear router).
      steps: Adam steps.
      lr: Adam learning rate.
      l2: L2 penalty on the weight matrices (on standardised inputs).
      seed: initialisation seed.

    Returns:
      The fitted router.
    """
    x = jnp.asarray(features, jnp.float32)
    y = jnp.asarray(labels, jnp.int32)
    if x.ndim != 2 or x.shape[0] == 0 or y.shape != (x.shape[0],):
        raise ValueError(f"need features [N, D] with N > 0 and labels [N]; got {x.shape}, "
                         f"{y.shape}")
    bad = np.asarray((y < 0) | (y >= num_categories))
    if bad.any():
        raise ValueError(f"labels must lie in [0, {num_categories}); got "
                         f"{np.asarray(y)[bad][:5].tolist()}")
    with nnx.use_eager_sharding(False):
        router = Router(x.shape[1], num_categories, hidden,
                        rngs=nnx.Rngs(params=jax.random.key(seed)))
    router.shift[...] = jnp.mean(x, axis=0)
    router.scale[...] = jnp.maximum(jnp.std(x, axis=0), 1e-6)
    graphdef, params, rest = nnx.split(router, nnx.Param, ...)
    params = _fit(graphdef, params, rest, x, y, jnp.float32(l2), jnp.float32(lr), int(steps))
    return nnx.merge(graphdef, params, rest)


def route(router: Router, features) -> np.ndarray:
    """Top-1 category ids ``[N]`` (numpy) of ``features [N, D]``."""
    return np.asarray(top1(router(jnp.asarray(features, jnp.float32))))
