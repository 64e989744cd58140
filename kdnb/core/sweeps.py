"""Experiment helpers: run a function over a grid of settings and repeats, collecting a tidy table; fit power laws;
measure relative errors."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .progress import progress_bar
from .runtime import float64_device
from .validation import check_positive_int

__all__ = ["PowerLawFit", "power_law_fit", "power_law_slopes", "relative_error", "sweep"]


def sweep(
    function: Callable[..., Mapping[str, Any]],
    grid: Mapping[str, Sequence[Any]],
    repeats: int = 1,
    *,
    desc: str = "sweep",
    progress: bool | None = None,
):
    """Call ``function(**setting, repeat=r)`` for every point of the grid and every repeat ``r``.

    ``function`` returns a mapping of measured values; the result is a pandas DataFrame with one row per call, holding
    the setting, the repeat and the measurements. Settings are visited in the grid's order (last axis fastest), so
    the same grid gives the same table.

    Parameters
    ----------
    function : callable
        Called as ``function(**setting, repeat=r)``; returns a mapping from measurement name to value.
    grid : Mapping[str, Sequence]
        A non-empty mapping from setting name to a non-empty sequence (not a str) of values; the name ``"repeat"`` is
        reserved for the repeat index. Every combination of values (the Cartesian product) is a point.
    repeats : int, default 1
        The number of repeats per point, >= 1; ``r`` runs over 0, ..., ``repeats`` - 1.
    desc : str, default "sweep"
        The label of the progress bar; keyword-only.
    progress : bool or None, default None
        Show a tqdm progress bar (removed when the sweep ends): ``True`` always, ``False`` never, ``None`` only where
        someone watches (in a Jupyter kernel or when standard error is a terminal; see
        :func:`kdnb.core.progress.progress_bar`); keyword-only.

    Returns
    -------
    pandas.DataFrame
        One row per call, ``len(points) * repeats`` rows in visiting order (repeats innermost), with a column per
        setting, ``"repeat"``, and a column per measurement.

    Raises
    ------
    TypeError
        If ``function`` is not callable or returns something that is not a mapping, ``repeats`` is not an int, or
        ``progress`` is neither None nor a bool.
    ValueError
        If ``grid`` is not a non-empty mapping, one of its values is not a non-empty sequence, it has a ``"repeat"``
        axis, or ``repeats`` < 1.
    """
    import pandas as pd

    if not callable(function):
        raise TypeError("function must be callable")
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError("grid must be a non-empty mapping from setting name to a sequence of values")
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"grid[{key!r}] must be a non-empty sequence of values, got {values!r}")
    if "repeat" in grid:
        raise ValueError("'repeat' is reserved for the repeat index; rename that grid axis")
    repeats = check_positive_int(repeats, "repeats")

    keys = list(grid)
    points = list(itertools.product(*(grid[k] for k in keys)))
    rows = []
    with progress_bar(total=len(points) * repeats, desc=desc, enabled=progress, name="progress") as bar:
        for values in points:
            setting = dict(zip(keys, values))
            for r in range(repeats):
                measured = function(**setting, repeat=r)
                if not isinstance(measured, Mapping):
                    raise TypeError("function must return a mapping of measured values")
                rows.append({**setting, "repeat": r, **measured})
                bar.update()
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class PowerLawFit:
    r"""A least-squares line through (log x, log y): :math:`y \approx e^{\mathrm{intercept}}\, x^{\mathrm{slope}}`.

    Made by :func:`power_law_fit`; calling the fit evaluates the power law, ``fit(x)``. Frozen (immutable).

    Parameters
    ----------
    slope : float
        The exponent: the slope of the line in log-log space.
    intercept : float
        The intercept of the line in log-log space (natural log), so the prefactor is :math:`e^{\mathrm{intercept}}`.
    r_squared : float
        The coefficient of determination R² of the fit in log space, at most 1.
    """

    slope: float
    intercept: float
    r_squared: float

    def __call__(self, x):
        """The fitted power law at ``x``."""
        return np.exp(self.intercept) * np.asarray(x, dtype=float) ** self.slope


def power_law_fit(x, y) -> PowerLawFit:
    r"""Fit :math:`\log y = \mathrm{slope} \cdot \log x + \mathrm{intercept}` by least squares.

    Also reports the coefficient of determination R² of the fit in log space (1 when all log y are equal). Needs at
    least two distinct, positive x and positive y.

    Parameters
    ----------
    x : array_like
        The abscissae, finite and > 0, at least two distinct values; flattened.
    y : array_like
        The ordinates, finite and > 0, as many as ``x``; flattened.

    Returns
    -------
    PowerLawFit
        The slope, intercept and R² of the line through (log x, log y).

    Raises
    ------
    ValueError
        If ``x`` and ``y`` differ in length, an entry is not finite or not > 0, or ``x`` has fewer than two distinct
        values.
    """
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(x > 0) and np.all(y > 0)):
        raise ValueError("x and y must be finite and > 0 for a log-log fit")
    if np.unique(x).size < 2:
        raise ValueError("a power-law fit needs at least two distinct x values")
    lx, ly = np.log(x), np.log(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    residual = ly - (slope * lx + intercept)
    total = ((ly - ly.mean()) ** 2).sum()
    r_squared = 1.0 - (residual**2).sum() / total if total > 0 else 1.0
    return PowerLawFit(float(slope), float(intercept), float(r_squared))


def power_law_slopes(table, x: str, y: str, *, by: str = "repeat"):
    r"""The power-law exponent of ``y`` against ``x`` fitted separately in each group of ``table``.

    A claim about a rate over repeats is decided on the spread of the per-repeat exponents (their bootstrap interval,
    :func:`kdnb.core.claims.bootstrap_interval`), not on one fit through the averaged points, which hides how much
    the rate varies from one task to the next.

    Parameters
    ----------
    table : pandas.DataFrame
        A tidy table with the columns ``x``, ``y`` and ``by``, e.g. the output of :func:`sweep`.
    x, y : str
        The columns of the abscissae and ordinates, finite and > 0 (see :func:`power_law_fit`).
    by : str
        The column whose values define the groups; ``"repeat"`` by default.

    Returns
    -------
    pandas.Series
        The slope of :func:`power_law_fit` in each group, indexed by the group's value, in increasing order.

    Raises
    ------
    ValueError
        If a column is missing, or a group has fewer than two distinct ``x`` or a value that is not finite and > 0.
    """
    import pandas as pd

    missing = [c for c in (x, y, by) if c not in table.columns]
    if missing:
        raise ValueError(f"table has no column(s) {missing}; it has {list(table.columns)}")
    slopes = {}
    for key, group in table.groupby(by, sort=True):
        try:
            slopes[key] = power_law_fit(group[x].to_numpy(), group[y].to_numpy()).slope
        except ValueError as error:
            raise ValueError(f"group {by}={key!r}: {error}") from None
    return pd.Series(slopes, name=f"slope of {y} against {x}", dtype=float).rename_axis(by)


def relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    r"""Return the relative error :math:`\|\mathrm{estimate} - \mathrm{reference}\| / \|\mathrm{reference}\|`.

    The norms are Frobenius norms, computed in float64 (on the CPU for MPS, which has no float64); gradients are not
    tracked.

    Parameters
    ----------
    estimate : torch.Tensor
        The approximation, of the same shape as ``reference`` (any dtype that converts to float64).
    reference : torch.Tensor
        The reference value, with a finite, nonzero norm.

    Returns
    -------
    float
        The relative error, >= 0.

    Raises
    ------
    TypeError
        If ``estimate`` or ``reference`` is not a ``torch.Tensor``.
    ValueError
        If the shapes differ, or ``reference``'s norm is zero or not finite.
    """
    if not isinstance(estimate, torch.Tensor) or not isinstance(reference, torch.Tensor):
        raise TypeError("estimate and reference must be torch tensors")
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate and reference must have the same shape, got {tuple(estimate.shape)} and "
                         f"{tuple(reference.shape)}")
    reference = reference.detach().to(device=float64_device(reference.device), dtype=torch.float64)
    scale = float(reference.norm())
    if scale == 0 or not math.isfinite(scale):
        raise ValueError("reference must have a finite, nonzero norm")
    return float((estimate.detach().to(reference.device, torch.float64) - reference).norm()) / scale
