"""Experiment helpers: run a function over a grid of settings and repeats, collecting a tidy table (in this process,
or on an executor's workers, resumable after a kill); fit power laws; measure relative errors."""

from __future__ import annotations

import inspect
import itertools
import json
import math
import numbers
import os
import signal
import tempfile
import threading
import weakref
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .progress import progress_bar
from .runtime import float64_device
from .validation import check_positive_int

__all__ = ["PowerLawFit", "SweepTaskError", "executor_from_env", "power_law_fit", "power_law_slopes", "relative_error",
           "sweep"]


def sweep(
    function: Callable[..., Mapping[str, Any]],
    grid: Mapping[str, Sequence[Any]],
    repeats: int = 1,
    *,
    desc: str = "sweep",
    progress: bool | None = None,
    executor: Executor | None = None,
    resume: Mapping[str, Any] | None = None,
):
    """Call ``function(**setting, repeat=r)`` for every point of the grid and every repeat ``r``.

    ``function`` returns a mapping of measured values; the result is a pandas DataFrame with one row per call, holding
    the setting, the repeat and the measurements. Settings are visited in the grid's order (last axis fastest), so
    the same grid gives the same table.

    By default the calls run one after another in this process. With an ``executor`` (a chapter passes
    :func:`executor_from_env`, which reads ``KDNB_EXECUTOR``) each (setting, repeat) is a task of its own, sent with cloudpickle to the executor's
    workers, and the table is assembled in the grid's order whatever the order of completion. The table is then the
    in-process one only if ``function`` draws every random number from generators made from its arguments (as
    ``run.generator_for(..., repeat)`` does), never from torch's global generator, whose state a worker does not
    share, and returns its measurements only: what it stores elsewhere (a model kept in a dict of the notebook) stays
    in the worker. Each worker sets torch's thread count as this process does.

    A process pool from :func:`executor_from_env` is shared by the sweeps of this process. Its workers ignore
    Ctrl-C: an interrupt stops the sweep here and stops the workers' tasks with it (the next sweep starts new
    workers), and a pool whose worker died, or whose workers imported kdnb files that have changed since, is
    started again in its place.

    With ``resume``, each finished task's measurements are written to kdnb's cache (:mod:`kdnb.core.cache`) as it
    completes, and a sweep started again with the same ``resume`` (after a crash or a ``kill -9``, say) computes only
    the tasks that are missing.

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
    executor : concurrent.futures.Executor or None, default None
        Where the tasks run: a ``ProcessPoolExecutor``, Dask's ``Client.get_executor()``, any ``Executor``; None
        runs them in this process, in order, as before executors existed. The measurements must be numbers,
        strings, booleans or None there, or tuples of them (a profile, such as a norm at every sample size): they
        cross processes as a table, never as pickled objects.
    resume : mapping or None, default None
        ``{"name": str, "settings": mapping}``: the cache entry's name (as in :func:`kdnb.core.cache.load_or_fit`)
        and everything ``function`` depends on beyond its arguments (the chapter's profile, seed and parameters);
        the function's source is added to the key when it can be read. None keeps nothing on disk.

    Returns
    -------
    pandas.DataFrame
        One row per call, ``len(points) * repeats`` rows in visiting order (repeats innermost), with a column per
        setting, ``"repeat"``, and a column per measurement.

    Raises
    ------
    TypeError
        If ``function`` is not callable or returns something that is not a mapping, ``repeats`` is not an int,
        ``progress`` is neither None nor a bool, ``executor`` is not an Executor, or (with an executor or
        ``resume``) a measurement is not a number, a string, a bool, None or a tuple of those.
    ValueError
        If ``grid`` is not a non-empty mapping, one of its values is not a non-empty sequence, it has a ``"repeat"``
        axis, ``repeats`` < 1, or ``resume`` is not of the form above.
    SweepTaskError
        If a task fails in an executor's worker: the message names its setting and repeat, and the worker's error
        is its cause.
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

    if executor is not None and not isinstance(executor, Executor):
        raise TypeError(f"executor must be a concurrent.futures.Executor or None, got {type(executor).__name__}")
    store = _ResumeStore(function, resume) if resume is not None else None

    keys = list(grid)
    points = list(itertools.product(*(grid[k] for k in keys)))
    if executor is None and store is None:  # the plain loop, as it has always been
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

    tasks = [(dict(zip(keys, values)), r) for values in points for r in range(repeats)]
    results: dict[int, dict] = {}
    with progress_bar(total=len(tasks), desc=desc, enabled=progress, name="progress") as bar:
        for i, (setting, r) in enumerate(tasks):
            if store is not None and (found := store.read(setting, r)) is not None:
                results[i] = found
                bar.update()

        def finish(i, measured):
            setting, r = tasks[i]
            results[i] = _plain_measurements(measured, setting, r)
            if store is not None:
                store.write(setting, r, results[i])
            bar.update()

        missing = [i for i in range(len(tasks)) if i not in results]
        if executor is None:
            for i in missing:
                setting, r = tasks[i]
                finish(i, function(**setting, repeat=r))
        else:
            try:
                import cloudpickle  # pickles a chapter's closures by value, as the standard pickle cannot
            except ImportError:
                raise ImportError("a sweep on an executor needs cloudpickle: pip install cloudpickle") from None
            payload = cloudpickle.dumps(function)
            executor = _current_executor(executor)
            threads = torch.get_num_threads()
            futures = {executor.submit(_run_task, payload, tasks[i][0], tasks[i][1], threads): i for i in missing}
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    try:
                        measured = future.result()
                    except Exception as error:
                        setting, r = tasks[i]
                        raise SweepTaskError(f"the task {setting!r}, repeat {r} failed: "
                                             f"{type(error).__name__}: {error}") from error
                    finish(i, measured)
            except KeyboardInterrupt:
                # Ctrl-C (or Jupyter's interrupt) stops the tasks too: a shared pool's workers are stopped, and the
                # next sweep starts new ones, instead of waiting for tasks whose results nobody reads.
                workers = _POOL_SIZES.get(executor)
                if workers is not None and _POOLS.get(workers) is executor:
                    _stop_pool(workers)
                raise
            finally:
                for future in futures:
                    future.cancel()
    return pd.DataFrame([{**tasks[i][0], "repeat": tasks[i][1], **results[i]} for i in range(len(tasks))])


class SweepTaskError(RuntimeError):
    """A task of :func:`sweep` failed in an executor's worker; the message names its setting and repeat."""


def _run_task(payload: bytes, setting: dict, repeat: int, threads: int) -> dict:
    """One (setting, repeat) in a worker: the function unpickled, torch's threads as in the parent."""
    import cloudpickle

    torch.set_num_threads(threads)
    function = cloudpickle.loads(payload)
    measured = function(**setting, repeat=repeat)
    return _plain_measurements(measured, setting, repeat)


_PLAIN = (numbers.Number, str, bool, type(None), np.generic)


def _plain_measurements(measured, setting, repeat) -> dict:
    """``measured`` as a dict of Python scalars and tuples of them, or a TypeError naming what is neither."""
    if not isinstance(measured, Mapping):
        raise TypeError("function must return a mapping of measured values")
    out = {}
    for name, value in measured.items():
        if isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value):
            out[name] = tuple(v.item() if isinstance(v, np.generic) else v for v in value)
        elif isinstance(value, _PLAIN):
            out[name] = value.item() if isinstance(value, np.generic) else value
        else:
            raise TypeError(f"measurement {name!r} of {setting!r}, repeat {repeat} is a {type(value).__name__}: "
                            "with an executor or resume, a measurement must be a number (float(...) of a tensor), a "
                            "string, a bool, None, or a tuple of those (tuple(tensor.tolist()))")
    return out


class _ResumeStore:
    """Per-task measurements in kdnb's cache: ``cache_dir()/<name>/<key>.json``, written atomically."""

    def __init__(self, function, resume):
        from . import cache

        if not isinstance(resume, Mapping) or set(resume) != {"name", "settings"}:
            raise ValueError("resume must be a mapping with exactly the keys 'name' and 'settings', got "
                             f"{resume!r}")
        name = cache.check_entry_name(resume["name"], "resume['name']")
        try:
            source = inspect.getsource(function)
        except (OSError, TypeError):  # a builtin or a function without a file: its settings must say it all
            source = getattr(function, "__qualname__", repr(type(function)))
        self.root = cache.cache_dir()
        self.folder = None if self.root is None else self.root / name
        self.base = cache.cache_key({"settings": resume["settings"], "function": source})

    def _path(self, setting, repeat):
        from . import cache

        if self.folder is None:
            return None
        key = cache.cache_key({"base": self.base, "setting": {k: _json_value(v) for k, v in setting.items()},
                               "repeat": repeat})
        return self.folder / f"{key}.json"

    def read(self, setting, repeat):
        path = self._path(setting, repeat)
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):  # a partial or corrupt file: computed again and overwritten
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("measured"), dict):
            return None
        # JSON has no tuples: a sequence of numbers comes back as the tuple it was written from
        return {name: tuple(value) if isinstance(value, list) else value for name, value in entry["measured"].items()}

    def write(self, setting, repeat, measured):
        path = self._path(setting, repeat)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as stream:
                json.dump({"measured": measured}, stream, allow_nan=True)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)


def _json_value(value):
    """A grid value as JSON can key it: numbers, strings and bools as they are, anything else by its repr."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    return repr(value)


IN_PROCESS = "in-process"  # the value of KDNB_EXECUTOR that keeps a sweep in this process whatever the default


def executor_from_env(default: str | None = None):
    """The executor ``KDNB_EXECUTOR`` names, for :func:`sweep`.

    * ``in-process``: None (the sweep runs in this process, one task after another);
    * ``processes:N``: a ``concurrent.futures.ProcessPoolExecutor`` of ``N >= 1`` workers (``spawn`` start, so
      that no worker inherits torch's threads);
    * ``tcp://host:port`` (or any other address with ``://``): a Dask scheduler, through
      ``distributed.Client(address).get_executor()`` (``pip install -e .[cluster]``);
    * unset or empty: ``default``, read the same way.

    The table of a sweep does not depend on the executor (see :func:`sweep`), so a chapter may give a ``default``
    that only changes how long it takes: one whose repeats are few and long, on a machine whose other cores would
    stay idle, takes ``"processes:2"``.

    Parameters
    ----------
    default : str or None, default None
        The executor where ``KDNB_EXECUTOR`` is unset or empty, in the same syntax; None (or ``"in-process"``) runs
        the sweep in this process.

    Returns
    -------
    concurrent.futures.Executor or None

    Raises
    ------
    TypeError
        If ``default`` is neither a str nor None.
    ValueError
        If ``KDNB_EXECUTOR`` (or, where it is unset, ``default``) is anything else, or ``N`` is not a positive
        integer.
    ImportError
        If it names a Dask scheduler and ``distributed`` is not installed.
    OSError
        If it names a Dask scheduler that does not answer (after distributed's connection timeout).
    """
    if default is not None and not isinstance(default, str):
        raise TypeError(f"default must be an executor's name (a str) or None, got {type(default).__name__}")
    raw = os.environ.get("KDNB_EXECUTOR", "").strip()
    source = "KDNB_EXECUTOR"
    if not raw:
        raw, source = (default or "").strip(), "default"
    if not raw or raw == IN_PROCESS:
        return None
    if raw.startswith("processes:"):
        count = raw.split(":", 1)[1]
        if not (count.isascii() and count.isdigit()) or int(count) < 1:
            raise ValueError(f"{source}=processes:N needs a positive integer N, got {raw!r}")
        return _shared_pool(int(count))
    if "://" in raw:
        try:
            from distributed import Client
        except ImportError:
            raise ImportError(f"{source}={raw!r} names a Dask scheduler, but distributed is not installed: "
                              "pip install -e .[cluster]") from None
        if raw not in _CLIENTS:  # one connection per scheduler and process, reused by every sweep
            try:
                _CLIENTS[raw] = Client(raw)
            except OSError as error:
                raise OSError(f"{source}={raw!r}: no Dask scheduler answered there ({error})") from error
        return _CLIENTS[raw].get_executor()
    raise ValueError(f"{source} must be unset, {IN_PROCESS!r}, 'processes:N' or a Dask scheduler address such as "
                     f"'tcp://127.0.0.1:8786', got {raw!r}")


_POOLS: dict[int, Executor] = {}
_POOL_SOURCES: dict[int, tuple] = {}  # kdnb's source files as they were when each pool's workers imported them
_POOL_SIZES: "weakref.WeakKeyDictionary[Executor, int]" = weakref.WeakKeyDictionary()  # every shared pool, stopped too
_CLIENTS: dict[str, Any] = {}


def _kdnb_sources() -> tuple:
    """(path, modification time, size) of every file of the kdnb package: what a worker imports when it starts."""
    root = Path(__file__).resolve().parents[1]
    found = []
    for path in sorted(root.rglob("*.py")):
        try:
            stat = path.stat()
        except OSError:  # removed while we looked
            continue
        found.append((str(path.relative_to(root)), stat.st_mtime_ns, stat.st_size))
    return tuple(found)


def _shared_pool(workers: int) -> Executor:
    """The process pool of ``workers`` workers that every sweep of this process shares, started if needed.

    A pool is started again (its workers stopped) when one of its workers died, which leaves a
    ``ProcessPoolExecutor`` broken for good, or when kdnb's source files changed since its workers imported them
    (a reader who edits kdnb and reloads it in the notebook gets workers that run the same code).
    """
    pool = _POOLS.get(workers)
    if pool is not None and (getattr(pool, "_broken", False) or _POOL_SOURCES.get(workers) != _kdnb_sources()):
        _stop_pool(workers)
        pool = None
    if pool is None:
        import multiprocessing

        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker)
        _POOL_SOURCES[workers] = _kdnb_sources()
        # Start every worker now, with Ctrl-C ignored while they are created: a worker inherits that, and so ignores
        # an interrupt that comes while it imports torch, before its initializer runs (it would die of it, and
        # leave the pool broken). The workers then import kdnb while the notebook goes on.
        with _interrupts_ignored():
            for _ in range(workers):
                pool.submit(int)
        _POOLS[workers], _POOL_SIZES[pool] = pool, workers
    return pool


def _stop_pool(workers: int) -> None:
    """Stop a shared pool's workers, running tasks included, and forget the pool."""
    pool = _POOLS.pop(workers, None)
    _POOL_SOURCES.pop(workers, None)
    if pool is None:
        return
    # ProcessPoolExecutor has no public way to stop a running task before Python 3.14 (terminate_workers): its
    # processes are ended directly, then the pool is shut down without waiting.
    for process in list(getattr(pool, "_processes", {}).values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def _current_executor(executor: Executor) -> Executor:
    """``executor``, or the shared pool that replaces it if it is a shared pool that was stopped or has to be
    started again (a notebook keeps the executor of its first cell)."""
    workers = _POOL_SIZES.get(executor)
    return executor if workers is None else _shared_pool(workers)


class _interrupts_ignored:
    """Ignore SIGINT inside the block (only in the main thread, where Python allows signal handlers)."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def _start_worker():
    # A worker leaves Ctrl-C to the notebook's process, which stops the sweep: Jupyter interrupts and shuts down a
    # kernel by signalling its whole process group, and a worker waiting for its next task would print a
    # KeyboardInterrupt traceback instead of exiting when the pool is closed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker whose parent is killed (kill -9, the out-of-memory killer) waits for its next task for ever: it
    # exits when the parent's process ends instead.
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="kdnb-parent-watch").start()


def _exit_with(parent) -> None:
    parent.join()
    os._exit(1)


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
