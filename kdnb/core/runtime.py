"""Runtime: device, seeding, threads, profiles and the environment report.

Every chapter starts with :func:`start_chapter`, which does all of this in one call::

    run = kdnb.start_chapter("01_distillation_basics", profile=profile, seed=seed)

Conventions
-----------
* **Device**: ``cuda``, then ``mps``, then ``cpu``; the environment variable ``KDNB_DEVICE`` overrides the choice.
* **Profile**: ``smoke`` (seconds, for tests), ``default`` (the book on a 2-core laptop CPU) or ``full`` (paper scale, for a
  GPU). An explicit argument wins over ``KDNB_PROFILE``, which wins over ``"default"``.
* **Threads**: on CPU, torch uses ``KDNB_THREADS`` threads if set, else one. Measured on a 2-core machine
  (``benchmarks/bench_threads.py``, the book's MLP, CNN and loss steps): with the other core idle, two threads were
  1.1-1.5x faster than one; with the other core busy (a book build, a test run, a browser), they were 2-3x *slower*,
  and up to 6x on the smallest ops. One thread is the choice that is never badly wrong. A chapter dominated by large
  matrix products may ask for more with ``threads=``.
* **Seeding**: :func:`seed_everything` seeds python, numpy and torch and turns on deterministic algorithms, so the same
  seed and profile give identical numbers on CPU.
* **Memory allocator**: on Linux with glibc, :func:`configure_allocator` keeps freed memory in the process instead of
  returning large blocks to the system, because each fresh block costs page faults. Measured with
  ``benchmarks/bench_allocator.py`` (fresh processes, 3 runs): chapter 2's training step was 1.55-1.85x faster and the
  closed-form NTK 1.2-1.9x; a relu on a 2 MB tensor was 6-8x faster in two runs and equal in one (glibc adapts its own
  threshold to earlier frees, so the default is not always slow); chapter 1's small steps were within noise.
  ``KDNB_ALLOCATOR=system`` keeps glibc's defaults. It changes speed and resident memory, never numbers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

PROFILES = ("smoke", "default", "full")
DEVICES = ("cuda", "mps", "cpu")

__all__ = [
    "PROFILES",
    "Chapter",
    "configure_allocator",
    "environment_report",
    "float64_device",
    "resolve_profile",
    "select_device",
    "seed_everything",
    "set_threads",
    "start_chapter",
]


def select_device(device: str | torch.device | None = None) -> torch.device:
    """Return the torch device to compute on.

    Order of precedence: the ``device`` argument, then the ``KDNB_DEVICE`` environment variable, then the first
    available of ``cuda``, ``mps``, ``cpu``. A device that is asked for but not available raises ``ValueError``.
    """
    if isinstance(device, torch.device):
        requested = device.type
    elif device is None:
        requested = os.environ.get("KDNB_DEVICE", "").strip().lower() or None
    elif isinstance(device, str):
        requested = device.strip().lower()
    else:
        raise TypeError(f"device must be a str, torch.device or None, got {type(device).__name__}")

    if requested is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")

    kind = requested.split(":")[0]
    if kind not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES} (optionally 'cuda:N'), got {requested!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested (argument or KDNB_DEVICE) but torch sees no CUDA device")
    if kind == "mps" and not _mps_available():
        raise ValueError("device 'mps' was requested (argument or KDNB_DEVICE) but torch sees no MPS device")
    return torch.device(requested)


def float64_device(device: torch.device | str) -> torch.device:
    """Where float64 work for data on ``device`` runs: the device itself, or the CPU for Apple's MPS, which has no
    float64. kdnb's kernels and solves are float64 (see :mod:`kdnb.kernels`)."""
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count and return it.

    ``threads=None`` reads ``KDNB_THREADS`` and falls back to 1 (see the module docstring for the measurement behind
    that default). Inter-op threads are left alone: torch allows setting them only once per process.
    """
    if threads is None:
        raw = os.environ.get("KDNB_THREADS", "").strip()
        if raw:
            try:
                threads = int(raw)
            except ValueError:
                raise ValueError(f"KDNB_THREADS must be a positive integer, got {raw!r}") from None
        else:
            threads = 1
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an int, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(int(threads))
    return int(threads)


_ALLOCATOR_CONFIGURED = False
# glibc's mallopt parameters (malloc.h): blocks up to 1 GiB come from the heap, and the heap is trimmed only when 2 GiB
# are free at its top, so tensors freed by one step are reused by the next without new page faults. Older glibc
# refuses mmap thresholds above 32 MiB on 64-bit systems; there 32 MiB is used (measured here: with 32 MiB, the
# NTK-vector-product benchmark, whose intermediates are hundreds of MB, ran 3.7x slower than with 1 GiB).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_CHOICES, _TRIM_THRESHOLD_BYTES = (1 << 30, 32 << 20), (1 << 31) - 1


def configure_allocator(enable: bool | None = None) -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring); return whether the setting is in effect.

    ``enable=None`` reads ``KDNB_ALLOCATOR``: ``system`` leaves glibc's defaults, anything else (or unset) applies the
    setting. A no-op returning False where the C library is not glibc (macOS, Windows, musl). The setting lasts for
    the process and cannot be undone by this function.
    """
    global _ALLOCATOR_CONFIGURED
    if enable is None:
        raw = os.environ.get("KDNB_ALLOCATOR", "").strip().lower()
        if raw not in ("", "kdnb", "system"):
            raise ValueError(f"KDNB_ALLOCATOR must be 'kdnb' or 'system', got {raw!r}")
        enable = raw != "system"
    if not isinstance(enable, bool):
        raise TypeError(f"enable must be a bool or None, got {type(enable).__name__}")
    if not enable:
        return _ALLOCATOR_CONFIGURED
    if _ALLOCATOR_CONFIGURED:
        return True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # The two settings only help together; the trim threshold is set only if an mmap threshold was accepted.
        ok = any(libc.mallopt(_M_MMAP_THRESHOLD, threshold) == 1 for threshold in _MMAP_THRESHOLD_CHOICES)
        ok = ok and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_CONFIGURED = ok
    return ok


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (CPU and CUDA), enable deterministic algorithms, and return a CPU generator.

    Pass the returned generator (or one made by :func:`torch.Generator().manual_seed`) to kdnb functions that draw
    random numbers, so that a chapter's numbers do not depend on what ran before.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    # cuBLAS needs this workspace setting for deterministic matmuls; it must be set before the first CUDA call.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: some CUDA kernels have no deterministic version; on CPU every op used by kdnb is deterministic.
    _use_deterministic_algorithms()
    if hasattr(torch.backends, "cudnn"):
        torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def _use_deterministic_algorithms() -> None:
    """``torch.use_deterministic_algorithms(True, warn_only=True)``, without its import of ``torch._inductor``.

    The public function imports the compiler's configuration only to set its ``deterministic`` flag, which costs about
    2 s per process (measured: 1.7-2.0 s on the 2-core machine, most of a smoke chapter's start-up). kdnb never calls
    ``torch.compile``, so the flag is set only if the compiler is already loaded.
    """
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)


def resolve_profile(profile: str | None = None) -> str:
    """Return the run profile: the argument if given, else ``KDNB_PROFILE``, else ``"default"``."""
    if profile is None:
        profile = os.environ.get("KDNB_PROFILE", "").strip() or "default"
        source = "KDNB_PROFILE"
    else:
        source = "profile"
    if not isinstance(profile, str):
        raise TypeError(f"profile must be a str or None, got {type(profile).__name__}")
    if profile not in PROFILES:
        raise ValueError(f"{source} must be one of {PROFILES}, got {profile!r}")
    return profile


def environment_report(device: torch.device, threads: int, profile: str, seed: int) -> str:
    """One line with the versions, device, thread count, profile and seed."""
    from .. import __version__

    dev = device.type
    if device.type == "cuda":
        dev = f"cuda ({torch.cuda.get_device_name(device)})"
    return (
        f"kdnb {__version__} | python {platform.python_version()} | torch {torch.__version__} | "
        f"numpy {np.__version__} | device {dev} | threads {threads} | profile {profile} | seed {seed}"
    )


@dataclass
class Chapter:
    """The runtime state of one executing chapter (made by :func:`start_chapter`)."""

    name: str
    profile: str
    seed: int
    device: torch.device
    threads: int
    generator: torch.Generator = field(repr=False)

    @property
    def asserts_claims(self) -> bool:
        """Claims are asserted at the ``default`` and ``full`` profiles and only recorded at ``smoke``."""
        return self.profile != "smoke"

    def settings(self, table: Mapping[str, Mapping[str, Any]], **overrides: Any) -> dict[str, Any]:
        """Pick this profile's row of a chapter's settings table and apply the non-``None`` overrides.

        ``table`` maps each profile name to a dict of settings. An override that is ``None`` keeps the profile's
        value (that is how a notebook's papermill parameters default); an override for an unknown key raises.
        """
        missing = [p for p in PROFILES if p not in table]
        if missing:
            raise ValueError(f"settings table must have a row for every profile; missing {missing}")
        chosen = dict(table[self.profile])
        for key, value in overrides.items():
            if key not in chosen:
                raise ValueError(f"unknown setting {key!r}; this chapter's settings are {sorted(chosen)}")
            if value is not None:
                chosen[key] = value
        return chosen

    def generator_for(self, *keys: int) -> torch.Generator:
        """A fresh CPU generator derived from the chapter seed and ``keys`` (e.g. a sweep index and a repeat)."""
        mixed = np.random.SeedSequence([self.seed, *map(int, keys)]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(mixed))


def start_chapter(
    name: str,
    profile: str | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    threads: int | None = None,
    quiet: bool = False,
) -> Chapter:
    """Resolve the profile, pick the device, set threads and the allocator, seed everything and print the environment
    report."""
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string (the chapter's notebook name)")
    profile = resolve_profile(profile)
    configure_allocator()
    generator = seed_everything(seed)
    dev = select_device(device)
    n_threads = set_threads(threads)
    chapter = Chapter(name=name, profile=profile, seed=int(seed), device=dev, threads=n_threads, generator=generator)
    if not quiet:
        print(environment_report(dev, n_threads, profile, int(seed)), file=sys.stdout, flush=True)
    return chapter
