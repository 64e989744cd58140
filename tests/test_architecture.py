"""The package's architecture, held by tests: the import layers, private names, and the paper registry.

Layers (every import counts, including imports inside functions and ``importlib.import_module("...")`` calls):

* ``kdnb`` (the top-level ``__init__``) imports only :mod:`kdnb.core`, so any layer may import ``kdnb`` itself;
* :mod:`kdnb.core` imports nothing from :mod:`kdnb.kernels` or :mod:`kdnb.papers`;
* :mod:`kdnb.kernels` imports only :mod:`kdnb.core` (and itself);
* a paper (a module or subpackage directly under :mod:`kdnb.papers`) imports :mod:`kdnb.core` and :mod:`kdnb.kernels`,
  never another paper and never the registry :mod:`kdnb.papers`; the registry imports only :mod:`kdnb.core`.

Private names: no module of kdnb uses a private name (``_name``, not a dunder) of another kdnb module, neither by
``from X import _name``, nor as ``X._name`` on an imported module, nor by importing a private module ``X._mod``. This
holds inside a subpackage too: the modules of ``kdnb.papers.wide_network_kd`` do not share privates either; a helper
that a second module needs becomes public (in core, when a second layer or paper needs it).

The registry :data:`kdnb.papers.PAPERS` is held against ``kdnb/papers/``, ``book/references.bib``, ``notebooks/``
and ``_toc.yml``, and each paper module's docstring against its bibliography entry.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kdnb"


# ---------------------------------------------------------------------------------------------------------------------
# The import checker
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One use of a kdnb module by ``module`` at ``line``: ``target`` (absolute), and ``name`` for a name taken from
    it (``from target import name``, ``target.name``) that is not itself a module."""

    module: str
    line: int
    target: str
    name: str | None
    statement: str

    def __str__(self) -> str:
        return f"{self.module} (line {self.line}): {self.statement}"


def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package, by absolute dotted name (a package is named by its ``__init__.py``)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(base) - 1:
        raise ValueError(f"{module}: relative import beyond the top-level package (level {level})")
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def kdnb_imports(module: str, source: str, known: set[str], is_package: bool = False) -> list[Import]:
    """Every use of a kdnb module in ``source`` (the text of ``module``): imports anywhere in the file, constant
    ``importlib.import_module`` / ``__import__`` calls, and attribute access on names bound to kdnb modules."""
    tree = ast.parse(source)
    found: list[Import] = []
    aliases: dict[str, str] = {}  # local name -> kdnb module it is bound to

    def in_kdnb(name: str) -> bool:
        return name == "kdnb" or name.startswith("kdnb.")

    for node in ast.walk(tree):
        text = ast.get_source_segment(source, node) if isinstance(node, (ast.Import, ast.ImportFrom)) else None
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not in_kdnb(alias.name):
                    continue
                found.append(Import(module, node.lineno, alias.name, None, text))
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            target = resolve_relative(module, is_package, node.level, node.module)
            if not in_kdnb(target):
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in known:
                    found.append(Import(module, node.lineno, submodule, None, text))
                    aliases[alias.asname or alias.name] = submodule
                else:
                    found.append(Import(module, node.lineno, target, alias.name, text))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str) and in_kdnb(node.args[0].value):
                found.append(Import(module, node.lineno, node.args[0].value, None,
                                    ast.get_source_segment(source, node)))

    # Attribute chains on names bound to kdnb modules: ``runtime._helper``, ``kdnb.core.runtime._helper``.
    seen = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, base = [], node
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in aliases:
            continue
        current = aliases[base.id]
        for attr in reversed(chain):
            if f"{current}.{attr}" in known and not is_private(attr):
                current = f"{current}.{attr}"
                continue
            key = (node.lineno, current, attr)
            if key not in seen:
                seen.add(key)
                found.append(Import(module, node.lineno, current, attr, f"{base.id}.{'.'.join(reversed(chain))}"))
            break
    return found


def layer(name: str) -> str:
    """``root``, ``core``, ``kernels``, ``registry``, ``paper:<name>``, or ``none`` for a module in no layer."""
    parts = name.split(".")
    if parts == ["kdnb"]:
        return "root"
    if parts[1] in ("core", "kernels"):
        return parts[1]
    if parts[1] == "papers":
        return "registry" if len(parts) == 2 else f"paper:{parts[2]}"
    return "none"


ALLOWED = {
    "root": {"root", "core"},
    "core": {"root", "core"},
    "kernels": {"root", "core", "kernels"},
    "registry": {"root", "core", "registry"},
}


def violations(module: str, imports: list[Import], known: set[str]) -> list[str]:
    """What ``module``'s imports break, one message each naming the module, the line and the statement."""
    own = layer(module)
    if own == "none":
        return [f"{module} belongs to no layer: put it under kdnb.core, kdnb.kernels or kdnb.papers"]
    allowed = ALLOWED.get(own, {"root", "core", "kernels", own})
    messages = []
    for imp in imports:
        target_layer = layer(imp.target)
        if target_layer not in allowed:
            rule = {"core": "kdnb.core imports nothing from kdnb.kernels or kdnb.papers",
                    "kernels": "kdnb.kernels imports only kdnb.core",
                    "root": "the top-level kdnb imports only kdnb.core",
                    "registry": "the registry kdnb.papers imports only kdnb.core"}.get(
                        own, "a paper imports kdnb.core and kdnb.kernels, never another paper or the registry")
            messages.append(f"{imp}: imports {imp.target} ({target_layer}); {rule}")
        private = [p for p in imp.target.split(".") if is_private(p)]
        if imp.target != module and (private or (imp.name is not None and is_private(imp.name))):
            what = f"{imp.target}.{imp.name}" if imp.name and is_private(imp.name) else imp.target
            messages.append(f"{imp}: uses the private name {what} of another module; make it public in the module "
                            "that owns it (in kdnb.core if another layer needs it)")
    return messages


def check_source(module: str, source: str, known: set[str], is_package: bool = False) -> list[str]:
    return violations(module, kdnb_imports(module, source, known, is_package), known)


MODULES = module_names()
KNOWN = set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_respect_the_layers_and_private_names(module):
    path = MODULES[module]
    problems = check_source(module, path.read_text(), KNOWN, is_package=path.name == "__init__.py")
    assert not problems, "\n".join(problems)


def test_the_walk_sees_every_layer_and_the_real_imports():
    assert {"kdnb", "kdnb.core", "kdnb.kernels", "kdnb.papers", "kdnb.core.runtime",
            "kdnb.papers.wide_network_kd.students"} <= KNOWN
    imports = kdnb_imports("kdnb.papers.wide_network_kd.students", MODULES["kdnb.papers.wide_network_kd.students"]
                           .read_text(), KNOWN)
    targets = {i.target for i in imports}
    assert {"kdnb.core.validation", "kdnb.kernels.analytic", "kdnb.papers.wide_network_kd.effective_logits"} <= targets
    runtime = kdnb_imports("kdnb.core.runtime", MODULES["kdnb.core.runtime"].read_text(), KNOWN)
    assert any(i.target == "kdnb" and i.name == "__version__" for i in runtime), "a function-level import is seen"


# The checker itself: synthetic modules that break each rule once.
KNOWN_SYNTHETIC = KNOWN | {"kdnb.papers.other_paper", "kdnb.core._hidden"}
PLANTED = [
    ("kdnb.core.data", "from ..kernels.analytic import relu_kernels\n", "kdnb.kernels.analytic (kernels)"),
    ("kdnb.core.data", "def f():\n    from kdnb.papers import wide_network_kd\n", "kdnb.papers.wide_network_kd"),
    ("kdnb.core.data", "import importlib\nm = importlib.import_module('kdnb.kernels.regression')\n",
     "kdnb.kernels.regression (kernels)"),
    ("kdnb.kernels.regression", "from ..papers.hinton_distillation import REGIMES\n", "kdnb.papers.hinton"),
    ("kdnb.kernels.regression", "import kdnb.papers\n", "kdnb.papers (registry)"),
    ("kdnb.papers.hinton_distillation", "from .wide_network_kd import students\n", "never another paper"),
    ("kdnb.papers.wide_network_kd.students", "from ..other_paper import thing\n", "kdnb.papers.other_paper"),
    ("kdnb.papers.wide_network_kd.students", "from ...papers import PAPERS\n", "kdnb.papers (registry)"),
    ("kdnb.papers", "from .hinton_distillation import REGIMES\n", "the registry kdnb.papers imports only"),
    ("kdnb", "from .kernels import empirical\n", "the top-level kdnb imports only kdnb.core"),
    ("kdnb.kernels.empirical", "from ..core.validation import _check\n", "private name kdnb.core.validation._check"),
    ("kdnb.kernels.empirical", "from ..core import validation\nvalidation._check(1)\n",
     "private name kdnb.core.validation._check"),
    ("kdnb.kernels.empirical", "import kdnb.core.runtime\nkdnb.core.runtime._use_deterministic_algorithms()\n",
     "private name kdnb.core.runtime._use_deterministic_algorithms"),
    ("kdnb.kernels.empirical", "import kdnb.core.runtime as rt\nx = rt._thing\n",
     "private name kdnb.core.runtime._thing"),
    ("kdnb.kernels.empirical", "from kdnb.core import _hidden\n", "private name kdnb.core._hidden"),
    ("kdnb.papers.wide_network_kd.students", "from .effective_logits import _sigmoid_difference\n",
     "private name kdnb.papers.wide_network_kd.effective_logits._sigmoid_difference"),
    ("kdnb.extra", "import torch\n", "belongs to no layer"),
]


@pytest.mark.parametrize("module, source, expected", PLANTED, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(PLANTED)])
def test_the_checker_catches_a_planted_violation(module, source, expected):
    problems = check_source(module, source, KNOWN_SYNTHETIC, is_package=module in ("kdnb", "kdnb.papers"))
    assert len(problems) == 1, problems
    assert expected in problems[0] and (module in problems[0]), problems[0]


ALLOWED_SOURCES = [
    ("kdnb.core.runtime", "def f():\n    from .. import __version__\n"),
    ("kdnb.core.training", ("from .losses import kd_loss\nfrom . import validation\n"
                            "validation.check_positive(1, 'x')\n")),
    ("kdnb.kernels.regression", "from ..core.validation import check_gram\nimport kdnb.kernels.analytic as a\n"),
    ("kdnb.papers.wide_network_kd.students", ("from ...kernels.analytic import relu_kernels\n"
                                              "from .effective_logits import effective_student_logits\n")),
    ("kdnb.papers.hinton_distillation", "from ..core.data import stratified_subset\nimport torch\ntorch._C\n"),
    ("kdnb.core.data", "from sklearn.datasets import load_digits as _load\nimport kdnb.core.data as d\nd._own\n"),
]


@pytest.mark.parametrize("module, source", ALLOWED_SOURCES, ids=[m for m, _ in ALLOWED_SOURCES])
def test_the_checker_allows_what_the_rules_allow(module, source):
    assert check_source(module, source, KNOWN_SYNTHETIC) == []


def test_relative_imports_resolve_like_python():
    assert resolve_relative("kdnb.core.runtime", False, 1, "validation") == "kdnb.core.validation"
    assert resolve_relative("kdnb.core.runtime", False, 2, None) == "kdnb"
    assert resolve_relative("kdnb.papers.wide_network_kd", True, 1, "students") == \
        "kdnb.papers.wide_network_kd.students"
    assert resolve_relative("kdnb.papers.wide_network_kd.students", False, 3, "core.data") == "kdnb.core.data"
    with pytest.raises(ValueError, match="beyond the top-level package"):
        resolve_relative("kdnb.core.runtime", False, 3, None)


# ---------------------------------------------------------------------------------------------------------------------
# The paper registry
# ---------------------------------------------------------------------------------------------------------------------


def bib_entries(path: Path = ROOT / "book" / "references.bib") -> dict[str, dict[str, str]]:
    """``key -> {field: value}`` for each entry of a BibTeX file; braces inside values are dropped."""
    text = path.read_text()
    entries = {}
    for match in re.finditer(r"@\w+\s*\{\s*([^,\s]+)\s*,", text):
        key, i, depth = match.group(1), match.end(), 1
        start = i
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        body, fields = text[start:i - 1], {}
        for field in re.finditer(r"(\w+)\s*=\s*", body):
            j = field.end()
            if body[j] == "{":
                k, d = j + 1, 1
                while d:
                    d += {"{": 1, "}": -1}.get(body[k], 0)
                    k += 1
                value = body[j + 1:k - 1]
            else:
                value = re.match(r"[^,\n]*", body[j:]).group(0)
            fields.setdefault(field.group(1).lower(), " ".join(value.replace("{", "").replace("}", "").split()))
        entries[key] = fields
    return entries


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[*`{}\\]", "", text).split()).casefold()


def paper_members() -> set[str]:
    """The modules and subpackages directly under kdnb/papers (the registry's ``__init__`` aside)."""
    papers = PACKAGE / "papers"
    members = {p.stem for p in papers.glob("*.py") if p.name != "__init__.py"}
    members |= {d.name for d in papers.iterdir() if d.is_dir() and d.name != "__pycache__" and any(d.rglob("*.py"))}
    return members


def paper_docstring(name: str) -> str:
    path = PACKAGE / "papers" / name
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def chapter_numbers(docstring: str) -> set[int]:
    """Chapter numbers named as ``chapter 1``, ``chapters 3, 4 and 5`` or ``chapters 3 to 5``."""
    numbers = set()
    for match in re.finditer(r"\bchapters?\s+(\d+(?:\s*(?:,|and|to|-|–)\s*\d+)*)", docstring, re.IGNORECASE):
        spec = match.group(1)
        for a, b in re.findall(r"(\d+)\s*(?:to|-|–)\s*(\d+)", spec):
            numbers |= set(range(int(a), int(b) + 1))
        numbers |= {int(n) for n in re.findall(r"\d+", spec)}
    return numbers


def toc_files() -> set[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = set()

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.add(str(node["file"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(toc)
    return files


def test_the_registry_lists_every_paper_module_and_nothing_else():
    from kdnb.papers import PAPERS

    registered = [p.module for p in PAPERS]
    assert len(registered) == len(set(registered)), f"a module is registered twice: {registered}"
    members = paper_members()
    assert not members - set(registered), f"under kdnb/papers but not in PAPERS: {sorted(members - set(registered))}"
    assert not set(registered) - members, f"in PAPERS but not under kdnb/papers: {sorted(set(registered) - members)}"


def test_every_paper_module_imports():
    import importlib

    from kdnb.papers import PAPERS

    for paper in PAPERS:
        importlib.import_module(f"kdnb.papers.{paper.module}")


def test_each_bib_key_is_in_the_bibliography():
    from kdnb.papers import PAPERS

    entries = bib_entries()
    missing = [p.bib_key for p in PAPERS if p.bib_key not in entries]
    assert not missing, f"PAPERS names keys that book/references.bib lacks: {missing}"


def test_each_chapter_is_a_notebook_in_the_toc_and_belongs_to_one_paper():
    from kdnb.papers import PAPERS

    toc = toc_files()
    owners: dict[str, list[str]] = {}
    for paper in PAPERS:
        assert paper.chapters, f"{paper.module} reproduces no chapter"
        for chapter in paper.chapters:
            assert (ROOT / "notebooks" / f"{chapter}.ipynb").is_file(), f"{paper.module}: no notebooks/{chapter}.ipynb"
            assert f"notebooks/{chapter}" in toc, f"{paper.module}: notebooks/{chapter} is not in _toc.yml"
            owners.setdefault(chapter, []).append(paper.module)
    notebooks = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    for chapter in sorted(notebooks):
        assert len(owners.get(chapter, [])) == 1, \
            f"{chapter} must belong to exactly one paper, got {owners.get(chapter)}"


@pytest.mark.parametrize("name", sorted(paper_members()))
def test_each_paper_docstring_opens_with_its_citation_and_names_its_chapters(name):
    from kdnb.papers import PAPERS

    paper = {p.module: p for p in PAPERS}.get(name)
    assert paper is not None, f"kdnb.papers.{name} is not in PAPERS"
    entry = bib_entries()[paper.bib_key]
    docstring = paper_docstring(name)
    first = normalise(docstring.split("\n\n")[0])
    surnames = [a.split(",")[0].strip() for a in entry["author"].split(" and ")]
    venue = entry.get("booktitle") or entry.get("journal") or entry.get("note", "")
    for what, value in [("title", entry["title"]), ("year", entry["year"]), ("venue", venue)] + \
            [("author", s) for s in surnames]:
        assert normalise(value) in first, (f"kdnb.papers.{name}: the docstring's first paragraph must give the full "
                                           f"citation of {paper.bib_key}; its {what} {value!r} is missing")
    numbers = chapter_numbers(docstring)
    for chapter in paper.chapters:
        assert chapter in docstring or int(chapter[:2]) in numbers, \
            f"kdnb.papers.{name}: the docstring does not name chapter {chapter}"


def test_chapter_numbers_are_read_as_written():
    assert chapter_numbers("chapters 3, 4 and 5") == {3, 4, 5}
    assert chapter_numbers("Chapter 1 (01_x)") == {1}
    assert chapter_numbers("chapters 3 to 5; chapter 2") == {2, 3, 4, 5}
    assert chapter_numbers("no chapter here") == set()


def test_the_bib_parser_reads_nested_braces():
    sample = ROOT / "book" / "references.bib"
    entries = bib_entries(sample)
    assert entries["ji2020knowledge"]["year"] == "2020"
    assert entries["ji2020knowledge"]["author"] == "Ji, Guangda and Zhu, Zhanxing"


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(module=3, bib_key="k", chapters=("01_a",)), TypeError, "module must be a str"),
    (dict(module="a-b", bib_key="k", chapters=("01_a",)), ValueError, "module must be a Python identifier"),
    (dict(module="a", bib_key="", chapters=("01_a",)), ValueError, "bib_key must be a non-empty"),
    (dict(module="a", bib_key="k", chapters=["01_a"]), TypeError, "chapters must be a tuple of str"),
    (dict(module="a", bib_key="k", chapters=()), ValueError, "at least one notebook stem"),
    (dict(module="a", bib_key="k", chapters=("1_a",)), ValueError, "notebook stems NN_topic, got '1_a'"),
])
def test_a_registry_entry_refuses_bad_fields(kwargs, error, match):
    from kdnb.papers import Paper

    with pytest.raises(error, match=match):
        Paper(**kwargs)
