"""The chapters as notebooks: structure, stored without outputs, smoke runs with papermill, bad parameters.

(nbval runs over notebooks/ as part of the same pytest session: see `addopts` in pyproject.toml.)
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest
import yaml

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
    result = subprocess.run([Path(sys.executable).with_name("nbstripout"), "--verify", path],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"{path.name} has outputs or metadata to strip: run nbstripout on it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_structure_parameters_first_and_figure_cells_hidden_in_the_book(path):
    cells = code_cells(path)
    tagged = [i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", [])]
    assert tagged == [0], "the first code cell, and only it, is tagged 'parameters'"
    assert re.search(r"^profile = None", source(cells[0]), re.M), "the parameters cell defines profile = None"
    assert "kdnb.start_chapter(" in source(cells[1]), "the cell after the parameters starts the chapter"
    for c in cells:
        if "glue_figure(" in source(c):
            # The book shows the glued figure where the prose puts it; the cell's own copy is for JupyterLab.
            assert "remove-output" in c["metadata"].get("tags", []), "cells that glue figures must be 'remove-output'"
    assert any("claims.report()" in source(c) for c in cells), "every chapter ends with its claims"


def execute(path, tmp_path, monkeypatch, **parameters):
    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("KDNB_CLAIMS_DIR", str(tmp_path / "claims"))
    monkeypatch.delenv("KDNB_PROFILE", raising=False)  # the injected parameter alone must select the profile
    out = tmp_path / path.name
    pm.execute_notebook(str(path), str(out), parameters=parameters, cwd=str(path.parent), kernel_name="python3",
                        progress_bar=False)
    return json.loads(out.read_text())


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_smoke_profile_runs_with_injected_parameters(path, tmp_path, monkeypatch):
    nb = execute(path, tmp_path, monkeypatch, profile="smoke", seed=1)
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "seed = 1" in source(injected[0])
    outputs = "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                      for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
    assert "profile smoke" in outputs and "seed 1" in outputs
    saved = json.loads((tmp_path / "claims" / f"{path.stem}.smoke.json").read_text())
    assert saved["profile"] == "smoke" and len(saved["claims"]) >= 1

    # Determinism: the same seed and profile give identical numbers on CPU.
    execute(path, tmp_path / "again", monkeypatch, profile="smoke", seed=1)
    again = json.loads((tmp_path / "again" / "claims" / f"{path.stem}.smoke.json").read_text())
    measured = lambda claims: json.dumps([c["measured"] for c in claims["claims"]])  # noqa: E731 (NaN-safe)
    assert measured(again) == measured(saved)


@pytest.mark.notebooks
@pytest.mark.parametrize("chapter, parameters, message", [
    ("01_distillation_basics", dict(profile="huge"), r"profile must be one of \('smoke', 'default', 'full'\), got 'huge'"),
    ("01_distillation_basics", dict(profile="smoke", rho=1.5), r"rho must be in \[0, 1\], got 1.5"),
    ("01_distillation_basics", dict(profile="smoke", temperature=-2.0), r"temperature must be a finite number > 0"),
    ("02_ntk_linearization", dict(profile="smoke", steps=0), r"steps must be >= 1, got 0"),
    ("02_ntk_linearization", dict(profile="smoke", t2_scaling="yes"), r"t2_scaling must be True or False"),
    ("03_transfer_risk_bound", dict(profile="smoke", rhos=[0.0, 1.0]), r"rhos must be in \(0, 1\]: rho = 0"),
    ("03_transfer_risk_bound", dict(profile="smoke", rhos=[0.1, 0.5]), r"rhos must contain 1.0"),
    ("03_transfer_risk_bound", dict(profile="smoke", n_oracle=100), r"n_oracle must be larger than the largest n"),
    ("04_data_inefficiency", dict(profile="smoke", taus=[30.0, 3.0]), r"taus must be at least two increasing"),
    ("04_data_inefficiency", dict(profile="smoke", temperature=0), r"temperature must be a finite number > 0"),
    ("05_imperfect_teacher", dict(profile="smoke", repeats=0), r"repeats must be >= 1, got 0"),
    ("05_imperfect_teacher", dict(profile="smoke", t2_scaling=1), r"t2_scaling must be True or False"),
])
def test_bad_parameter_fails_the_first_cell_and_names_it(chapter, parameters, message, tmp_path, monkeypatch):
    path = ROOT / "notebooks" / f"{chapter}.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as info:
        execute(path, tmp_path, monkeypatch, **parameters)
    assert re.search(message, str(info.value))
    nb = json.loads((tmp_path / path.name).read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    injected = next(i for i, c in enumerate(cells) if "injected-parameters" in c["metadata"].get("tags", []))
    failed = next(i for i, c in enumerate(cells) if any(o.get("output_type") == "error" for o in c.get("outputs", [])))
    assert failed == injected + 1, "the first cell after the parameters must be the one that fails"
