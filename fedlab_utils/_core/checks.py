"""Argument checks with one message shape: parameter, constraint, value received.

Modelled on scikit-learn's ``_param_validation``: every public function calls these instead of
``assert``, so a user always reads ``"<name> must be <constraint>, got <value>"``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch


def _show(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def fail(name: str, constraint: str, value) -> None:
    raise ValueError(f"{name} must be {constraint}, got {_show(value)}")


def integer(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """An int (not bool) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_show(value)} of type {type(value).__name__}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        fail(name, f"an int in [{lo}, {hi}]", value)
    return value


def real(name: str, value, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number in the interval given (open or closed at each end)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_show(value)} of type {type(value).__name__}")
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        fail(name, f"a finite number in {left}{lo}, {hi}{right}", value)
    return value


def option(name: str, value, choices) -> str:
    if value not in choices:
        fail(name, f"one of {sorted(choices)}", value)
    return value


def labels(name: str, y) -> np.ndarray:
    """Integer class labels as a 1-D int64 numpy array (torch tensor or array-like accepted)."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1:
        fail(name, "a 1-D array of class labels", f"array of shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            fail(name, "integer class labels", f"dtype {y.dtype}")
    if y.size and y.min() < 0:
        fail(name, "non-negative class labels", int(y.min()))
    return y.astype(np.int64, copy=False)


def finite_tensor(name: str, x: torch.Tensor) -> torch.Tensor:
    if x.is_floating_point() and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        fail(name, "finite (no NaN or infinity)", f"a tensor with {bad} non-finite entries")
    return x
