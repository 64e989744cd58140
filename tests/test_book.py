"""The built book, as a reader sees it: headless Chromium opens each page and takes a screenshot.

Also: an execution error fails the build and shows the traceback, and the build's staleness stamp tracks what can change
a chapter's numbers.

The browser test needs Debian's `chromium-headless-shell` (or `chromium`). Where neither is installed it is skipped
with a reason, unless KDNB_REQUIRE_BROWSER=1 (set by .ci/run), which turns the skip into a failure.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))


def book_env():
    """The environment of `make book`: the book is built in its own profile, with its own claims folder."""
    env = dict(os.environ)
    for var in ("KDNB_PROFILE", "KDNB_CLAIMS_DIR", "MPLBACKEND"):
        env.pop(var, None)
    return env


def browser():
    for name in ("chromium-headless-shell", "chromium"):
        path = shutil.which(name)
        if path:
            return path
    reason = "no headless Chromium (apt-get install chromium-headless-shell)"
    if os.environ.get("KDNB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"KDNB_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def built_book():
    chromium = browser()
    result = subprocess.run([sys.executable, str(ROOT / "book" / "build.py")], cwd=ROOT, env=book_env(),
                            capture_output=True, text=True)
    assert result.returncode == 0, f"book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return chromium


def render(chromium, page: str) -> BeautifulSoup:
    """Open a page (after its scripts ran, MathJax included), save a screenshot, and return the rendered DOM."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    url = (HTML / page).as_uri()
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,2000",
             "--virtual-time-budget=10000"]
    shot = SHOTS / (page.replace("/", "_").replace(".html", ".png"))
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    assert shot.is_file() and shot.stat().st_size > 10_000, f"no screenshot of {page}"
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    return BeautifulSoup(dom, "html.parser")


def visible_text(soup: BeautifulSoup) -> str:
    for tag in soup(["script", "style", "noscript"]):
        tag.decompose()
    return soup.get_text(" ")


@pytest.mark.book
@pytest.mark.parametrize("page", ["book/intro.html", *[f"notebooks/{c}.html" for c in CHAPTERS]])
def test_pages_render_math_and_figures(built_book, page):
    soup = render(built_book, page)
    assert soup.find_all("mjx-container"), f"{page}: MathJax did not render any math"
    text = visible_text(soup)
    assert "$$" not in text and "\\[" not in text, f"{page}: raw TeX left in the page"
    if page.startswith("notebooks/"):
        figures = [img for img in soup.find_all("img") if "_images/" in img.get("src", "")]
        assert len(figures) >= 3, f"{page}: expected figures, found {len(figures)}"
        assert soup.select("figure figcaption"), f"{page}: figures have no captions"
        assert "Traceback" not in text, f"{page}: an error was rendered"


@pytest.mark.book
def test_scorecard_has_a_row_per_claim_of_every_chapter(built_book):
    soup = render(built_book, "book/scorecard.html")
    rows = soup.select("table.kdnb-scorecard tbody tr")
    assert len(rows) >= len(CHAPTERS)
    chapters = {row.find("td").get_text(strip=True) for row in rows}
    assert chapters == set(CHAPTERS)
    verdicts = [row.find_all("td")[-1].get_text(strip=True) for row in rows]
    assert all(v.startswith(("reproduced", "not reproduced")) for v in verdicts)
    assert re.search(r"\d+ of \d+ claims reproduced, profile\s+default", visible_text(soup))


@pytest.mark.book
def test_html_references_no_external_script(built_book):
    for page in HTML.rglob("*.html"):
        soup = BeautifulSoup(page.read_text(), "html.parser")
        for script in soup.find_all("script"):
            assert not re.match(r"https?://", script.get("src", "")), f"{page}: external script {script['src']}"
            assert "unpkg.com" not in (script.string or ""), f"{page}: script refers to unpkg.com"
    assert (HTML / "_static" / "mathjax" / "tex-chtml.js").is_file(), "MathJax is not vendored"


@pytest.mark.book
def test_execution_error_fails_the_build_with_its_traceback(tmp_path):
    """A chapter that raises must fail the build (not just warn), and the log must show the traceback."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["sphinx"]["extra_extensions"] = [e for e in config["sphinx"]["extra_extensions"] if e != "kdnb_book"]
    config["sphinx"].pop("local_extensions")
    config.pop("bibtex_bibfiles")
    config["sphinx"]["config"].pop("html_static_path")
    (tmp_path / "_config.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: broken\n")
    (tmp_path / "intro.md").write_text("# Intro\n")
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Broken"),
                                         nbformat.v4.new_code_cell("def chapter():\n    return 1 / 0\nchapter()")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "broken.ipynb")
    jb = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run([jb, "build", tmp_path, "-W", "-n", "--keep-going"], capture_output=True, text=True,
                            env=book_env(), timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode != 0, "a failing chapter must fail the build"
    assert "ZeroDivisionError" in log and "chapter()" in log, "the build log must show the traceback"


def test_build_stamp_tracks_profile_and_library(monkeypatch):
    spec = importlib.util.spec_from_file_location("kdnb_build", ROOT / "book" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    monkeypatch.delenv("KDNB_PROFILE", raising=False)
    base = build.stamp()
    assert build.stamp() == base
    monkeypatch.setenv("KDNB_PROFILE", "full")
    assert build.stamp() != base
    assert "kdnb/**/*.py" in build.INPUTS and "constraints.txt" in build.INPUTS
