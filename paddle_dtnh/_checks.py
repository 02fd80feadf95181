"""Argument checks shared by the public constructors and functions."""

from __future__ import annotations

import math
import numbers

import numpy as np
import paddle


def _is_number(value) -> bool:
    """A real number (NumPy scalars included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_nonnegative(name: str, value) -> float:
    """``value`` as a float if it is a finite number >= 0, else ValueError."""
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
        raise ValueError(f"Invalid {name}: {value!r}; expected a finite number >= 0.")
    return float(value)


def check_positive(name: str, value) -> float:
    """``value`` as a float if it is a finite number > 0, else ValueError."""
    if not (_is_number(value) and math.isfinite(value) and value > 0):
        raise ValueError(f"Invalid {name}: {value!r}; expected a finite number > 0.")
    return float(value)


def check_ratio(name: str, value, *, low_open: bool = True) -> float:
    """``value`` as a float if it is in (0, 1] (or [0, 1) with ``low_open=False``)."""
    ok = _is_number(value) and ((0 < value <= 1) if low_open else (0 <= value < 1))
    if not ok:
        interval = "(0, 1]" if low_open else "[0, 1)"
        raise ValueError(f"Invalid {name}: {value!r}; expected a number in {interval}.")
    return float(value)


def check_positive_int(name: str, value, *, allow_none: bool = False):
    """``value`` if it is an int > 0 (or None with ``allow_none``), else ValueError."""
    if value is None and allow_none:
        return None
    if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0):
        suffix = " or None" if allow_none else ""
        raise ValueError(f"Invalid {name}: {value!r}; expected a positive int{suffix}.")
    return int(value)


def check_choice(name: str, value, choices) -> None:
    """ValueError naming the choices unless ``value`` is one of them."""
    if value not in choices:
        raise ValueError(
            f"Invalid {name}: {value!r}; expected one of {', '.join(map(repr, choices))}."
        )


def as_array(value) -> np.ndarray:
    """A Tensor, array or list as a numpy array (for constants built once)."""
    return value.numpy() if isinstance(value, paddle.Tensor) else np.asarray(value)


def check_not_empty_batch(x, where: str) -> None:
    """ValueError when the batch ``x`` (a Tensor) has no images. Reads the shape, a
    Python int: no device sync. An empty batch's mean loss is NaN (0/0) and
    its gradient zero: a step on it would only advance counters and state."""
    shape = getattr(x, "shape", None)  # other inputs (a list of tensors, a dict) pass: the model reads them
    if shape is not None and len(shape) > 0 and shape[0] == 0:
        raise ValueError(f"{where} got an empty batch (shape {list(x.shape)}): nothing to learn from, and its "
                         "mean loss is NaN. Skip empty batches in the loop (e.g. "
                         "if x.shape[0] == 0: continue). Weights, optimizer state and counters are unchanged.")


def tensor_problems(label: str, value, like) -> list:
    """What is wrong with a saved tensor that must match ``like`` (empty: nothing)."""
    if not isinstance(value, paddle.Tensor):
        return [f"{label} is a {type(value).__name__}, not a tensor"]
    if list(value.shape) != list(like.shape):
        return [f"{label}: shape {list(value.shape)} saved, {list(like.shape)} expected"]
    if value.dtype != like.dtype:
        return [f"{label}: dtype {value.dtype} saved, {like.dtype} expected"]
    return []
