"""Argument checks shared by the public constructors and functions."""

from __future__ import annotations

import math

import numpy as np
import paddle


def check_nonnegative(name: str, value) -> float:
    """``value`` as a float if it is a finite number >= 0, else ValueError."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"Invalid {name}: {value!r}; expected a finite number >= 0.")
    return float(value)


def check_choice(name: str, value, choices) -> None:
    """ValueError naming the choices unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(
            f"Invalid {name}: {value!r}; expected one of {', '.join(map(repr, choices))}."
        )


def as_array(value) -> np.ndarray:
    """A Tensor, array or list as a numpy array (for constants built once)."""
    return value.numpy() if isinstance(value, paddle.Tensor) else np.asarray(value)
