r"""The premise of Ji & Zhu (2020), tested on finite networks: a wide network trained to convergence on the
distillation loss approaches the kernel student that regresses the effective logits.

The paper assumes (and chapters 3 to 5 use) that a very wide student, trained on the binary distillation loss until
every per-example loss is at its minimum, ends at

.. math:: f_s(x) = \Theta(x, X)\, K^{-1} z_\mathrm{eff}(X),

the kernel regression (from :math:`f_0 \equiv 0`) of the effective logits
:math:`z_\mathrm{eff}(z_t, y_g)` (:func:`~kdnb.papers.wide_network_kd.effective_logits.effective_student_logits`) with
the student's infinite-width NTK :math:`\Theta` (:func:`~kdnb.papers.wide_network_kd.students.student_kernel`). Here
finite networks of the same architecture (a one-hidden-layer ReLU network with a first-layer bias in the NTK
parametrisation, :class:`kdnb.core.models.NTKMLP`, made an antisymmetric pair,
:class:`kdnb.core.models.AntisymmetricPair`, so that :math:`f_0 \equiv 0`) are trained on the loss itself
(:func:`kdnb.core.losses.binary_kd_loss`) until their training logits reach :math:`z_\mathrm{eff}`, and their test
logits are compared with the kernel student's (:func:`premise_experiment`). The NTK theory (Jacot et al. 2018; Lee et
al. 2019) says the gap vanishes as the width m grows, at the rate :math:`m^{-1/2}`.

The networks are trained by full-batch L-BFGS (:func:`train_to_effective_logits`), not by plain gradient descent: the
hard-label term is nearly flat at the effective logits (its curvature there is a small fraction of that at zero),
so gradient descent needs tens of thousands of steps to converge. L-BFGS steps are linear combinations of gradients, so
from :math:`w_0` the weight change stays in their span, as with gradient descent; at a finite width the two
optimisers still end at slightly different networks, and both differences vanish with the width in the NTK limit.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import pandas as pd
import torch
from torch import nn

from ...core.data import GaussianMixtureOnSphere, sample_sphere
from ...core.losses import binary_kd_loss
from ...core.models import NTKMLP, AntisymmetricPair
from ...core.runtime import float64_device
from ...core.sweeps import power_law_fit, relative_error
from ...core.validation import (
    check_bool,
    check_finite_tensor,
    check_positive,
    check_positive_int,
    check_sequence,
    check_soft_ratio,
    check_temperature,
)
from .effective_logits import effective_student_logits
from .students import ARCHITECTURES, kernel_students, student_kernel

__all__ = ["ConvergedTraining", "PremiseRun", "premise_experiment", "student_network", "train_to_effective_logits"]


def student_network(width: int, generator: torch.Generator, *, dim: int = 3,
                    dtype: torch.dtype = torch.float64) -> AntisymmetricPair:
    r"""A finite-width student of chapters 3 to 5: the network whose infinite-width NTK is :func:`student_kernel`.

    One hidden ReLU layer with a first-layer bias in the NTK parametrisation (weight and bias variances 1/2, readout
    variance 1, no readout bias: :data:`~kdnb.papers.wide_network_kd.students.ARCHITECTURES` ``"two_layer_bias"``),
    as an antisymmetric pair of two copies of width m/2, so that its initial function is exactly zero and its NTK
    converges to ``student_kernel`` as m grows.

    Parameters
    ----------
    width : int
        m, the hidden units of the pair (both copies together), even and >= 2.
    generator : torch.Generator
        Generator of the N(0, 1) parameters.
    dim : int, default 3
        Input dimension d >= 1.
    dtype : torch.dtype, default torch.float64
        Dtype of the parameters.

    Returns
    -------
    kdnb.core.models.AntisymmetricPair
        The network, with scalar logits (shape (N,)).

    Raises
    ------
    TypeError, ValueError
        If ``width`` is not an even int >= 2, or as :class:`kdnb.core.models.NTKMLP`.
    """
    width = check_positive_int(width, "width", minimum=2)
    if width % 2:
        raise ValueError(f"width must be even (an antisymmetric pair of two networks of width m/2), got {width}")
    a = ARCHITECTURES["two_layer_bias"]
    return AntisymmetricPair(NTKMLP(dim, [width // 2], weight_variance=a["weight_variance"],
                                    bias_variance=a["bias_variance"],
                                    readout_weight_variance=a["readout_weight_variance"],
                                    readout_bias_variance=a["readout_bias_variance"], generator=generator,
                                    dtype=dtype))


@dataclass(frozen=True)
class ConvergedTraining:
    r"""How :func:`train_to_effective_logits` ended.

    Parameters
    ----------
    converged : bool
        Whether every training logit came within ``tolerance`` of its effective logit.
    residual : float
        :math:`\max_i |f(x_i) - z_\mathrm{eff}(x_i)|` at the end.
    evaluations : int
        Loss-and-gradient evaluations spent.
    loss : float
        The summed distillation loss at the end.
    """

    converged: bool
    residual: float
    evaluations: int
    loss: float


def train_to_effective_logits(
    model: nn.Module,
    inputs: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    rho: float,
    temperature: float,
    t2_scaling: bool = True,
    tolerance: float = 1e-5,
    max_evaluations: int = 2000,
) -> ConvergedTraining:
    r"""Train ``model`` in place on the summed binary distillation loss until it reaches the effective logits.

    The loss is :func:`kdnb.core.losses.binary_kd_loss` (``reduction="sum"``). Training stops when
    :math:`\max_i |f(x_i) - z_\mathrm{eff}(z_t(x_i), y_i)| \le` ``tolerance`` (every per-example loss at its minimum,
    :func:`~kdnb.papers.wide_network_kd.effective_logits.effective_student_logits`) or once ``max_evaluations``
    loss-and-gradient evaluations are spent (a last line search may overrun the budget by at most 25).

    The optimiser is full-batch :class:`torch.optim.LBFGS` (unit step, at most 20 iterations per call, history 50)
    with a strong-Wolfe line search. Its steps are linear combinations of gradients, so from :math:`w_0` the weight
    change stays in their span. It also stops when the line search makes no progress three calls in a row (the
    floating-point floor), unconverged.

    Parameters
    ----------
    model : torch.nn.Module
        A network with scalar logits (shape (N,)); trained in place.
    inputs : torch.Tensor
        The N training inputs, in the model's dtype and device.
    teacher_logits : torch.Tensor
        :math:`z_t`, (N,).
    labels : torch.Tensor
        :math:`y \in [0, 1]`, (N,).
    rho : float
        Soft ratio in (0, 1] (at 0 the effective logit is infinite).
    temperature : float
        T > 0.
    t2_scaling : bool, default True
        :math:`c_T = T^2` (Hinton et al. 2015) if True, else 1 (the plain soft term).
    tolerance : float, default 1e-5
        Largest allowed distance of a training logit from its effective logit, > 0.
    max_evaluations : int, default 2000
        Budget of loss-and-gradient evaluations, >= 1.

    Returns
    -------
    ConvergedTraining
        Whether it converged, the final residual, the evaluations spent and the final loss.

    Raises
    ------
    TypeError, ValueError
        If an argument is out of range (``rho`` not in (0, 1], a non-positive tolerance), the
        model's logits are not (N,), or as :func:`kdnb.core.losses.binary_kd_loss`.

    References
    ----------
    Jacot et al. 2018; Lee et al. 2019 (wide networks train like their linearisation); Nocedal & Wright 2006,
    Algorithm 7.5 (L-BFGS).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    rho = check_soft_ratio(rho)
    if rho == 0:
        raise ValueError("rho must be in (0, 1]: at rho = 0 the effective logit is infinite")
    temperature = check_temperature(temperature)
    t2_scaling = check_bool(t2_scaling, "t2_scaling")
    tolerance = check_positive(tolerance, "tolerance")
    max_evaluations = check_positive_int(max_evaluations, "max_evaluations")
    z_t = check_finite_tensor(teacher_logits, "teacher_logits")
    targets = effective_student_logits(z_t.to(torch.float64), labels.to(torch.float64), rho, temperature,
                                       t2_scaling=t2_scaling).to(inputs.device)
    z_t, labels = z_t.to(inputs), labels.to(inputs)
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_of(logits):
        if logits.ndim != 1 or logits.shape[0] != inputs.shape[0]:
            raise ValueError(f"the model must return one logit per input, shape ({inputs.shape[0]},), got "
                             f"{tuple(logits.shape)}")
        return binary_kd_loss(logits, z_t, labels, rho=rho, temperature=temperature, t2_scaling=t2_scaling,
                              reduction="sum")

    def residual_of(logits):
        if logits.shape != targets.shape:
            raise ValueError(f"the model must return one logit per input, shape ({inputs.shape[0]},), got "
                             f"{tuple(logits.shape)}")
        return float((logits.detach().to(torch.float64) - targets).abs().max())

    evaluations = 0
    model.train()
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=20, max_eval=25, history_size=50,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-300, tolerance_change=1e-300)

    def closure():
        nonlocal evaluations
        opt.zero_grad(set_to_none=True)
        loss = loss_of(model(inputs))
        loss.backward()
        evaluations += 1
        return loss

    stalled = 0
    while evaluations < max_evaluations:
        before = evaluations
        with torch.no_grad():
            if residual_of(model(inputs)) <= tolerance:
                break
        remaining = max_evaluations - evaluations
        opt.param_groups[0].update(max_iter=min(20, remaining), max_eval=min(25, remaining))
        opt.step(closure)
        stalled = stalled + 1 if evaluations <= before + 1 else 0
        if stalled >= 3:  # no line-search progress left (at the floating-point floor)
            break
    model.eval()
    with torch.no_grad():
        logits = model(inputs)
        residual, loss = residual_of(logits), float(loss_of(logits))
    return ConvergedTraining(converged=residual <= tolerance, residual=residual, evaluations=evaluations,
                             loss=loss)


@dataclass(frozen=True)
class PremiseRun:
    r"""Result of :func:`premise_experiment`.

    Parameters
    ----------
    widths : tuple of int
        The widths m, increasing.
    table : pandas.DataFrame
        One row per (repeat, convention, width): ``repeat``, ``t2_scaling``, ``width``, ``converged``, ``residual``
        (largest training-logit distance to :math:`z_\mathrm{eff}`), ``evaluations``, ``gap`` (relative distance
        :math:`\|f_\mathrm{net} - f_\mathrm{kernel}\| / \|f_\mathrm{kernel}\|` over the test points; NaN if the
        network did not converge) and ``initial_gap`` (the same distance for the network before training, which is
        1 since :math:`f_0 \equiv 0`).
    slopes : pandas.DataFrame
        One row per (repeat, convention) with at least ``min_widths`` converged widths: ``repeat``, ``t2_scaling``,
        ``slope`` (of log gap against log width), ``r_squared`` and ``widths_used``.
    excluded : int
        Networks that did not converge within the budget (their gap is not used).
    excluded_repeats : int
        (repeat, convention) pairs left out of ``slopes`` for having fewer than ``min_widths`` converged widths.
    """

    widths: tuple[int, ...]
    table: pd.DataFrame
    slopes: pd.DataFrame
    excluded: int
    excluded_repeats: int


def premise_experiment(
    generator_for: Callable[..., torch.Generator],
    *,
    widths: Sequence[int],
    repeats: int,
    n_train: int,
    n_test: int,
    rho: float,
    temperature: float,
    conventions: Sequence[bool] = (False, True),
    tolerance: float = 1e-5,
    max_evaluations: int = 2000,
    min_widths: int = 3,
    dim: int = 3,
    n_modes: int = 4,
    mode_width: float = 0.5,
    device: torch.device | str = "cpu",
) -> PremiseRun:
    r"""Train finite students to convergence on the distillation loss and measure their gap to the kernel student.

    For each repeat r a task is drawn from ``generator_for(7, r)``, as in chapter 3's experiment: a perfect teacher
    (a Gaussian-mixture function on :math:`S^{d-1}`, :class:`kdnb.core.data.GaussianMixtureOnSphere`, hard label its
    sign), ``n_train`` training and ``n_test`` test points. For each width m a student :func:`student_network` is
    drawn from ``generator_for(8, m, r)`` (the same initial network for every convention) and trained by
    :func:`train_to_effective_logits`; its test logits are compared with the kernel student's
    (:func:`~kdnb.papers.wide_network_kd.students.kernel_students`: kernel regression of the effective logits with
    the infinite-width NTK, from the same zero initial function). Float64 throughout. Per (repeat, convention), the
    exponent of the gap against the width is fitted by least squares on the log-log points of the converged
    networks (:func:`kdnb.core.sweeps.power_law_fit`).

    Parameters
    ----------
    generator_for : callable
        ``generator_for(*keys)`` returns a fresh CPU generator (a chapter's
        :meth:`kdnb.core.runtime.Chapter.generator_for`).
    widths : sequence of int
        At least two increasing even widths m >= 2.
    repeats : int
        Tasks, >= 1.
    n_train, n_test : int
        Training and test points per task, >= 1.
    rho : float
        Soft ratio in (0, 1].
    temperature : float
        T > 0.
    conventions : sequence of bool, default (False, True)
        The values of ``t2_scaling`` to run (False: plain soft term; True: Hinton's :math:`T^2`), non-empty, without
        repeats.
    tolerance, max_evaluations
        As :func:`train_to_effective_logits`.
    min_widths : int, default 3
        Converged widths a (repeat, convention) needs for its slope, >= 2.
    dim : int, default 3
        d >= 2: inputs on :math:`S^{d-1}`.
    n_modes : int, default 4
        Gaussian bumps of the teacher, >= 1.
    mode_width : float, default 0.5
        Their width, > 0.
    device : torch.device or str, default "cpu"
        Where the networks train (an MPS device falls back to the CPU: it has no float64).

    Returns
    -------
    PremiseRun
        The per-network table, the per-repeat slopes and the exclusion counts.

    Raises
    ------
    TypeError, ValueError
        If ``generator_for`` is not callable, ``widths`` has fewer than two values or is not increasing or holds an
        odd width, ``conventions`` is empty or repeats a value, ``min_widths`` exceeds the number of widths, or as
        :func:`train_to_effective_logits`.

    References
    ----------
    Ji & Zhu 2020 (the wide student is kernel regression of the effective logits); Jacot et al. 2018 and Lee et al.
    2019 (the gap of order :math:`m^{-1/2}`).
    """
    if not callable(generator_for):
        raise TypeError("generator_for must be callable: generator_for(*keys) -> torch.Generator")
    widths = [check_positive_int(w, "widths", minimum=2) for w in check_sequence(widths, "widths")]
    if len(widths) < 2 or any(b <= a for a, b in pairwise(widths)):
        raise ValueError(f"widths must be at least two increasing widths (a power law is fitted), got {widths}")
    if any(w % 2 for w in widths):
        raise ValueError(f"widths must be even (an antisymmetric pair of two networks of width m/2), got {widths}")
    repeats = check_positive_int(repeats, "repeats")
    n_train, n_test = check_positive_int(n_train, "n_train"), check_positive_int(n_test, "n_test")
    rho, temperature = check_soft_ratio(rho), check_temperature(temperature)
    conventions = [check_bool(c, "conventions") for c in check_sequence(conventions, "conventions")]
    if len(set(conventions)) != len(conventions):
        raise ValueError(f"conventions must not repeat a value, got {conventions}")
    min_widths = check_positive_int(min_widths, "min_widths", minimum=2)
    if min_widths > len(widths):
        raise ValueError(f"min_widths ({min_widths}) must be at most the number of widths ({len(widths)})")
    dim = check_positive_int(dim, "dim", minimum=2)
    device = float64_device(device)  # MPS has no float64: CPU

    rows = []
    for repeat in range(repeats):
        g = generator_for(7, repeat)
        teacher = GaussianMixtureOnSphere(dim, check_positive_int(n_modes, "n_modes"), g, width=mode_width)
        x, x_test = sample_sphere(n_train, dim, g), sample_sphere(n_test, dim, g)
        z_t = teacher(x)
        labels = (z_t > 0).to(torch.float64)
        kernel, kernel_test = student_kernel(x), student_kernel(x_test, x)
        for width in widths:
            initial = student_network(width, generator_for(8, width, repeat), dim=dim).to(device)
            for t2_scaling in conventions:
                reference = kernel_students(kernel, kernel_test, z_t, labels, rho, temperature,
                                            t2_scaling=t2_scaling)
                net = copy.deepcopy(initial)  # every convention starts from the same initial network
                with torch.no_grad():
                    initial_gap = relative_error(net(x_test.to(device)).cpu(), reference)
                result = train_to_effective_logits(net, x.to(device), z_t, labels, rho=rho, temperature=temperature,
                                                   t2_scaling=t2_scaling, tolerance=tolerance,
                                                   max_evaluations=max_evaluations)
                with torch.no_grad():
                    gap = relative_error(net(x_test.to(device)).cpu(), reference) if result.converged else math.nan
                rows.append({"repeat": repeat, "t2_scaling": t2_scaling, "width": width,
                             "converged": result.converged, "residual": result.residual,
                             "evaluations": result.evaluations, "gap": gap, "initial_gap": initial_gap})
    table = pd.DataFrame(rows)
    slope_rows, excluded_repeats = [], 0
    for (repeat, t2_scaling), group in table.groupby(["repeat", "t2_scaling"], sort=True):
        used = group[group["converged"]]
        if len(used) < min_widths:
            excluded_repeats += 1
            continue
        fit = power_law_fit(used["width"].to_numpy(), used["gap"].to_numpy())
        slope_rows.append({"repeat": repeat, "t2_scaling": t2_scaling, "slope": fit.slope,
                           "r_squared": fit.r_squared, "widths_used": len(used)})
    slopes = pd.DataFrame(slope_rows, columns=["repeat", "t2_scaling", "slope", "r_squared", "widths_used"])
    return PremiseRun(widths=tuple(widths), table=table, slopes=slopes, excluded=int((~table["converged"]).sum()),
                      excluded_repeats=excluded_repeats)
