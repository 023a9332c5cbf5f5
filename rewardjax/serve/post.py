"""What the server adds to a scorer's output: member statistics, a chosen combination of the
members and the export's reward normalisation.

It runs inside the batch worker on whole padded batches, so its array ops see the batcher's
fixed shapes and compile during warm-up, never under load.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from rewardjax.ensembles import predictions as ens


def normalisation_of(scorer) -> dict | None:
    """The ``{"mean", "std"}`` a native export stored for its rewards (its manifest), or None.

    A trained workdir's checkpoint has none: statistics written with an HF export that served
    as its ``model.path`` describe that starting model, not the one trained from it.
    """
    model = getattr(scorer, "model", None)
    manifest = getattr(model, "manifest", None)
    return manifest.get("normalisation") if isinstance(manifest, dict) else None


def make_post(scorer, *, combine: str = "", lam: float = 0.5,
              normalize: bool = True) -> tuple[Callable[[dict], dict], dict]:
    """``(post, labels)``: ``post(scorer output) -> output`` with, where the scorer has
    ``members [N, M]``, their ``std``, ``min`` and ``uwo`` (λ = ``lam``), ``reward`` replaced by
    the ``combine`` of the members when asked (mean, median, min, uwo, mean_minus_std; "" or
    "wa": the scorer's own), and the normalised reward (``raw_reward`` kept) when the export
    stored statistics and ``normalize``. ``labels``: column names of named breakdowns."""
    if combine not in ("", "wa") + tuple(ens.METHODS):
        raise ValueError(f"unknown serve.combine {combine!r}; choose '', wa or one of "
                         f"{', '.join(ens.METHODS)}")
    if combine == "wa" and getattr(scorer, "average", None) is None:
        raise ValueError("serve.combine=wa needs a members workdir scored by its weight average "
                         "(WARM); use mean, median, min, uwo or mean_minus_std, or leave it ''")
    norm = normalisation_of(scorer) if normalize else None
    labels = dict(scorer.labels)

    def post(out: dict) -> dict:
        out = dict(out)
        members = out.get("members")
        if members is not None:
            m = jnp.asarray(np.asarray(members, np.float32).T)  # [M, N]
            if combine not in ("", "wa"):
                out["reward"] = np.asarray(ens.combine(m, combine, lam=lam))
            out["std"] = np.asarray(ens.member_disagreement(m))
            out["min"] = np.asarray(ens.min_reward(m))
            out["uwo"] = np.asarray(ens.uwo_reward(m, lam=lam))
        elif combine not in ("", "wa"):
            raise ValueError(f"serve.combine={combine} needs members; this model has none")
        if norm:
            raw = np.asarray(out["reward"], np.float32)
            out["raw_reward"] = raw
            out["reward"] = (raw - np.float32(norm["mean"])) / np.float32(norm["std"])
        return out

    return post, labels

