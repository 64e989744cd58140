"""Claims: what a chapter measures of its paper, compared with what was expected, and collected for the scorecard.

A chapter records three kinds of entries as it measures them, and ends with :meth:`ClaimSet.report`::

    claims = kdnb.ClaimSet(run)                      # run = kdnb.start_chapter(...)
    claims.claim("kd-helps-few-labels", "With few labels, soft targets ...", gain, low=0.02,
                 source="Sec. 3", threshold="paper")
    claims.check("projection-identity", "cos α = ‖Δŵₙ‖/‖Δŵ_N‖ ...", error, high=1e-9, source="Sec. 3.1")
    claims.record("loose", "The bound is loose ...", ratio, low=10.0, source="the book's own")
    claims.report()                                  # table in the notebook, JSON for the scorecard, assertion

The three kinds:

* a **claim** (:meth:`ClaimSet.claim`) is a statement of the paper that this run could refute. Its verdict is
  *reproduced* or *not reproduced*, and the scorecard counts claims only.
* a **check** (:meth:`ClaimSet.check`) is a consistency check: an identity, an inequality that holds by construction,
  a solver's guarantee. It proves the code, not the paper. Its verdict is *holds* or *fails*.
* a **record** (:meth:`ClaimSet.record`) is measured and shown but never asserted: a negative control, a regime, an
  exploratory number, or a weaker statement added after a claim failed. It may carry a reference range, for display
  only. Its verdict is *recorded*.

Every entry names its ``source`` (a figure, section, theorem or definition of the paper, or "the book's own"). A claim
says whether its bound comes from the paper's words (``threshold="paper"``) or was calibrated on this book's own runs
or chosen by the book where the paper gives no number (``threshold="calibrated"``). A check's bound is ``"exact"``
(zero violations, or a floating-point rounding tolerance on an identity that holds exactly) unless it was
``"calibrated"`` on this book's runs (for example a finite-difference error, which depends on the step).

``measured`` is a number, a bool, or a 1-D sequence of per-repeat samples (at least two). Samples are stored as their
mean together with a 95% bootstrap interval of the mean (:func:`bootstrap_interval`), and a claim or check on samples
is decided on that interval, not on the mean: with ``low`` only it holds iff the interval's lower end is ``>= low``,
with ``high`` only iff its upper end is ``<= high``, with both iff the whole interval lies in ``[low, high]``.

* At the ``default`` and ``full`` profiles :meth:`ClaimSet.report` raises :class:`ClaimError` if a claim or a check
  fails. At ``smoke`` (too small to mean anything) they are only recorded. Records never raise.
* A claim this book has found **not** to reproduce is recorded with ``known_failure="why"``: it is reported as not
  reproduced and does not fail the chapter. That is how a negative result is published instead of tuned away.
* Entries are written to ``<claims dir>/<chapter>.<profile>.json``; the book's scorecard page reads them. The claims
  directory is ``$KDNB_CLAIMS_DIR`` if set, else ``_build/claims`` under the nearest folder above the working directory
  that holds ``_toc.yml`` (the book's root), else ``~/.cache/kdnb/claims``.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .runtime import PROFILES, Chapter, resolve_profile

__all__ = [
    "Claim",
    "ClaimError",
    "ClaimReport",
    "ClaimSet",
    "bootstrap_interval",
    "claims_directory",
    "entries_html",
    "load_claims",
]

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
HOLDS = "holds"
FAILS = "fails"
RECORDED = "recorded"

KINDS = ("claim", "check", "record")
CLAIM_THRESHOLDS = ("paper", "calibrated")
CHECK_THRESHOLDS = ("exact", "calibrated")

CONFIDENCE = 0.95
N_RESAMPLES = 9999
BOOTSTRAP_SEED = 0


class ClaimError(AssertionError):
    """A chapter's claim or consistency check failed at a profile where they are asserted."""


@dataclass(frozen=True)
class Claim:
    """One recorded entry of a chapter: a claim of the paper, a consistency check, or a record.

    Parameters
    ----------
    chapter : str
        The chapter's name (the notebook's stem, e.g. ``"03_transfer_risk_bound"``).
    id : str
        The entry's identifier, unique within the chapter.
    statement : str
        What is claimed, checked or recorded, in words, with what is measured.
    measured : float or bool
        The measured value; for per-repeat samples, their mean.
    expected : str
        The rule in words: ``"≥ 0.5"``, ``"≤ 1e-09"``, ``"[-1.8, -1.1]"``, ``"yes"``/``"no"``; for a record, its
        reference range (``"—"`` when it has none).
    holds : bool or None
        Whether the measured value (its interval, for samples) satisfies the rule. For a record, whether it lies in
        the reference range, never asserted; ``None`` when a record has no reference.
    verdict : str
        ``"reproduced"``, ``"not reproduced"``, ``"reproduced (expected to fail)"`` or ``"not reproduced (known)"``
        for a claim; ``"holds"`` or ``"fails"`` for a check; ``"recorded"`` for a record.
    profile : str
        The profile the chapter ran at (``"smoke"``, ``"default"`` or ``"full"``).
    known_failure : str or None, optional
        For a claim this book found not to reproduce, the reason; ``None`` otherwise.
    note : str, optional
        Free text shown with the entry.
    kind : {"claim", "check", "record"}, optional
        The kind of entry (``"claim"`` for files written before kinds existed).
    source : str, optional
        Where the statement comes from: a figure, section, theorem or definition, or ``"the book's own"``.
    threshold : {"paper", "calibrated", "exact"} or None, optional
        Where the bound comes from (see the module docstring); ``None`` for a record.
    interval : tuple of float or None, optional
        The 95% bootstrap interval ``(low, high)`` of the mean, for per-repeat samples; ``None`` for a single number.
    n_samples : int or None, optional
        The number of per-repeat samples; ``None`` for a single number.
    """

    chapter: str
    id: str
    statement: str
    measured: float | bool
    expected: str
    holds: bool | None
    verdict: str
    profile: str
    known_failure: str | None = None
    note: str = ""
    kind: str = "claim"
    source: str = ""
    threshold: str | None = None
    interval: tuple[float, float] | None = None
    n_samples: int | None = None

    @property
    def measured_text(self) -> str:
        """The measured value as shown in tables: ``yes``/``no``, 4 significant digits, and the interval if any."""
        if isinstance(self.measured, bool):
            return "yes" if self.measured else "no"
        text = f"{self.measured:.4g}"
        if self.interval is not None:
            text += f" [{self.interval[0]:.4g}, {self.interval[1]:.4g}]"
        return text

    @property
    def asserted(self) -> bool:
        """Whether this kind of entry is asserted at the ``default`` and ``full`` profiles (claims and checks)."""
        return self.kind != "record"

    @property
    def failed(self) -> bool:
        """Whether this entry fails its chapter at an asserting profile: an asserted entry that does not hold and is
        not a known failure."""
        return self.asserted and not self.holds and not self.known_failure


def claims_directory(start: Path | str | None = None) -> Path:
    """Where claims are written and read.

    Parameters
    ----------
    start : path-like, optional
        The folder to search upwards from for the book's root (the folder holding ``_toc.yml``); the working
        directory by default.

    Returns
    -------
    pathlib.Path
        ``$KDNB_CLAIMS_DIR`` if set; else ``_build/claims`` under the nearest folder at or above ``start`` that holds
        ``_toc.yml``; else ``~/.cache/kdnb/claims``. The folder is not created.
    """
    env = os.environ.get("KDNB_CLAIMS_DIR", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file():
            return folder / "_build" / "claims"
    return Path.home() / ".cache" / "kdnb" / "claims"


def _samples_array(samples, name: str) -> np.ndarray:
    """``samples`` as a 1-D float64 array of at least two finite numbers, or a ValueError/TypeError naming ``name``."""
    if isinstance(samples, (str, bytes)):
        raise TypeError(f"{name} must be a 1-D sequence of numbers, got a string")
    try:
        array = np.asarray(samples)
    except Exception as error:  # e.g. a tensor that requires grad
        raise TypeError(f"{name} must be a 1-D sequence of numbers: {error}") from error
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per repeat), got shape {array.shape}")
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers (not bools or objects), got dtype {array.dtype}")
    if array.size < 2:
        raise ValueError(f"{name} must hold at least 2 per-repeat values to give an interval, got {array.size}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite; got {int((~np.isfinite(array)).sum())} non-finite value(s)")
    if np.abs(array).max() > np.finfo(np.float64).max / array.size:
        raise ValueError(f"{name} is too large for a mean in float64: {array.size} values of magnitude up to "
                         f"{np.abs(array).max():.4g} can sum past {np.finfo(np.float64).max:.4g} (rescale them)")
    return array


def _measured_number(measured) -> float:
    """A single numeric ``measured`` as a float: a real number, a 0-d real numpy array or a 0-d real tensor."""
    import torch

    if isinstance(measured, numbers.Real):
        return float(measured)
    if isinstance(measured, torch.Tensor):
        ok = not (measured.is_complex() or measured.dtype == torch.bool)
    elif isinstance(measured, (np.ndarray, np.generic)):
        ok = measured.dtype.kind in "iuf"
    else:
        ok = False
    if not ok:
        raise TypeError(f"measured must be a real number, a bool (with expected) or a 1-D sequence of per-repeat "
                        f"samples, got {type(measured).__name__} {measured!r}")
    return float(measured)


def bootstrap_interval(
    samples,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """The bootstrap confidence interval of the mean of per-repeat samples.

    Uses :func:`scipy.stats.bootstrap` with the bias-corrected and accelerated (BCa) method and a generator seeded
    with ``seed``, so the same samples always give the same interval. Where BCa is undefined (nearly degenerate
    samples) the percentile method is used with the same seed; samples that are all equal give ``(v, v)``.

    Parameters
    ----------
    samples : sequence of float, shape (n,)
        One value per repeat, n >= 2, all finite.
    confidence : float, optional
        The confidence level, in (0, 1); 0.95 by default.
    n_resamples : int, optional
        The number of bootstrap resamples, >= 100; 9999 by default.
    seed : int, optional
        Seed of the resampling generator, >= 0.

    Returns
    -------
    tuple of float
        ``(low, high)``, with ``low <= mean(samples) <= high`` up to the method's approximation.

    Raises
    ------
    TypeError
        If ``samples`` is not a 1-D sequence of real numbers, or ``n_resamples``/``seed`` are not integers.
    ValueError
        If ``samples`` has fewer than 2 values or a non-finite one, is so large that a mean of n of its values
        could overflow float64, or an argument is out of range.

    References
    ----------
    Efron, B. (1987). Better bootstrap confidence intervals. JASA 82(397), 171-185.
    """
    x = _samples_array(samples, "samples")
    if not isinstance(confidence, numbers.Real) or isinstance(confidence, bool) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    for name, value, least in (("n_resamples", n_resamples, 100), ("seed", seed, 0)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    import warnings

    from scipy import stats

    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa warns, and returns NaN, on nearly degenerate samples
            result = stats.bootstrap((x,), np.mean, n_resamples=int(n_resamples), confidence_level=float(confidence),
                                     method=method, vectorized=True, axis=-1, rng=np.random.default_rng(int(seed)))
        low, high = (float(v) for v in result.confidence_interval)
        if math.isfinite(low) and math.isfinite(high):
            return low, high
    raise ValueError("the bootstrap gave no finite interval for these samples")  # pragma: no cover


def _check_bound(value, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number or None, got {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def _expected_text(low, high, expected) -> str:
    if expected is not None:
        return "yes" if expected else "no"
    if low is not None and high is not None:
        return f"[{low:.4g}, {high:.4g}]"
    if low is not None:
        return f"≥ {low:.4g}"
    if high is not None:
        return f"≤ {high:.4g}"
    return "—"


class ClaimSet:
    """The claims, consistency checks and records of one chapter at one profile.

    Parameters
    ----------
    chapter : Chapter or str
        The running chapter (from :func:`kdnb.start_chapter`), whose name and profile are used, or a chapter name.
    profile : str, optional
        ``"smoke"``, ``"default"`` or ``"full"``; by default the chapter's profile, or the active one for a name.
    directory : path-like, optional
        Where :meth:`save` writes; :func:`claims_directory` by default.

    Raises
    ------
    TypeError
        If ``chapter`` is neither a Chapter nor a non-empty string.
    ValueError
        If ``profile`` is not a known profile.
    """

    def __init__(self, chapter: Chapter | str, profile: str | None = None, directory: Path | str | None = None):
        if isinstance(chapter, Chapter):
            name, profile = chapter.name, chapter.profile if profile is None else profile
        elif isinstance(chapter, str) and chapter:
            name = chapter
        else:
            raise TypeError("chapter must be a kdnb Chapter (from start_chapter) or a non-empty chapter name")
        self.chapter = name
        self.profile = resolve_profile(profile)
        self.directory = Path(directory) if directory is not None else claims_directory()
        self.claims: list[Claim] = []

    @property
    def asserts(self) -> bool:
        """Whether :meth:`report` asserts claims and checks (at ``default`` and ``full``, not at ``smoke``)."""
        return self.profile != "smoke"

    def _add(self, kind, claim_id, statement, measured, *, source, threshold, low, high, expected, known_failure,
             note) -> Claim:
        if not isinstance(claim_id, str) or not claim_id:
            raise ValueError("claim_id must be a non-empty string")
        if any(c.id == claim_id for c in self.claims):
            raise ValueError(f"claim_id {claim_id!r} was already recorded in this chapter")
        if not isinstance(statement, str) or not statement.strip():
            raise ValueError("statement must say in words what is claimed, checked or recorded")
        if not isinstance(source, str) or not source.strip():
            raise ValueError("source must name where the statement comes from (e.g. 'Fig. 3 caption', 'Theorem 1', "
                             "\"the book's own\")")
        if known_failure is not None and (not isinstance(known_failure, str) or not known_failure.strip()):
            raise ValueError("known_failure must be None or the reason, in words, why the claim does not reproduce")
        if not isinstance(note, str):
            raise TypeError("note must be a string")
        low, high = _check_bound(low, "low"), _check_bound(high, "high")
        if low is not None and high is not None and low > high:
            raise ValueError(f"low must be <= high, got low={low!r} and high={high!r}")

        interval = n_samples = None
        if expected is not None:
            if low is not None or high is not None:
                raise ValueError("give either expected (for a yes/no statement) or low/high (for a number), not both")
            if not isinstance(expected, bool):
                raise TypeError("expected must be a bool")
            if not isinstance(measured, (bool, np.bool_)):
                raise TypeError(f"measured must be a bool when expected is given (a yes/no statement), got "
                                f"{type(measured).__name__} {measured!r}")
            measured = bool(measured)
            holds = measured == expected
        elif kind == "record" and low is None and high is None and isinstance(measured, (bool, np.bool_)):
            measured, holds = bool(measured), None  # a yes/no value shown without a reference
        else:
            if low is None and high is None and kind != "record":
                raise ValueError(f"a numeric {kind} needs low, high or both")
            if isinstance(measured, (bool, np.bool_)):
                raise TypeError("measured is a bool: pass expected=True/False instead of low/high")
            if isinstance(measured, (str, bytes)):
                raise TypeError("measured must be a number, a bool or a 1-D sequence of per-repeat samples")
            try:
                single = isinstance(measured, numbers.Real) or np.ndim(measured) == 0
            except Exception:  # e.g. a ragged list: refused by _samples_array with an error naming measured
                single = False
            if single:
                measured = _measured_number(measured)
                lo = hi = measured
            else:
                samples = _samples_array(measured, "measured")
                measured, n_samples = float(samples.mean()), int(samples.size)
                interval = lo, hi = bootstrap_interval(samples)
            if low is None and high is None:
                holds = None
            elif math.isnan(lo) or math.isnan(hi):
                holds = False
            else:
                holds = bool((low is None or lo >= low) and (high is None or hi <= high))

        if kind == "claim":
            if holds:
                verdict = REPRODUCED + (" (expected to fail)" if known_failure else "")
            else:
                verdict = NOT_REPRODUCED + (" (known)" if known_failure else "")
        elif kind == "check":
            verdict = HOLDS if holds else FAILS
        else:
            verdict = RECORDED
        entry = Claim(self.chapter, claim_id, statement.strip(), measured, _expected_text(low, high, expected),
                      holds, verdict, self.profile, known_failure, note, kind=kind, source=source.strip(),
                      threshold=threshold, interval=interval, n_samples=n_samples)
        self.claims.append(entry)
        return entry

    def claim(
        self,
        claim_id: str,
        statement: str,
        measured: float | bool | Sequence[float],
        *,
        source: str,
        threshold: str,
        low: float | None = None,
        high: float | None = None,
        expected: bool | None = None,
        known_failure: str | None = None,
        note: str = "",
    ) -> Claim:
        """Record a claim of the paper: a statement this run could refute.

        Asserted by :meth:`report` at the ``default`` and ``full`` profiles (unless ``known_failure`` is given), only
        recorded at ``smoke``; counted by the scorecard.

        Parameters
        ----------
        claim_id : str
            Identifier, unique within the chapter (e.g. ``"C-F2-1"``).
        statement : str
            The paper's statement in words, and what is measured.
        measured : float, bool or sequence of float
            A number (checked against ``low <= measured <= high``; NaN fails), a bool (checked against
            ``expected``), or a 1-D sequence of per-repeat samples (n >= 2, finite), decided on the 95% bootstrap
            interval of their mean (see the module docstring).
        source : str
            Where the statement comes from: figure, section, theorem, definition (e.g. ``"Fig. 2 (left) caption"``).
        threshold : {"paper", "calibrated"}
            ``"paper"`` if the bound follows from the paper's words; ``"calibrated"`` if it was set on this book's
            runs, or is the book's choice of a number the paper does not give.
        low, high : float, optional
            Bounds on a number or on the samples' interval; at least one for a numeric claim, ``low <= high``.
        expected : bool, optional
            The expected answer of a yes/no claim (instead of ``low``/``high``).
        known_failure : str, optional
            Why this claim does not reproduce here; it is then reported and does not fail the chapter.
        note : str, optional
            Free text kept with the entry.

        Returns
        -------
        Claim
            The recorded entry, with its verdict.

        Raises
        ------
        ValueError
            If an identifier is empty or repeated, the statement or source is empty, ``threshold`` is not
            ``"paper"`` or ``"calibrated"``, no bound is given, bounds are NaN or ``low > high``, both ``expected``
            and bounds are given, or samples are fewer than 2, not 1-D, not finite or so large that their mean
            overflows float64.
        TypeError
            If bounds are not numbers, ``expected`` is not a bool, ``measured`` is a bool given with bounds, or
            ``measured`` is none of a real number (a 0-d real numpy array or tensor counts), a bool and a 1-D
            sequence of real numbers (e.g. ``None``, a dict, a set or a generator).
        """
        if threshold not in CLAIM_THRESHOLDS:
            raise ValueError(f"threshold of a claim must be one of {CLAIM_THRESHOLDS}, got {threshold!r}")
        return self._add("claim", claim_id, statement, measured, source=source, threshold=threshold, low=low,
                         high=high, expected=expected, known_failure=known_failure, note=note)

    def check(
        self,
        claim_id: str,
        statement: str,
        measured: float | bool | Sequence[float],
        *,
        source: str,
        threshold: str = "exact",
        low: float | None = None,
        high: float | None = None,
        expected: bool | None = None,
        note: str = "",
    ) -> Claim:
        """Record a consistency check: an identity, an inequality true by construction, a solver's guarantee.

        It proves the code, not the paper: asserted like a claim (at ``default`` and ``full``), shown apart from the
        claims and not counted by the scorecard. A check cannot be a known failure: a failing check is a bug.

        Parameters
        ----------
        claim_id : str
            Identifier, unique within the chapter.
        statement : str
            The identity or guarantee in words, and what is measured.
        measured : float, bool or sequence of float
            As for :meth:`claim`.
        source : str
            Where the identity comes from (e.g. ``"Theorem 1"``, ``"Sec. 3 (projection)"``, ``"the book's own"``).
        threshold : {"exact", "calibrated"}, optional
            ``"exact"`` (default) if the identity holds exactly and the bound is zero violations or a floating-point
            rounding tolerance; ``"calibrated"`` if the tolerance was set on this book's runs (e.g. a
            finite-difference error).
        low, high, expected, note
            As for :meth:`claim`.

        Returns
        -------
        Claim
            The recorded entry, with verdict ``"holds"`` or ``"fails"``.

        Raises
        ------
        ValueError, TypeError
            As for :meth:`claim`; ``threshold`` must be ``"exact"`` or ``"calibrated"``.
        """
        if threshold not in CHECK_THRESHOLDS:
            raise ValueError(f"threshold of a check must be one of {CHECK_THRESHOLDS}, got {threshold!r}")
        return self._add("check", claim_id, statement, measured, source=source, threshold=threshold, low=low,
                         high=high, expected=expected, known_failure=None, note=note)

    def record(
        self,
        claim_id: str,
        statement: str,
        measured: float | bool | Sequence[float],
        *,
        source: str,
        low: float | None = None,
        high: float | None = None,
        expected: bool | None = None,
        note: str = "",
    ) -> Claim:
        """Record a measured number that is shown but never asserted.

        For a negative control, a regime, an exploratory number, or a weaker statement added after a claim failed.
        Its verdict is always ``"recorded"``; the optional reference range is for display only.

        Parameters
        ----------
        claim_id : str
            Identifier, unique within the chapter.
        statement : str
            What is recorded, in words.
        measured : float, bool or sequence of float
            A number (NaN allowed), a bool, or per-repeat samples (shown with their bootstrap interval).
        source : str
            Where it comes from; ``"the book's own"`` for the book's observations.
        low, high : float, optional
            A reference range shown next to the value, ``low <= high``; never asserted.
        expected : bool, optional
            A reference answer for a yes/no value; never asserted.
        note : str, optional
            Free text kept with the entry.

        Returns
        -------
        Claim
            The recorded entry; ``holds`` says whether the value lies in the reference range (``None`` without one).

        Raises
        ------
        ValueError, TypeError
            As for :meth:`claim` (bounds must be numbers, samples at least 2 and finite), except that no bound is
            required.
        """
        return self._add("record", claim_id, statement, measured, source=source, threshold=None, low=low, high=high,
                         expected=expected, known_failure=None, note=note)

    def table(self):
        """The entries as a table: claims first, then consistency checks, then records.

        Returns
        -------
        pandas.DataFrame
            Indexed by (kind, id), with columns statement, source, threshold, measured (with the 95% interval for
            samples), expected (for a record, its reference range, if any) and verdict.
        """
        return _entries_table(self.claims)

    def save(self) -> Path:
        """Write ``<directory>/<chapter>.<profile>.json`` atomically.

        The file is written by Python's :mod:`json`, so a NaN or infinite ``measured`` (allowed in a record; a NaN
        claim or check fails) appears as the tokens ``NaN``, ``Infinity`` or ``-Infinity``, which Python's
        ``json.loads`` and :func:`load_claims` read back as floats but strict JSON parsers refuse. Finite values are
        written as ordinary JSON numbers.

        Returns
        -------
        pathlib.Path
            The path written.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.chapter}.{self.profile}.json"
        payload = {"chapter": self.chapter, "profile": self.profile, "claims": [asdict(c) for c in self.claims]}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
        tmp.replace(path)  # atomic, so the scorecard never reads half a file
        return path

    def report(self):
        """Save the entries and, at asserting profiles, raise for unexpected failures of claims and checks.

        Returns
        -------
        ClaimReport
            The entries, shown whole (no statement is cut) as one HTML table per kind when it is the last line of a
            notebook cell; its ``table()`` is :meth:`table`.

        Raises
        ------
        ValueError
            If nothing was recorded.
        ClaimError
            At the ``default`` and ``full`` profiles, if a claim (not marked ``known_failure``) or a check fails. The
            entries are saved first, so that the scorecard shows the failure.
        """
        if not self.claims:
            raise ValueError("no claims were recorded; call claim(), check() or record() before report()")
        self.save()
        failed = [c for c in self.claims if c.failed]
        if failed and self.asserts:
            counts = " and ".join(f"{n} {kind}(s)" for kind in ("claim", "check")
                                  if (n := sum(c.kind == kind for c in failed)))
            lines = "\n".join(f"  {c.kind} {c.id}: measured {c.measured_text}, expected {c.expected}" for c in failed)
            raise ClaimError(f"{counts} of {self.chapter} failed at profile {self.profile!r}:\n{lines}")
        return ClaimReport(list(self.claims), self.profile)


def _entries_table(entries):
    import pandas as pd

    names = {"claim": "claim of the paper", "check": "consistency check", "record": "record (not asserted)"}
    ordered = sorted(entries, key=lambda c: KINDS.index(c.kind))
    rows = [{"kind": names[c.kind], "id": c.id, "statement": c.statement, "source": c.source,
             "threshold": c.threshold or "—", "measured": c.measured_text,
             "expected": (f"reference {c.expected}" if c.expected != "—" else "—") if c.kind == "record"
             else c.expected,
             "verdict": c.verdict} for c in ordered]
    columns = ["kind", "id", "statement", "source", "threshold", "measured", "expected", "verdict"]
    return pd.DataFrame(rows, columns=columns).set_index(["kind", "id"])


KIND_TITLES = {"claim": "Claims of the paper", "check": "Consistency checks", "record": "Records (not asserted)"}


def _html_text(text: str) -> str:
    """Escape ``text`` for HTML, keeping ``$...$`` spans as inline math for MathJax (``\\(...\\)`` in a ``math``
    span, the markup Sphinx's MathJax set-up typesets)."""
    import html
    import re

    parts = re.split(r"(?<!\\)\$(.+?)(?<!\\)\$", text or "")
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f'<span class="math notranslate nohighlight">\\({html.escape(part)}\\)</span>')
        else:
            out.append(html.escape(part))
    return "".join(out)


def _measured_html(c: Claim) -> str:
    if isinstance(c.measured, bool):
        return "yes" if c.measured else "no"
    text = f"{c.measured:.4g}"
    if c.interval is not None:
        n = f", {c.n_samples} repeats" if c.n_samples else ""
        text += (f'<br><span class="kdnb-interval">mean; 95% interval '
                 f"[{c.interval[0]:.4g}, {c.interval[1]:.4g}]{n}</span>")
    return text


def _verdict_html(c: Claim) -> str:
    import html

    if c.kind == "record":
        css = "recorded"
    else:
        css = "pass" if c.verdict.startswith(("reproduced", "holds")) else "fail"
    out = f'<span class="kdnb-verdict-{css}">{html.escape(c.verdict)}</span>'
    if c.known_failure:
        out += f'<div class="kdnb-reason"><em>Why:</em> {_html_text(c.known_failure)}</div>'
    return out


def entries_html(entries: Sequence[Claim], kind: str) -> str:
    """One HTML table of the entries of one kind, every text whole (nothing is cut).

    Columns: the statement (with the entry's id below it, the name the chapter's code gives it), its source, the
    measured value (for per-repeat samples: the mean, its 95% bootstrap interval and the number of repeats), the
    expected range with where its threshold comes from (for a record: its reference range, never asserted), and the
    verdict, with the reason of a known failure. ``$...$`` in a text is inline math.

    Parameters
    ----------
    entries : sequence of Claim
        The entries; those of other kinds are left out.
    kind : {"claim", "check", "record"}
        Which kind to tabulate.

    Returns
    -------
    str
        A ``<table>`` with classes ``kdnb-claims`` and ``kdnb-<kind>``, or ``""`` when no entry is of that kind.

    Raises
    ------
    ValueError
        If ``kind`` is not one of the three kinds.
    """
    import html

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    chosen = [c for c in entries if c.kind == kind]
    if not chosen:
        return ""
    expected_head = "reference" if kind == "record" else "expected (threshold)"
    head = ["statement", "source", "measured", expected_head, "verdict"]
    rows = []
    for c in chosen:
        expected = html.escape(c.expected)
        if kind != "record" and c.threshold:
            expected += f'<br><span class="kdnb-threshold">{html.escape(c.threshold)}</span>'
        cells = [
            f'{_html_text(c.statement)}<div class="kdnb-id">id <code>{html.escape(c.id)}</code></div>',
            _html_text(c.source or "—"),
            _measured_html(c),
            expected,
            _verdict_html(c),
        ]
        rows.append(f'<tr id="{html.escape(c.chapter)}-{html.escape(c.id)}">'
                    + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    return (f'<div class="kdnb-table-wrap"><table class="table kdnb-claims kdnb-{kind}"><thead><tr>'
            + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>" + "".join(rows)
            + "</tbody></table></div>")


class ClaimReport:
    """What :meth:`ClaimSet.report` returns: a chapter's entries, displayed whole in a notebook.

    In Jupyter (and in the book) it shows one HTML table per kind (:func:`entries_html`): claims, then consistency
    checks, then records. ``table()`` gives the same entries as a pandas DataFrame.

    Parameters
    ----------
    entries : list of Claim
        The chapter's entries, in the order they were recorded.
    profile : str
        The profile the chapter ran at.
    """

    def __init__(self, entries: list[Claim], profile: str):
        self.entries = list(entries)
        self.profile = profile

    def __len__(self) -> int:
        return len(self.entries)

    def table(self):
        """The entries as a DataFrame (see :meth:`ClaimSet.table`).

        Returns
        -------
        pandas.DataFrame
            Indexed by (kind, id).
        """
        return _entries_table(self.entries)

    def _repr_html_(self) -> str:
        claims = [c for c in self.entries if c.kind == "claim"]
        n_ok = sum(c.verdict.startswith(REPRODUCED) for c in claims)
        parts = [f'<p class="kdnb-claims-summary">Profile <code>{self.profile}</code>: {n_ok} of {len(claims)} '
                 "claims reproduced.</p>"]
        for kind in KINDS:
            body = entries_html(self.entries, kind)
            if body:
                parts.append(f"<p><strong>{KIND_TITLES[kind]}</strong></p>{body}")
        return "".join(parts)

    def __repr__(self) -> str:
        lines = []
        for c in sorted(self.entries, key=lambda c: KINDS.index(c.kind)):
            lines.append(f"[{c.kind}] {c.id}: {c.verdict}; measured {c.measured_text}, expected {c.expected}")
        return "\n".join(lines)


def load_claims(directory: Path | str | None = None, profile: str = "default") -> list[Claim]:
    """Every entry saved at ``profile``, ordered by chapter name then recording order.

    Parameters
    ----------
    directory : path-like, optional
        The claims folder; :func:`claims_directory` by default.
    profile : str, optional
        ``"smoke"``, ``"default"`` (the default) or ``"full"``.

    Returns
    -------
    list of Claim
        Claims, checks and records alike (see :attr:`Claim.kind`); files written before kinds existed load as claims.

    Raises
    ------
    ValueError
        If ``profile`` is not a known profile, or a file is not a claims file: not an object with a ``claims`` list,
        or an entry with a key that :class:`Claim` does not have or without one of its required keys (the message
        names the file and the key).
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    folder = Path(directory) if directory is not None else claims_directory()
    out: list[Claim] = []
    names = {f.name for f in fields(Claim)}
    required = {f.name for f in fields(Claim) if f.default is MISSING}
    for path in sorted(folder.glob(f"*.{profile}.json")):
        payload = json.loads(path.read_text())
        if not isinstance(payload, dict) or not isinstance(payload.get("claims"), list):
            raise ValueError(f"{path} is not a claims file: expected an object with a 'claims' list")
        for i, entry in enumerate(payload["claims"]):
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: claims[{i}] must be an object, got {type(entry).__name__}")
            unknown, missing = sorted(set(entry) - names), sorted(required - set(entry))
            if unknown:
                raise ValueError(f"{path}: claims[{i}] has unknown key(s) {unknown}; a Claim has {sorted(names)}")
            if missing:
                raise ValueError(f"{path}: claims[{i}] lacks the key(s) {missing}")
            if entry.get("interval") is not None:
                entry = {**entry, "interval": tuple(entry["interval"])}
            out.append(Claim(**entry))
    return out
