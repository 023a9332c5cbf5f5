"""Data preparation for the ArmoRM recipe (:mod:`rewardjax.recipes.armorm.train`): the frozen
features of step 1, cached on disk, and the per-objective ratings and validation split of stage 1.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time

import numpy as np

from rewardjax.data.features import FeatureCache, backbone_fingerprint
from rewardjax.data.features import pair_features as cached_pair_features
from rewardjax.runtime import BackboneFeatures
from rewardjax.runtime.workdir import is_local

log = logging.getLogger(__name__)


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(fit, val)`` pair indices: a fixed random ``fraction`` held out (>= 1 each)."""
    n_val = min(max(int(round(n * fraction)), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def objective_names(pairs) -> list[str]:
    """Attribute names over all pairs' ``meta["attrs_chosen"/"attrs_rejected"]``: in the
    simulator's order when they are all simulator attributes, else in first-seen order."""
    from rewardjax.data.simulator import attribute_names

    names: list[str] = []
    for p in pairs:
        for side in ("attrs_chosen", "attrs_rejected"):
            names += [a for a in (p.meta.get(side) or {}) if a not in names]
    known = attribute_names()
    return [a for a in known if a in names] if set(names) <= set(known) else names


def objective_labels(pairs, names) -> tuple[np.ndarray, np.ndarray]:
    """``(y_chosen, y_rejected)`` ``[N, K]`` ratings; NaN where a pair's response has none."""
    out = np.full((2, len(pairs), len(names)), np.nan)
    col = {a: j for j, a in enumerate(names)}
    for i, p in enumerate(pairs):
        for s, side in enumerate(("attrs_chosen", "attrs_rejected")):
            for a, v in (p.meta.get(side) or {}).items():
                if a in col and v is not None:
                    out[s, i, col[a]] = float(v)
    return out[0], out[1]


def drop_labels(y: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """``y`` with a fixed random ``rate`` of its ratings set to NaN (missing annotations)."""
    if rate <= 0:
        return y
    y = y.copy()
    y[np.random.default_rng(seed).random(y.shape) < rate] = np.nan
    return y


def feature_cache_dir(workdir: str) -> str:
    """``<workdir>/features``; for a non-local workdir (``gs://``) a directory on this machine
    (the cache is local numpy files, and a cache only pays where reading it is fast)."""
    if is_local(workdir):
        return os.path.join(workdir, "features")
    key = hashlib.sha256(workdir.encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), "rewardjax-features", key)


def compute_features(config, workdir: str, sets: dict, train_pairs) -> dict[str, dict]:
    """``{name: {"prompt", "chosen", "rejected"}}`` from the cache; the backbone is built (and
    run) only when some set misses."""
    from rewardjax.models import registry
    from rewardjax.runtime.setup import build_run, get_tokenizer, pair_texts

    spec = registry.resolve(config.model.path)
    tokenizer = get_tokenizer(config, spec, workdir, lambda: pair_texts(train_pairs))
    fingerprint = backbone_fingerprint(config, tokenizer)
    cache = FeatureCache(config.armorm.cache_dir or feature_cache_dir(workdir))
    extractor = None

    def compute(prompts, responses):
        nonlocal extractor
        if extractor is None:
            extractor = BackboneFeatures(build_run(config, workdir, train_pairs), config)
        t = time.time()
        out = extractor(prompts, responses)
        log.info("features: %d responses in %.1fs", len(responses), time.time() - t)
        return out

    out = {name: cached_pair_features(cache, fingerprint, pairs, compute, name)
           for name, pairs in sets.items()}
    log.info("feature cache %s: %d hits, %d misses", cache.directory, cache.hits, cache.misses)
    return out
