"""Sphinx extension of the kdnb book: the scorecard, an author-year bibliography, and a light, offline site.

**Scorecard.** The ``kdnb-scorecard`` directive shows, chapter by chapter (by number and title, linked), the chapter's
claims of its paper, then its consistency checks and its records, in the tables of
:func:`kdnb.core.claims.entries_html` (:mod:`kdnb.core.claims` describes the three kinds). Only claims are counted as
reproduced or not. Chapters are executed while Sphinx *reads* the sources, and each writes its claims to the claims
directory, so the directive leaves a placeholder that is filled in ``doctree-resolved`` (the write phase), and the
scorecard page is re-read on every build. A chapter in the table of contents with no saved claims is a build warning
(an error under ``-W``). The page loads MathJax, since statements may hold inline math.

**Bibliography.** Text citations are author-year (``bibtex_reference_style: author_year``); the style ``kdnb``
labels the bibliography's entries the same way ("Hinton et al., 2015"), sorts them by author and year, and links
arXiv identifiers and DOIs.

**Offline and light.** Jupyter Book always loads sphinx-thebe, which writes the address of thebe on unpkg.com into
every page; its scripts are dropped. After the build, only what pages load is kept: MathJax's ``tex-chtml.js`` with
its CHTML fonts and the TeX extensions it autoloads (sphinx-mathjax-offline copies the whole 24 MB distribution), and
the theme's icons as the web fonts its stylesheet already declares (its 1.5 MB icon script is removed, and the
TrueType copies of those fonts, which browsers that read WOFF2 never fetch, and the glyphs of icons no page
uses); source maps go, and so does sphinx-design's stylesheet when no page uses its components.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)


class scorecard_placeholder(nodes.General, nodes.Element):
    pass


KINDS = ("claim", "check", "record")
MATH_MARKER = "kdnb-needs-mathjax"


class ScorecardDirective(SphinxDirective):
    """``{kdnb-scorecard}``: every chapter's claims, checks and records, chapter by chapter."""

    has_content = False
    option_spec: ClassVar[dict] = {}

    def run(self):
        self.env.kdnb_scorecard_docs = getattr(self.env, "kdnb_scorecard_docs", set()) | {self.env.docname}
        # An empty math node makes Sphinx load MathJax on this page; it is removed before the page is written.
        marker = nodes.math("", "", classes=[MATH_MARKER])
        return [scorecard_placeholder(), nodes.paragraph("", "", marker)]


def _always_reread(app, env, added, changed, removed):
    return sorted(getattr(env, "kdnb_scorecard_docs", set()))


def _purge_doc(app, env, docname):
    getattr(env, "kdnb_scorecard_docs", set()).discard(docname)


def _merge_info(app, env, docnames, other):
    # Sphinx's parallel read (book/build.py with KDNB_JOBS > 1) reads pages in forked processes and merges each
    # process's environment into the main one; without this the scorecard page would not be re-read next time.
    env.kdnb_scorecard_docs = getattr(env, "kdnb_scorecard_docs", set()) | getattr(other, "kdnb_scorecard_docs",
                                                                                   set())


def _chapters(app) -> list[str]:
    """Notebook chapters that the build includes, by docname (e.g. ``notebooks/01_distillation_basics``)."""
    return sorted(d for d in app.env.found_docs if d.startswith("notebooks/"))


def _chapter_heading(app, fromdoc: str, docname: str) -> str:
    title = app.env.titles[docname].astext() if docname in app.env.titles else Path(docname).name
    number = app.env.toc_secnumbers.get(docname, {}).get("")
    prefix = ".".join(map(str, number)) + ". " if number else ""
    uri = app.builder.get_relative_uri(fromdoc, docname)
    return f'<a href="{html.escape(uri)}">{html.escape(prefix + title)}</a>'


def _counts(entries) -> tuple[int, int, int, int, int]:
    claims = [c for c in entries if c.kind == "claim"]
    checks = [c for c in entries if c.kind == "check"]
    return (sum(c.verdict.startswith("reproduced") for c in claims), len(claims),
            sum(c.verdict == "holds" for c in checks), len(checks), sum(c.kind == "record" for c in entries))


def _scorecard_html(app, docname: str, entries, profile: str) -> str:
    from kdnb.core.claims import entries_html

    by_chapter: dict[str, list] = {}
    for c in entries:
        by_chapter.setdefault(c.chapter, []).append(c)
    n_ok, n_claims, n_hold, n_checks, n_records = _counts(entries)
    parts = [
        f'<p class="kdnb-scorecard-summary"><strong>{n_ok} of {n_claims} claims of the papers reproduced</strong> '
        f"in this build (profile <code>{html.escape(profile)}</code>). Apart from the claims, "
        f"{n_hold} of {n_checks} consistency checks hold and {n_records} values are recorded.</p>",
        '<div class="kdnb-table-wrap"><table class="table kdnb-scorecard-summary-table"><thead><tr><th>chapter</th>'
        "<th>claims reproduced</th><th>checks hold</th><th>records</th></tr></thead><tbody>",
    ]
    chapters = [d for d in _chapters(app) if Path(d).name in by_chapter]
    for doc in chapters:
        ok, total, hold, checks, records = _counts(by_chapter[Path(doc).name])
        parts.append(f"<tr><td>{_chapter_heading(app, docname, doc)}</td><td>{ok} of {total}</td>"
                     f"<td>{hold} of {checks}</td><td>{records}</td></tr>")
    parts.append("</tbody></table></div>")
    titles = {"claim": "Claims of the paper", "check": "Consistency checks", "record": "Records"}
    for doc in chapters:
        stem = Path(doc).name
        parts.append(f'<section class="kdnb-scorecard-chapter" id="scorecard-{html.escape(stem)}">'
                     f"<h2>{_chapter_heading(app, docname, doc)}</h2>")
        for kind in KINDS:
            table = entries_html(by_chapter[stem], kind)
            if table:
                parts.append(f"<h3>{titles[kind]}</h3>{table}")
        parts.append("</section>")
    return "".join(parts)


def _fill(app, doctree, docname):
    for marker in list(doctree.findall(nodes.math)):
        if MATH_MARKER in marker.get("classes", []):
            marker.parent.remove(marker)
    placeholders = list(doctree.findall(scorecard_placeholder))
    if not placeholders:
        return
    from kdnb.core.claims import claims_directory, load_claims
    from kdnb.core.runtime import resolve_profile

    profile = resolve_profile(None)
    folder = claims_directory(app.srcdir)
    entries = load_claims(folder, profile=profile)
    present = {c.chapter for c in entries}
    for doc in _chapters(app):
        if Path(doc).name not in present:
            logger.warning(f"kdnb scorecard: no claims saved for chapter {Path(doc).name!r} at profile {profile!r} "
                           f"in {folder}")
    body = _scorecard_html(app, docname, entries, profile)
    for node in placeholders:
        node.replace_self(nodes.raw("", body, format="html"))


def _drop_thebe(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return

    def is_thebe(js) -> bool:
        name = str(getattr(js, "filename", js) or "")
        body = str(getattr(js, "attributes", {}).get("body", ""))
        return "thebe" in name or "THEBE_JS_URL" in body

    context["script_files"] = [js for js in scripts if not is_thebe(js)]


# What pages load of MathJax 3 (tex-chtml.js): the combined file, its CHTML web fonts, and the TeX packages it
# autoloads when a page uses their macros. Paths are relative to _static/mathjax.
MATHJAX_KEEP = ("tex-chtml.js", "output/chtml/fonts/woff-v2/", "input/tex/extensions/")
ICON_SCRIPT = re.compile(r'\s*<(?:script defer src|link rel="preload" as="script" href)="[^"]*scripts/fontawesome\.js'
                         r'[^"]*"\s*/?>(?:</script>)?')
# sphinx-design's stylesheet, loaded by every page of a Jupyter Book; dropped when no page uses its components.
DESIGN_CSS = re.compile(r'\s*<link rel="stylesheet"[^>]*href="[^"]*sphinx-design\.min\.css[^"]*"\s*/?>')


def _lighten(app, exception):
    """After a successful HTML build: keep only what pages load (see the module docstring)."""
    if exception is not None or app.builder.format != "html":
        return
    out = Path(app.outdir)
    mathjax = out / "_static" / "mathjax"
    if mathjax.is_dir():
        for path in sorted(mathjax.rglob("*"), reverse=True):
            rel = path.relative_to(mathjax).as_posix()
            if path.is_file() and not any(rel == keep or rel.startswith(keep) for keep in MATHJAX_KEEP):
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    static = out / "_static"
    for pattern in ("scripts/fontawesome.js*", "**/*.map", "vendor/fontawesome/webfonts/*.ttf"):
        for path in static.glob(pattern):
            path.unlink()
    _subset_icon_fonts(out)
    pages = {page: page.read_text(encoding="utf-8") for page in out.rglob("*.html")}
    uses_design = any(re.search(r'class="[^"]*\bsd-', text) for text in pages.values())
    if not uses_design:
        for path in static.glob("sphinx-design.min.css"):
            path.unlink()
    for page, text in pages.items():
        lighter = ICON_SCRIPT.sub("", text)
        if not uses_design:
            lighter = DESIGN_CSS.sub("", lighter)
        if lighter != text:
            page.write_text(lighter, encoding="utf-8")


ICON_RULE = re.compile(r'([^{}]+)\{content:"\\([0-9a-f]{4,5})"\}')


def _subset_icon_fonts(out: Path) -> None:
    """Cut the theme's Font Awesome web fonts down to the icons that the site names (in its HTML and scripts).

    The theme's stylesheet maps each icon class to a code point (``.fa-bars:before{content:"\\f0c9"}``); the fonts
    keep the glyphs of the classes that appear anywhere in the pages or their scripts, about 15 of some 2,000.
    """
    from fontTools import subset

    static = out / "_static"
    css = "".join(p.read_text(encoding="utf-8") for p in static.rglob("pydata-sphinx-theme.css"))
    used_text = "".join(p.read_text(encoding="utf-8", errors="ignore")
                        for pattern in ("**/*.html", "_static/**/*.js") for p in out.glob(pattern)
                        if "mathjax" not in p.parts)
    used = set(re.findall(r"\bfa-[a-z0-9-]+", used_text))
    codepoints = set()
    for selectors, code in ICON_RULE.findall(css):
        names = set(re.findall(r"\.(fa-[a-z0-9-]+):{1,2}before", selectors))
        if names & used:
            codepoints.add(int(code, 16))
    if not codepoints:
        return
    for font in static.glob("vendor/fontawesome/webfonts/*.woff2"):
        options = subset.Options()
        options.flavor = "woff2"
        options.layout_features = ["*"]
        loaded = subset.load_font(str(font), options)
        subsetter = subset.Subsetter(options)
        subsetter.populate(unicodes=sorted(codepoints))
        subsetter.subset(loaded)
        subset.save_font(loaded, str(font), options)


def _register_bibliography_style():
    """Register the pybtex style ``kdnb``: unsrt's entries, labelled and sorted by author and year."""
    from pybtex.plugin import register_plugin
    from pybtex.style.formatting.unsrt import Style as UnsrtStyle
    from pybtex.style.labels import BaseLabelStyle

    class AuthorYearLabels(BaseLabelStyle):
        """Labels as the text cites: "Hinton et al., 2015", "Ji and Zhu, 2020", "Cho and Saul, 2009"."""

        def format_labels(self, sorted_entries):
            for entry in sorted_entries:
                people = entry.persons.get("author") or entry.persons.get("editor") or []
                surnames = [" ".join(p.last_names).replace("{", "").replace("}", "") for p in people]
                if len(surnames) > 2:
                    who = f"{surnames[0]} et al."
                elif len(surnames) == 2:
                    who = f"{surnames[0]} and {surnames[1]}"
                else:
                    who = surnames[0] if surnames else entry.key
                yield f"{_latex_to_text(who)}, {entry.fields.get('year', 'n.d.')}"

    class KdnbStyle(UnsrtStyle):
        default_label_style = "kdnb_author_year"
        default_sorting_style = "author_year_title"

    register_plugin("pybtex.style.labels", "kdnb_author_year", AuthorYearLabels)
    register_plugin("pybtex.style.formatting", "kdnb", KdnbStyle)


def _latex_to_text(text: str) -> str:
    from pybtex.richtext import Text
    from pybtex.markup import LaTeXParser

    try:
        return LaTeXParser(text).parse().render_as("text")
    except Exception:  # noqa: BLE001 -- a label must never break the build; fall back to the raw text
        return str(Text(text))


def setup(app):
    _register_bibliography_style()
    app.add_node(scorecard_placeholder)
    app.add_directive("kdnb-scorecard", ScorecardDirective)
    app.connect("env-get-outdated", _always_reread)
    app.connect("env-purge-doc", _purge_doc)
    app.connect("env-merge-info", _merge_info)
    app.connect("doctree-resolved", _fill)
    app.connect("html-page-context", _drop_thebe)
    app.connect("build-finished", _lighten, priority=900)  # after sphinx-mathjax-offline has copied MathJax
    return {"version": "0.2", "parallel_read_safe": True, "parallel_write_safe": True}
