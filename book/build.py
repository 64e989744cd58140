"""Build the HTML book, re-executing exactly what is stale. Run by `make book`.

Chapters are executed while Sphinx reads them (MyST-NB's "inline" mode, so that the prose's inline expressions are
evaluated), and Sphinx re-reads only the sources that changed: on its own it would keep pages computed with an older
kdnb, older pins or another profile. This script stamps a hash of everything that can change a chapter's numbers
(kdnb/**, the pins, the book's extension, KDNB_PROFILE, KDNB_DEVICE and KDNB_THREADS). When the stamp changes it
clears Sphinx's saved environment, the saved claims and the HTML and rebuilds everything; otherwise an edited chapter
alone is re-executed.

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


def main(argv: list[str]) -> int:
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
    command = [str(jb), "build", str(ROOT), "--builder", "html", "-W", "-n", "--keep-going", *extra]
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
