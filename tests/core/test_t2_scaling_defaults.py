"""Every public function and class of kdnb with a ``t2_scaling`` argument defaults to True (Hinton et al. 2015's
:math:`T^2` factor on the soft term), so a caller who wants the plain convention says so."""

import importlib
import inspect
import pkgutil

PACKAGES = ("kdnb.core", "kdnb.kernels", "kdnb.papers")


def public_callables():
    """(import path, callable) of every function and class in a module's ``__all__`` and their public methods."""
    found = {}
    for package in PACKAGES:
        names = [package] + [info.name for info in
                             pkgutil.walk_packages(importlib.import_module(package).__path__, package + ".")]
        for module_name in names:
            module = importlib.import_module(module_name)
            for name in getattr(module, "__all__", ()):
                obj = getattr(module, name)
                if inspect.isfunction(obj):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
                elif inspect.isclass(obj):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
                    for attr, value in vars(obj).items():
                        if isinstance(value, (staticmethod, classmethod)):
                            value = value.__func__
                        if inspect.isfunction(value) and not attr.startswith("_"):
                            found[f"{obj.__module__}.{obj.__qualname__}.{attr}"] = value
    return found


def t2_parameters():
    out = {}
    for path, obj in public_callables().items():
        try:
            signature = inspect.signature(obj)
        except (TypeError, ValueError):
            continue
        if "t2_scaling" in signature.parameters:
            out[path] = signature.parameters["t2_scaling"]
    return out


def test_every_t2_scaling_default_is_true():
    parameters = t2_parameters()
    # the walk finds the known ones, so the test cannot pass by finding none
    for path in ("kdnb.core.losses.kd_loss", "kdnb.core.losses.binary_kd_loss", "kdnb.core.losses.kd_loss_gradient",
                 "kdnb.core.training.distill", "kdnb.core.training.distillation_objective"):
        assert path in parameters, f"{path} not found by the walk"
    assert len(parameters) >= 8
    wrong = {path: p.default for path, p in parameters.items()
             if p.default is not inspect.Parameter.empty and p.default is not True}
    assert not wrong, f"t2_scaling must default to True (Hinton et al. 2015) everywhere; these do not: {wrong}"


def test_the_walk_reads_defaults():
    def plain(x, t2_scaling=False):
        return x

    assert inspect.signature(plain).parameters["t2_scaling"].default is False
