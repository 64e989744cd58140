"""kdnb.core.sweeps.sweep on an executor's workers and resumed after a kill: the same table, bit for bit."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch

from kdnb.core import sweeps
from kdnb.core.models import MLP
from kdnb.core.sweeps import SweepTaskError, executor_from_env, sweep

ROOT = Path(__file__).resolve().parents[2]
GRID = {"width": [4, 8], "lr": [1e-2, 3e-2]}


def train_a_little(width, lr, repeat):
    """A few Adam steps of a small MLP, every draw from a generator made from (width, lr, repeat)."""
    g = torch.Generator().manual_seed(1000 * width + int(lr * 1e4) + repeat)
    x, y = torch.randn(64, 3, generator=g), torch.randn(64, 1, generator=g)
    model = MLP(3, [width], 1, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(20):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    return {"loss": loss.item(), "first_weight": model.net[0].weight[0, 0].item()}


@pytest.fixture(scope="module")
def pool():
    """The 2-worker pool that KDNB_EXECUTOR=processes:2 names, started once for this module."""
    executor = sweeps._shared_pool(2)
    yield executor
    sweeps._stop_pool(2)


def test_a_process_pool_gives_the_in_process_table_bit_for_bit(pool):
    alone = sweep(train_a_little, GRID, repeats=2, progress=False)
    pooled = sweep(train_a_little, GRID, repeats=2, progress=False, executor=pool)
    pd.testing.assert_frame_equal(alone, pooled, check_exact=True)


def test_a_closure_of_a_notebook_crosses_to_the_workers(pool):
    offset = 0.5  # captured by value, as a chapter's functions capture its settings

    def shifted(width, lr, repeat):
        return {"loss": train_a_little(width, lr, repeat)["loss"] + offset}

    alone = sweep(shifted, GRID, progress=False)
    pd.testing.assert_frame_equal(alone, sweep(shifted, GRID, progress=False, executor=pool), check_exact=True)


def test_a_failing_task_names_its_setting_and_repeat(pool):
    def fails_at(width, lr, repeat):
        if width == 8 and repeat == 1:
            raise ArithmeticError("diverged")
        return {"loss": 0.0}

    with pytest.raises(SweepTaskError, match=r"\{'width': 8, 'lr': 0.0[13]\}, repeat 1 failed: ArithmeticError: "
                                             "diverged"):
        sweep(fails_at, GRID, repeats=2, progress=False, executor=pool)


def test_only_numbers_cross_processes(pool):
    with pytest.raises(SweepTaskError, match="measurement 'model'.*is a Linear"):
        sweep(lambda width, lr, repeat: {"model": torch.nn.Linear(1, 1)}, GRID, progress=False, executor=pool)
    with pytest.raises(SweepTaskError, match="measurement 'loss'.*is a Tensor.*float"):
        sweep(lambda width, lr, repeat: {"loss": torch.zeros(())}, GRID, progress=False, executor=pool)
    with pytest.raises(TypeError, match="executor must be"):
        sweep(train_a_little, GRID, progress=False, executor="processes:2")


def loss_curve(width, lr, repeat):
    """A profile of numbers per task (the loss after every step), as a chapter returns a norm at every prefix."""
    g = torch.Generator().manual_seed(1000 * width + int(lr * 1e4) + repeat)
    x, y = torch.randn(32, 3, generator=g), torch.randn(32, 1, generator=g)
    model = MLP(3, [width], 1, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.double())
    return {"curve": tuple(torch.stack(losses).tolist()), "steps": len(losses)}


def test_a_tuple_of_numbers_crosses_processes_and_the_cache_as_a_tuple(pool, tmp_path, monkeypatch):
    alone = sweep(loss_curve, GRID, repeats=2, progress=False)
    assert all(isinstance(c, tuple) and len(c) == 5 for c in alone["curve"])
    pd.testing.assert_frame_equal(alone, sweep(loss_curve, GRID, repeats=2, progress=False, executor=pool),
                                  check_exact=True)
    monkeypatch.setenv("KDNB_CACHE_DIR", str(tmp_path))
    resume = {"name": "curves", "settings": {}}
    sweep(loss_curve, GRID, repeats=2, progress=False, resume=resume)
    read_back = sweep(loss_curve, GRID, repeats=2, progress=False, resume=resume)  # every task from the cache
    pd.testing.assert_frame_equal(alone, read_back, check_exact=True)
    with pytest.raises(SweepTaskError, match="measurement 'curve'.*is a list.*tuple"):
        sweep(lambda width, lr, repeat: {"curve": [1.0, 2.0]}, GRID, progress=False, executor=pool)
    with pytest.raises(SweepTaskError, match="measurement 'curve'.*is a tuple"):
        sweep(lambda width, lr, repeat: {"curve": (torch.zeros(()),)}, GRID, progress=False, executor=pool)


def test_kdnb_executor_names_the_executor(monkeypatch, pool):
    monkeypatch.delenv("KDNB_EXECUTOR", raising=False)
    assert executor_from_env() is None
    monkeypatch.setenv("KDNB_EXECUTOR", "processes:2")
    assert executor_from_env() is pool and isinstance(pool, ProcessPoolExecutor)  # one pool per size, reused
    for bad in ("processes:0", "processes:two", "processes:\u00b2", "threads", "8786"):
        monkeypatch.setenv("KDNB_EXECUTOR", bad)
        with pytest.raises(ValueError, match="KDNB_EXECUTOR"):
            executor_from_env()


def test_a_chapter_default_applies_only_where_kdnb_executor_is_unset(monkeypatch, pool):
    monkeypatch.delenv("KDNB_EXECUTOR", raising=False)
    assert executor_from_env(default="processes:2") is pool
    assert executor_from_env(default="in-process") is None and executor_from_env(default=None) is None
    monkeypatch.setenv("KDNB_EXECUTOR", "")  # empty is unset
    assert executor_from_env(default="processes:2") is pool
    monkeypatch.setenv("KDNB_EXECUTOR", "in-process")  # the reader's choice wins over the chapter's default
    assert executor_from_env(default="processes:2") is None
    monkeypatch.delenv("KDNB_EXECUTOR")
    with pytest.raises(ValueError, match="default must be unset, 'in-process', 'processes:N'.*got 'pool'"):
        executor_from_env(default="pool")
    with pytest.raises(ValueError, match="default=processes:N needs a positive integer N, got 'processes:0'"):
        executor_from_env(default="processes:0")
    with pytest.raises(TypeError, match="default must be an executor's name"):
        executor_from_env(default=2)
    monkeypatch.setenv("KDNB_EXECUTOR", "processes:2")
    with pytest.raises(TypeError, match="default must be"):  # refused even where the environment decides
        executor_from_env(default=2)


def interrupt_handler_is_ignored(job, repeat):
    import signal

    return {"ignored": signal.getsignal(signal.SIGINT) is signal.SIG_IGN}


def test_pool_workers_leave_interrupts_to_the_notebook(pool):
    # Jupyter signals a kernel's whole process group to interrupt or stop it; the workers must not print tracebacks
    assert sweep(interrupt_handler_is_ignored, {"job": [0, 1]}, repeats=2, progress=False,
                 executor=pool)["ignored"].all()


def signal_ignored(pid: int, signum: int) -> bool:
    """Whether process ``pid`` ignores ``signum``, from the SigIgn mask of /proc/<pid>/status (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    raise AssertionError("no SigIgn line")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_pool_workers_ignore_interrupts_from_their_start_and_the_notebook_does_not():
    import signal

    before = signal.getsignal(signal.SIGINT)
    try:
        fresh = sweeps._shared_pool(1)
        # at once, while the worker still imports torch: an interrupt then would have killed it and the pool
        assert [signal_ignored(p.pid, signal.SIGINT) for p in fresh._processes.values()] == [True]
        assert signal.getsignal(signal.SIGINT) is before, "the notebook's own Ctrl-C handler is restored"
    finally:
        sweeps._stop_pool(1)


def test_a_pool_whose_worker_died_or_whose_kdnb_changed_is_started_again(monkeypatch):
    import signal
    import time

    first = sweeps._shared_pool(1)
    assert sweep(train_a_little, GRID, progress=False, executor=first)["loss"].notna().all()
    (worker,) = first._processes.values()
    os.kill(worker.pid, signal.SIGKILL)  # the out-of-memory killer, say: a ProcessPoolExecutor is then broken for good
    deadline = time.monotonic() + 30
    while not first._broken and time.monotonic() < deadline:
        time.sleep(0.05)
    # the notebook keeps the executor of its first cell: the sweep runs on a new pool in its place
    table = sweep(train_a_little, GRID, progress=False, executor=first)
    pd.testing.assert_frame_equal(table, sweep(train_a_little, GRID, progress=False), check_exact=True)
    second = sweeps._shared_pool(1)
    assert second is not first and sweeps._shared_pool(1) is second
    # kdnb's files changed (a reader edited and reloaded a module): the workers are started again, with that code
    monkeypatch.setattr(sweeps, "_kdnb_sources", lambda: (("edited.py", 1, 1),))
    third = sweeps._shared_pool(1)
    assert third is not second and sweeps._shared_pool(1) is third
    sweeps._stop_pool(1)


LIFECYCLE = textwrap.dedent("""
    import os, signal, sys, threading, time, json
    from kdnb.core import sweeps

    def slow(x, repeat):
        time.sleep(60)
        return {"x": x}

    def quick(x, repeat):
        return {"pid": os.getpid()}

    if __name__ == "__main__":
        executor = sweeps.executor_from_env()
        first = sorted(p.pid for p in executor._processes.values())
        print(json.dumps(first), flush=True)
        if sys.argv[1] == "interrupt":
            threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT)).start()
            start = time.monotonic()
            try:
                sweeps.sweep(slow, {"x": [0, 1]}, progress=False, executor=executor)
            except KeyboardInterrupt:
                print(json.dumps(time.monotonic() - start), flush=True)
            pids = sweeps.sweep(quick, {"x": [0, 1]}, progress=False, executor=executor)["pid"].tolist()
            print(json.dumps(pids), flush=True)
        else:
            sweeps.sweep(quick, {"x": [0, 1]}, progress=False, executor=executor)
            print("ready", flush=True)
            time.sleep(600)
""")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited; where no init reaps it, it stays listed


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_an_interrupt_stops_the_workers_tasks_and_the_next_sweep_runs_on_new_ones(tmp_path):
    script = tmp_path / "lifecycle.py"
    script.write_text(LIFECYCLE)
    env = {**os.environ, "KDNB_EXECUTOR": "processes:2", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script), "interrupt"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    first, waited, pids = (json.loads(line) for line in done.stdout.splitlines())
    assert waited < 30, "the sweep stopped at the interrupt, not after its 60-second tasks"
    assert not any(alive(pid) for pid in first), "the interrupted tasks' workers were stopped"
    assert set(pids).isdisjoint(first) and len(set(pids)) >= 1
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_workers_exit_when_their_parent_is_killed(tmp_path):
    import signal
    import time

    script = tmp_path / "lifecycle.py"
    script.write_text(LIFECYCLE)
    env = {**os.environ, "KDNB_EXECUTOR": "processes:2", "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, str(script), "wait"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        workers = json.loads(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "ready"
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers), "the workers outlived their parent"
    finally:
        parent.kill()


def test_without_an_executor_a_sweep_stays_in_this_process_and_with_one_it_does_not(monkeypatch, pool):
    monkeypatch.setenv("KDNB_EXECUTOR", "processes:2")  # read by executor_from_env only, never by sweep itself
    kept = []

    def keeps(width, lr, repeat):
        kept.append(width)  # a side effect: seen here only when the task runs here
        return {"pid": os.getpid()}

    assert set(sweep(keeps, GRID, progress=False)["pid"]) == {os.getpid()} and len(kept) == 4
    elsewhere = sweep(keeps, GRID, progress=False, executor=pool)
    assert os.getpid() not in set(elsewhere["pid"]) and len(kept) == 4


def test_resume_computes_nothing_twice_and_recomputes_a_corrupt_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("KDNB_CACHE_DIR", str(tmp_path))
    calls = []

    def counted(width, lr, repeat):
        calls.append((width, lr, repeat))
        return train_a_little(width, lr, repeat)

    resume = {"name": "toy-sweep", "settings": {"profile": "smoke"}}
    first = sweep(counted, GRID, repeats=2, progress=False, resume=resume)
    assert len(calls) == 8
    again = sweep(counted, GRID, repeats=2, progress=False, resume=resume)
    assert len(calls) == 8
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    pd.testing.assert_frame_equal(first, sweep(train_a_little, GRID, repeats=2, progress=False), check_exact=True)
    entries = sorted((tmp_path / "toy-sweep").glob("*.json"))
    assert len(entries) == 8
    entries[3].write_text('{"measured": {"loss": ')  # a write cut short
    pd.testing.assert_frame_equal(first, sweep(counted, GRID, repeats=2, progress=False, resume=resume),
                                  check_exact=True)
    assert len(calls) == 9
    sweep(counted, GRID, repeats=2, progress=False, resume={**resume, "settings": {"profile": "default"}})
    assert len(calls) == 17, "other settings are other entries"


def test_bad_resume_is_refused():
    for bad in ({"name": "x"}, {"name": "../x", "settings": {}}, ["x", {}]):
        with pytest.raises(ValueError, match="resume"):
            sweep(train_a_little, GRID, progress=False, resume=bad)


SCRIPT = textwrap.dedent("""
    import os, signal, sys, json
    from kdnb.core.sweeps import sweep

    def task(x, repeat):
        with open(os.environ["LOG"], "a") as log:
            log.write(f"{x} {repeat}\\n")
        if os.environ.get("KILL_AT") == f"{x} {repeat}":
            os.kill(os.getpid(), signal.SIGKILL)  # as kill -9 would, mid-sweep
        return {"value": (x + 0.1) ** 0.5 * (repeat + 1)}

    table = sweep(task, {"x": list(range(6))}, repeats=2, progress=False,
                  resume={"name": "killed", "settings": {"version": 1}})
    print(json.dumps(table["value"].tolist()))
""")


def test_a_sweep_killed_with_sigkill_resumes_with_only_the_missing_tasks(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(SCRIPT)
    log = tmp_path / "log.txt"
    env = {**os.environ, "KDNB_CACHE_DIR": str(tmp_path / "cache"), "LOG": str(log), "KILL_AT": "3 1"}
    killed = subprocess.run([sys.executable, str(script)], env=env, cwd=ROOT, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL
    done_before = log.read_text().split("\n")[:-1]
    assert done_before[-1] == "3 1" and len(done_before) == 8
    log.unlink()
    env.pop("KILL_AT")
    resumed = subprocess.run([sys.executable, str(script)], env=env, cwd=ROOT, capture_output=True, text=True,
                             check=True)
    assert log.read_text().split("\n")[:-1] == ["3 1", "4 0", "4 1", "5 0", "5 1"]
    expected = [(x + 0.1) ** 0.5 * (r + 1) for x in range(6) for r in range(2)]
    assert json.loads(resumed.stdout) == expected


# --- Dask: the same sweep on a LocalCluster that the test starts ------------------------------------------------

@pytest.fixture(scope="module")
def dask_client():
    from distributed import Client, LocalCluster

    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
          Client(cluster) as client):
        yield client


def test_a_dask_cluster_gives_the_in_process_table_bit_for_bit(dask_client):
    alone = sweep(train_a_little, GRID, repeats=2, progress=False)
    on_dask = sweep(train_a_little, GRID, repeats=2, progress=False, executor=dask_client.get_executor())
    pd.testing.assert_frame_equal(alone, on_dask, check_exact=True)


def test_kdnb_executor_reaches_a_dask_scheduler_by_its_address(dask_client, monkeypatch):
    monkeypatch.setenv("KDNB_EXECUTOR", dask_client.scheduler.address)
    pd.testing.assert_frame_equal(sweep(train_a_little, GRID, progress=False),
                                  sweep(train_a_little, GRID, progress=False, executor=executor_from_env()),
                                  check_exact=True)
    executor_from_env()
    assert list(sweeps._CLIENTS) == [dask_client.scheduler.address], "one client per address, reused"
    sweeps._CLIENTS.pop(dask_client.scheduler.address).close()


# Every chapter whose sweeps take KDNB_EXECUTOR: its tasks on the cluster's workers, its functions sent there as the
# notebook defines them, give the claims' numbers of the same run in one process.
EXECUTOR_CHAPTERS = ["01_distillation_basics", "02_ntk_linearization", "04_data_inefficiency", "06_factor_transfer",
                     "07_gan_compression_vem", "08_ensemble_distillation", "09_weakly_supervised_mil",
                     "11_copy_or_average"]


def sweep_calls(chapter: Path) -> list:
    """Every call of ``sweep`` (or ``sweeps.sweep``) in a chapter's code cells, as ast.Call nodes."""
    import ast

    import nbformat

    calls = []
    for cell in nbformat.read(chapter, as_version=4).cells:
        if cell.cell_type == "code":
            calls += [node for node in ast.walk(ast.parse(cell.source)) if isinstance(node, ast.Call)
                      and getattr(node.func, "id", getattr(node.func, "attr", None)) == "sweep"]
    return calls


def test_every_sweep_of_every_chapter_takes_kdnb_executor():
    sweeping = {}
    for chapter in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if calls := sweep_calls(chapter):
            sweeping[chapter.stem] = all(any(k.arg == "executor" for k in call.keywords) for call in calls)
    assert sorted(sweeping) == EXECUTOR_CHAPTERS, "the chapters run on a cluster below are those that sweep"
    assert all(sweeping.values()), f"a sweep without executor=: {[c for c, ok in sweeping.items() if not ok]}"


@pytest.mark.notebooks
@pytest.mark.parametrize("name", EXECUTOR_CHAPTERS)
def test_a_chapter_on_a_dask_cluster_gives_the_numbers_of_a_run_in_one_process(name, dask_client, tmp_path,
                                                                                monkeypatch):
    import papermill as pm

    chapter = ROOT / "notebooks" / f"{name}.ipynb"
    measured = {}
    transitions = lambda: dask_client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)  # noqa: E731
    before = transitions()
    for where in ("here", "dask"):
        monkeypatch.setenv("KDNB_CLAIMS_DIR", str(tmp_path / where))
        if where == "dask":
            monkeypatch.setenv("KDNB_EXECUTOR", dask_client.scheduler.address)
        pm.execute_notebook(str(chapter), str(tmp_path / f"{where}.ipynb"), parameters={"profile": "smoke"},
                            cwd=str(tmp_path), kernel_name="python3", progress_bar=False)
        saved = json.loads((tmp_path / where / f"{name}.smoke.json").read_text())
        measured[where] = json.dumps([c["measured"] for c in saved["claims"]])
    assert measured["dask"] == measured["here"]
    assert transitions() > before, "the chapter's tasks ran on the cluster"
