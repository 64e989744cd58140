"""Where a sweep's tasks run: in this process, on a 2-process pool, on a 2-worker Dask LocalCluster.

The tasks are chapter 4's repeat loop, scaled down: each repeat draws points on the sphere and solves the wide
network's prefix norms for every target of the paper's Fig. 3 (``target_difficulty_norms``). Prints the wall time of
each executor against the in-process loop measured in the same run (a ratio below 1: faster than one process), and
the overhead of a task that does nothing (per task, in ms). Nothing here asserts a time.
"""

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("KDNB_THREADS", "1")

import torch  # noqa: E402

from kdnb.core.runtime import set_threads  # noqa: E402
from kdnb.core.sweeps import sweep  # noqa: E402

N_POINTS = int(os.environ.get("KDNB_BENCH_POINTS", "768"))
REPEATS = int(os.environ.get("KDNB_BENCH_REPEATS", "8"))


def chapter4_repeat(n_points, repeat):
    """One repeat of chapter 4's loop: the norm at every prefix of every target, as tuples of numbers (as the
    chapter's sweep returns them)."""
    from kdnb.papers import wide_network_kd as wide

    generator = torch.Generator().manual_seed(10_000 + repeat)
    norms = wide.target_difficulty_norms(generator, n_points=n_points)
    return {task: tuple(norm.tolist()) for task, norm in norms.items()}


def nothing(n_points, repeat):
    return {"value": float(repeat)}


def timed(function, grid, repeats, executor):
    start = time.perf_counter()
    table = sweep(function, grid, repeats, progress=False, executor=executor)
    return time.perf_counter() - start, table


def warm(executor):
    """Start the workers and import kdnb there before timing (both executors start lazily)."""
    sweep(nothing, {"n_points": [1]}, 4, progress=False, executor=executor)


def main():
    from distributed import Client, LocalCluster

    set_threads()
    grid = {"n_points": [N_POINTS]}
    results = {}
    base, reference = timed(chapter4_repeat, grid, REPEATS, None)
    empty_base, _ = timed(nothing, grid, 64, None)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        warm(pool)
        results["2-process pool"] = (*timed(chapter4_repeat, grid, REPEATS, pool), timed(nothing, grid, 64, pool)[0])
    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
          Client(cluster) as client):
        executor = client.get_executor()
        warm(executor)
        results["Dask LocalCluster, 2 workers"] = (*timed(chapter4_repeat, grid, REPEATS, executor),
                                                   timed(nothing, grid, 64, executor)[0])
    print(f"chapter 4's repeat loop, {REPEATS} repeats of {N_POINTS} points; in one process {base:.2f} s")
    print(f"{'executor':32s} {'time / one process':>20s} {'overhead per task (ms)':>24s} {'same table':>11s}")
    for name, (seconds, table, empty) in results.items():
        same = table.equals(reference)
        print(f"{name:32s} {seconds / base:20.2f} {(empty - empty_base) / 64 * 1e3:24.1f} {str(same):>11s}")


if __name__ == "__main__":
    main()
