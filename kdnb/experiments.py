"""Experiment helpers: run a function over a grid of settings and repeats, collecting a tidy table."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Mapping, Sequence

from tqdm import tqdm

from .validation import check_positive_int

__all__ = ["sweep"]


def sweep(
    function: Callable[..., Mapping[str, Any]],
    grid: Mapping[str, Sequence[Any]],
    repeats: int = 1,
    *,
    desc: str = "sweep",
    progress: bool = True,
):
    """Call ``function(**setting, repeat=r)`` for every point of the grid and every repeat ``r``.

    ``function`` returns a mapping of measured values; the result is a pandas DataFrame with one row per call, holding
    the setting, the repeat and the measurements. Settings are visited in the grid's order (last axis fastest), so
    the same grid gives the same table.
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
    with tqdm(total=len(points) * repeats, desc=desc, disable=not progress, leave=False) as bar:
        for values in points:
            setting = dict(zip(keys, values))
            for r in range(repeats):
                measured = function(**setting, repeat=r)
                if not isinstance(measured, Mapping):
                    raise TypeError("function must return a mapping of measured values")
                rows.append({**setting, "repeat": r, **measured})
                bar.update()
    return pd.DataFrame(rows)
