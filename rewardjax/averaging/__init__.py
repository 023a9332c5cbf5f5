"""Parameter averaging as optax-style ``(init, update)`` pure functions over pytrees."""

from rewardjax.averaging.ema import (
    ElasticResetState,
    ElasticResetTransform,
    EmaState,
    EmaTransform,
    elastic_reset,
    ema,
)
from rewardjax.ensembles.weights import interpolate

__all__ = [
    "ElasticResetState",
    "ElasticResetTransform",
    "EmaState",
    "EmaTransform",
    "elastic_reset",
    "ema",
    "interpolate",
]
