"""Build the HTML book, re-executing exactly what is stale. Run by `make book`.

Chapters are executed while Sphinx reads them (MyST-NB's "inline" mode, so that the prose's inline expressions are
evaluated), and Sphinx re-reads only the sources that changed: on its own it would keep pages computed with an older
kdnb, older pins or another profile. This script stamps a hash of everything that can change a chapter's numbers
(kdnb/**, the pins, the book's extension, KDNB_PROFILE, KDNB_DEVICE and KDNB_THREADS). When the stamp changes it
clears Sphinx's saved environment, the saved claims and the HTML and rebuilds everything; otherwise an edited chapter
alone is re-executed.

``KDNB_JOBS=N`` executes up to N chapters at once: Sphinx reads the pages in N worker processes (its parallel read,
``sphinx-build -j N``, which Jupyter Book's command line does not expose), each chapter in its own kernel, then writes
the HTML from the merged result. Every kernel runs torch with kdnb's thread count (one unless KDNB_THREADS says
otherwise) whatever N is, so the numbers, the claims and the pages are those of a serial build; a test builds a
small book both ways and compares them. The default, 1, is serial: on a small machine a second chapter competes with
whatever else runs (a test session, a browser). KDNB_JOBS does not enter the stamp, since it changes no number.

Usage: python book/build.py [--all]
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "_build"
STAMP = BUILD / ".kdnb-stamp"
INPUTS = ["kdnb/**/*.py", "book/_ext/*.py", "requirements.txt", "constraints.txt", "pyproject.toml"]


def stamp() -> str:
    digest = hashlib.sha256()
    for pattern in INPUTS:
        for path in sorted(ROOT.glob(pattern)):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    for var in ("KDNB_PROFILE", "KDNB_DEVICE", "KDNB_THREADS"):
        digest.update(f"{var}={os.environ.get(var, '')}".encode())
    return digest.hexdigest()


# Runs Jupyter Book's command line with Sphinx's process count set: its `build` command takes no -j option.
# Three extensions of the build declare no parallel safety, so Sphinx would fall back to a serial read with a warning
# (an error under -W). None keeps state per page: sphinx_multitoc_numbering (loaded by Jupyter Book) renumbers the
# table of contents in the main process after the pages are merged, sphinx_jupyterbook_latex sets its flags when the
# builder starts (before the workers fork) and transforms LaTeX builds only, and sphinx-mathjax-offline copies
# MathJax when the build has finished. So they are declared safe here.
JUPYTER_BOOK_WITH_JOBS = """
import functools, importlib, sys
import jupyter_book.sphinx
from jupyter_book.cli.main import main


def declare_parallel_safe(name):
    module = importlib.import_module(name)
    setup = module.setup

    def safe_setup(app):
        return {**(setup(app) or {}), "parallel_read_safe": True, "parallel_write_safe": True}

    module.setup = safe_setup


for name in ("sphinx_multitoc_numbering", "sphinx_jupyterbook_latex", "sphinx-mathjax-offline"):
    declare_parallel_safe(name)
jupyter_book.sphinx.build_sphinx = functools.partial(jupyter_book.sphinx.build_sphinx, jobs=int(sys.argv.pop(1)))
sys.exit(main())
"""


def jobs_from_env() -> int:
    """The number of chapters executed at once, from ``KDNB_JOBS`` (unset or empty: 1).

    Raises
    ------
    ValueError
        If ``KDNB_JOBS`` is not an integer >= 1.
    """
    raw = os.environ.get("KDNB_JOBS", "").strip()
    if not raw:
        return 1
    try:
        jobs = int(raw)
    except ValueError:
        raise ValueError(f"KDNB_JOBS must be an integer >= 1 (chapters executed at once), got {raw!r}") from None
    if jobs < 1:
        raise ValueError(f"KDNB_JOBS must be an integer >= 1 (chapters executed at once), got {raw!r}")
    return jobs


def main(argv: list[str]) -> int:
    try:
        jobs = jobs_from_env()
    except ValueError as error:
        print(f"[kdnb] {error}", file=sys.stderr)
        return 2
    force = "--all" in argv
    current = stamp()
    previous = STAMP.read_text().strip() if STAMP.is_file() else None
    if force or previous != current:
        reason = "--all" if force else ("first build" if previous is None else "kdnb, pins or profile changed")
        print(f"[kdnb] {reason}: clearing the execution cache and rebuilding every page", flush=True)
        for stale in (BUILD / ".jupyter_cache", BUILD / "claims", BUILD / "html", BUILD / ".doctrees"):
            shutil.rmtree(stale, ignore_errors=True)
        extra = ["--all"]
    else:
        extra = []
    jb = Path(sys.executable).with_name("jupyter-book")
    arguments = ["build", str(ROOT), "--builder", "html", "-W", "-n", "--keep-going", *extra]
    if jobs == 1:
        command = [str(jb), *arguments]
    else:
        print(f"[kdnb] executing up to {jobs} chapters at once (KDNB_JOBS={jobs})", flush=True)
        command = [sys.executable, "-c", JUPYTER_BOOK_WITH_JOBS, str(jobs), *arguments]
    start = time.perf_counter()
    # Nobody watches the kernels that execute the chapters: no progress bars (kdnb.core.progress).
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "KDNB_PROGRESS": "0"})
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        STAMP.unlink(missing_ok=True)  # a failed build must not be taken as up to date next time
        print(f"[kdnb] book build FAILED after {elapsed:.0f} s (see the messages above)", file=sys.stderr)
        return result.returncode
    BUILD.mkdir(exist_ok=True)
    STAMP.write_text(current + "\n")
    print(f"[kdnb] book built in {elapsed:.0f} s: {BUILD / 'html' / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
