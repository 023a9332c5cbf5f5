"""Best-of-n curves: the unbiased expected score of best-of-n from a scored pool, KL_bon, and the
random-choice and oracle reference curves.

Estimator (DESIGN §3). For a pool of N samples sorted ascending by proxy score, s_(i) the i-th
smallest, best-of-n over a uniformly random n-subset (drawn without replacement) picks s_(i) with
probability C(i-1, n-1) / C(N, n), so

    E[best-of-n] = sum_{i=n}^{N} C(i-1, n-1) / C(N, n) * s_(i).

The gold curve applies the same weights to the gold scores permuted by the proxy order. The
weights are computed in log space (``gammaln``) so N = 54 or 1000 neither overflows nor loses
precision; they sum to one (hockey-stick identity). n = 1 gives the pool mean, n = N the score of
the proxy's argmax. The curves are plotted against KL_bon = log n - (n-1)/n.

Ties in the proxy: the pick among tied maxima is taken uniformly at random. This is the same as
breaking ties by a uniformly random order of the tied block, so in expectation every rank of a
block carries the block's mean gold score; the estimator replaces gold scores by their block mean
(exact, not an approximation). A constant proxy therefore gives the random-choice curve (the pool
mean for every n), and ties never let the input order leak into the result.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

# ----------------------------------------------------------------------------- the estimator


def kl_bon(n) -> np.ndarray:
    """KL(best-of-n || base policy) = log n - (n - 1) / n (an upper bound, tight for unique
    rewards)."""
    n = np.asarray(n, np.float64)
    return np.log(n) - (n - 1.0) / n


def default_ns(pool_size: int) -> list[int]:
    """1, 2, 4, ... below N, then N itself."""
    ns = [1 << k for k in range(int(pool_size).bit_length()) if (1 << k) < pool_size]
    return ns + [int(pool_size)]


def bon_coefficients(pool_size: int, ns) -> np.ndarray:
    """Weights ``[len(ns), N]``: ``w[k, i - 1] = C(i-1, n_k - 1) / C(N, n_k)`` for ``i >= n_k``.

    Computed as differences of log-gammas, so large N neither overflows nor underflows to NaN.
    """
    size = int(pool_size)
    ns = np.asarray(ns, np.int64).reshape(-1)
    if size < 1 or np.any(ns < 1) or np.any(ns > size):
        raise ValueError(f"need 1 <= n <= N for best-of-n, got n={ns.tolist()} and N={size}")
    i = np.arange(1, size + 1, dtype=np.float64)[None, :]  # [1, N] ranks
    n = ns.astype(np.float64)[:, None]  # [K, 1]

    def log_choose(a, b):
        return gammaln(a + 1) - gammaln(b + 1) - gammaln(a - b + 1)

    valid = i >= n  # [K, N]
    safe_i = np.where(valid, i, n)  # keeps gammaln's arguments positive where invalid
    log_w = log_choose(safe_i - 1, n - 1) - log_choose(np.float64(size), n)
    return np.where(valid, np.exp(log_w), 0.0)


def _tie_averaged(sorted_proxy: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` with each block of equal (sorted) proxy scores replaced by the block mean."""
    new_block = np.concatenate([[True], sorted_proxy[1:] != sorted_proxy[:-1]])
    block = np.cumsum(new_block) - 1
    means = np.bincount(block, values) / np.bincount(block)
    return means[block]


def expected_best_of_n(proxy, gold, ns, weights: np.ndarray | None = None):
    """Expected proxy and gold score of best-of-n on one pool, for every n in ``ns``.

    Args:
      proxy: ``[N]`` scores used to pick (a reward model's).
      gold: ``[N]`` scores the pick is judged by.
      ns: the values of n (each in 1..N).
      weights: precomputed :func:`bon_coefficients` ``(N, ns)`` (optional, for speed).

    Returns:
      ``(proxy_curve [K], gold_curve [K])`` in float64.
    """
    proxy = np.asarray(proxy, np.float64).reshape(-1)
    gold = np.asarray(gold, np.float64).reshape(-1)
    if proxy.shape != gold.shape or proxy.size == 0:
        raise ValueError(f"proxy {proxy.shape} and gold {gold.shape} must be equal, non-empty")
    if not (np.all(np.isfinite(proxy)) and np.all(np.isfinite(gold))):
        raise ValueError("best-of-n needs finite proxy and gold scores")
    order = np.argsort(proxy, kind="stable")
    p = proxy[order]
    g = _tie_averaged(p, gold[order])
    w = bon_coefficients(p.size, ns) if weights is None else weights
    return w @ p, w @ g


def bon_curves(proxy_pools, gold_pools, ns) -> dict[str, np.ndarray]:
    """Best-of-n curves averaged over pools (one pool per prompt, pools may differ in size).

    Returns:
      ``{"proxy", "gold", "proxy_sem", "gold_sem"}``, each ``[K]``: the mean over prompts and its
      standard error (std over prompts / sqrt(#prompts)).
    """
    cache: dict[int, np.ndarray] = {}
    rows_p, rows_g = [], []
    for proxy, gold in zip(proxy_pools, gold_pools, strict=True):
        size = len(proxy)
        if size not in cache:
            cache[size] = bon_coefficients(size, ns)
        p, g = expected_best_of_n(proxy, gold, ns, cache[size])
        rows_p.append(p)
        rows_g.append(g)
    rows_p, rows_g = np.stack(rows_p), np.stack(rows_g)  # [P, K]
    sem = lambda x: x.std(0, ddof=1) / np.sqrt(len(x)) if len(x) > 1 else np.zeros(x.shape[1])
    return {"proxy": rows_p.mean(0), "gold": rows_g.mean(0),
            "proxy_sem": sem(rows_p), "gold_sem": sem(rows_g)}


def reference_curves(gold_pools, ns) -> dict[str, dict[str, np.ndarray]]:
    """Random choice (a constant proxy: every candidate tied) and the oracle (proxy = gold)."""
    const = [np.zeros(len(g)) for g in gold_pools]
    return {"random": bon_curves(const, gold_pools, ns),
            "oracle": bon_curves(gold_pools, gold_pools, ns)}
