"""The product refers only to what a reader has: no file outside ``tests/`` points to material outside the repository,
every path and kdnb name that README.md quotes exists, and README.md has a line for every module of kdnb.

"The product" is every file git tracks or would track (``git ls-files --cached --others --exclude-standard``), minus
``tests/`` (where these phrases appear as test data) and binary files. A notebook is read as the text of its cells. Text
is compared with whitespace collapsed and comment markers at line starts dropped, so a phrase broken across two lines
is still found.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "shared/": "points outside the repository: cite the paper instead",
    "could not be read": "describes the making of the book: state the book's reconstruction as the book's choice",
    "could not be consulted": "describes the making of the book: say where the details come from instead",
    "was not read": "describes the making of the book: say where the details come from instead",
    "paper notes": "refers to notes the reader does not have: cite the paper, or call the choice the book's",
    "background notes": "refers to notes the reader does not have: cite the paper, or call the choice the book's",
    "2-core machine": "quotes the build machine: point to the benchmark in benchmarks/ instead of its timings",
}
SKIPPED_DIRECTORIES = {".git", ".venv", "_build", "__pycache__", ".hypothesis", ".ruff_cache", ".pytest_cache", "tests"}


def product_files(root: Path = ROOT) -> list[Path]:
    """The files of the product: git's view of the tree where there is one, else a walk of the folder."""
    try:
        command = ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
        listed = subprocess.run(command, capture_output=True, check=True).stdout.decode().split("\0")
        paths = [root / name for name in listed if name]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for p in root.rglob("*") if not SKIPPED_DIRECTORIES & set(p.relative_to(root).parts[:-1])]
    return sorted(p for p in paths if p.is_file() and p.relative_to(root).parts[0] != "tests")


def readable_text(path: Path) -> str | None:
    """The text a reader sees in ``path`` (a notebook's cells joined), or None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if path.suffix == ".ipynb":
        try:
            cells = json.loads(text)["cells"]
        except (ValueError, KeyError, TypeError):
            return text
        return "\n\n".join("".join(cell.get("source", "")) for cell in cells)
    return text


def forbidden_mentions(text: str) -> list[str]:
    """The phrases of :data:`FORBIDDEN` in ``text``, also when a line break or a comment marker splits them."""
    joined = re.sub(r"\n[ \t]*(?:#+|//|%+)?[ \t]*", " ", text)
    flat = " ".join(joined.split()).casefold()
    return [phrase for phrase in FORBIDDEN if phrase in flat]


def test_the_product_files_include_code_notebooks_and_prose():
    names = {p.relative_to(ROOT).as_posix() for p in product_files()}
    assert {"README.md", "kdnb/core/runtime.py", "book/intro.md", "notebooks/03_transfer_risk_bound.ipynb"} <= names
    assert not any(name.startswith("tests/") for name in names)


def test_nothing_in_the_product_points_outside_the_repository():
    problems = []
    for path in product_files():
        text = readable_text(path)
        if text is None:
            continue
        for phrase in forbidden_mentions(text):
            lines = [i for i, line in enumerate(text.splitlines(), 1) if phrase in line.casefold()]
            where = f"line {lines[0]}" if lines else "across a line break"
            if path.suffix == ".ipynb":
                where = "a cell" + ("" if lines else ", across a line break")
            problems.append(f"{path.relative_to(ROOT)} ({where}) says {phrase!r}: {FORBIDDEN[phrase]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("text, found", [
    ("see ``shared/papers/x.md``", ["shared/"]),
    ("The paper's body could\nnot be read for this book", ["could not be read"]),
    ("# measured on a 2-core\n# machine", ["2-core machine"]),
    ("calibrated in the paper\n  notes", ["paper notes"]),
    ("a shared library, a shared machine; the papers' notes", []),
])
def test_the_phrase_check_sees_through_line_breaks(text, found):
    assert forbidden_mentions(text) == found


def test_the_phrase_check_finds_a_planted_mention(tmp_path):
    """A planted mention in a markdown cell of a notebook and in a module of a scratch copy is found; tests/ is not."""
    for folder in ("kdnb", "notebooks", "tests"):
        (tmp_path / folder).mkdir()
    (tmp_path / "kdnb" / "m.py").write_text('"""Tolerances from the paper\nnotes."""\n')
    cell = {"cell_type": "markdown", "metadata": {}, "source": ["See `shared/papers/x.md`.\n"]}
    (tmp_path / "notebooks" / "c.ipynb").write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4,
                                                                 "nbformat_minor": 5}))
    (tmp_path / "tests" / "t.py").write_text("PHRASE = 'shared/'\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\0shared/")
    found = {p.relative_to(tmp_path).as_posix(): forbidden_mentions(readable_text(p))
             for p in product_files(tmp_path) if readable_text(p) is not None}
    assert found == {"kdnb/m.py": ["paper notes"], "notebooks/c.ipynb": ["shared/"]}


# ---------------------------------------------------------------------------------------------------------------------
# README.md names only what exists
# ---------------------------------------------------------------------------------------------------------------------

GENERATED = ("_build", ".venv", "out.ipynb")
EXTENSIONS = (".py", ".md", ".yml", ".yaml", ".txt", ".bib", ".ipynb", ".toml", ".cfg")


def readme_paths(text: str) -> list[str]:
    """The repository paths README quotes in backticks: a token with a slash or a file extension, no spaces and no
    placeholder (``<method>``, ``NN_topic``), and not something the build generates."""
    paths = []
    for token in re.findall(r"`([^`\n]+)`", text):
        token = token.strip()
        if " " in token or any(c in token for c in "<>*$=") or "NN" in token or token.startswith(GENERATED):
            continue
        looks_like_path = "/" in token or token.endswith(EXTENSIONS)
        if looks_like_path and not token.startswith(("http", "kdnb.")) and not re.fullmatch(r"[a-z]+:\S+", token):
            paths.append(token)
    return paths


def readme_modules(text: str) -> list[str]:
    """The dotted kdnb names README quotes (``kdnb.core.plotting.glue_figure(...)``), without call parentheses."""
    names = []
    for token in re.findall(r"`(kdnb\.[A-Za-z0-9_.]+)", text):
        names.append(token.rstrip("."))
    return names


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_every_path_that_readme_names_exists():
    text = (ROOT / "README.md").read_text()
    paths = readme_paths(text)
    assert "kdnb/core/runtime.py" in paths and "benchmarks/bench_threads.py" in paths, "the layout names its modules"
    basenames = {p.name for p in product_files()} | {p.name for p in (ROOT / "tests").rglob("*") if p.is_file()}
    missing = [p for p in paths if not ((ROOT / p.rstrip("/")).exists() if "/" in p else p in basenames)]
    assert not missing, f"README.md names paths that do not exist: {missing}"


def test_every_kdnb_name_that_readme_quotes_resolves():
    names = readme_modules((ROOT / "README.md").read_text())
    assert "kdnb.papers.PAPERS" in names
    missing = [n for n in names if not resolves(n)]
    assert not missing, f"README.md quotes kdnb names that do not exist: {missing}"


def test_readme_path_extraction_skips_commands_and_placeholders():
    text = "`make book` `kdnb/core/data.py` `kdnb/papers/<method>/` `_build/html/index.html` `NN_topic.ipynb` " \
           "`.venv/bin/papermill a.ipynb out.ipynb` `book/` `intro.md` `kdnb.core.data`"
    assert readme_paths(text) == ["kdnb/core/data.py", "book/", "intro.md"]
    assert readme_modules(text) == ["kdnb.core.data"]
    assert resolves("kdnb.core.data.load_digits") and not resolves("kdnb.core.data.no_such_name")


def test_readme_describes_every_module_of_the_package():
    text = (ROOT / "README.md").read_text()
    package = ROOT / "kdnb"
    missing = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(ROOT)
        named = relative.parent.as_posix() + "/" if path.name == "__init__.py" else relative.as_posix()
        if path.parent == package and path.name == "__init__.py":
            named = "kdnb/__init__.py"
        if f"`{named}`" not in text:
            missing.append(named)
    assert not missing, f"README.md's layout has no line for: {missing}"
