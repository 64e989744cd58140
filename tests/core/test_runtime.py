"""Device selection, seeding, threads, profiles and chapter settings."""

import random

import numpy as np
import pytest
import torch

import kdnb
from kdnb.core.runtime import (
    configure_allocator,
    environment_report,
    float64_device,
    resolve_profile,
    seed_everything,
    select_device,
    set_threads,
    start_chapter,
)


def test_select_device_prefers_available_and_honours_override(monkeypatch):
    monkeypatch.delenv("KDNB_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert select_device().type == expected
    monkeypatch.setenv("KDNB_DEVICE", "cpu")
    assert select_device() == torch.device("cpu")
    assert select_device("CPU") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")


def test_select_device_rejects_bad_and_unavailable(monkeypatch):
    with pytest.raises(ValueError, match="device must be one of"):
        select_device("tpu")
    monkeypatch.setenv("KDNB_DEVICE", "gpu")
    with pytest.raises(ValueError, match="device must be one of"):
        select_device()
    with pytest.raises(TypeError, match="device must be a str"):
        select_device(3)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            select_device("cuda")


def test_seed_everything_makes_all_generators_repeat():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    g1 = seed_everything(123)
    a = draw(), torch.rand(3, generator=g1)
    g2 = seed_everything(123)
    b = draw(), torch.rand(3, generator=g2)
    assert a[0] == b[0] and torch.equal(a[1], b[1])
    seed_everything(124)
    assert draw() != a[0]
    assert torch.are_deterministic_algorithms_enabled()


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (2**32, ValueError), (1.5, TypeError), (True, TypeError)])
def test_seed_everything_validates(seed, error):
    with pytest.raises(error, match="seed"):
        seed_everything(seed)


def test_set_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("KDNB_THREADS", raising=False)
        assert set_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("KDNB_THREADS", "2")
        assert set_threads() == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("KDNB_THREADS", "two")
        with pytest.raises(ValueError, match="KDNB_THREADS must be a positive integer"):
            set_threads()
        with pytest.raises(ValueError, match="threads must be >= 1"):
            set_threads(0)
        with pytest.raises(TypeError, match="threads must be an int"):
            set_threads(1.0)
    finally:
        torch.set_num_threads(before)


def test_resolve_profile(monkeypatch):
    monkeypatch.delenv("KDNB_PROFILE", raising=False)
    assert resolve_profile() == "default"
    monkeypatch.setenv("KDNB_PROFILE", "full")
    assert resolve_profile() == "full"
    assert resolve_profile("smoke") == "smoke"  # the argument wins
    with pytest.raises(ValueError, match="profile must be one of .* got 'huge'"):
        resolve_profile("huge")
    monkeypatch.setenv("KDNB_PROFILE", "tiny")
    with pytest.raises(ValueError, match="KDNB_PROFILE must be one of"):
        resolve_profile()
    with pytest.raises(TypeError, match="profile must be a str"):
        resolve_profile(3)


TABLE = {"smoke": {"a": 1, "b": 2}, "default": {"a": 10, "b": 20}, "full": {"a": 100, "b": 200}}


def test_chapter_settings_and_generators(capsys):
    run = start_chapter("test_chapter", profile="default", seed=7, device="cpu")
    out = capsys.readouterr().out
    assert "profile default" in out and "seed 7" in out and "device cpu" in out and f"kdnb {kdnb.__version__}" in out
    assert run.asserts_claims
    assert run.settings(TABLE) == {"a": 10, "b": 20}
    assert run.settings(TABLE, a=None, b=5) == {"a": 10, "b": 5}
    with pytest.raises(ValueError, match="unknown setting 'c'"):
        run.settings(TABLE, c=1)
    with pytest.raises(ValueError, match="missing \\['full'\\]"):
        run.settings({"smoke": {}, "default": {}})
    a, b = run.generator_for(1, 2), run.generator_for(1, 2)
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
    assert not torch.equal(torch.rand(4, generator=run.generator_for(1, 3)), torch.rand(4, generator=run.generator_for(1, 2)))
    assert not start_chapter("x", profile="smoke", quiet=True).asserts_claims
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        start_chapter("", quiet=True)


def test_environment_report_is_one_line():
    line = environment_report(torch.device("cpu"), 1, "smoke", 0)
    assert "\n" not in line and "torch" in line and "threads 1" in line


def test_configure_allocator(monkeypatch):
    import platform
    import sys

    monkeypatch.setenv("KDNB_ALLOCATOR", "system")
    configure_allocator()  # leaves glibc's defaults (or keeps an earlier setting): must not raise
    monkeypatch.setenv("KDNB_ALLOCATOR", "jemalloc")
    with pytest.raises(ValueError, match="KDNB_ALLOCATOR must be 'kdnb' or 'system'"):
        configure_allocator()
    with pytest.raises(TypeError, match="enable must be a bool"):
        configure_allocator(enable="yes")
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert configure_allocator(enable=True) is glibc


def test_float64_work_runs_on_the_cpu_for_mps_only():
    assert float64_device("mps") == torch.device("cpu")  # MPS has no float64
    assert float64_device("cpu") == torch.device("cpu")
    assert float64_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
