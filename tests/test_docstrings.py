"""numpydoc validation of kdnb's public API.

The public API is, for every module under :mod:`kdnb.core`, :mod:`kdnb.kernels` and :mod:`kdnb.papers`, each function
and class named in the module's ``__all__`` and defined in that module (re-exports are checked where they are
defined), and for each such class its public methods and properties defined in the class itself. Each is validated
with :func:`numpydoc.validate.validate`, and only these errors fail:

* GL08: no docstring;
* SS01: no summary line;
* PR01: a parameter of the signature is not documented (for classes: the constructor's, so dataclass fields go under
  Parameters);
* PR02: a documented parameter is not in the signature;
* RT01: something is returned but there is no Returns section.

There is one test per module, named by it, whose failure lists every offending name with its errors, so that one
module can be checked on its own: ``pytest tests/test_docstrings.py -k kdnb.kernels.regression``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from numpydoc.validate import validate

CHECKED_CODES = ("GL08", "SS01", "PR01", "PR02", "RT01")
PACKAGES = ("kdnb.core", "kdnb.kernels", "kdnb.papers")


def module_names() -> list[str]:
    """Every module of the packages in ``PACKAGES``, the packages themselves included, sorted by name."""
    names = []
    for package in PACKAGES:
        names.append(package)
        path = importlib.import_module(package).__path__
        names += [info.name for info in pkgutil.walk_packages(path, package + ".")]
    return sorted(names)


def public_objects(module_name: str) -> list[str]:
    """Import paths of the public functions, classes, methods and properties defined in ``module_name``."""
    module = importlib.import_module(module_name)
    paths = []
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name, None)  # a name missing from the module fails test_modules_declare_all
        if not (inspect.isfunction(obj) or inspect.isclass(obj)) or obj.__module__ != module_name:
            continue  # constants, and names re-exported from the module that defines them
        paths.append(f"{module_name}.{name}")
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                if inspect.isfunction(value) or isinstance(value, property):
                    paths.append(f"{module_name}.{name}.{attr}")
    return paths


def docstring_errors(path: str) -> list[tuple[str, str]]:
    """The (code, message) pairs among ``CHECKED_CODES`` that numpydoc reports for the object at ``path``."""
    return [(code, message) for code, message in validate(path)["errors"] if code in CHECKED_CODES]


MODULES = module_names()


@pytest.mark.parametrize("module_name", MODULES, ids=MODULES)
def test_numpydoc(module_name):
    failures = []
    for path in public_objects(module_name):
        failures += [f"{path}: {code} {message}" for code, message in docstring_errors(path)]
    assert not failures, f"{len(failures)} numpydoc error(s) in {module_name}:\n" + "\n".join(failures)


@pytest.mark.parametrize("module_name", MODULES, ids=MODULES)
def test_modules_declare_all(module_name):
    """A module without ``__all__`` would escape the docstring check (packages may omit it: they only group), and
    every name in ``__all__`` must exist."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        assert hasattr(module, "__path__"), f"{module_name} has no __all__"
        return
    missing = [name for name in names if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ lists names the module does not define: {missing}"


def test_public_objects_finds_methods_and_properties_and_skips_reexports():
    regression = public_objects("kdnb.kernels.regression")
    assert "kdnb.kernels.regression.kernel_regression" in regression
    assert "kdnb.kernels.regression.KernelRegression.predict" in regression  # a method
    assert "kdnb.kernels.regression.KernelRegression.weight_change_norm" in regression  # a property
    assert "kdnb.kernels.regression.NestedKernelRegression.size" in regression
    assert not any(p.rsplit(".", 1)[-1].startswith("_") for p in regression)
    assert "kdnb.kernels.regression.DEFAULT_JITTER" not in regression  # a constant
    # The package re-exports its modules' names; they are checked where they are defined.
    assert public_objects("kdnb.papers.wide_network_kd") == []
    students = public_objects("kdnb.papers.wide_network_kd.students")
    assert "kdnb.papers.wide_network_kd.students.student_kernel" in students
    assert {"kdnb.core", "kdnb.kernels.empirical", "kdnb.papers.wide_network_kd.geometry"} <= set(MODULES)


def _undocumented_parameter(x, y):
    """Add two numbers.

    Parameters
    ----------
    x : float
        The first.
    z : float
        Not a parameter.

    Returns
    -------
    float
        The sum.
    """
    return x + y


def _no_returns_section(x):
    """Double a number.

    Parameters
    ----------
    x : float
        The number.
    """
    return 2 * x


def _grouped_parameters(x1, x2):
    """Subtract two numbers.

    Parameters
    ----------
    x1, x2 : float
        The numbers.

    Returns
    -------
    float
        ``x1 - x2``.
    """
    return x1 - x2


def _no_summary(x):
    """
    Parameters
    ----------
    x : float
        The number.
    """


def test_docstring_errors_detects_each_checked_code():
    codes = {code for code, _ in docstring_errors(f"{__name__}._undocumented_parameter")}
    assert codes == {"PR01", "PR02"}
    assert {code for code, _ in docstring_errors(f"{__name__}._no_returns_section")} == {"RT01"}
    assert docstring_errors(f"{__name__}._grouped_parameters") == []  # "x1, x2 : type" documents both
    assert {code for code, _ in docstring_errors(f"{__name__}._no_summary")} == {"SS01"}
    undocumented = f"{__name__}.test_public_objects_finds_methods_and_properties_and_skips_reexports"
    assert {code for code, _ in docstring_errors(undocumented)} == {"GL08"}
