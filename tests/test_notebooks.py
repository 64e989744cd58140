"""The chapters as notebooks: structure, stored without outputs, smoke runs with papermill, parameters.

Each chapter's setup cell declares its parameters (``PARAMETERS``, see :mod:`kdnb.core.parameters`); the bad values
tested here are generated from those declarations, most of them checked in process, one per chapter through papermill.

(nbval runs over notebooks/ as part of the same pytest session: see `addopts` in pyproject.toml.)
"""

import ast
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest
import yaml

from kdnb.core import parameters
from kdnb.core.parameters import Boolean, Choice, Integer, Real

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


def code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def source(cell):
    return "".join(cell["source"])


def test_every_notebook_is_in_the_toc_and_named_as_a_chapter():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = {entry["file"] for part in toc["parts"] for entry in part["chapters"]}
    assert NOTEBOOKS, "no chapter notebooks found"
    for path in NOTEBOOKS:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+", path.stem), f"{path.name}: chapters are named NN_topic.ipynb"
        assert f"notebooks/{path.stem}" in listed, f"{path.name} is not in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_without_outputs(path):
    # jupyterlab-myst saves the results of the prose's inline expressions in the cells' metadata: strip them too.
    result = subprocess.run([Path(sys.executable).with_name("nbstripout"), "--verify", "--extra-keys",
                             "cell.metadata.user_expressions", path], capture_output=True, text=True)
    assert result.returncode == 0, (f"{path.name} has outputs or metadata to strip: run nbstripout --extra-keys "
                                    "cell.metadata.user_expressions on it")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_structure_parameters_first_and_claims_last(path):
    cells = code_cells(path)
    tagged = [i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", [])]
    assert tagged == [0], "the first code cell, and only it, is tagged 'parameters'"
    assert re.search(r"^profile = None", source(cells[0]), re.M), "the parameters cell defines profile = None"
    assert "kdnb.start_chapter(" in source(cells[1]), "the cell after the parameters starts the chapter"
    assert any("claims.report()" in source(c) for c in cells), "every chapter ends with its claims"


def all_cells(path):
    return json.loads(path.read_text())["cells"]


FIGURE = re.compile(r"```\{figure\}\s+(\S+)\s*\n((?::[a-z]+:.*\n)*)")
SAVED = re.compile(r"save_figure\(\s*\w+\s*,\s*[\"']([^\"']+)[\"']")
QUOTED = re.compile(r"\{eval\}`([^`]*)`")
ADDED = re.compile(r"prose\.add\(\s*[\"'](\w+)[\"']")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_prose_renders_in_the_book_and_in_jupyterlab(path):
    """Figures, numbers and references use only what both MyST-NB and jupyterlab-myst render (no glue)."""
    cells = all_cells(path)
    text = "\n".join(source(c) for c in cells)
    assert "glue" not in text, "glue is not rendered by jupyterlab-myst: use {eval}`prose.x` and {figure}"
    saved, added, names = [], set(), []
    for c in cells:
        body = source(c)
        if c["cell_type"] == "code":
            tags = c["metadata"].get("tags", [])
            paths = SAVED.findall(body)
            if "save_figure(" in body:
                assert paths, "save_figure must be given its path as a string literal (the {figure} directive's)"
                assert "hide-input" in tags and "remove-output" not in tags, \
                    "a cell that draws a figure is tagged hide-input (and shows nothing)"
            saved += paths
            added |= set(ADDED.findall(body))
            continue
        for expression in QUOTED.findall(body):
            assert re.fullmatch(r"prose\.[A-Za-z]\w*", expression), f"{{eval}} quotes prose.<name> only: {expression}"
            assert expression.split(".")[1] in added, f"{expression} is quoted before a cell adds it"
        for figure, options in FIGURE.findall(body):
            assert figure in saved, f"{figure} is shown before (or without) a cell that saves it"
            name = re.search(r":name:\s*(\S+)", options)
            assert name, f"{figure}: a figure needs a :name: for {{numref}}"
            names.append(name.group(1))
    stem = path.stem
    assert saved and all(p.startswith(f"figures/{stem}/") and p.endswith(".png") for p in saved), saved
    assert len(saved) == len(set(saved)), "each figure is saved once"
    shown = [f for c in cells if c["cell_type"] == "markdown" for f, _ in FIGURE.findall(source(c))]
    assert sorted(shown) == sorted(saved), "every saved figure is shown, once"
    for name in names:
        assert f"{{numref}}`{name}`" in text, f"figure {name} is never referenced from the text"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_chapter_opens_links_the_run_page_and_ends_with_findings_then_claims(path):
    markdown = [source(c) for c in all_cells(path) if c["cell_type"] == "markdown"]
    title = markdown[0].splitlines()[0]
    assert re.fullmatch(r"# [A-Z][^0-9].*", title), f"the chapter's title carries no number (the book numbers it): {title}"
    assert "](../book/run.md)" in markdown[0], "the first cell links Run this book"
    headings = [line for cell in markdown for line in cell.splitlines() if line.startswith("## ")]
    assert headings[-2:] == ["## What we found", "## Claims"], f"the chapter ends with its findings, then its claims: {headings[-3:]}"
    prose = "\n".join(markdown)
    for match in re.finditer(r"\bFigs?\.\s*\d+", prose):
        before, after = prose[max(0, match.start() - 40):match.start()], prose[match.end():match.end() + 6]
        assert "paper's" in before or after.lstrip().startswith("of"), \
            f"write the paper's figures as 'the paper's Fig. N': ...{before}{match.group(0)}{after}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_no_code_cell_ends_with_a_semicolon(path):
    """A trailing ``;`` silences every {eval} until the next code cell in the book build.

    MyST-NB evaluates an expression with ``store_history=False``, and IPython's display hook then decides whether to
    stay quiet from the last *stored* input, the previous code cell: if that ends in ``;`` the expression returns no
    output and the build fails with "does not return any outputs".
    """
    for index, cell in enumerate(all_cells(path)):
        if cell["cell_type"] != "code":
            continue
        lines = [line.split("#")[0].rstrip() for line in source(cell).splitlines()]
        code = [line for line in lines if line]
        assert not (code and code[-1].endswith(";")), \
            f"cell {index} ends with ';' (write `_ = ...` instead): {code[-1]!r}"


PLACEHOLDER = re.compile(r"\b(DRAFT|TODO|TBD|FIXME|XXX)\b")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_what_we_found_reports_findings_and_no_placeholder_is_left(path):
    markdown = [source(c) for c in all_cells(path) if c["cell_type"] == "markdown"]
    text = "\n".join(markdown)
    found = PLACEHOLDER.search(text)
    assert not found, f"a placeholder is left in the prose: ...{text[max(0, found.start() - 60):found.end() + 60]}..."
    start = text.index("## What we found")
    section = text[start + len("## What we found"):text.index("## Claims", start)]
    words = re.findall(r"[A-Za-z]{2,}", re.sub(r"\{eval\}`[^`]*`|\{numref\}`[^`]*`|\$[^$]*\$", " ", section))
    assert len(words) >= 80, f"'What we found' says too little ({len(words)} words): {section.strip()[:200]!r}"
    assert "{eval}`prose." in section, "'What we found' quotes the measured numbers ({eval}`prose.x`)"


def test_figure_labels_are_unique_across_the_book():
    """Sphinx resolves a {numref} label book-wide: a label used twice points at one chapter's figure only."""
    owners: dict[str, list[str]] = {}
    for path in NOTEBOOKS:
        for cell in all_cells(path):
            if cell["cell_type"] == "markdown":
                for name in re.findall(r":name:\s*(\S+)", source(cell)):
                    owners.setdefault(name, []).append(path.stem)
    repeated = {name: stems for name, stems in owners.items() if len(stems) > 1}
    assert not repeated, f"figure labels used more than once: {repeated}"


def test_code_cells_are_formatted_to_the_page_width():
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run([ruff, "format", "--check", *map(str, NOTEBOOKS)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, f"run `ruff format notebooks/`:\n{result.stdout}{result.stderr}"


# Numbers the smoke profile does not compute (it leaves out the settings they come from); the prose shows "n/a".
SMOKE_NOT_COMPUTED = {
    "10_spectral_student_teacher": {"flat_narrow"},  # no over-parameterised student narrower than the widest
    "11_copy_or_average": {"below_6", "below_7", "below_8", "saddle_76", "saddle_87"},  # no teacher of 6 to 8 neurons
}
PROSE_PROBE = "KDNB-PROSE "  # the line a probe cell appended to a smoke run prints: the prose's numbers as JSON
PROBE_CELL = ("import json as _json\n"
              f"print({PROSE_PROBE!r} + _json.dumps({{n: float(getattr(prose, n)) for n in dir(prose)}}))")


def execute(path, tmp_path, monkeypatch, probe_prose=False, **parameters):
    """Run the chapter with papermill in ``tmp_path``; with ``probe_prose``, a last cell prints the prose's numbers."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("KDNB_CLAIMS_DIR", str(tmp_path / "claims"))
    monkeypatch.delenv("KDNB_PROFILE", raising=False)  # the injected parameter alone must select the profile
    out = tmp_path / path.name
    if probe_prose:
        nb = json.loads(path.read_text())
        nb["cells"].append({"cell_type": "code", "id": "kdnb-prose-probe", "metadata": {}, "execution_count": None,
                            "outputs": [],
                            "source": PROBE_CELL})
        path = tmp_path / f"probed-{path.name}"
        path.write_text(json.dumps(nb))
    # run in tmp_path, with the session's KDNB_FIGURES_DIR (conftest.py): a smoke run never overwrites the
    # default-profile figures of notebooks/figures/ that the built book shows
    pm.execute_notebook(str(path), str(out), parameters=parameters, cwd=str(tmp_path), kernel_name="python3",
                        progress_bar=False)
    return json.loads(out.read_text())


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_smoke_profile_runs_with_injected_parameters(path, tmp_path, monkeypatch):
    nb = execute(path, tmp_path, monkeypatch, probe_prose=True, profile="smoke", seed=1)
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "seed = 1" in source(injected[0])
    outputs = "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                      for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
    assert "profile smoke" in outputs and "seed 1" in outputs
    # A reader who runs the smoke profile in JupyterLab reads the same prose: every number it quotes is computed,
    # except the few listed in SMOKE_NOT_COMPUTED (settings the smoke profile leaves out), which show as "n/a".
    numbers = json.loads(outputs.split(PROSE_PROBE)[-1].splitlines()[0])
    quoted = {e.split(".")[1] for c in nb["cells"] if c["cell_type"] == "markdown" for e in QUOTED.findall(source(c))}
    missing = {n for n in quoted if not math.isfinite(numbers[n])}
    assert missing == SMOKE_NOT_COMPUTED.get(path.stem, set()), \
        f"numbers the smoke prose quotes without computing them: {sorted(missing)}"
    saved = json.loads((tmp_path / "claims" / f"{path.stem}.smoke.json").read_text())
    assert saved["profile"] == "smoke" and len(saved["claims"]) >= 1

    # Determinism: the same seed and profile give identical numbers on CPU.
    execute(path, tmp_path / "again", monkeypatch, profile="smoke", seed=1)
    again = json.loads((tmp_path / "again" / "claims" / f"{path.stem}.smoke.json").read_text())
    measured = lambda claims: json.dumps([c["measured"] for c in claims["claims"]])  # noqa: E731 (NaN-safe)
    assert measured(again) == measured(saved)


# --- Parameters: declared once in each setup cell; the bad values below are generated from the declarations ---------

def declarations(path):
    """The parameters cell's defaults, and SETTINGS and PARAMETERS evaluated from the setup cell (its assignments that
    come before ``run = kdnb.start_chapter(...)``, in the namespace of kdnb.core.parameters)."""
    cells = code_cells(path)
    defaults = {}
    exec(source(cells[0]), {}, defaults)
    namespace = dict(vars(parameters))
    for node in ast.parse(source(cells[1])).body:
        targets = {t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)}
        if "run" in targets:
            break
        if isinstance(node, ast.Assign) and targets:
            try:
                exec(compile(ast.Module([node], type_ignores=[]), path.name, "exec"), namespace)
            except NameError:  # an assignment that needs the cell's imports; SETTINGS and PARAMETERS must not
                assert not targets & {"SETTINGS", "PARAMETERS"}, f"{path.name}: SETTINGS and PARAMETERS must be literal"
    return defaults, namespace["SETTINGS"], namespace["PARAMETERS"]


def good_values(spec, count=1):
    """``count`` strictly increasing values that ``spec`` accepts (for a Sequence: ``count`` lists)."""
    if isinstance(spec, Integer):
        start = spec.minimum if spec.minimum is not None else (spec.maximum - count + 1 if spec.maximum is not None else 1)
        return list(range(start, start + count))
    if isinstance(spec, Real):
        low = spec.low if spec.low is not None else (spec.high - 2.0 if spec.high is not None else 0.0)
        high = spec.high if spec.high is not None else low + 2.0
        return [low + (high - low) * (i + 1) / (count + 1) for i in range(count)]
    if isinstance(spec, Boolean):
        return [False, True][:count]
    if isinstance(spec, Choice):
        return list(spec.values[:count])
    if isinstance(spec, parameters.Sequence):
        length = max(spec.min_length, 1)
        elements = good_values(spec.of, length) if spec.of is not None else list(range(length))
        return [elements] * count
    raise TypeError(f"no good values for {spec!r}")


def bad_values(spec):
    """(what, value, error type) for values that ``spec`` must refuse, derived from its declaration."""
    wrong_type = [("a bool", True), ("a string", "1"), ("None", None)]
    if isinstance(spec, Integer):
        near = good_values(spec)[0]
        yield from ((what, value, TypeError) for what, value in [*wrong_type, ("a list", [near])])
        yield "a non-integral float", near + 0.5, TypeError
        if spec.minimum is not None:
            yield "below the minimum", spec.minimum - 1, ValueError
        if spec.maximum is not None:
            yield "above the maximum", spec.maximum + 1, ValueError
    elif isinstance(spec, Real):
        yield from ((what, value, TypeError) for what, value in [*wrong_type, ("a list", good_values(spec))])
        yield "NaN", math.nan, ValueError
        if spec.finite:
            yield "infinite", math.inf if spec.high is None else -math.inf, ValueError
        if spec.low is not None:
            yield "below the low end", spec.low if spec.low_open else spec.low - 0.5, ValueError
        if spec.high is not None:
            yield "above the high end", spec.high if spec.high_open else spec.high + 0.5, ValueError
    elif isinstance(spec, Boolean):
        yield from (("a non-bool " + what, value, TypeError) for what, value in [("1", 1), ("0", 0), ("string", "yes"),
                                                                                 ("None", None)])
    elif isinstance(spec, Choice):
        yield "outside the choices", "not-a-choice", ValueError
    elif isinstance(spec, parameters.Sequence):
        good = good_values(spec)[0]
        yield "a bare number", good[0], TypeError
        yield "a string", "0.5", TypeError
        yield "None", None, TypeError
        if spec.min_length > 0:
            yield "too short", good[:spec.min_length - 1], ValueError
        if spec.increasing and len(good) > 1:
            yield "not increasing", good[::-1], ValueError
        if spec.unique or spec.increasing:
            yield "a repeated element", [good[0], *good], ValueError
        if spec.of is not None:
            for what, value, error in bad_values(spec.of):
                yield f"an element {what}", [*good[:-1], value] if len(good) > 1 else [value], error
    else:
        raise TypeError(f"no bad values for {spec!r}")
    for i, rule in enumerate(spec.rules):
        yield f"breaking rule {i}", rule.counterexample, ValueError


def bad_cases(path):
    """(name, what, value, error type) for every declared parameter; None is bad only where no profile has a value."""
    _, table, declared = declarations(path)
    return [(name, what, value, error) for name, spec in declared.items() for what, value, error in bad_values(spec)
            if not (value is None and all(name in row for row in table.values()))]


def as_overrides(defaults, declared, **changes):
    """The keyword arguments of the setup cell's run.settings call, with the parameters cell's defaults."""
    return {name: changes.get(name, defaults[name]) for name in declared}


CASES = [pytest.param(path, *case, id=f"{path.stem}-{case[0]}-{case[1]}") for path in NOTEBOOKS for case in bad_cases(path)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_parameters_declared_once_and_passed_in_one_call(path):
    defaults, table, declared = declarations(path)
    assert set(declared) == set(defaults) - {"profile", "seed"}, \
        "PARAMETERS declares every parameter of the first cell (profile and seed are start_chapter's)"
    calls = [node for node in ast.walk(ast.parse(source(code_cells(path)[1])))
             if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "settings"]
    assert len(calls) == 1, "the setup cell resolves the parameters in one run.settings call"
    (call,) = calls
    assert [ast.unparse(a) for a in call.args] == ["SETTINGS", "PARAMETERS"]
    assert {k.arg: ast.unparse(k.value) for k in call.keywords} == {name: name for name in declared}
    for rule in (r for spec in declared.values() for r in spec.rules):
        assert rule.counterexample is not None, "every rule declares a counterexample (the tests below use it)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_papermill_lists_every_parameter_with_its_help(path):
    # papermill --help-notebook (and inspect_notebook) skips, with only a log line, any parameter line holding a
    # second "=": a comment that writes ">= 2" hides its parameter from the reader who asks papermill for them.
    defaults, _, _ = declarations(path)
    listed = pm.inspect_notebook(str(path))
    assert list(listed) == list(defaults), "papermill does not see every parameter: keep '=' out of their comments"
    assert all(p["help"] for p in listed.values()), "every parameter has a comment, its help in papermill"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_parameters_at_their_defaults_leave_every_profile_row_unchanged(path):
    """With the first cell's defaults, resolving changes no value and no type of any profile's settings."""
    defaults, table, declared = declarations(path)
    for profile, row in table.items():
        resolved = parameters.resolve(row, declared, **as_overrides(defaults, declared))
        expected = {**row, **{name: defaults[name] for name in declared if name not in row}}
        assert resolved == expected, profile
        assert [type(resolved[k]) for k in expected] == [type(v) for v in expected.values()], profile
        for key in row:
            if isinstance(row[key], list):
                assert [type(v) for v in resolved[key]] == [type(v) for v in row[key]], (profile, key)


@pytest.mark.parametrize("path, name, what, value, error", CASES)
def test_bad_parameter_is_refused_with_its_name_in_process(path, name, what, value, error):
    defaults, table, declared = declarations(path)
    for profile, row in table.items():
        with pytest.raises(error) as info:
            parameters.resolve(row, declared, **as_overrides(defaults, declared, **{name: value}))
        message = str(info.value)
        assert re.match(rf"{name}(?!\w)", message), f"{profile}: the message must start with {name!r}: {message}"
    if not what.startswith("breaking rule"):  # refused by the declaration itself, not by a rule further on
        with pytest.raises(error):
            declared[name].convert(value, name)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_parameter_rules_fire_on_their_counterexample_only(path):
    """A rule's counterexample passes the declaration itself, and the rule (not an earlier check) refuses it."""
    defaults, table, declared = declarations(path)
    for name, spec in declared.items():
        for rule in spec.rules:
            converted = spec.convert(rule.counterexample, name)
            for row in table.values():
                settings = parameters.resolve(row, declared, **as_overrides(defaults, declared))
                assert rule.check(settings[name], settings), "the rule holds for the profile's own value"
                assert not rule.check(converted, {**settings, name: converted}), "the counterexample breaks the rule"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_parameter_int_valued_floats_become_ints(path):
    defaults, table, declared = declarations(path)
    integers = [name for name, spec in declared.items() if isinstance(spec, Integer)]
    for name in integers:
        for row in table.values():
            candidates = [float(row[name])] if name in row else []
            if not declared[name].rules and (declared[name].minimum is None or declared[name].minimum <= 2):
                candidates.append(2.0)
            for value in candidates:
                out = parameters.resolve(row, declared, **as_overrides(defaults, declared, **{name: value}))[name]
                assert out == int(value) and type(out) is int


def first_failing_cell(nb):
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    injected = next(i for i, c in enumerate(cells) if "injected-parameters" in c["metadata"].get("tags", []))
    failed = next(i for i, c in enumerate(cells) if any(o.get("output_type") == "error" for o in c.get("outputs", [])))
    return injected, failed


def papermill_case(path):
    """One generated bad value per chapter (the middle of its list, so the chapters exercise different kinds) that
    papermill can write into the notebook."""
    cases = [c for c in bad_cases(path) if isinstance(c[2], (str, int, float, bool, list, type(None)))]
    name, what, value, error = cases[len(cases) // 2]
    return pytest.param(path, {name: value}, rf"{error.__name__}: {name}(?!\w)", id=f"{path.stem}-{name}-{what}")


@pytest.mark.notebooks
@pytest.mark.parametrize("path, parameters_, message", [
    *[papermill_case(path) for path in NOTEBOOKS],
    pytest.param(ROOT / "notebooks" / "01_distillation_basics.ipynb", dict(profile="huge"),
                 r"profile must be one of \('smoke', 'default', 'full'\), got 'huge'", id="01_distillation_basics-profile"),
])
def test_bad_parameter_fails_the_first_cell_and_names_it(path, parameters_, message, tmp_path, monkeypatch):
    with pytest.raises(pm.PapermillExecutionError) as info:
        execute(path, tmp_path, monkeypatch, **{"profile": "smoke", **parameters_})
    assert re.search(message, str(info.value)), str(info.value)[-2000:]
    injected, failed = first_failing_cell(json.loads((tmp_path / path.name).read_text()))
    assert failed == injected + 1, "the first cell after the parameters must be the one that fails"


PROBE = """assert type(P["repeats"]) is int and P["repeats"] == 2, repr(P["repeats"])
print("repeats resolved to", repr(P["repeats"]))"""


@pytest.mark.notebooks
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if "repeats" in declarations(p)[2]],
                         ids=[p.stem for p in NOTEBOOKS if "repeats" in declarations(p)[2]])
def test_parameter_repeats_given_as_float_is_accepted_as_int(path, tmp_path, monkeypatch):
    """papermill's ``-p repeats 2.0`` reaches the chapter as a float; its setup cell must turn it into the int 2.
    Only the parameters and setup cells run (then a probe), which is what decides."""
    nb = json.loads(path.read_text())
    cells = code_cells(path)[:2] + [dict(id="probe", cell_type="code", metadata={}, source=PROBE, outputs=[],
                                              execution_count=None)]
    nb["cells"] = cells
    truncated = tmp_path / "setup" / path.name
    truncated.parent.mkdir(parents=True)
    truncated.write_text(json.dumps(nb))
    tmp_path.joinpath("out").mkdir()
    monkeypatch.setenv("KDNB_CLAIMS_DIR", str(tmp_path / "claims"))
    monkeypatch.delenv("KDNB_PROFILE", raising=False)
    out = tmp_path / "out" / path.name
    pm.execute_notebook(str(truncated), str(out), parameters=dict(profile="smoke", repeats=2.0), cwd=str(tmp_path),
                        kernel_name="python3", progress_bar=False)
    done = json.loads(out.read_text())["cells"]
    injected = next(c for c in done if "injected-parameters" in c["metadata"].get("tags", []))
    assert "repeats = 2.0" in source(injected)
    printed = "".join("".join(o.get("text", "")) for o in done[-1].get("outputs", []))
    assert "repeats resolved to 2" in printed
