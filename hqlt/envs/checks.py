"""Parameter checks shared by the env constructors and factories (clear errors naming the bad value)."""

from __future__ import annotations

from typing import Any

import numpy as np


def require_int(name: str, value: Any, minimum: int) -> int:
    """`value` as an int, or a ValueError "<name> must be an integer >= <minimum>, got <value>"."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def require_probability(name: str, value: Any) -> float:
    """`value` as a float in [0, 1], or a ValueError naming the bad value."""
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} is a probability and must be in [0, 1], got {value}")
    return float(value)
