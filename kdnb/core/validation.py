"""Input validation at the boundary of kdnb's public functions.

Each checker raises ``TypeError`` for a value of the wrong type and ``ValueError`` for a value out of range, and the
message names the argument and its allowed range. Nothing is clipped.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from numbers import Real
from typing import Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "GRAM_SYMMETRY_FACTOR",
    "TRAIN_MODE_LAYERS",
    "check_bool",
    "check_buffers_unchanged",
    "check_choice",
    "check_eval_mode",
    "check_finite_tensor",
    "check_gram",
    "check_in_unit_interval",
    "check_kernel_targets",
    "check_nonnegative",
    "check_positive",
    "check_positive_int",
    "check_sequence",
    "check_soft_ratio",
    "check_soft_ratios",
    "check_temperature",
    "check_variance",
]


def _as_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
            value = value.item()
        else:
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    return value


def check_in_unit_interval(value, name: str, *, open_low: bool = False) -> float:
    """Return ``value`` as a float after checking it lies in [0, 1] (or (0, 1] with ``open_low``).

    Parameters
    ----------
    value : float
        A real number (bools are refused) or a one-element real tensor.
    name : str
        The argument's name, used in the error message.
    open_low : bool, default False
        If True, the interval is (0, 1]: 0 is refused.

    Returns
    -------
    float
        ``value`` as a Python float.

    Raises
    ------
    TypeError
        If ``value`` is not a real number or a one-element real tensor.
    ValueError
        If ``value`` is NaN or outside [0, 1] (or (0, 1] with ``open_low``).
    """
    x = _as_real(value, name)
    low_ok = x > 0 if open_low else x >= 0
    if not (low_ok and x <= 1):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return x


def check_soft_ratio(rho, name: str = "rho") -> float:
    """Check the soft ratio ρ, the weight of the soft (teacher) term, in [0, 1].

    Parameters
    ----------
    rho : float
        The soft ratio, a real number in [0, 1] (1 = pure distillation, 0 = labels only).
    name : str, default "rho"
        The argument's name, used in the error message.

    Returns
    -------
    float
        ``rho`` as a Python float.

    Raises
    ------
    TypeError
        If ``rho`` is not a real number or a one-element real tensor.
    ValueError
        If ``rho`` is NaN or outside [0, 1].
    """
    return check_in_unit_interval(rho, name)


def check_positive(value, name: str) -> float:
    """Return ``value`` as a float after checking it is finite and > 0.

    Parameters
    ----------
    value : float
        A real number (bools are refused) or a one-element real tensor.
    name : str
        The argument's name, used in the error message.

    Returns
    -------
    float
        ``value`` as a Python float.

    Raises
    ------
    TypeError
        If ``value`` is not a real number or a one-element real tensor.
    ValueError
        If ``value`` is NaN, infinite or <= 0.
    """
    x = _as_real(value, name)
    if not (x > 0 and math.isfinite(x)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return x


def check_nonnegative(value, name: str) -> float:
    """Return ``value`` as a float after checking it is a finite number >= 0.

    Parameters
    ----------
    value : real number
        The value to check (a bool is not a number here).
    name : str
        The argument's name, used in the error message.

    Returns
    -------
    float
        ``value`` as a Python float.

    Raises
    ------
    TypeError
        If ``value`` is not a real number.
    ValueError
        If ``value`` is NaN, infinite or negative.
    """
    x = _as_real(value, name)
    if not (math.isfinite(x) and x >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return x


def check_variance(value, name: str, *, positive: bool = False) -> float:
    """Check a variance: a finite number >= 0 (or > 0 with ``positive``), returned as a float.

    Parameters
    ----------
    value : float
        A real number (bools are refused) or a one-element real tensor.
    name : str
        The argument's name, used in the error message.
    positive : bool, default False
        If True, 0 is refused.

    Returns
    -------
    float
        ``value`` as a Python float.

    Raises
    ------
    TypeError
        If ``value`` is not a real number or a one-element real tensor.
    ValueError
        If ``value`` is NaN, infinite or < 0 (or == 0 with ``positive``).
    """
    x = _as_real(value, name)
    if not math.isfinite(x) or x < 0 or (positive and x == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return x


def check_temperature(temperature, name: str = "temperature") -> float:
    """Check the distillation temperature T: finite and > 0.

    Parameters
    ----------
    temperature : float
        The temperature, a real number (bools are refused) or a one-element real tensor.
    name : str, default "temperature"
        The argument's name, used in the error message.

    Returns
    -------
    float
        ``temperature`` as a Python float.

    Raises
    ------
    TypeError
        If ``temperature`` is not a real number or a one-element real tensor.
    ValueError
        If ``temperature`` is NaN, infinite or <= 0.
    """
    return check_positive(temperature, name)


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """Return ``value`` after checking it is an int >= ``minimum``.

    Parameters
    ----------
    value : int
        An int, or a real number with an integer value (such as ``3.0`` or a numpy integer), which is converted to
        int. Bools are refused.
    name : str
        The argument's name, used in the error message.
    minimum : int, default 1
        The smallest allowed value.

    Returns
    -------
    int
        ``value`` as an int.

    Raises
    ------
    TypeError
        If ``value`` is a bool, or neither an int nor a real number with an integer value.
    ValueError
        If ``value`` < ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, Real) and float(value).is_integer() and not isinstance(value, bool):
            value = int(value)
        else:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_bool(value, name: str) -> bool:
    """Return ``value`` as a Python bool after checking it is one (a ``bool`` or a numpy ``bool_``).

    Truthy stand-ins such as ``1``, ``"no"`` or ``None`` are refused, so a misspelt flag cannot switch a behaviour
    on silently.

    Parameters
    ----------
    value : bool or numpy.bool_
        The flag to check.
    name : str
        The argument's name, used in the error message.

    Returns
    -------
    bool
        ``value`` as a Python bool.

    Raises
    ------
    TypeError
        If ``value`` is neither a ``bool`` nor a ``numpy.bool_``.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_choice(value, name: str, choices) -> str:
    """Return ``value`` after checking it is one of ``choices``.

    Parameters
    ----------
    value : object
        The value to check, usually a str.
    name : str
        The argument's name, used in the error message.
    choices : Iterable
        The allowed values (a tuple, list or set), listed in the error message.

    Returns
    -------
    object
        ``value``, unchanged.

    Raises
    ------
    ValueError
        If ``value`` is not in ``choices``.
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_finite_tensor(x, name: str, *, floating: bool = True) -> torch.Tensor:
    """Check ``x`` is a torch tensor (floating point unless ``floating=False``) with finite entries.

    Parameters
    ----------
    x : torch.Tensor
        The tensor to check, of any shape.
    name : str
        The argument's name, used in the error message.
    floating : bool, default True
        If True, ``x`` must be floating point with only finite entries; if False, only its type is checked (any
        dtype, entries not inspected).

    Returns
    -------
    torch.Tensor
        ``x``, unchanged.

    Raises
    ------
    TypeError
        If ``x`` is not a ``torch.Tensor``, or (with ``floating``) is not floating point.
    ValueError
        If (with ``floating``) ``x`` contains NaN or inf.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if floating and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must contain only finite values (found NaN or inf)")
    return x


def check_sequence(values, name: str, *, allow_empty: bool = False) -> list:
    """Return a non-empty list from a sequence or a 1-D tensor.

    Anything else raises ``TypeError`` or ``ValueError`` naming ``name``.

    Parameters
    ----------
    values : Sequence or torch.Tensor
        A non-empty sequence (not a str or bytes) or a non-empty 1-D tensor.
    name : str
        The argument's name, used in the error message.
    allow_empty : bool, default False
        If True, an empty sequence is accepted (and returned as ``[]``).

    Returns
    -------
    list
        The values as a list (a tensor's entries as Python numbers).

    Raises
    ------
    TypeError
        If ``values`` is a str, bytes or not a sequence (a numpy array is not one; pass ``array.tolist()``).
    ValueError
        If ``values`` is a tensor that is not 1-D, or is empty (unless ``allow_empty``).
    """
    if isinstance(values, torch.Tensor):
        if values.ndim != 1:
            raise ValueError(f"{name} must be a 1-D sequence, got a tensor of shape {tuple(values.shape)}")
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence (a list of values), got {type(values).__name__}")
    if len(values) == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return list(values)


def check_soft_ratios(rho, name: str = "rho") -> tuple[torch.Tensor, bool]:
    """Check soft ratios in (0, 1] and return them as a float64 vector with whether a single number was given.

    ρ = 0 is refused with the reason: with no soft term the per-example loss is pure cross-entropy on the hard label,
    whose minimiser is infinite, so quantities defined through a finite minimiser (the effective logits of
    :mod:`kdnb.papers.wide_network_kd`) do not exist there.

    Parameters
    ----------
    rho : float, Sequence of float or torch.Tensor
        A number in (0, 1] (a real number or a 0-D tensor), or a non-empty sequence or 1-D tensor of them.
    name : str, default "rho"
        The argument's name, used in the error message.

    Returns
    -------
    values : torch.Tensor
        Shape (k,), float64 on the CPU: the soft ratios (k = 1 for a single number).
    scalar : bool
        True if a single number was given.

    Raises
    ------
    TypeError
        If a value is not a real number.
    ValueError
        If ``rho`` is an empty sequence, or a value is 0, NaN or outside (0, 1].
    """
    if isinstance(rho, torch.Tensor) and rho.ndim == 0:
        rho = rho.item()
    scalar = not isinstance(rho, (Sequence, torch.Tensor)) or isinstance(rho, (str, bytes))
    values = [rho] if scalar else list(rho.tolist() if isinstance(rho, torch.Tensor) else rho)
    if not values:
        raise ValueError(f"{name} must be a number in (0, 1] or a non-empty sequence of them")
    for value in values:
        if not isinstance(value, bool) and isinstance(value, (int, float)) and float(value) == 0.0:
            raise ValueError(
                f"{name} must be in (0, 1], got 0: with no soft term the per-example loss is pure cross-entropy on "
                "the hard label, whose minimiser is z = +inf (y = 1) or -inf (y = 0), so there is no finite "
                "effective logit. Use a small rho (e.g. 0.05) or train for a fixed time instead")
        check_in_unit_interval(value, name, open_low=True)
    return torch.tensor([float(v) for v in values], dtype=torch.float64), scalar


GRAM_SYMMETRY_FACTOR = 16
"""c of the symmetry tolerance :math:`c\\, \\epsilon_\\mathrm{dtype} \\max|K|` of ``check_gram(symmetric=True)``."""


def check_gram(kernel, name: str = "kernel", *, symmetric: bool = False) -> torch.Tensor:
    r"""Check a square (N, N) Gram matrix with finite entries and return it in float64.

    The result is on the CPU for MPS, which has no float64 (see :func:`kdnb.core.runtime.float64_device`). A 4-D
    multi-output NTK is refused with the way to get a scalar one.

    With ``symmetric=True`` (the solvers) the matrix must also be symmetric *to the precision of its dtype*:
    :math:`\max_{ij} |K_{ij} - K_{ji}| \le c\, \epsilon_\mathrm{dtype} \max_{ij} |K_{ij}|` with
    :math:`c = 16` (:data:`GRAM_SYMMETRY_FACTOR`) and :math:`\epsilon_\mathrm{dtype}` the machine epsilon of the
    *input* dtype (``torch.finfo(kernel.dtype).eps``: 1.2e-7 for float32, 2.2e-16 for float64), because a kernel
    computed in float32 (e.g. :func:`kdnb.kernels.empirical.empirical_ntk` with ``method="ntk_vp"``) is symmetric
    only to float32 rounding. Such a matrix is returned symmetrised, :math:`(K + K^\top)/2` in float64 (computed as
    :math:`K/2 + K^\top/2`, which cannot overflow). An exactly symmetric matrix is returned unchanged (no copy beyond
    the float64 conversion), so results on exactly symmetric kernels do not depend on this step.

    Parameters
    ----------
    kernel : torch.Tensor
        Shape (N, N) with N >= 1, floating point (any floating dtype), finite entries.
    name : str, default "kernel"
        The argument's name, used in the error message.
    symmetric : bool, default False
        Also require symmetry to the dtype's precision (see above) and return the symmetrised matrix.

    Returns
    -------
    torch.Tensor
        ``kernel`` as float64, shape (N, N), on ``kernel``'s device (the CPU for MPS); with ``symmetric=True``,
        exactly symmetric.

    Raises
    ------
    TypeError
        If ``kernel`` is not a ``torch.Tensor``, or ``symmetric`` is not a bool.
    ValueError
        If ``kernel`` is 4-D (the blocks of a multi-output model), is not a non-empty square matrix, is not floating
        point or has a NaN or inf entry; with ``symmetric=True``, if it is asymmetric beyond its dtype's precision
        (the message gives the asymmetry and the tolerance).
    """
    from .runtime import float64_device

    if not isinstance(kernel, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(kernel).__name__}")
    symmetric = check_bool(symmetric, "symmetric")
    if kernel.ndim == 4:
        raise ValueError(f"{name} has shape {tuple(kernel.shape)}: the blocks of a multi-output model. The solvers need "
                         f"the (N, N) Gram matrix of a scalar output (take one output's block, or outputs='trace')")
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] == 0:
        raise ValueError(f"{name} must be a square (N, N) Gram matrix, got shape {tuple(kernel.shape)}")
    if not kernel.is_floating_point() or not bool(torch.isfinite(kernel).all()):
        raise ValueError(f"{name} must be a floating-point matrix with finite entries")
    k = kernel.to(device=float64_device(kernel.device), dtype=torch.float64)
    if not symmetric or bool((k == k.T).all()):
        return k
    eps = torch.finfo(kernel.dtype).eps
    scale = float(k.abs().max())
    asymmetry = float((k - k.T).abs().max())
    tolerance = GRAM_SYMMETRY_FACTOR * eps * scale
    if not asymmetry <= tolerance:
        raise ValueError(
            f"{name} must be symmetric (a Gram matrix) to the precision of its dtype {kernel.dtype}: "
            f"max |K - K^T| = {asymmetry:.3g} ({asymmetry / scale:.3g} of max |K|), above the tolerance "
            f"{GRAM_SYMMETRY_FACTOR} x eps ({eps:.3g}) x max |K| = {tolerance:.3g}. If the kernel was computed in a "
            f"lower precision than its dtype, pass it in that dtype")
    return k / 2 + k.T / 2


def check_kernel_targets(targets, n: int, name: str, device) -> torch.Tensor:
    """Check regression targets for an (N, N) kernel and return them in float64 on ``device``.

    Parameters
    ----------
    targets : torch.Tensor
        Shape (N,) or (N, k), floating point, finite entries.
    n : int
        N, the size of the kernel the targets go with.
    name : str
        The argument's name, used in the error message.
    device : torch.device or str
        Where the returned targets live (the kernel's device).

    Returns
    -------
    torch.Tensor
        ``targets`` as float64 on ``device``, same shape.

    Raises
    ------
    TypeError
        If ``targets`` is not a ``torch.Tensor``.
    ValueError
        If ``targets`` is not (n,) or (n, k), is not floating point or has a NaN or inf entry.
    """
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(targets).__name__}")
    if targets.ndim not in (1, 2) or targets.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, k) to match the kernel, got {tuple(targets.shape)}")
    if not targets.is_floating_point() or not bool(torch.isfinite(targets).all()):
        raise ValueError(f"{name} must be floating point with finite entries")
    return targets.to(device=device, dtype=torch.float64)


# Layers whose forward depends on ``module.training``: in train mode dropout is random and batch (or instance)
# normalisation uses the statistics of the batch and updates its running statistics in place.
TRAIN_MODE_LAYERS = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d,
    nn.SyncBatchNorm, nn.RReLU,
)
_INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LazyInstanceNorm1d,
                   nn.LazyInstanceNorm2d, nn.LazyInstanceNorm3d)


def _depends_on_train_mode(module: nn.Module) -> bool:
    if isinstance(module, TRAIN_MODE_LAYERS):
        return True
    if isinstance(module, _INSTANCE_NORMS):  # with running statistics, train mode updates and ignores them
        return bool(module.track_running_stats)
    if isinstance(module, nn.MultiheadAttention):  # dropout on the attention weights
        return module.dropout > 0
    return False


def check_eval_mode(model, name: str = "model") -> nn.Module:
    """Return ``model`` after checking that none of its layers whose output depends on the train mode is in it.

    The transforms of ``torch.func`` (``functional_call``, ``vmap``, ``jvp``, ``vjp``) need the model to be a
    deterministic function of its inputs and weights that leaves its buffers alone. A layer in train mode is not:
    dropout is random (and ``vmap`` refuses it), batch normalisation normalises by the batch and updates its running
    statistics in place. The kernel or linearization of such a function is not well defined, so instead of choosing
    a mode for the caller this check asks for ``model.eval()``. Nothing about ``model`` is changed.

    Parameters
    ----------
    model : torch.nn.Module
        The model to check; every submodule is visited.
    name : str, default "model"
        The argument's name, used in the error message.

    Returns
    -------
    torch.nn.Module
        ``model`` itself.

    Raises
    ------
    TypeError
        If ``model`` is not a ``torch.nn.Module``.
    ValueError
        If a submodule is in train mode (``training=True``) and is a dropout layer, a batch normalisation layer
        (:data:`TRAIN_MODE_LAYERS`, subclasses included), an instance normalisation layer with
        ``track_running_stats=True``, or a ``MultiheadAttention`` with ``dropout > 0``; the message names the
        submodules and says to call ``model.eval()``.

    Notes
    -----
    Layers are recognised by type. A custom module whose ``forward`` reads ``self.training`` is not detected: put
    models with such layers in eval mode. Layers in train mode whose output does not depend on it (``Linear``,
    ``ReLU``, ``LayerNorm``, a fresh ``nn.Module``'s default ``training=True``) are accepted.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    offending = [f"{module_name or '<root>'!r} ({type(module).__name__})" for module_name, module in
                 model.named_modules() if module.training and _depends_on_train_mode(module)]
    if offending:
        raise ValueError(
            f"{name} has layers in train mode, where their output is random or depends on the batch: "
            f"{', '.join(offending)}. Call {name}.eval() first: the kernel and the linearization are those of the "
            f"eval-mode function")
    return model


def _same_tensor_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
    return torch.equal(a, b)


@contextlib.contextmanager
def check_buffers_unchanged(model, name: str = "model", *, caller: str = "this function") -> Iterator[None]:
    """A context manager that restores ``model``'s buffers and raises if the code it wraps changed them.

    Used around the ``torch.func`` paths (kernels, linearizations) that call a user's module: a forward pass that
    updates a buffer (a running statistic, a call counter) would otherwise silently change the model, or the
    function being differentiated. Buffers are compared by value (NaN equal to NaN) and by identity (a buffer
    replaced by another tensor counts as changed); the values are copied once on entry.

    Parameters
    ----------
    model : torch.nn.Module or Mapping[str, torch.Tensor]
        The module whose buffers (``model.named_buffers()``) are watched, or a mapping from names to the tensors to
        watch (only in-place changes can be seen and undone there).
    name : str, default "model"
        The argument's name, used in the error message.
    caller : str, default "this function"
        What ran the forward passes, used in the error message (e.g. ``"empirical_ntk"``).

    Yields
    ------
    None
        The wrapped block runs with the buffers as they were on entry.

    Raises
    ------
    TypeError
        If ``model`` is neither a ``torch.nn.Module`` nor a mapping of tensors.
    ValueError
        On exit, if a buffer was modified in place, replaced, added or removed. The buffers are first restored (the
        original tensors, with their original values; added buffers are removed). An exception raised inside the
        block is chained to it; without a buffer change, that exception propagates unchanged.
    """
    if isinstance(model, nn.Module):
        watched = dict(model.named_buffers())
    elif isinstance(model, dict) and all(isinstance(t, torch.Tensor) for t in model.values()):
        watched = dict(model)
    else:
        raise TypeError(f"{name} must be a torch.nn.Module or a mapping of tensors, got {type(model).__name__}")
    saved = {key: t.detach().clone() for key, t in watched.items()}
    module = model if isinstance(model, nn.Module) else None
    owners = {} if module is None else {key: key.rpartition(".") for key in watched}
    transient = {key for key, (owner, _, leaf) in owners.items()
                 if leaf in module.get_submodule(owner)._non_persistent_buffers_set}
    failure = None
    try:
        yield
    except BaseException as error:  # noqa: BLE001 -- re-raised below, or chained to the buffer error
        failure = error
    now = watched if module is None else dict(module.named_buffers())
    changed = sorted(key for key, t in watched.items() if key not in now or now[key] is not t
                     or not _same_tensor_values(t, saved[key]))
    added = sorted(set(now) - set(watched))
    if changed or added:
        with torch.no_grad():
            for key in added:
                owner, _, leaf = key.rpartition(".")
                delattr(module.get_submodule(owner), leaf)
            for key in changed:
                if module is not None and now.get(key) is not watched[key]:
                    owner, _, leaf = owners[key]
                    module.get_submodule(owner).register_buffer(leaf, watched[key],
                                                                persistent=key not in transient)
                watched[key].copy_(saved[key])
        raise ValueError(
            f"{name}'s forward changed its buffers {changed + added} while {caller} evaluated it (they were "
            f"restored): {caller} needs a model whose forward leaves its buffers alone; call {name}.eval() if a "
            f"layer updates statistics in train mode") from failure
    if failure is not None:
        raise failure
