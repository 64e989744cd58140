"""Claims: what a chapter checks of its paper, measured, compared with what was expected, and collected for the scorecard.

A chapter records each claim as it measures it and ends with :meth:`ClaimSet.report`::

    claims = kdnb.ClaimSet(run)                      # run = kdnb.start_chapter(...)
    claims.check("kd-helps-few-labels", "With few labels, soft targets ...", measured=gain, low=0.02)
    claims.report()                                  # table in the notebook, JSON for the scorecard, assertion

* At the ``default`` and ``full`` profiles :meth:`ClaimSet.report` raises :class:`ClaimError` if a claim fails.
  At ``smoke`` (too small to mean anything) claims are only recorded.
* A claim this book has found **not** to reproduce is recorded with ``known_failure="why"``: it is reported as not
  reproduced and does not fail the chapter. That is how a negative result is published instead of tuned away.
* Claims are written to ``<claims dir>/<chapter>.<profile>.json``; the book's scorecard page reads them. The claims
  directory is ``$KDNB_CLAIMS_DIR`` if set, else ``_build/claims`` under the nearest folder above the working directory
  that holds ``_toc.yml`` (the book's root), else ``~/.cache/kdnb/claims``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .runtime import PROFILES, Chapter, resolve_profile

__all__ = ["Claim", "ClaimError", "ClaimSet", "claims_directory", "load_claims"]

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"


class ClaimError(AssertionError):
    """A chapter's claim failed at a profile where claims are asserted."""


@dataclass(frozen=True)
class Claim:
    """One checked claim. ``measured`` is a number or a bool; ``expected`` is the rule in words."""

    chapter: str
    id: str
    statement: str
    measured: float | bool
    expected: str
    holds: bool
    verdict: str
    profile: str
    known_failure: str | None = None
    note: str = ""

    @property
    def measured_text(self) -> str:
        if isinstance(self.measured, bool):
            return "yes" if self.measured else "no"
        return f"{self.measured:.4g}"


def claims_directory(start: Path | str | None = None) -> Path:
    """Where claims are written and read (see the module docstring for the order of precedence)."""
    env = os.environ.get("KDNB_CLAIMS_DIR", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file():
            return folder / "_build" / "claims"
    return Path.home() / ".cache" / "kdnb" / "claims"


def _expected_text(low, high, expected) -> str:
    if expected is not None:
        return "yes" if expected else "no"
    if low is not None and high is not None:
        return f"[{low:.4g}, {high:.4g}]"
    if low is not None:
        return f"≥ {low:.4g}"
    return f"≤ {high:.4g}"


class ClaimSet:
    """The claims of one chapter at one profile."""

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
        return self.profile != "smoke"

    def check(
        self,
        claim_id: str,
        statement: str,
        measured: float | bool,
        *,
        low: float | None = None,
        high: float | None = None,
        expected: bool | None = None,
        known_failure: str | None = None,
        note: str = "",
    ) -> Claim:
        """Record a claim. Numbers are checked against ``low <= measured <= high`` (either bound may be omitted);
        booleans against ``expected``. Returns the recorded :class:`Claim`."""
        if not isinstance(claim_id, str) or not claim_id:
            raise ValueError("claim_id must be a non-empty string")
        if any(c.id == claim_id for c in self.claims):
            raise ValueError(f"claim_id {claim_id!r} was already recorded in this chapter")
        if not isinstance(statement, str) or not statement.strip():
            raise ValueError("statement must be the paper's claim in words")
        if expected is not None:
            if low is not None or high is not None:
                raise ValueError("give either expected (for a yes/no claim) or low/high (for a number), not both")
            if not isinstance(expected, bool):
                raise TypeError("expected must be a bool")
            measured = bool(measured)
            holds = measured == expected
        else:
            if low is None and high is None:
                raise ValueError("a numeric claim needs low, high or both")
            if isinstance(measured, bool):
                raise TypeError("measured is a bool: pass expected=True/False instead of low/high")
            measured = float(measured)
            if math.isnan(measured):
                holds = False
            else:
                holds = (low is None or measured >= low) and (high is None or measured <= high)
        if holds:
            verdict = REPRODUCED + (" (expected to fail)" if known_failure else "")
        else:
            verdict = NOT_REPRODUCED + (" (known)" if known_failure else "")
        claim = Claim(self.chapter, claim_id, statement.strip(), measured, _expected_text(low, high, expected),
                      holds, verdict, self.profile, known_failure, note)
        self.claims.append(claim)
        return claim

    def table(self):
        """The claims as a pandas DataFrame (claim, statement, measured, expected, verdict)."""
        import pandas as pd

        rows = [{"claim": c.id, "paper's statement": c.statement, "measured": c.measured_text,
                 "expected": c.expected, "verdict": c.verdict} for c in self.claims]
        return pd.DataFrame(rows, columns=["claim", "paper's statement", "measured", "expected", "verdict"])

    def save(self) -> Path:
        """Write ``<directory>/<chapter>.<profile>.json`` and return its path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{self.chapter}.{self.profile}.json"
        payload = {"chapter": self.chapter, "profile": self.profile, "claims": [asdict(c) for c in self.claims]}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
        tmp.replace(path)  # atomic, so the scorecard never reads half a file
        return path

    def report(self):
        """Save the claims, and at asserting profiles raise :class:`ClaimError` for unexpected failures.

        Returns the table (a DataFrame), so that the last line of a notebook cell displays it.
        """
        if not self.claims:
            raise ValueError("no claims were recorded; call check() before report()")
        self.save()
        failed = [c for c in self.claims if not c.holds and not c.known_failure]
        if failed and self.asserts:
            lines = "\n".join(f"  {c.id}: measured {c.measured_text}, expected {c.expected}" for c in failed)
            raise ClaimError(f"{len(failed)} claim(s) of {self.chapter} failed at profile {self.profile!r}:\n{lines}")
        return self.table()


def load_claims(directory: Path | str | None = None, profile: str = "default") -> list[Claim]:
    """Every claim saved at ``profile`` in ``directory``, ordered by chapter name then recording order."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    folder = Path(directory) if directory is not None else claims_directory()
    out: list[Claim] = []
    for path in sorted(folder.glob(f"*.{profile}.json")):
        payload = json.loads(path.read_text())
        out.extend(Claim(**c) for c in payload["claims"])
    return out

