"""The book built one chapter at a time and with KDNB_JOBS=2 (two chapters at once): wall time ratio.

Each build runs book/build.py on a fresh copy of the book (the chapters, the book's pages and configuration; kdnb
is the installed one) at the smoke profile, so that the two builds execute every chapter and neither reads the
other's outputs. Prints both times and their ratio (below 1: the parallel build is faster) and whether the two
builds saved the same claims. KDNB_BENCH_PROFILE=default times the book as `make book` builds it (about 20 minutes
serially on 2 cores). Nothing here asserts a time.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILE = os.environ.get("KDNB_BENCH_PROFILE", "smoke")


def copy_of_the_book(where: Path) -> Path:
    book = where / "book-copy"
    book.mkdir()
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / name, book)
    shutil.copytree(ROOT / "book", book / "book")
    (book / "notebooks").mkdir()
    for chapter in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copy(chapter, book / "notebooks")
    return book


def build(jobs: int, where: Path) -> tuple[float, dict]:
    book = copy_of_the_book(where)
    env = {k: v for k, v in os.environ.items() if k not in ("KDNB_CLAIMS_DIR", "KDNB_FIGURES_DIR", "MPLBACKEND")}
    # no teacher read from kdnb's cache: each build trains its own, as on a fresh machine
    env.update(KDNB_PROFILE=PROFILE, KDNB_JOBS=str(jobs), KDNB_CACHE_DIR="off")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(book / "book" / "build.py")], cwd=book, env=env,
                            capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"the build with KDNB_JOBS={jobs} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    claims = {p.name: p.read_bytes() for p in sorted((book / "_build" / "claims").glob("*.json"))}
    return seconds, claims


def main():
    times, claims = {}, {}
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory() as where:
            times[jobs], claims[jobs] = build(jobs, Path(where))
    print(f"the book at the {PROFILE} profile, {len(claims[1])} chapters")
    print(f"{'build':28s} {'seconds':>9s} {'time / serial':>14s}")
    for jobs, label in ((1, "serial (the default)"), (2, "KDNB_JOBS=2")):
        print(f"{label:28s} {times[jobs]:9.1f} {times[jobs] / times[1]:14.2f}")
    print(f"same claims: {claims[1] == claims[2]}")


if __name__ == "__main__":
    main()
