"""The built book, as a reader sees it: headless Chromium (driven by Playwright) opens the pages and measures them.

Checked on every page: math typeset by MathJax (loaded from the site itself), no raw TeX or MyST markup, nothing wider
than the content column (code, equations; wide tables scroll inside their own box), figures shown at their own size
(never scaled down, so their text keeps the 9-point minimum that ``save_figure`` enforces), captions numbered per
chapter ("Figure 3.2"), and no external script. Also: the scorecard, the bibliography's author-year labels, the site's
weight (≤ 10 MB) and the first page's (≤ 2 MB, without the search index), the search page, an execution error that
fails the build with its traceback, and the staleness stamp. Screenshots of every page go to ``_build/screenshots/``.

The browser tests need Debian's ``chromium-headless-shell`` (or ``chromium``); where neither is installed they are
skipped with a reason, unless KDNB_REQUIRE_BROWSER=1 (set by .ci/run), which turns the skip into a failure.
"""

import importlib.util
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.browser import chromium, chromium_path

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
PAGES = ["book/intro.html", "book/run.html", "book/scorecard.html", "book/bibliography.html",
         *[f"notebooks/{c}.html" for c in CHAPTERS]]
SITE_LIMIT_MB, FIRST_LOAD_LIMIT_MB = 10.0, 2.0


def book_env():
    """The environment of `make book`: the book is built in its own profile, with its own claims folder."""
    env = dict(os.environ)
    for var in ("KDNB_PROFILE", "KDNB_CLAIMS_DIR", "KDNB_FIGURES_DIR", "MPLBACKEND"):
        env.pop(var, None)
    return env


@pytest.fixture(scope="session")
def built_book():
    chromium_path()
    # Two chapters at once (KDNB_JOBS=2), which keeps CI short: nothing else runs while the tests wait for the book,
    # and test_a_parallel_build_gives_the_pages_and_claims_of_a_serial_one shows that the pages are the same.
    result = subprocess.run([sys.executable, str(ROOT / "book" / "build.py")], cwd=ROOT,
                            env={**book_env(), "KDNB_JOBS": os.environ.get("KDNB_JOBS", "2")},
                            capture_output=True, text=True)
    assert result.returncode == 0, f"book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return HTML


MEASURE = """() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main');
  const style = getComputedStyle(article), box = article.getBoundingClientRect();
  const column = {left: box.left + parseFloat(style.paddingLeft), right: box.right - parseFloat(style.paddingRight)};
  column.width = column.right - column.left;
  // A box that scrolls on its own (overflow-x auto/scroll) may hold wider content; everything else must fit.
  const scrolls = (el) => { for (let e = el.parentElement; e && e !== article; e = e.parentElement) {
      const o = getComputedStyle(e).overflowX; if (o === 'auto' || o === 'scroll') return true; } return false; };
  const wide = [];
  for (const el of article.querySelectorAll('pre, mjx-container[display="true"], img, table, p, figure')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || scrolls(el)) continue;
    // Printed outputs may scroll in their own box; code and everything else must fit.
    const code = el.tagName === 'PRE' && !el.closest('.cell_output');
    if (r.right > column.right + 1 || (code && el.scrollWidth > el.clientWidth + 1)) {
      wide.push({tag: el.tagName, cls: el.className && el.className.toString().slice(0, 40),
                 text: (el.textContent || el.getAttribute('src') || '').trim().slice(0, 60),
                 right: Math.round(r.right), scrollWidth: el.scrollWidth, clientWidth: el.clientWidth});
    }
  }
  const figures = Array.from(article.querySelectorAll('figure img')).map(img => ({
      src: img.getAttribute('src'), natural: img.naturalWidth, shown: Math.round(img.getBoundingClientRect().width)}));
  const captions = Array.from(article.querySelectorAll('figure figcaption')).map(c => c.textContent.trim());
  const prose = Array.from(article.querySelectorAll('p, li')).filter(e => !e.closest('table, figure'))
      .map(e => e.textContent).join('\\n');
  // The page's text outside code: code may quote markup (a comment naming {eval}) without it being raw.
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  const outsideCode = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (!n.parentElement.closest('pre, code, script, style')) outsideCode.push(n.textContent);
  }
  return {column: Math.round(column.width), wide, figures, captions, prose, text: article.innerText,
          markup_text: outsideCode.join(' '),
          math: document.querySelectorAll('mjx-container').length,
          hidden_inputs: article.querySelectorAll('details.hide.above-input, .cell.tag_hide-input').length};
}"""


def open_page(page, path: str, requests: list | None = None) -> dict:
    """Open a built page, wait for MathJax, save a screenshot, and measure it (see MEASURE)."""
    if requests is not None:
        page.on("request", lambda request: requests.append(request.url))
    page.goto((HTML / path).as_uri())
    page.wait_for_load_state("load")
    page.evaluate("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
    page.wait_for_timeout(300)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / path.replace("/", "_").replace(".html", ".png")), full_page=True)
    return page.evaluate(MEASURE)


def chapter_number(stem: str) -> int:
    return CHAPTERS.index(stem) + 1


@pytest.mark.book
@pytest.mark.parametrize("path", PAGES)
def test_page_fits_the_column_and_renders_everything(built_book, path):
    with chromium(width=1280, height=900) as page:
        failed = []
        page.on("requestfailed", lambda request: failed.append(request.url))
        m = open_page(page, path)
    assert not failed, f"{path}: requests that failed: {failed}"
    assert 780 <= m["column"] <= 900, f"{path}: a content column of {m['column']} px (kdnb.core.plotting expects 780)"
    assert not m["wide"], f"{path}: wider than the {m['column']}-px column: {m['wide']}"
    raw = re.findall(r"\$\$|\\\[|\{(?:eval|numref|cite:[tp]|glue[:a-z]*|figure|ref)\}|```", m["markup_text"])
    assert not raw, f"{path}: raw TeX or MyST markup left in the page: {sorted(set(raw))}"
    if path == "book/intro.html" or path.startswith("notebooks/"):
        assert m["math"] > 0, f"{path}: MathJax did not typeset any math"
    if path.startswith("notebooks/"):
        stem = Path(path).stem
        assert len(m["figures"]) >= 3, f"{path}: expected figures, found {m['figures']}"
        for figure in m["figures"]:
            assert figure["natural"] > 0, f"{path}: figure {figure['src']} did not load"
            assert figure["shown"] >= figure["natural"] - 1, f"{path}: figure scaled down, its text shrinks: {figure}"
        n = chapter_number(stem)
        assert len(m["captions"]) == len(m["figures"])
        for k, caption in enumerate(m["captions"], start=1):
            assert caption.startswith(f"Figure {n}.{k}"), f"{path}: caption not numbered Figure {n}.{k}: {caption[:50]}"
        # "Fig. 3" in the prose always means the paper's figure, and says so.
        for match in re.finditer(r"\bFigs?\.\s*\d+", m["prose"]):
            before, after = m["prose"][max(0, match.start() - 40):match.start()], m["prose"][match.end():match.end() + 6]
            assert "paper's" in before or "paper’s" in before or after.lstrip().startswith("of"), (
                f"{path}: a figure of the paper not written as 'the paper's Fig. N': ...{before}{match.group(0)}{after}")
        assert m["hidden_inputs"] >= 3, f"{path}: plotting cells are not behind a toggle"
        assert "…" not in m["text"].split("Claims")[-1], f"{path}: the claims table cuts statements"
        assert "Run this book" in m["text"], f"{path}: the chapter does not link the run page"
        assert "What we found" in m["text"], f"{path}: the chapter has no 'What we found' section"


@pytest.mark.book
def test_scorecard_shows_each_chapter_with_its_claims_checks_and_records(built_book):
    with chromium(width=1280, height=900) as page:
        open_page(page, "book/scorecard.html")
        chapters = page.evaluate("""() => Array.from(document.querySelectorAll('section.kdnb-scorecard-chapter'))
            .map(s => ({title: s.querySelector('h2').textContent, href: s.querySelector('h2 a').getAttribute('href'),
                        tables: Array.from(s.querySelectorAll('table')).map(t => t.className),
                        rows: Array.from(s.querySelectorAll('table.kdnb-claim tbody tr')).map(r =>
                            Array.from(r.querySelectorAll('td')).map(td => td.textContent.trim()))}))""")
        summary = page.evaluate("() => document.querySelector('.kdnb-scorecard-summary').textContent")
        mathjax = page.evaluate("() => Array.from(document.scripts).some(s => /mathjax\\/tex-chtml\\.js/.test(s.src))")
    assert [c["href"] for c in chapters] == [f"../notebooks/{c}.html" for c in CHAPTERS]
    for k, chapter in enumerate(chapters, start=1):
        assert re.match(rf"{k}\. \w", chapter["title"]), f"chapter heading without its number: {chapter['title']}"
        assert "kdnb-claim" in " ".join(chapter["tables"]), f"{chapter['title']}: no claims table"
        for statement, source, measured, expected, verdict in chapter["rows"]:
            assert "id " in statement and source and measured and expected, chapter["title"]
            assert verdict.startswith(("reproduced", "not reproduced")), verdict
            if verdict.startswith("not reproduced (known)"):
                assert "Why:" in verdict, f"{chapter['title']}: a known failure without its reason"
    assert re.search(r"\d+ of \d+ claims of the papers reproduced", summary)
    assert "consistency checks hold" in summary
    assert mathjax, "the scorecard does not load MathJax"


@pytest.mark.book
def test_bibliography_is_author_year_with_links(built_book):
    with chromium() as page:
        m = open_page(page, "book/bibliography.html")
        links = page.evaluate("() => Array.from(document.querySelectorAll('article a')).map(a => a.href)")
    assert "[Hinton et al., 2015]" in m["text"] and "[Ji and Zhu, 2020]" in m["text"], m["text"][:400]
    assert not re.search(r"\[\d+\]", m["text"]), "numbered bibliography labels"
    assert any(link.startswith("https://arxiv.org/abs/") for link in links), "no arXiv links"


@pytest.mark.book
def test_site_and_first_load_are_light(built_book):
    size_mb = sum(p.stat().st_size for p in HTML.rglob("*") if p.is_file()) / 1e6
    requests: list[str] = []
    with chromium() as page:
        m = open_page(page, "book/intro.html", requests)
    assert m["math"] > 0
    local = {Path(url.split("?")[0].removeprefix("file://")) for url in requests if url.startswith("file://")}
    first_load_mb = sum(p.stat().st_size for p in local if p.is_file()) / 1e6
    (ROOT / "_build" / "weight.json").write_text(json.dumps({"site_mb": round(size_mb, 2),
                                                             "first_load_mb": round(first_load_mb, 2),
                                                             "first_load_files": len(local)}))
    assert size_mb <= SITE_LIMIT_MB, f"the site is {size_mb:.1f} MB (limit {SITE_LIMIT_MB} MB)"
    assert first_load_mb <= FIRST_LOAD_LIMIT_MB, f"the first page loads {first_load_mb:.2f} MB"
    # The search index grows with every chapter; book/_templates/layout.html keeps it on the search page.
    assert not any(p.name == "searchindex.js" for p in local), "the first page loads the search index"


@pytest.mark.book
def test_search_finds_chapters(built_book):
    """The search page still works with the index loaded there only (book/_templates/layout.html)."""
    with chromium() as page:
        page.goto((HTML / "search.html").as_uri() + "?q=distillation")
        page.wait_for_load_state("load")
        page.wait_for_function("() => document.querySelectorAll('#search-results ul.search li').length > 0",
                               timeout=15000)
        hits = page.evaluate("() => Array.from(document.querySelectorAll('#search-results ul.search li a'))"
                             ".map(a => a.getAttribute('href'))")
    assert any("notebooks/" in hit for hit in hits), hits


@pytest.mark.book
def test_html_references_no_external_script(built_book):
    from bs4 import BeautifulSoup

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


def load_build_script(root: Path = ROOT):
    spec = importlib.util.spec_from_file_location("kdnb_build", root / "book" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


@pytest.mark.parametrize("raw, jobs", [(None, 1), ("", 1), (" 3 ", 3), ("1", 1)])
def test_kdnb_jobs_reads_the_number_of_chapters_at_once(raw, jobs, monkeypatch):
    if raw is None:
        monkeypatch.delenv("KDNB_JOBS", raising=False)
    else:
        monkeypatch.setenv("KDNB_JOBS", raw)
    assert load_build_script().jobs_from_env() == jobs


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_a_bad_kdnb_jobs_stops_the_build_before_it_starts(raw, monkeypatch):
    monkeypatch.setenv("KDNB_JOBS", raw)
    build = load_build_script()
    with pytest.raises(ValueError, match=r"KDNB_JOBS must be an integer >= 1 .*" + re.escape(repr(raw))):
        build.jobs_from_env()
    result = subprocess.run([sys.executable, str(ROOT / "book" / "build.py")], cwd=ROOT, capture_output=True,
                            text=True, env={**book_env(), "KDNB_JOBS": raw}, timeout=60)
    assert result.returncode == 2 and "KDNB_JOBS must be an integer" in result.stderr


# Random identifiers that differ from one build to the next, serial or not: widget models and pandas Styler tables.
RANDOM_IDS = re.compile(r"\b[0-9a-f]{32}\b|\bT_[0-9a-f]{5}(?=[_\"])")


@pytest.mark.notebooks
def test_a_parallel_build_gives_the_pages_and_claims_of_a_serial_one(tmp_path):
    """KDNB_JOBS=2 against the default serial build, on a book of two chapters and the scorecard (smoke profile).

    book/build.py is run from a copy of the book, whose root it takes for the book's. Every page but the table of
    execution times (which holds clock times) and the search index (which indexes it) must be the serial build's,
    up to the random identifiers above, and the claims files the same bytes.
    """
    chapters = ["10_spectral_student_teacher", "11_copy_or_average"]
    built = {}
    for jobs in (1, 2):
        book = tmp_path / f"jobs{jobs}"
        shutil.copytree(ROOT / "book", book / "book")
        shutil.copy(ROOT / "_config.yml", book)
        (book / "notebooks").mkdir()
        for name in chapters:
            shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", book / "notebooks")
        (book / "index.md").write_text("# Two chapters\n\nA book of two chapters, built by a test.\n")
        toc = {"format": "jb-book", "root": "index", "chapters": [
            {"file": "book/run"}, *[{"file": f"notebooks/{name}"} for name in chapters],
            {"file": "book/scorecard"}, {"file": "book/execution"}, {"file": "book/bibliography"}]}
        (book / "_toc.yml").write_text(yaml.safe_dump(toc))
        env = {**book_env(), "KDNB_PROFILE": "smoke", "KDNB_JOBS": str(jobs)}
        result = subprocess.run([sys.executable, str(book / "book" / "build.py")], cwd=book, env=env,
                                capture_output=True, text=True, timeout=900)
        log = result.stdout + result.stderr
        assert result.returncode == 0, f"the build with KDNB_JOBS={jobs} failed:\n{log[-6000:]}"
        # Sphinx's parallel read reports its progress by chunks of pages ("book/run .. notebooks/11_..."), its
        # serial read page by page; it would fall back to a serial read (and warn, which -W makes an error) if an
        # extension of the build were not declared safe for it
        chunks = [line for line in log.splitlines() if "reading sources" in line and " .. " in line]
        assert bool(chunks) == (jobs > 1), log[-3000:]
        built[jobs] = book / "_build"
        # the scorecard is re-read on every build (book/_ext/kdnb_book.py), which Sphinx's saved environment must
        # remember after a parallel read too: the workers' environments are merged into it
        saved = pickle.loads((built[jobs] / ".doctrees" / "environment.pickle").read_bytes())
        assert saved.kdnb_scorecard_docs == {"book/scorecard"}

    def pages(build: Path) -> dict:
        html = build / "html"
        return {str(p.relative_to(html)): RANDOM_IDS.sub("ID", p.read_text(errors="replace"))
                for p in sorted(html.rglob("*.html")) if p.relative_to(html).as_posix() != "book/execution.html"}

    serial, parallel = pages(built[1]), pages(built[2])
    assert serial.keys() == parallel.keys()
    assert [p for p in serial if serial[p] != parallel[p]] == []
    assert all(f"notebooks/{name}.html" in serial["book/scorecard.html"] for name in chapters)
    claims = {jobs: {p.name: p.read_bytes() for p in sorted((built[jobs] / "claims").glob("*.json"))}
              for jobs in (1, 2)}
    assert sorted(claims[1]) == [f"{name}.smoke.json" for name in chapters]
    assert claims[1] == claims[2]
