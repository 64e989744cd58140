"""Sphinx extension of the kdnb book: the scorecard table, and HTML with no external scripts.

**Scorecard.** The ``kdnb-scorecard`` directive is a table of every chapter's claims of its paper, with the count of
those reproduced; with ``:kind: check`` or ``:kind: record`` it is the table of the consistency checks or of the
records (:mod:`kdnb.core.claims` describes the three kinds). Only claims are counted as reproduced or not.

Chapters are executed while Sphinx *reads* the sources, and each writes its claims to the claims directory
(:mod:`kdnb.core.claims`). The table must therefore be filled after every chapter has been read, so the directive leaves a
placeholder that is replaced in ``doctree-resolved`` (the write phase), and the scorecard page is re-read on every
build so that it is also re-written. A chapter in the table of contents with no saved claims is a build warning
(an error under ``-W``).

**Offline HTML.** Jupyter Book always loads sphinx-thebe, which writes the address of thebe on unpkg.com into every
page (fetched only when a reader clicks "live code", which this book does not offer). The book must work with no
network and reference no external scripts, so thebe's scripts are dropped from every page.
"""

from __future__ import annotations

import html
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


class ScorecardDirective(SphinxDirective):
    """``{kdnb-scorecard}``: the table of every chapter's claims; ``:kind: check`` or ``:kind: record`` for the
    consistency checks or the records instead."""

    has_content = False
    option_spec: ClassVar[dict] = {"kind": lambda value: directives.choice(value, KINDS)}

    def run(self):
        self.env.kdnb_scorecard_docs = getattr(self.env, "kdnb_scorecard_docs", set()) | {self.env.docname}
        return [scorecard_placeholder(kind=self.options.get("kind", "claim"))]


def _always_reread(app, env, added, changed, removed):
    return sorted(getattr(env, "kdnb_scorecard_docs", set()))


def _chapters(app) -> list[str]:
    """Notebook chapters that the build includes, by stem (e.g. ``01_distillation_basics``)."""
    return sorted(Path(d).name for d in app.env.found_docs if d.startswith("notebooks/"))


def _verdict_cell(c) -> str:
    if c.kind == "record":
        css = "recorded"
    else:
        css = "pass" if c.verdict.startswith(("reproduced", "holds")) else "fail"
    return f'<span class="kdnb-verdict-{css}">{html.escape(c.verdict)}</span>'


def _table(entries, kind: str) -> str:
    """One HTML table of the entries of one kind; the claims' table keeps the verdict in the last column."""
    if kind == "claim":
        head = ["chapter", "claim", "paper's statement", "source", "threshold", "measured", "expected",
                "known failure", "verdict"]
    elif kind == "check":
        head = ["chapter", "check", "statement", "source", "threshold", "measured", "expected", "verdict"]
    else:
        head = ["chapter", "record", "statement", "source", "measured", "reference", "verdict"]
    rows = []
    for c in entries:
        cells = [f'<a href="../notebooks/{c.chapter}.html">{html.escape(c.chapter)}</a>', html.escape(c.id),
                 html.escape(c.statement), html.escape(c.source or "—")]
        if kind != "record":
            cells.append(html.escape(c.threshold or "—"))
        cells += [html.escape(c.measured_text), html.escape(c.expected)]
        if kind == "claim":
            cells.append(html.escape(c.known_failure or ""))
        cells.append(_verdict_cell(c))
        rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    css = {"claim": "kdnb-scorecard", "check": "kdnb-checks", "record": "kdnb-records"}[kind]
    return (f'<table class="table {css}"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _fill(app, doctree, docname):
    placeholders = list(doctree.findall(scorecard_placeholder))
    if not placeholders:
        return
    from kdnb.core.claims import claims_directory, load_claims
    from kdnb.core.runtime import resolve_profile

    profile = resolve_profile(None)
    folder = claims_directory(app.srcdir)
    entries = load_claims(folder, profile=profile)
    present = {c.chapter for c in entries}
    for chapter in _chapters(app):
        if chapter not in present:
            logger.warning(f"kdnb scorecard: no claims saved for chapter {chapter!r} at profile {profile!r} in {folder}")
    by_kind = {kind: [c for c in entries if c.kind == kind] for kind in KINDS}
    claims, checks = by_kind["claim"], by_kind["check"]
    n_ok = sum(c.verdict.startswith("reproduced") for c in claims)
    n_hold = sum(c.verdict == "holds" for c in checks)
    summary = (
        f'<p class="kdnb-scorecard-summary">{n_ok} of {len(claims)} claims reproduced, profile '
        f"<code>{html.escape(profile)}</code>. {n_hold} of {len(checks)} consistency checks hold; "
        f"{len(by_kind['record'])} values recorded.</p>"
    )
    for node in placeholders:
        kind = node.get("kind", "claim")
        body = _table(by_kind[kind], kind)
        node.replace_self(nodes.raw("", (summary + body) if kind == "claim" else body, format="html"))


def _drop_thebe(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    def is_thebe(js) -> bool:
        name = str(getattr(js, "filename", js) or "")
        body = str(getattr(js, "attributes", {}).get("body", ""))
        return "thebe" in name or "THEBE_JS_URL" in body
    context["script_files"] = [js for js in scripts if not is_thebe(js)]


def setup(app):
    app.add_node(scorecard_placeholder)
    app.add_directive("kdnb-scorecard", ScorecardDirective)
    app.connect("env-get-outdated", _always_reread)
    app.connect("doctree-resolved", _fill)
    app.connect("html-page-context", _drop_thebe)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
