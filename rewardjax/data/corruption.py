"""Label corruption for robustness experiments (WARM under label noise)."""

from __future__ import annotations

import dataclasses

import numpy as np

from rewardjax.data.records import Pair


def corrupt_labels(pairs: list[Pair], rate: float, seed: int = 0) -> list[Pair]:
    """Swaps chosen and rejected on ``round(rate * n)`` pairs chosen at random.

    Every returned pair carries ``meta["corrupted"]`` (True on the swapped ones), so results can
    be split into corrupted-train and clean-train; the inputs are not modified.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"corruption rate must be in [0, 1], got {rate}")
    n = len(pairs)
    flip = np.zeros(n, bool)
    flip[np.random.default_rng(seed).choice(n, int(round(rate * n)), replace=False)] = True
    out = []
    for pair, f in zip(pairs, flip):
        meta = dict(pair.meta, corrupted=bool(f))
        if f:
            # Per-side metadata (gold_chosen / gold_rejected, attrs_*) follows its response.
            for key in [k for k in meta if k.endswith("_chosen")]:
                other = key[: -len("_chosen")] + "_rejected"
                if other in meta:
                    meta[key], meta[other] = meta[other], meta[key]
            out.append(dataclasses.replace(pair, chosen=pair.rejected, rejected=pair.chosen,
                                           meta=meta))
        else:
            out.append(dataclasses.replace(pair, meta=meta))
    return out
