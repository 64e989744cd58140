"""Runtime: device, seeding, threads, profiles and the environment report.

Every chapter starts with :func:`start_chapter`, which does all of this in one call::

    run = kdnb.start_chapter("01_distillation_basics", profile=profile, seed=seed)

Conventions
-----------
* **Device**: ``cuda``, then ``mps``, then ``cpu``; the environment variable ``KDNB_DEVICE`` overrides the choice.
* **Profile**: ``smoke`` (seconds, for tests), ``default`` (the book on a 2-core laptop CPU) or ``full`` (paper scale, for a
  GPU). An explicit argument wins over ``KDNB_PROFILE``, which wins over ``"default"``.
* **Threads**: on CPU, torch uses ``KDNB_THREADS`` threads if set, else one. On a small CPU a second thread gains
  little on the book's MLP, CNN and loss steps while the other cores are idle, and costs several times more while they
  are busy (a book build, a test run, a browser), most on the smallest ops; ``benchmarks/bench_threads.py`` measures
  both cases on the machine at hand. One thread is the choice that is never badly wrong. A chapter dominated by large
  matrix products may ask for more with ``threads=``.
* **Seeding**: :func:`seed_everything` seeds python, numpy and torch and turns on deterministic algorithms, so the same
  seed and profile give identical numbers on CPU.
* **Memory allocator**: on Linux with glibc, :func:`configure_allocator` keeps freed memory in the process instead of
  returning large blocks to the system, because each fresh block costs page faults. This speeds up the steps that
  allocate tensors of a few MB (chapter 2's training step, the closed-form NTK); chapter 1's small steps do not
  change, and glibc's default is not always slow, because it adapts its own threshold to earlier frees.
  ``benchmarks/bench_allocator.py`` measures each case in fresh processes with both settings.
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

    Parameters
    ----------
    device : str, torch.device or None, default None
        ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"cpu"`` (case and surrounding spaces are ignored), or a
        ``torch.device`` of one of these types. ``None`` reads ``KDNB_DEVICE``; if that is unset or empty, the first
        available device is taken.

    Returns
    -------
    torch.device
        The device asked for, or the first available one.

    Raises
    ------
    TypeError
        If ``device`` is not a str, a ``torch.device`` or None.
    ValueError
        If the requested device (argument or ``KDNB_DEVICE``) is not one of ``cuda``, ``mps``, ``cpu`` (optionally
        ``cuda:N``), or is ``cuda`` or ``mps`` and torch sees no such device.
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
    """Return the device on which float64 work for data on ``device`` runs.

    That is the device itself, or the CPU for Apple's MPS, which has no float64. kdnb's kernels and solves are float64
    (see :mod:`kdnb.kernels`).

    Parameters
    ----------
    device : torch.device or str
        The device the data lives on, as a ``torch.device`` or a string that ``torch.device`` accepts.

    Returns
    -------
    torch.device
        ``torch.device("cpu")`` if ``device`` is an MPS device, else ``device`` itself.
    """
    device = torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count and return it.

    Inter-op threads are left alone: torch allows setting them only once per process.

    Parameters
    ----------
    threads : int or None, default None
        The number of intra-op threads, >= 1 (bools are refused). ``None`` reads ``KDNB_THREADS`` and falls back to 1
        (see the module docstring for the measurement behind that default).

    Returns
    -------
    int
        The thread count that was set.

    Raises
    ------
    TypeError
        If ``threads`` is neither an int nor None.
    ValueError
        If ``threads`` is < 1, or ``threads`` is None and ``KDNB_THREADS`` is set to something that is not an integer
        (or is an integer < 1).
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

    A no-op returning False where the C library is not glibc (macOS, Windows, musl). The setting lasts for the process
    and cannot be undone by this function.

    Parameters
    ----------
    enable : bool or None, default None
        True applies the setting; False leaves glibc's defaults (a setting applied by an earlier call stays in
        effect). ``None`` reads ``KDNB_ALLOCATOR``: ``system`` leaves glibc's defaults, ``kdnb`` (or unset) applies
        the setting.

    Returns
    -------
    bool
        Whether the setting is in effect in this process after the call.

    Raises
    ------
    TypeError
        If ``enable`` is neither a bool nor None.
    ValueError
        If ``enable`` is None and ``KDNB_ALLOCATOR`` is set to something other than ``kdnb`` or ``system``
        (case-insensitive).
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
    random numbers, so that a chapter's numbers do not depend on what ran before. Deterministic algorithms are turned
    on with ``warn_only=True`` (some CUDA kernels have no deterministic version), ``CUBLAS_WORKSPACE_CONFIG`` is set
    to ``:4096:8`` unless already set, and cuDNN benchmarking is turned off.

    Parameters
    ----------
    seed : int
        The seed, in [0, 2**32) (bools are refused).

    Returns
    -------
    torch.Generator
        A fresh CPU generator seeded with ``seed``.

    Raises
    ------
    TypeError
        If ``seed`` is not an int.
    ValueError
        If ``seed`` is outside [0, 2**32).
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

    The public function imports the compiler's configuration only to set its ``deterministic`` flag, which costs
    seconds per process on a small CPU, most of a smoke chapter's start-up (``python -X importtime -c "import
    torch._inductor.config"`` shows it). kdnb never calls ``torch.compile``, so the flag is set only if the compiler is
    already loaded.
    """
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)


def resolve_profile(profile: str | None = None) -> str:
    """Return the run profile: the argument if given, else ``KDNB_PROFILE``, else ``"default"``.

    Parameters
    ----------
    profile : str or None, default None
        One of :data:`PROFILES` (``"smoke"``, ``"default"``, ``"full"``). ``None`` reads ``KDNB_PROFILE`` and falls
        back to ``"default"`` if that is unset or empty.

    Returns
    -------
    str
        The profile name, one of :data:`PROFILES`.

    Raises
    ------
    TypeError
        If ``profile`` is neither a str nor None.
    ValueError
        If the profile (argument or ``KDNB_PROFILE``, named in the message) is not one of :data:`PROFILES`.
    """
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
    """Return one line with the versions, device, thread count, profile and seed.

    Parameters
    ----------
    device : torch.device
        The device the chapter computes on; a CUDA device is reported with its name.
    threads : int
        The intra-op thread count.
    profile : str
        The run profile.
    seed : int
        The chapter seed.

    Returns
    -------
    str
        The versions of kdnb, python, torch and numpy, then the device, threads, profile and seed, separated by
        `` | ``.
    """
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
    """The runtime state of one executing chapter (made by :func:`start_chapter`).

    Parameters
    ----------
    name : str
        The chapter's notebook name, e.g. ``"01_distillation_basics"``.
    profile : str
        The run profile, one of :data:`PROFILES`.
    seed : int
        The chapter seed, in [0, 2**32).
    device : torch.device
        The device the chapter computes on.
    threads : int
        The intra-op thread count of torch, >= 1.
    generator : torch.Generator
        The CPU generator returned by :func:`seed_everything` for ``seed`` (left out of the repr).
    """

    name: str
    profile: str
    seed: int
    device: torch.device
    threads: int
    generator: torch.Generator = field(repr=False)

    @property
    def asserts_claims(self) -> bool:
        """Whether claims are asserted (True at ``default`` and ``full``) or only recorded (at ``smoke``)."""
        return self.profile != "smoke"

    def settings(self, table: Mapping[str, Mapping[str, Any]], parameters: Mapping[str, Any] | None = None, /,
                 **overrides: Any) -> dict[str, Any]:
        """Pick this profile's row of a chapter's settings table and apply the non-``None`` overrides.

        Parameters
        ----------
        table : Mapping[str, Mapping[str, Any]]
            Maps each profile name (every one of :data:`PROFILES`) to a dict of settings.
        parameters : Mapping[str, kdnb.core.parameters.Spec], optional
            The declaration of every chapter parameter (see :mod:`kdnb.core.parameters`). When given, the overrides
            go through :func:`kdnb.core.parameters.resolve`: every declared parameter must be passed (``None`` takes
            the profile's value), each one is checked and converted (``2.0`` becomes ``2`` for an ``Integer``), the
            profile's values too, and the declared rules run. When None, the overrides are applied unchecked.
        **overrides : Any
            Values for settings of the row. An override that is ``None`` keeps the profile's value (that is how a
            notebook's papermill parameters default); an override for an unknown key raises. With ``parameters``,
            an override may also be a declared parameter that the row does not hold (such as ``t2_scaling``).

        Returns
        -------
        dict[str, Any]
            A new dict: a copy of this profile's row with the non-``None`` overrides applied (``table`` is not
            modified).

        Raises
        ------
        ValueError
            If ``table`` lacks a row for some profile, or an override names a key that is not in the row (not
            declared, when ``parameters`` is given), or a parameter is out of its declared range or breaks a rule.
        TypeError
            With ``parameters``, if a parameter has the wrong type for its declaration.
        """
        missing = [p for p in PROFILES if p not in table]
        if missing:
            raise ValueError(f"settings table must have a row for every profile; missing {missing}")
        if parameters is not None:
            from .parameters import resolve

            return resolve(table[self.profile], parameters, **overrides)
        chosen = dict(table[self.profile])
        for key, value in overrides.items():
            if key not in chosen:
                raise ValueError(f"unknown setting {key!r}; this chapter's settings are {sorted(chosen)}")
            if value is not None:
                chosen[key] = value
        return chosen

    def generator_for(self, *keys: int) -> torch.Generator:
        """Return a fresh CPU generator derived from the chapter seed and ``keys`` (e.g. a sweep index and a repeat).

        The seed and keys are mixed by :class:`numpy.random.SeedSequence`, so the same keys always give the same
        generator and different keys give unrelated streams.

        Parameters
        ----------
        *keys : int
            Non-negative integers (each passed through ``int``) that name the random stream.

        Returns
        -------
        torch.Generator
            A new CPU generator seeded with the first word of ``SeedSequence([seed, *keys])``'s state.

        Raises
        ------
        ValueError
            If a key is negative (raised by :class:`numpy.random.SeedSequence`).
        """
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
    """Set up the runtime of one chapter and print its environment report.

    Resolves the profile, picks the device, sets threads and the allocator, seeds everything and prints the
    environment report.

    Parameters
    ----------
    name : str
        The chapter's notebook name (non-empty), e.g. ``"01_distillation_basics"``.
    profile : str or None, default None
        The run profile (see :func:`resolve_profile`); ``None`` reads ``KDNB_PROFILE``, else ``"default"``.
    seed : int, default 0
        The chapter seed, in [0, 2**32) (see :func:`seed_everything`).
    device : str, torch.device or None, default None
        The device (see :func:`select_device`); ``None`` reads ``KDNB_DEVICE``, else the first available.
    threads : int or None, default None
        The intra-op thread count of torch, >= 1 (see :func:`set_threads`); ``None`` reads ``KDNB_THREADS``, else 1.
    quiet : bool, default False
        If True, the environment report is not printed.

    Returns
    -------
    Chapter
        The chapter's runtime state, holding the seeded generator.

    Raises
    ------
    ValueError
        If ``name`` is not a non-empty string, or from :func:`resolve_profile`, :func:`configure_allocator`,
        :func:`seed_everything`, :func:`select_device` or :func:`set_threads` for an out-of-range value.
    TypeError
        From those functions, for an argument of the wrong type.
    """
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
