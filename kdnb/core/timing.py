"""Timing: the best wall-clock time of a call, with GPU work synchronised. Used by the benchmarks."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from .validation import check_positive_int

__all__ = ["time_call"]


def time_call(function: Callable[[], object], *, repeats: int = 3, warmup: int = 1) -> float:
    """Time ``function()``: the best wall-clock time in seconds over ``repeats`` runs, after ``warmup`` untimed runs.

    The minimum is reported because on a shared machine every disturbance only adds time. CUDA and MPS work is
    synchronised before the clock is read.

    Parameters
    ----------
    function : callable
        Called with no arguments; its result is discarded.
    repeats : int, default 3
        The number of timed runs, >= 1; keyword-only.
    warmup : int, default 1
        The number of untimed runs before them, >= 0; keyword-only.

    Returns
    -------
    float
        The shortest of the ``repeats`` timed runs, in seconds (``time.perf_counter``).

    Raises
    ------
    TypeError
        If ``repeats`` or ``warmup`` is not an int.
    ValueError
        If ``repeats`` < 1 or ``warmup`` < 0.
    """
    repeats = check_positive_int(repeats, "repeats")
    warmup = check_positive_int(warmup, "warmup", minimum=0)
    def sync():  # GPU work is asynchronous: wait for it before reading the clock
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            torch.mps.synchronize()

    for _ in range(warmup):
        function()
    sync()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        sync()
        best = min(best, time.perf_counter() - start)
    return best
