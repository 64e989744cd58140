"""Input validation at the boundary of kdnb's public functions.

Each checker raises ``TypeError`` for a value of the wrong type and ``ValueError`` for a value out of range, and the
message names the argument and its allowed range. Nothing is clipped.
"""

from __future__ import annotations

import math
from numbers import Real

import torch

__all__ = [
    "check_choice",
    "check_finite_tensor",
    "check_in_unit_interval",
    "check_positive",
    "check_positive_int",
    "check_soft_ratio",
    "check_temperature",
    "check_variance",
]


def _as_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
            value = value.item()
        else:
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def check_in_unit_interval(value, name: str, *, open_low: bool = False) -> float:
    """Return ``value`` as a float after checking it lies in [0, 1] (or (0, 1] with ``open_low``)."""
    x = _as_real(value, name)
    low_ok = x > 0 if open_low else x >= 0
    if not (low_ok and x <= 1):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return x


def check_soft_ratio(rho, name: str = "rho") -> float:
    """The soft ratio ρ: the weight of the soft (teacher) term, in [0, 1]."""
    return check_in_unit_interval(rho, name)


def check_positive(value, name: str) -> float:
    """Return ``value`` as a float after checking it is finite and > 0."""
    x = _as_real(value, name)
    if not (x > 0 and math.isfinite(x)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return x


def check_variance(value, name: str, *, positive: bool = False) -> float:
    """A variance: a finite number >= 0 (or > 0 with ``positive``), returned as a float."""
    x = _as_real(value, name)
    if not math.isfinite(x) or x < 0 or (positive and x == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return x


def check_temperature(temperature, name: str = "temperature") -> float:
    """The distillation temperature T: finite and > 0."""
    return check_positive(temperature, name)


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """Return ``value`` after checking it is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, Real) and float(value).is_integer() and not isinstance(value, bool):
            value = int(value)
        else:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_choice(value, name: str, choices) -> str:
    """Return ``value`` after checking it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_finite_tensor(x, name: str, *, floating: bool = True) -> torch.Tensor:
    """Check ``x`` is a torch tensor (floating point unless ``floating=False``) with finite entries."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if floating and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must contain only finite values (found NaN or inf)")
    return x
