"""Mesh construction, logical axis rules and partition specs."""

from rewardjax.sharding.mesh import (
    DEFAULT_RULES,
    axis_rules,
    constrain,
    current_rules,
    logical_to_spec,
    make_mesh,
    state_shardings,
)

__all__ = [
    "DEFAULT_RULES",
    "axis_rules",
    "constrain",
    "current_rules",
    "logical_to_spec",
    "make_mesh",
    "state_shardings",
]
