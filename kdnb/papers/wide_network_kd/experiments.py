r"""The experiments of Ji & Zhu (2020), Figs. 2 to 5, each in one call that returns the measured quantities."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from numbers import Real

import numpy as np
import pandas as pd
import torch

from ...core.data import (
    GaussianMixtureOnSphere,
    flip_signs,
    load_binary_digits,
    points_at_angles,
    sample_sphere,
)
from ...core.models import MLP
from ...core.progress import progress_bar
from ...core.runtime import float64_device
from ...core.sweeps import power_law_fit
from ...core.training import distill, predict_logits, teacher_snapshots
from ...core.validation import (
    check_bool,
    check_choice,
    check_in_unit_interval,
    check_positive,
    check_positive_int,
    check_sequence,
    check_soft_ratios,
    check_temperature,
)
from ...kernels.regression import (
    KernelGradientFlow,
    NestedKernelRegression,
    weight_change_cosine,
)
from .effective_logits import effective_student_logits
from .imperfect import GROUND_TRUTH_LOGITS, ground_truth_logit
from .geometry import (
    accumulative_angle_distribution,
    boundary_angles,
    data_inefficiency,
    transfer_risk,
)
from .students import (
    ARCHITECTURES,
    hard_label_effect,
    kernel_diagonal,
    kernel_students,
    sample_initial_function,
    student_kernel,
)

__all__ = ["CircleExample", "DigitsExample", "DigitsRun", "ImperfectTeacherRun", "StoppedTeacherNorms", "TransferRiskRun",
           "best_rho_table", "circle_example", "poor_teacher_gain", "digits_experiment", "early_stopped_distillation_norms", "fitted_slope",
           "imperfect_teacher_experiment", "inefficiency_table", "target_difficulty_norms", "transfer_risk_experiment"]


@dataclass(frozen=True)
class TransferRiskRun:
    r"""One repeat of the transfer-risk experiment (:func:`transfer_risk_experiment`); axes are (n, ρ).

    ``risk``: against the true oracle logits :math:`z_*` at test points; ``risk_to_proxy``: against the oracle proxy
    (the student trained on all :math:`N_\mathrm{or}` points), the quantity Theorem 1 bounds; ``angles``:
    :math:`\bar\alpha_n` from the norm ratio, ``direct_angles`` the same from the inner product
    :math:`a_n^\top K a_N` (:func:`weight_change_cosine`); ``bound``: :math:`p(\bar\alpha_n)`;
    ``boundary_angles`` (M, ρ) give :math:`p(\beta)`; ``projection_error``: the largest relative gap between the
    two cosines over all n; ``norms`` (N_or, ρ): :math:`\|\Delta\hat w_n\|` for every prefix.

    Parameters
    ----------
    n_values : tuple of int
        The students' sample sizes n, increasing, each < ``n_oracle``.
    rhos : tuple of float
        The soft ratios ρ.
    n_oracle : int
        :math:`N_\mathrm{or}`, the oracle proxy's sample size.
    risk : torch.Tensor
        (n, ρ) float64: the transfer risk against the true oracle logits :math:`z_*`.
    risk_to_proxy : torch.Tensor
        (n, ρ): the transfer risk against the oracle proxy.
    angles : torch.Tensor
        (n, ρ): :math:`\bar\alpha_n` in radians, from the norm ratio.
    direct_angles : torch.Tensor
        (n, ρ): the same angles from the inner product.
    bound : torch.Tensor
        (n, ρ): :math:`p(\bar\alpha_n)`, Theorem 1's bound on ``risk_to_proxy``.
    boundary_angles : torch.Tensor
        (M, ρ): the test points' angles to the proxy's decision hyperplane (:func:`boundary_angles`).
    oracle_norm : torch.Tensor
        (ρ,): :math:`\|\Delta\hat w_{N_\mathrm{or}}\|`, the proxy's weight-change norm.
    projection_error : float
        The largest relative gap between the two cosines over all n and ρ.
    norms : torch.Tensor
        (N_or, ρ): :math:`\|\Delta\hat w_n\|` for every prefix n = 1..N_or.
    """

    n_values: tuple[int, ...]
    rhos: tuple[float, ...]
    n_oracle: int
    risk: torch.Tensor
    risk_to_proxy: torch.Tensor
    angles: torch.Tensor
    direct_angles: torch.Tensor
    bound: torch.Tensor
    boundary_angles: torch.Tensor
    oracle_norm: torch.Tensor
    projection_error: float
    norms: torch.Tensor


def transfer_risk_experiment(
    generator: torch.Generator,
    *,
    n_values: Sequence[int],
    rhos: Sequence[float],
    temperature: float,
    n_oracle: int,
    n_test: int,
    dim: int = 3,
    n_modes: int = 4,
    mode_width: float | None = 0.5,
    t2_scaling: bool = True,
    architecture: str = "two_layer_bias",
    device: torch.device | str | None = None,
) -> TransferRiskRun:
    r"""Distil a perfect teacher into wide students on nested samples and measure Ji & Zhu's Fig. 2 quantities.

    The teacher logit is a Gaussian-mixture function on the sphere :math:`S^{d-1}`
    (:class:`kdnb.core.data.GaussianMixtureOnSphere`, ``n_modes`` bumps of width ``mode_width``) and the hard label is
    its sign (a perfect teacher). ``n_oracle`` points are drawn; the students are trained on the first n of them for
    each n in ``n_values``, and the student on all of them is the oracle proxy. Students start from f0 ≡ 0. Risks
    are measured on ``n_test`` fresh points. Random draws use ``generator`` on the CPU, so a seed gives the same
    sample on every device; the kernels are computed on ``device`` (default CPU) and the results returned on the CPU.

    Parameters
    ----------
    generator : torch.Generator
        CPU generator of every random draw.
    n_values : sequence of int
        The students' sample sizes, increasing, each >= 1 and < ``n_oracle``.
    rhos : sequence of float
        Soft ratios in (0, 1], non-empty.
    temperature : float
        T > 0.
    n_oracle : int
        :math:`N_\mathrm{or}` >= 2, the number of points drawn (the oracle proxy's sample).
    n_test : int
        M >= 1 fresh test points.
    dim : int, default 3
        d >= 2: the inputs lie on the sphere :math:`S^{d-1}`.
    n_modes : int, default 4
        Number of Gaussian bumps K >= 1 of the ground-truth function.
    mode_width : float or None, default 0.5
        Their width s > 0; ``None``: :math:`1/\sqrt K`.
    t2_scaling : bool, default True
        :math:`c_T = T^2` (Hinton et al. 2015) if True, else 1 (the plain soft term, chapters 3 to 5's choice).
    architecture : {"two_layer_bias", "three_layer", "two_layer"}, default "two_layer_bias"
        The student's (and teacher's) kernel, a key of :data:`~kdnb.papers.wide_network_kd.students.ARCHITECTURES`.
    device : torch.device or str or None, default None
        Where the kernels are computed; ``None``: the CPU (an MPS device falls back to the CPU: it has no float64).

    Returns
    -------
    TransferRiskRun
        The measured quantities of one repeat, on the CPU.

    Raises
    ------
    TypeError, ValueError
        If ``n_values`` is empty, not increasing or reaches ``n_oracle``, ``n_oracle`` < 2, ``n_test`` < 1, a ρ is
        not in (0, 1], or another setting is out of range.

    References
    ----------
    Ji & Zhu 2020, Fig. 2 and Theorem 1.
    """
    n_values = tuple(check_positive_int(n, "n_values") for n in check_sequence(n_values, "n_values"))
    if any(b <= a for a, b in zip(n_values, n_values[1:])):
        raise ValueError(f"n_values must be increasing, got {n_values}")
    n_oracle = check_positive_int(n_oracle, "n_oracle", minimum=2)
    if max(n_values) >= n_oracle:
        raise ValueError(f"every n in n_values must be < n_oracle = {n_oracle} (the oracle proxy needs more points "
                         f"than any student), got {max(n_values)}")
    n_test = check_positive_int(n_test, "n_test")
    rho_vector, _ = check_soft_ratios(check_sequence(rhos, "rhos"))
    rhos = tuple(rho_vector.tolist())

    teacher = GaussianMixtureOnSphere(dim, n_modes, generator, width=mode_width)
    x = sample_sphere(n_oracle, dim, generator)
    x_test = sample_sphere(n_test, dim, generator)

    def targets(points):
        z_t = teacher(points)
        return effective_student_logits(z_t, (z_t > 0).to(torch.float64), rhos, temperature, t2_scaling=t2_scaling)

    z, z_star = targets(x), targets(x_test)
    device = float64_device("cpu" if device is None else device)  # MPS has no float64: CPU
    x, x_test, z, z_star = (t.to(device) for t in (x, x_test, z, z_star))
    kernel = student_kernel(x, architecture=architecture)
    kernel_test = student_kernel(x_test, x, architecture=architecture)
    students = NestedKernelRegression(kernel, z)
    norms = students.norms()
    proxy = students.predict(n_oracle, kernel_test)
    angles_all = students.oracle_angles()
    diagonal = kernel_diagonal(x_test, architecture=architecture)
    b_angles = boundary_angles(proxy, diagonal, norms[-1])

    risk, risk_proxy, angles, direct_angles, bound = [], [], [], [], []
    oracle_coefficients = students.coefficients(n_oracle)
    projection_error = 0.0
    for n in n_values:
        prediction = students.predict(n, kernel_test)
        risk.append(transfer_risk(prediction, z_star))
        risk_proxy.append(transfer_risk(prediction, proxy))
        angles.append(angles_all[n - 1])
        bound.append(accumulative_angle_distribution(b_angles, angles_all[n - 1]))
        # The norm ratio replaces the inner-product formula: check the projection identity at every n.
        direct = weight_change_cosine(kernel, students.coefficients(n), oracle_coefficients)
        ratio = torch.cos(angles_all[n - 1])
        projection_error = max(projection_error, float(((direct - ratio).abs() / ratio.abs().clamp_min(1e-300)).max()))
        direct_angles.append(torch.arccos(direct.clamp(-1.0, 1.0)))
    return TransferRiskRun(n_values=n_values, rhos=rhos, n_oracle=n_oracle, risk=torch.stack(risk).cpu(),
                           risk_to_proxy=torch.stack(risk_proxy).cpu(), angles=torch.stack(angles).cpu(),
                           direct_angles=torch.stack(direct_angles).cpu(),
                           bound=torch.stack(bound).cpu(), boundary_angles=b_angles.cpu(),
                           oracle_norm=norms[-1].cpu(), projection_error=projection_error, norms=norms.cpu())


# ---------------------------------------------------------------------------------------------------------------------
# Figures 3 and 4 of Ji & Zhu: prefix norms for data inefficiency
# ---------------------------------------------------------------------------------------------------------------------


def target_difficulty_norms(
    generator: torch.Generator,
    *,
    n_points: int,
    dim: int = 3,
    n_modes: Sequence[int] = (1, 4, 16, 64),
    flip_probabilities: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.5),
    flip_modes: int = 4,
    architecture: str = "two_layer_bias",
    device: torch.device | str | None = None,
    mode_width: float | None = None,
) -> dict[str, torch.Tensor]:
    r"""Prefix norms :math:`\|\Delta\hat w_n - \Delta w_z\|` for the targets of Ji & Zhu's Fig. 3.

    For n = 1..``n_points``, all on one sample of the sphere and solved from one factorisation.

    Keys: ``"modes=K"`` for a Gaussian-mixture function with K bumps of width :math:`1/\sqrt K` (or
    ``mode_width``; :class:`kdnb.core.data.GaussianMixtureOnSphere`); ``"flip=p"`` for the ``flip_modes`` function with each sign
    flipped with probability p; ``"random"`` for independent :math:`\mathcal N(0, 1)` targets; ``"zero"`` for
    :math:`-f_0(X)`, undoing a random initial function (:func:`sample_initial_function`). Targets are regressed
    directly (the student distils a teacher whose logits are these values, with ρ = 1). The kernel and its
    factorisation run on ``device`` (default CPU), the random draws on the CPU.

    Parameters
    ----------
    generator : torch.Generator
        CPU generator of every random draw.
    n_points : int
        N >= 2, the sample size (the largest prefix).
    dim : int, default 3
        d >= 2: the inputs lie on the sphere :math:`S^{d-1}`.
    n_modes : sequence of int, default (1, 4, 16, 64)
        The numbers of bumps K >= 1 of the Gaussian-mixture targets, non-empty, without repeats.
    flip_probabilities : sequence of float, default (0.0, 0.05, 0.1, 0.2, 0.5)
        The sign-flip probabilities p in [0, 1], without repeats (empty: no flip targets).
    flip_modes : int, default 4
        The number of bumps (>= 1) of the function whose signs are flipped.
    architecture : {"two_layer_bias", "three_layer", "two_layer"}, default "two_layer_bias"
        The student's (and teacher's) kernel, a key of :data:`~kdnb.papers.wide_network_kd.students.ARCHITECTURES`.
    device : torch.device or str or None, default None
        Where the kernels are computed; ``None``: the CPU (an MPS device falls back to the CPU: it has no float64).
    mode_width : float or None, default None
        One bump width s > 0 for every Gaussian-mixture target (also the flipped one); ``None``: :math:`1/\sqrt K`
        for K bumps, the book's choice that makes more modes harder (with one fixed width the ordering by K need not
        hold; chapter 4 shows it).

    Returns
    -------
    dict of str to torch.Tensor
        The prefix norms, (n_points,) float64 on the CPU, by target name, in the order ``"modes=K"``...,
        ``"flip=p"``..., ``"random"``, ``"zero"``.

    Raises
    ------
    TypeError, ValueError
        If ``n_points`` < 2, ``n_modes`` or ``flip_probabilities`` repeats a value or holds one out of range, or
        another setting is out of range.

    References
    ----------
    Ji & Zhu 2020, Fig. 3 and Definition 1.
    """
    n_points = check_positive_int(n_points, "n_points", minimum=2)
    modes = [check_positive_int(k, "n_modes") for k in check_sequence(n_modes, "n_modes")]
    flips = [check_in_unit_interval(p, "flip_probabilities") for p in flip_probabilities]
    if len(set(modes)) != len(modes) or len(set(flips)) != len(flips):
        raise ValueError("n_modes and flip_probabilities must not repeat a value (each names one target)")
    x = sample_sphere(n_points, dim, generator)
    columns: dict[str, torch.Tensor] = {}
    for k in modes:
        columns[f"modes={k}"] = GaussianMixtureOnSphere(dim, k, generator, width=mode_width)(x)
    if flips:
        base = GaussianMixtureOnSphere(dim, check_positive_int(flip_modes, "flip_modes"), generator,
                                       width=mode_width)(x)
        for p in flips:
            columns[f"flip={p:g}"] = flip_signs(base, p, generator)
    columns["random"] = torch.randn(n_points, generator=generator, dtype=torch.float64)
    columns["zero"] = -sample_initial_function(x, generator, architecture=architecture)
    device = float64_device("cpu" if device is None else device)  # MPS has no float64: CPU
    targets = torch.stack(list(columns.values()), 1).to(device)
    norms = NestedKernelRegression(student_kernel(x.to(device), architecture=architecture), targets).norms().cpu()
    return {name: norms[:, j] for j, name in enumerate(columns)}


def _teacher_task(generator, *, dim, n_modes, mode_width, n_teacher, teacher_scale, sizes, architecture, device,
                  teacher_architecture=None):
    """The shared setup of Figs. 4 and 5: a ground-truth function g, an :class:`KernelGradientFlow` trained on
    ``n_teacher`` points of its own with targets ``teacher_scale`` x sign g, and fresh samples of the given ``sizes``
    with their values of g. Draws, in this order and on the CPU: g, the teacher's points, each sample. The teacher's
    kernel is that of ``teacher_architecture`` (``None``: the student's ``architecture``); its logits at new points
    need the cross-kernel of the same architecture."""
    architecture = architecture if teacher_architecture is None else teacher_architecture
    n_teacher = check_positive_int(n_teacher, "n_teacher", minimum=2)
    teacher_scale = check_positive(teacher_scale, "teacher_scale")
    truth = GaussianMixtureOnSphere(dim, n_modes, generator, width=mode_width)
    x_teacher = sample_sphere(n_teacher, dim, generator)
    samples = [sample_sphere(n, dim, generator) for n in sizes]
    device = float64_device("cpu" if device is None else device)  # MPS has no float64: CPU
    targets = (teacher_scale * torch.sign(truth(x_teacher))).to(device)
    x_teacher = x_teacher.to(device)
    teacher = KernelGradientFlow(student_kernel(x_teacher, architecture=architecture), targets)
    return teacher, x_teacher, [(x.to(device), truth(x).to(device)) for x in samples]


@dataclass(frozen=True)
class StoppedTeacherNorms:
    r"""Result of :func:`early_stopped_distillation_norms`: students' prefix norms and their teachers' quality.

    Parameters
    ----------
    taus : tuple of float
        The teachers' stopping times τ.
    rhos : tuple of float
        The soft ratios ρ.
    norms : torch.Tensor
        (N, τ, ρ) float64: the students' prefix norms.
    teacher_norms : torch.Tensor
        (τ,): the teachers' :math:`\|\Delta w_t(\tau)\|`.
    teacher_accuracy : torch.Tensor
        (τ,): their sign agreement with the ground truth on the students' points.
    """

    taus: tuple[float, ...]
    rhos: tuple[float, ...]
    norms: torch.Tensor
    teacher_norms: torch.Tensor
    teacher_accuracy: torch.Tensor


def early_stopped_distillation_norms(
    generator: torch.Generator,
    *,
    n_points: int,
    taus: Sequence[float],
    rhos: Sequence[float],
    temperature: float,
    n_teacher: int = 256,
    teacher_scale: float = 4.0,
    dim: int = 3,
    n_modes: int = 4,
    mode_width: float | None = 0.5,
    t2_scaling: bool = True,
    architecture: str = "two_layer_bias",
    device: torch.device | str | None = None,
    teacher_architecture: str | None = None,
) -> StoppedTeacherNorms:
    r"""Ji & Zhu's Fig. 4 (right): distil early-stopped teachers with several soft ratios.

    Returns the students' prefix norms for :func:`data_inefficiency`.

    The ground truth is the sign of a Gaussian-mixture function on :math:`S^{d-1}`. Each teacher is an
    :class:`KernelGradientFlow` trained on ``n_teacher`` points of its own with targets
    ``teacher_scale`` x (±1), stopped at time τ. The students see ``n_points`` other points, with the teacher's
    logits :math:`z_t` and the true hard labels :math:`y_g`, and regress :math:`z_\mathrm{eff}(z_t, y_g)`. Random
    draws on the CPU, kernels on ``device`` (default CPU), results on the CPU.

    Parameters
    ----------
    generator : torch.Generator
        CPU generator of every random draw.
    n_points : int
        N >= 2, the students' sample size.
    taus : sequence of float
        The teachers' stopping times τ > 0 (learning rate x steps), non-empty.
    rhos : sequence of float
        Soft ratios in (0, 1], non-empty.
    temperature : float
        T > 0.
    n_teacher : int, default 256
        :math:`n_t` >= 2, the teacher's own training points.
    teacher_scale : float, default 4.0
        The teacher's targets are ``teacher_scale`` x (±1); > 0.
    dim : int, default 3
        d >= 2: the inputs lie on the sphere :math:`S^{d-1}`.
    n_modes : int, default 4
        Number of Gaussian bumps K >= 1 of the ground-truth function.
    mode_width : float or None, default 0.5
        Their width s > 0; ``None``: :math:`1/\sqrt K`.
    t2_scaling : bool, default True
        :math:`c_T = T^2` (Hinton et al. 2015) if True, else 1 (the plain soft term, chapters 3 to 5's choice).
    architecture : {"two_layer_bias", "three_layer", "two_layer"}, default "two_layer_bias"
        The student's (and teacher's) kernel, a key of :data:`~kdnb.papers.wide_network_kd.students.ARCHITECTURES`.
    device : torch.device or str or None, default None
        Where the kernels are computed; ``None``: the CPU (an MPS device falls back to the CPU: it has no float64).
    teacher_architecture : {"two_layer_bias", "three_layer", "two_layer"} or None, default None
        The teacher's kernel; ``None``: the student's ``architecture`` (a teacher in the student's own function
        space). A deeper network (``"three_layer"``) gives a teacher whose function the student represents with
        another norm; its kernel has a different scale, so the same τ trains it further.

    Returns
    -------
    StoppedTeacherNorms
        The students' prefix norms (N, τ, ρ) and the teachers' norms and accuracies (τ,), on the CPU.

    Raises
    ------
    TypeError, ValueError
        If ``n_points`` or ``n_teacher`` < 2, a τ or ``teacher_scale`` is not > 0, a ρ is not in (0, 1], or another
        setting is out of range.

    References
    ----------
    Ji & Zhu 2020, Fig. 4 and Definition 1.
    """
    n_points = check_positive_int(n_points, "n_points", minimum=2)
    rho_vector, _ = check_soft_ratios(check_sequence(rhos, "rhos"))
    taus = [check_positive(t, "taus") for t in check_sequence(taus, "taus")]
    if teacher_architecture is not None:
        teacher_architecture = check_choice(teacher_architecture, "teacher_architecture", tuple(ARCHITECTURES))
    teacher, x_teacher, [(x, g)] = _teacher_task(
        generator, dim=dim, n_modes=n_modes, mode_width=mode_width, n_teacher=n_teacher, teacher_scale=teacher_scale,
        sizes=[n_points], architecture=architecture, device=device, teacher_architecture=teacher_architecture)
    labels = (g > 0).to(torch.float64)
    teacher_kernel = architecture if teacher_architecture is None else teacher_architecture
    z_t = teacher.logits(student_kernel(x, x_teacher, architecture=teacher_kernel), taus)  # (N, τ)
    z = effective_student_logits(z_t, labels[:, None].expand_as(z_t), rho_vector.tolist(), temperature,
                                 t2_scaling=t2_scaling)  # (N, τ, ρ)
    n_taus, n_rhos = z.shape[1], z.shape[2]
    norms = NestedKernelRegression(student_kernel(x, architecture=architecture), z.reshape(n_points, -1)).norms()
    accuracy = ((z_t > 0) == (labels[:, None] > 0)).to(torch.float64).mean(0)
    return StoppedTeacherNorms(taus=tuple(float(t) for t in taus), rhos=tuple(rho_vector.tolist()),
                               norms=norms.reshape(n_points, n_taus, n_rhos).cpu(),
                               teacher_norms=teacher.weight_change_norm(taus).cpu(), teacher_accuracy=accuracy.cpu())



@dataclass(frozen=True)
class ImperfectTeacherRun:
    r"""One repeat of :func:`imperfect_teacher_experiment`. Axes are (τ,) or (τ, ρ).

    ``teacher_accuracy`` and ``student_accuracy``: agreement of the sign with the ground truth on the test points;
    ``inner_product`` and ``cosine_derivative`` (τ, ρ): the :class:`HardLabelEffect` values with the ground-truth
    logit ``ground_truth_logits``, and ``inner_product_by_convention`` the inner product for every convention of
    :data:`~kdnb.papers.wide_network_kd.imperfect.GROUND_TRUTH_LOGITS`; ``finite_difference``
    (τ, len(check_rhos)): central differences of the cosine in :math:`1-\rho`, to compare with ``check_derivative``,
    the analytic values at the same ρ; ``soft_finite_difference`` (τ,): a one-sided second-order difference at
    ρ = 1, :math:`[-3c(1) + 4c(1-h) - c(1-2h)]/(2h)`, to compare with ``soft_derivative``, the analytic value there.

    Parameters
    ----------
    taus : tuple of float
        The teachers' stopping times τ.
    rhos : tuple of float
        The soft ratios ρ of the grid.
    teacher_accuracy : torch.Tensor
        (τ,) float64: the teachers' sign agreement with the ground truth on the test points.
    student_accuracy : torch.Tensor
        (τ, ρ): the students' sign agreement with the ground truth on the test points.
    inner_product : torch.Tensor
        (τ, ρ): :math:`\langle\delta\hat w_h, \Delta\hat w_c\rangle` (:class:`HardLabelEffect`).
    cosine_derivative : torch.Tensor
        (τ, ρ): :math:`\partial\cos\alpha / \partial(1-\rho)` (:class:`HardLabelEffect`).
    check_rhos : tuple of float
        The soft ratios of the finite-difference check.
    check_derivative : torch.Tensor
        (τ, len(check_rhos)): the analytic derivative at ``check_rhos``.
    finite_difference : torch.Tensor
        (τ, len(check_rhos)): its central differences in :math:`1-\rho`.
    soft_derivative : torch.Tensor
        (τ,): the analytic derivative at ρ = 1.
    soft_finite_difference : torch.Tensor
        (τ,): the one-sided second-order difference at ρ = 1.
    ground_truth_logits : str
        The convention of ``inner_product``, ``cosine_derivative`` and the checks (``"smooth"`` or ``"step"``).
    inner_product_by_convention : dict of str to torch.Tensor
        For ``"smooth"`` and ``"step"``: (τ, ρ) :math:`\langle\delta\hat w_h, \Delta\hat w_c\rangle` with that
        ground-truth logit.
    teacher_architecture : str
        The teacher's kernel (the student's unless another was asked for).
    """

    taus: tuple[float, ...]
    rhos: tuple[float, ...]
    teacher_accuracy: torch.Tensor
    student_accuracy: torch.Tensor
    inner_product: torch.Tensor
    cosine_derivative: torch.Tensor
    check_rhos: tuple[float, ...]
    check_derivative: torch.Tensor
    finite_difference: torch.Tensor
    soft_derivative: torch.Tensor
    soft_finite_difference: torch.Tensor
    ground_truth_logits: str = "smooth"
    inner_product_by_convention: dict | None = None
    teacher_architecture: str = "two_layer_bias"


def imperfect_teacher_experiment(
    generator: torch.Generator,
    *,
    taus: Sequence[float],
    rhos: Sequence[float],
    temperature: float,
    n_teacher: int = 256,
    n_student: int = 128,
    n_test: int = 3000,
    teacher_scale: float = 4.0,
    dim: int = 3,
    n_modes: int = 4,
    mode_width: float | None = 0.5,
    t2_scaling: bool = True,
    check_rhos: Sequence[float] = (0.3, 0.6, 0.9),
    epsilon: float = 1e-4,
    soft_step: float = 1e-6,
    architecture: str = "two_layer_bias",
    device: torch.device | str | None = None,
    ground_truth_logits: str = "smooth",
    teacher_architecture: str | None = None,
) -> ImperfectTeacherRun:
    r"""Ji & Zhu's Fig. 5 (synthetic): distil teachers of increasing quality with every soft ratio.

    The ground truth is the sign of a Gaussian-mixture function g on :math:`S^{d-1}`. Each teacher is an
    :class:`KernelGradientFlow` on ``n_teacher`` points of its own (targets ``teacher_scale`` x sign g), stopped at
    each τ: early teachers are poor, late ones good. Students are wide kernel students on ``n_student`` other points,
    with the teacher's logits and the true hard labels (:func:`kernel_students`), scored on ``n_test`` test points.
    :func:`hard_label_effect` is evaluated on the students' points with the ground-truth logit
    ``ground_truth_logits`` (:func:`~kdnb.papers.wide_network_kd.imperfect.ground_truth_logit`: g itself, or the
    step 2y_g − 1; the inner product is also returned for the other convention), and its derivative is checked against a central difference with step ``epsilon`` at ``check_rhos``, and at ρ = 1 (where
    the sign test is made) against a one-sided second-order difference with step ``soft_step``. Random draws on the
    CPU, kernels on ``device`` (default CPU), results on the CPU.

    Parameters
    ----------
    generator : torch.Generator
        CPU generator of every random draw.
    taus : sequence of float
        The teachers' stopping times τ > 0, non-empty.
    rhos : sequence of float
        The soft ratios in (0, 1] of the students, non-empty.
    temperature : float
        T > 0.
    n_teacher : int, default 256
        :math:`n_t` >= 2, the teacher's own training points.
    n_student : int, default 128
        N >= 2, the students' training points.
    n_test : int, default 3000
        M >= 1 test points.
    teacher_scale : float, default 4.0
        The teacher's targets are ``teacher_scale`` x sign g; > 0.
    dim : int, default 3
        d >= 2: the inputs lie on the sphere :math:`S^{d-1}`.
    n_modes : int, default 4
        Number of Gaussian bumps K >= 1 of the ground-truth function.
    mode_width : float or None, default 0.5
        Their width s > 0; ``None``: :math:`1/\sqrt K`.
    t2_scaling : bool, default True
        :math:`c_T = T^2` (Hinton et al. 2015) if True, else 1 (the plain soft term, chapters 3 to 5's choice).
    check_rhos : sequence of float, default (0.3, 0.6, 0.9)
        Soft ratios of the finite-difference check; ``check_rhos`` ± ``epsilon`` must stay inside (0, 1].
    epsilon : float, default 1e-4
        The central difference's step, > 0.
    soft_step : float, default 1e-6
        The step h of the one-sided difference at ρ = 1, in (0, 0.25).
    architecture : {"two_layer_bias", "three_layer", "two_layer"}, default "two_layer_bias"
        The student's (and teacher's) kernel, a key of :data:`~kdnb.papers.wide_network_kd.students.ARCHITECTURES`.
    device : torch.device or str or None, default None
        Where the kernels are computed; ``None``: the CPU (an MPS device falls back to the CPU: it has no float64).
    ground_truth_logits : {"smooth", "step"}, default "smooth"
        The ground-truth logit of the hard-label test: the smooth function g that made the labels, or the step
        2y_g − 1 (:func:`~kdnb.papers.wide_network_kd.imperfect.ground_truth_logit`). The paper's choice is unknown;
        the sign of the test depends on it.
    teacher_architecture : {"two_layer_bias", "three_layer", "two_layer"} or None, default None
        The teacher's kernel; ``None``: the student's ``architecture`` (a teacher in the student's own function
        space, whose ρ = 1 student copies it almost exactly). A deeper network (``"three_layer"``) gives a teacher
        the student can only approximate; its kernel has another scale, so the same τ trains it further.

    Returns
    -------
    ImperfectTeacherRun
        The accuracies, the hard-label effect and its finite-difference checks, on the CPU.

    Raises
    ------
    TypeError, ValueError
        If a τ, ``epsilon`` or ``soft_step`` is not > 0, ``soft_step`` >= 0.25, ``check_rhos`` ± ``epsilon`` leaves
        (0, 1], a ρ is not in (0, 1], ``n_student`` or ``n_teacher`` < 2, ``n_test`` < 1, or another setting is out
        of range.

    References
    ----------
    Ji & Zhu 2020, Fig. 5 (left and right).
    """
    taus = [check_positive(t, "taus") for t in check_sequence(taus, "taus")]
    rho_vector, _ = check_soft_ratios(check_sequence(rhos, "rhos"))
    check_vector, _ = check_soft_ratios(check_sequence(check_rhos, "check_rhos"))
    epsilon = check_positive(epsilon, "epsilon")
    soft_step = check_positive(soft_step, "soft_step")
    if soft_step >= 0.25:
        raise ValueError(f"soft_step must be < 0.25 (ρ = 1 − 2 soft_step must stay in (0, 1)), got {soft_step}")
    if float(check_vector.max()) + epsilon > 1 or float(check_vector.min()) - epsilon <= 0:
        raise ValueError(f"check_rhos ± epsilon must stay inside (0, 1], got {check_vector.tolist()} ± {epsilon}")
    n_student = check_positive_int(n_student, "n_student", minimum=2)
    n_test = check_positive_int(n_test, "n_test")
    ground_truth_logits = check_choice(ground_truth_logits, "ground_truth_logits", GROUND_TRUTH_LOGITS)
    teacher_kernel = architecture if teacher_architecture is None else check_choice(
        teacher_architecture, "teacher_architecture", tuple(ARCHITECTURES))
    teacher, x_teacher, [(x, g), (x_test, g_test)] = _teacher_task(
        generator, dim=dim, n_modes=n_modes, mode_width=mode_width, n_teacher=n_teacher, teacher_scale=teacher_scale,
        sizes=[n_student, n_test], architecture=architecture, device=device, teacher_architecture=teacher_kernel)
    labels, test_labels = (g > 0).to(torch.float64), g_test > 0
    truths = {name: ground_truth_logit(g, name) for name in GROUND_TRUTH_LOGITS}
    other = [name for name in GROUND_TRUTH_LOGITS if name != ground_truth_logits]
    z_t = teacher.logits(student_kernel(x, x_teacher, architecture=teacher_kernel), taus)  # (N, τ)
    z_t_test = teacher.logits(student_kernel(x_test, x_teacher, architecture=teacher_kernel), taus)  # (M, τ)
    kernel = student_kernel(x, architecture=architecture)
    kernel_test = student_kernel(x_test, x, architecture=architecture)

    rhos_list, checks = rho_vector.tolist(), check_vector.tolist()
    # One call per teacher for every ρ needed: the grid, the check points and their ± epsilon, and 1, 1 − h, 1 − 2h.
    n_r, n_c = len(rhos_list), len(checks)
    all_rhos = (rhos_list + checks + [r + epsilon for r in checks] + [r - epsilon for r in checks]
                + [1.0, 1.0 - soft_step, 1.0 - 2 * soft_step])
    student_accuracy, inner, derivative, check, finite, soft_derivative, soft_finite = [], [], [], [], [], [], []
    by_convention = {name: [] for name in other}
    for i in range(len(taus)):
        logits = kernel_students(kernel, kernel_test, z_t[:, i], labels, rhos_list, temperature,
                                 t2_scaling=t2_scaling)
        student_accuracy.append(((logits > 0) == test_labels[:, None]).to(torch.float64).mean(0))
        effect = hard_label_effect(kernel, z_t[:, i], labels, truths[ground_truth_logits], all_rhos, temperature,
                                   t2_scaling=t2_scaling)
        for name in other:
            by_convention[name].append(hard_label_effect(kernel, z_t[:, i], labels, truths[name], rhos_list,
                                                         temperature, t2_scaling=t2_scaling).inner_product)
        inner.append(effect.inner_product[:n_r])
        derivative.append(effect.cosine_derivative[:n_r])
        check.append(effect.cosine_derivative[n_r:n_r + n_c])
        up, down = effect.cosine[n_r + n_c:n_r + 2 * n_c], effect.cosine[n_r + 2 * n_c:n_r + 3 * n_c]
        finite.append(-(up - down) / (2 * epsilon))  # ∂/∂(1 − ρ) = −∂/∂ρ
        at_one, one_step, two_steps = effect.cosine[-3:]
        soft_derivative.append(effect.cosine_derivative[-3])
        soft_finite.append((-3 * at_one + 4 * one_step - two_steps) / (2 * soft_step))
    teacher_accuracy = ((z_t_test > 0) == test_labels[:, None]).to(torch.float64).mean(0)
    return ImperfectTeacherRun(taus=tuple(taus), rhos=tuple(rhos_list), teacher_accuracy=teacher_accuracy.cpu(),
                               student_accuracy=torch.stack(student_accuracy).cpu(),
                               inner_product=torch.stack(inner), cosine_derivative=torch.stack(derivative),
                               check_rhos=tuple(checks), check_derivative=torch.stack(check),
                               finite_difference=torch.stack(finite), soft_derivative=torch.stack(soft_derivative),
                               soft_finite_difference=torch.stack(soft_finite), ground_truth_logits=ground_truth_logits,
                               inner_product_by_convention={ground_truth_logits: torch.stack(inner),
                                                            **{k: torch.stack(v) for k, v in by_convention.items()}},
                               teacher_architecture=teacher_kernel)


# ---------------------------------------------------------------------------------------------------------------------
# Chapter drivers: the 1-D example of Fig. 4, the digits experiment of Fig. 5, and the chapters' summaries
# ---------------------------------------------------------------------------------------------------------------------


def _numpy_as_list(values, name: str):
    """A 1-D numpy array as a list of Python numbers (anything else unchanged, for :func:`check_sequence`)."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got an array of shape {values.shape}")
        return values.tolist()
    return values


def fitted_slope(n_values: Sequence[int], values: Sequence[float], fit_from: int) -> tuple[float, float]:
    r"""Slope and R² of the log-log fit of ``values`` against n, for n >= ``fit_from`` and positive values only.

    A risk of exactly 0 (no test point misclassified) has no logarithm, so it is left out of the fit, as are the
    n below ``fit_from``; the fit is :func:`kdnb.core.sweeps.power_law_fit` on what remains.

    Parameters
    ----------
    n_values : sequence of int
        The sample sizes n, each >= 1 (a list, a tuple, a 1-D tensor or a 1-D numpy array).
    values : sequence of float
        One value per n (e.g. the mean transfer risk), each a finite real number >= 0 or NaN (left out, like 0), in
        the same forms as ``n_values`` (not a mapping or a set, whose order is not that of ``n_values``).
    fit_from : int
        The smallest n used, >= 1.

    Returns
    -------
    slope : float
        The fitted exponent s of :math:`R_n \approx C n^s`; NaN if fewer than two points remain.
    r_squared : float
        R² of the fit in log space; NaN if fewer than two points remain.

    Raises
    ------
    TypeError
        If ``n_values`` or ``values`` is not a sequence (a dict or a set is refused), a value is not a real number
        (a bool is refused), or ``fit_from`` or an n is not an int.
    ValueError
        If ``n_values`` or ``values`` is empty or not 1-D, their lengths differ, a value is negative or infinite, or
        ``fit_from`` or an n is < 1.

    References
    ----------
    Ji & Zhu 2020, Fig. 2 (the transfer risk falls as a power law in n). Chapter 3, figure ``fig-risk``.
    """
    n_values = [check_positive_int(n, "n_values") for n in check_sequence(_numpy_as_list(n_values, "n_values"),
                                                                          "n_values")]
    values = check_sequence(_numpy_as_list(values, "values"), "values")
    if len(values) != len(n_values):
        raise ValueError(f"values must have one entry per n ({len(n_values)}), got {len(values)}")
    for i, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, Real):
            raise TypeError(f"values[{i}] must be a real number (>= 0 or NaN), got {type(v).__name__} {v!r}")
        if not (math.isnan(v) or 0 <= v < math.inf):
            raise ValueError(f"values[{i}] must be a finite number >= 0 or NaN, got {v!r}")
    fit_from = check_positive_int(fit_from, "fit_from")
    keep = [(n, v) for n, v in zip(n_values, values) if n >= fit_from and v > 0]
    if len(keep) < 2:
        return math.nan, math.nan
    fit = power_law_fit([n for n, _ in keep], [v for _, v in keep])
    return fit.slope, fit.r_squared


def inefficiency_table(norms_by_task: Mapping[str, Sequence[torch.Tensor]], n_values: Sequence[int]) -> pd.DataFrame:
    r"""The windowed data inefficiency :math:`\hat I(n)` of several targets, one column each.

    Parameters
    ----------
    norms_by_task : mapping of str to sequence of torch.Tensor
        For each target, its prefix norms (N,) from each repeat (e.g. the values of :func:`target_difficulty_norms`
        collected over repeats); they are stacked to (R, N) and passed to :func:`data_inefficiency`.
    n_values : sequence of int
        The sample sizes n at which :math:`\hat I(n)` is estimated (see :func:`data_inefficiency`).

    Returns
    -------
    pandas.DataFrame
        Rows n (index named ``"n"``), one column per target, in the order of ``norms_by_task``.

    Raises
    ------
    TypeError
        If ``norms_by_task`` is not a mapping.
    ValueError
        If it is empty, a target has no norms, or as :func:`data_inefficiency`.

    References
    ----------
    Ji & Zhu 2020, Definition 1 and Fig. 3. Chapter 4, figures ``fig-modes`` and ``fig-flips``.
    """
    if not isinstance(norms_by_task, Mapping):
        raise TypeError(f"norms_by_task must be a mapping of target names to norms, got {type(norms_by_task).__name__}")
    if not norms_by_task or any(len(norms) == 0 for norms in norms_by_task.values()):
        raise ValueError("norms_by_task must name at least one target, each with the norms of at least one repeat")
    n_values = check_sequence(n_values, "n_values")
    return pd.DataFrame({task: data_inefficiency(torch.stack(list(norms)), n_values).numpy()
                         for task, norms in norms_by_task.items()}, index=pd.Index(n_values, name="n"))


def _circle_truth(theta: torch.Tensor) -> torch.Tensor:
    """The ground-truth function of the 1-D example, :math:`\\sin 3\\theta + \\tfrac12 \\sin 7\\theta`."""
    return torch.sin(3 * theta) + 0.5 * torch.sin(7 * theta)


@dataclass(frozen=True)
class CircleExample:
    r"""Result of :func:`circle_example`: the 1-D example on the circle. G is the grid size, B the number of label
    boundaries on the grid.

    Parameters
    ----------
    taus : tuple of float
        The teacher's stopping times τ.
    rhos : tuple of float
        The soft ratios ρ of the students' targets.
    theta : torch.Tensor
        (G,) float64 angles in [0, 2π] of the plotting grid.
    labels : torch.Tensor
        (G,) float64 ground-truth labels :math:`y_g = \mathbb 1\{\sin 3\theta + \frac12 \sin 7\theta > 0\}` on the grid.
    teacher_logits : torch.Tensor
        (G, τ) float64 logits of the teacher stopped at each τ, on the grid.
    effective_logits : torch.Tensor
        (G, ρ) float64 effective student logits :math:`z_\mathrm{eff}(z_t, y_g)` of the latest teacher, on the grid.
    sign_change : torch.Tensor
        (B,) int64 indices i of the grid where the label changes between points i and i + 1.
    boundary : torch.Tensor
        (B,) float64 angles midway between those two points.
    jumps : torch.Tensor
        (B, ρ) float64 jump of the effective logit at each boundary: with the latest teacher's logit there, the
        effective logit for label 1 minus the one for label 0.
    steps : torch.Tensor
        (G - 1, ρ) float64 absolute steps of the effective logit between neighbouring grid points.
    elsewhere : torch.Tensor
        (G - 1,) bool, True for the steps that do not cross a label boundary.
    step_ratio : torch.Tensor
        (ρ,) float64 smallest step across a boundary divided by the largest step elsewhere.
    """

    taus: tuple[float, ...]
    rhos: tuple[float, ...]
    theta: torch.Tensor
    labels: torch.Tensor
    teacher_logits: torch.Tensor
    effective_logits: torch.Tensor
    sign_change: torch.Tensor
    boundary: torch.Tensor
    jumps: torch.Tensor
    steps: torch.Tensor
    elsewhere: torch.Tensor
    step_ratio: torch.Tensor


def circle_example(
    generator: torch.Generator,
    *,
    temperature: float,
    n_teacher: int = 256,
    taus: Sequence[float] = (10.0, 100.0, 1000.0),
    rhos: Sequence[float] = (0.05, 0.5, 1.0),
    grid: int = 2000,
    teacher_scale: float = 4.0,
    t2_scaling: bool = True,
    architecture: str = "two_layer_bias",
) -> CircleExample:
    r"""The 1-D example of Ji & Zhu's Fig. 4 (left): an early-stopped teacher on the circle and the targets it gives.

    Inputs are :math:`x = (\cos\theta, \sin\theta)` and the ground truth is
    :math:`y_g = \mathbb 1\{\sin 3\theta + \frac12 \sin 7\theta > 0\}`. The teacher is a wide network trained in
    closed form by gradient flow on the squared loss (:class:`kdnb.kernels.regression.KernelGradientFlow` with the
    student's kernel :func:`student_kernel`) on ``n_teacher`` angles drawn uniformly from ``generator``, with targets
    ``teacher_scale`` x sign, and stopped at each τ. On a grid of ``grid`` angles from 0 to 2π the function returns
    the teacher's logits, the effective logits :func:`effective_student_logits` of the latest teacher (the last τ)
    for each ρ, their jump at each label boundary, and the steps between neighbouring grid points. Everything is in
    float64 on the CPU.

    Parameters
    ----------
    generator : torch.Generator
        A CPU generator for the teacher's training angles (its only random draw).
    temperature : float
        Distillation temperature T > 0.
    n_teacher : int, default 256
        The teacher's training points, >= 2.
    taus : sequence of float, default (10.0, 100.0, 1000.0)
        Stopping times τ > 0; the last one is the teacher of the students' targets.
    rhos : sequence of float, default (0.05, 0.5, 1.0)
        Soft ratios in (0, 1].
    grid : int, default 2000
        Number of grid angles, >= 3 (both ends, 0 and 2π, included).
    teacher_scale : float, default 4.0
        Size > 0 of the teacher's ±targets.
    t2_scaling : bool, default True
        :math:`c_T = T^2` (Hinton et al. 2015) if True, else 1 (the plain soft term).
    architecture : str, default "two_layer_bias"
        The student's kernel (see :func:`student_kernel`).

    Returns
    -------
    CircleExample
        The grid, the labels, the teacher's and the effective logits, the boundaries, their jumps and the steps.

    Raises
    ------
    TypeError
        If ``generator`` is not a :class:`torch.Generator`, or an argument has the wrong type.
    ValueError
        If ``temperature``, ``n_teacher``, ``grid``, ``teacher_scale``, a τ or a ρ is out of range, or the grid is too
        coarse to have a label boundary and a step that crosses none.

    References
    ----------
    Ji & Zhu 2020, Fig. 4 (hard labels make the student's target discontinuous). Chapter 4, figure ``fig-one-d``
    and claims C-F4-5a and C-F4-5b.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    temperature = check_temperature(temperature, "temperature")
    n_teacher = check_positive_int(n_teacher, "n_teacher", minimum=2)
    taus = [check_positive(t, "taus") for t in check_sequence(taus, "taus")]
    rhos = check_soft_ratios(check_sequence(rhos, "rhos"), "rhos")[0].tolist()
    grid = check_positive_int(grid, "grid", minimum=3)
    teacher_scale = check_positive(teacher_scale, "teacher_scale")

    theta_teacher = 2 * math.pi * torch.rand(n_teacher, generator=generator, dtype=torch.float64)
    x_teacher = points_at_angles(theta_teacher, dim=2)
    teacher = KernelGradientFlow(student_kernel(x_teacher, architecture=architecture),
                                 teacher_scale * torch.sign(_circle_truth(theta_teacher)))
    theta = torch.linspace(0, 2 * math.pi, grid, dtype=torch.float64)
    teacher_logits = teacher.logits(student_kernel(points_at_angles(theta, dim=2), x_teacher,
                                                   architecture=architecture), taus)  # (grid, τ)
    labels = (_circle_truth(theta) > 0).to(torch.float64)
    z_eff = effective_student_logits(teacher_logits[:, -1], labels, rhos, temperature,
                                     t2_scaling=t2_scaling)  # (grid, ρ)

    # The jump at each ground-truth boundary: the same teacher logit, the label on either side.
    sign_change = torch.nonzero(labels.diff() != 0).ravel()
    if len(sign_change) == 0 or len(sign_change) == grid - 1:
        raise ValueError(f"grid = {grid} is too coarse: it needs a label boundary and a step that crosses none")
    boundary = (theta[sign_change] + theta[sign_change + 1]) / 2
    teacher_at_boundary = teacher.logits(student_kernel(points_at_angles(boundary, dim=2), x_teacher,
                                                        architecture=architecture), taus[-1])
    jumps = (effective_student_logits(teacher_at_boundary, torch.ones_like(boundary), rhos, temperature,
                                      t2_scaling=t2_scaling)
             - effective_student_logits(teacher_at_boundary, torch.zeros_like(boundary), rhos, temperature,
                                        t2_scaling=t2_scaling))  # (boundaries, ρ)
    # On the grid: the step across each label boundary, relative to the largest step anywhere else (how far the
    # curve moves between neighbouring grid points when nothing jumps).
    steps = z_eff.diff(dim=0).abs()  # (grid - 1, ρ)
    elsewhere = torch.ones(len(steps), dtype=torch.bool)
    elsewhere[sign_change] = False
    step_ratio = steps[sign_change].min(0).values / steps[elsewhere].max(0).values  # (ρ,)
    return CircleExample(taus=tuple(taus), rhos=tuple(rhos), theta=theta, labels=labels,
                         teacher_logits=teacher_logits, effective_logits=z_eff, sign_change=sign_change,
                         boundary=boundary, jumps=jumps, steps=steps, elsewhere=elsewhere, step_ratio=step_ratio)


@dataclass(frozen=True)
class DigitsExample:
    r"""The teacher snapshot of :func:`digits_experiment` whose mistakes the chapter shows.

    Parameters
    ----------
    epoch : int
        The teacher's epoch: the first snapshot of the first split that is right on at least the threshold
        fraction of the test set.
    z_student : torch.Tensor
        (n,) float64 CPU logits of that teacher on the students' training images.
    y_student : torch.Tensor
        (n,) float64 0/1 labels of those images.
    student_idx : torch.Tensor
        (n,) int64 indices of those images in the split's training set.
    split_seed : int
        The seed of the split (:func:`kdnb.core.data.load_binary_digits`), to reload the raw images.
    """

    epoch: int
    z_student: torch.Tensor
    y_student: torch.Tensor
    student_idx: torch.Tensor
    split_seed: int


@dataclass(frozen=True)
class DigitsRun:
    r"""Result of :func:`digits_experiment`.

    Parameters
    ----------
    kernel_results : pandas.DataFrame
        Indexed by (``epoch``, ``rho``): the mean over splits of ``teacher`` (the teacher's test accuracy) and
        ``student`` (the wide kernel student's test accuracy), for every teacher epoch and ρ.
    mlp_results : pandas.DataFrame
        The same for the MLP students, for the snapshots and ρ that were trained.
    kernel_rows : pandas.DataFrame
        One row per (split, epoch, ρ) of the kernel students: ``repeat``, ``epoch``, ``teacher``, ``rho``,
        ``student``.
    mlp_rows : pandas.DataFrame
        The same for the MLP students.
    example : DigitsExample or None
        The teacher snapshot for the chapter's figure of corrected images; ``None`` if no snapshot of the first
        split reached the threshold accuracy.
    """

    kernel_results: pd.DataFrame
    mlp_results: pd.DataFrame
    kernel_rows: pd.DataFrame
    mlp_rows: pd.DataFrame
    example: DigitsExample | None


def digits_experiment(
    generator_for: Callable[..., torch.Generator],
    *,
    seed: int,
    repeats: int,
    rhos: Sequence[float],
    temperature: float,
    teacher_epochs: Sequence[int],
    mlp_snapshots: Sequence[int],
    mlp_rhos: Sequence[float],
    mlp_epochs: int,
    n_teacher: int = 900,
    teacher_hidden: Sequence[int] = (64,),
    teacher_lr: float = 0.1,
    student_hidden: Sequence[int] = (128,),
    student_lr: float = 1e-2,
    t2_scaling: bool = True,
    example_accuracy: float = 0.75,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> DigitsRun:
    r"""Ji & Zhu's Fig. 5 (middle) on scikit-learn's digits: an MLP teacher stopped early, kernel and MLP students.

    For each split r (``repeats`` of them) the binary digits task "is the digit below 5?" is loaded with split seed
    ``1000 * seed + r`` (:func:`kdnb.core.data.load_binary_digits`, standardised pixels for the networks, unit-length
    images in float64 for the kernels). With ``generator = generator_for(2, r)``, the training images are shuffled
    and split into ``n_teacher`` for the teacher and the rest for the students; the teacher
    (:class:`kdnb.core.models.MLP`, hidden widths ``teacher_hidden``, drawn from ``generator``) is trained by
    full-batch gradient descent and its logits recorded at each of ``teacher_epochs``
    (:func:`kdnb.core.training.teacher_snapshots`). For every snapshot, wide kernel students
    (:func:`kernel_students`) learn the teacher's logits and the true labels with every ρ of ``rhos``; for the
    snapshots whose index is in ``mlp_snapshots``, MLP students (hidden widths ``student_hidden``, drawn from
    ``generator_for(3, r, k)`` for snapshot k, so every ρ starts from the same weights) are trained with
    :func:`kdnb.core.training.distill` for each ρ of ``mlp_rhos``, in that order, with ``generator`` for the batches.
    Accuracies are against the true labels on the test images.

    Parameters
    ----------
    generator_for : callable
        ``generator_for(*keys)`` returns a fresh CPU generator for integer keys, e.g. a chapter's
        :meth:`kdnb.core.runtime.Chapter.generator_for`; keys ``(2, r)`` and ``(3, r, k)``.
    seed : int
        The chapter seed, >= 0: split r has seed ``1000 * seed + r``.
    repeats : int
        Number of splits, >= 1.
    rhos : sequence of float
        Soft ratios in (0, 1] of the kernel students.
    temperature : float
        Distillation temperature T > 0.
    teacher_epochs : sequence of int
        Increasing epochs (full-batch gradient steps), >= 1, at which the teacher is read.
    mlp_snapshots : sequence of int
        Indices into ``teacher_epochs`` of the snapshots that get MLP students, each in [0, len(teacher_epochs));
        may be empty (no MLP students).
    mlp_rhos : sequence of float
        Soft ratios in (0, 1] of the MLP students (at least one).
    mlp_epochs : int
        Training epochs of each MLP student, >= 1.
    n_teacher : int, default 900
        Training images of the teacher, >= 1; the other training images are the students'.
    teacher_hidden : sequence of int, default (64,)
        Hidden widths of the teacher, each >= 1.
    teacher_lr : float, default 0.1
        The teacher's learning rate, > 0.
    student_hidden : sequence of int, default (128,)
        Hidden widths of the MLP students, each >= 1.
    student_lr : float, default 0.01
        The MLP students' learning rate (Adam), > 0.
    t2_scaling : bool, default True
        :math:`c_T = T^2` (Hinton et al. 2015) if True, else 1 (the plain soft term).
    example_accuracy : float, default 0.75
        The test accuracy, in [0, 1], from which a snapshot of the first split becomes :attr:`DigitsRun.example`.
    device : torch.device or str, default "cpu"
        Device of the networks (the kernels run on the CPU in float64).
    progress : bool, default False
        Show a bar over the splits.

    Returns
    -------
    DigitsRun
        The kernel and MLP students' accuracies, per split and averaged, and the example snapshot.

    Raises
    ------
    TypeError
        If ``generator_for`` is not callable, ``t2_scaling`` or ``progress`` is not a bool, a sequence argument
        (``rhos``, ``teacher_epochs``, ``mlp_snapshots``, ``mlp_rhos``, ``teacher_hidden``, ``student_hidden``) is not
        a sequence, or an argument has the wrong type.
    ValueError
        If a count, epoch, width, learning rate, ρ, ``temperature`` or ``example_accuracy`` is out of range,
        ``teacher_epochs`` is not increasing, ``mlp_snapshots`` has an index out of range, or ``n_teacher`` leaves
        no image for the students.

    References
    ----------
    Ji & Zhu 2020, Fig. 5 (pure soft distillation is not optimal with an imperfect teacher). Chapter 5, figures
    ``fig-digits`` and ``fig-examples``.
    """
    if not callable(generator_for):
        raise TypeError("generator_for must be callable: generator_for(*keys) -> torch.Generator")
    seed = check_positive_int(seed, "seed", minimum=0)
    repeats = check_positive_int(repeats, "repeats")
    rhos = check_soft_ratios(check_sequence(rhos, "rhos"), "rhos")[0].tolist()
    mlp_rhos = check_soft_ratios(check_sequence(mlp_rhos, "mlp_rhos"), "mlp_rhos")[0].tolist()
    temperature = check_temperature(temperature, "temperature")
    teacher_epochs = [check_positive_int(e, "teacher_epochs") for e in check_sequence(teacher_epochs, "teacher_epochs")]
    if any(b <= a for a, b in pairwise(teacher_epochs)):
        raise ValueError(f"teacher_epochs must be increasing, got {teacher_epochs}")
    mlp_snapshots = [check_positive_int(k, "mlp_snapshots", minimum=0)
                     for k in check_sequence(mlp_snapshots, "mlp_snapshots", allow_empty=True)]
    if any(k >= len(teacher_epochs) for k in mlp_snapshots):
        raise ValueError(f"mlp_snapshots must index teacher_epochs, in [0, {len(teacher_epochs)}), got {mlp_snapshots}")
    mlp_epochs = check_positive_int(mlp_epochs, "mlp_epochs")
    n_teacher = check_positive_int(n_teacher, "n_teacher")
    teacher_hidden = [check_positive_int(h, "teacher_hidden")
                      for h in check_sequence(teacher_hidden, "teacher_hidden", allow_empty=True)]
    student_hidden = [check_positive_int(h, "student_hidden")
                      for h in check_sequence(student_hidden, "student_hidden", allow_empty=True)]
    teacher_lr, student_lr = check_positive(teacher_lr, "teacher_lr"), check_positive(student_lr, "student_lr")
    t2_scaling = check_bool(t2_scaling, "t2_scaling")
    progress = check_bool(progress, "progress")
    example_accuracy = check_in_unit_interval(example_accuracy, "example_accuracy")

    digit_rows, mlp_rows, examples = [], [], None
    for repeat in progress_bar(range(repeats), desc="digits repeats", enabled=progress, leave=True):
        split_seed = 1000 * seed + repeat
        standard = load_binary_digits(seed=split_seed, device=device)  # for the networks
        sphere = load_binary_digits(seed=split_seed, sphere=True, dtype=torch.float64)  # for the kernels
        if n_teacher >= len(standard.y_train):
            raise ValueError(f"n_teacher must leave images for the students: < {len(standard.y_train)}, got {n_teacher}")
        generator = generator_for(2, repeat)
        order = torch.randperm(len(standard.y_train), generator=generator)
        teacher_idx, student_idx = order[:n_teacher], order[n_teacher:]
        teacher = MLP(64, teacher_hidden, 1, generator=generator).to(device)
        snapshots = teacher_snapshots(teacher, standard.x_train[teacher_idx], standard.y_train[teacher_idx],
                                      epochs=teacher_epochs, lr=teacher_lr, generator=generator,
                                      evaluate_on=[standard.x_train[student_idx], standard.x_test])
        x_student, y_student = sphere.x_train[student_idx], sphere.y_train[student_idx]
        kernel = student_kernel(x_student)
        kernel_test = student_kernel(sphere.x_test, x_student)
        test_labels = sphere.y_test > 0
        for k, (epoch, (z_student, z_test)) in enumerate(zip(teacher_epochs, snapshots)):
            z_student, z_test = z_student.double().cpu(), z_test.double().cpu()
            teacher_accuracy = float(((z_test > 0) == test_labels).double().mean())
            logits = kernel_students(kernel, kernel_test, z_student, y_student, rhos, temperature,
                                     t2_scaling=t2_scaling)
            accuracy = ((logits > 0) == test_labels[:, None]).double().mean(0)
            digit_rows += [dict(repeat=repeat, epoch=epoch, teacher=teacher_accuracy, rho=rho, student=float(acc))
                           for rho, acc in zip(rhos, accuracy)]
            if repeat == 0 and examples is None and teacher_accuracy >= example_accuracy:
                examples = DigitsExample(epoch=epoch, z_student=z_student, y_student=y_student,
                                         student_idx=student_idx, split_seed=split_seed)
            if k in mlp_snapshots:
                for rho in mlp_rhos:
                    # the same initialization for every ρ of this teacher: the students differ only in their loss
                    initial = generator_for(3, repeat, k)
                    student = MLP(64, student_hidden, 1, generator=initial).to(device)
                    distill(student, standard.x_train[student_idx], z_student.float().to(device),
                            standard.y_train[student_idx], rho=rho, temperature=temperature, t2_scaling=t2_scaling,
                            epochs=mlp_epochs, lr=student_lr, generator=generator)
                    predicted = predict_logits(student, standard.x_test).cpu() > 0
                    mlp_rows.append(dict(repeat=repeat, epoch=epoch, teacher=teacher_accuracy, rho=rho,
                                         student=float((predicted == test_labels).double().mean())))
    columns = ["repeat", "epoch", "teacher", "rho", "student"]
    kernel_rows, mlp_frame = pd.DataFrame(digit_rows, columns=columns), pd.DataFrame(mlp_rows, columns=columns)
    return DigitsRun(kernel_results=kernel_rows.groupby(["epoch", "rho"]).mean().drop(columns="repeat"),
                     mlp_results=mlp_frame.groupby(["epoch", "rho"]).mean().drop(columns="repeat"),
                     kernel_rows=kernel_rows, mlp_rows=mlp_frame, example=examples)


def best_rho_table(results: pd.DataFrame) -> pd.DataFrame:
    r"""Per teacher epoch: the teacher's accuracy, the ρ = 1 student, the best ρ < 1 and its student.

    Parameters
    ----------
    results : pandas.DataFrame
        Indexed by (``epoch``, ``rho``), one row per pair, with columns ``teacher`` and ``student`` (accuracies), as
        :attr:`DigitsRun.kernel_results`; every ρ in (0, 1], every epoch with a row at ρ = 1, at least one finite
        student accuracy at ρ < 1, and one teacher accuracy (the same on all its rows).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``"teacher epoch"``: ``teacher``, ``"student ρ = 1"``, ``"best ρ < 1"`` (the ρ < 1 with the
        highest student accuracy, the first on ties) and ``"its student"`` (that accuracy).

    Raises
    ------
    TypeError
        If ``results`` is not a DataFrame.
    ValueError
        If its index levels are not ``epoch`` and ``rho``, an (epoch, ρ) pair appears twice, a ρ is outside (0, 1],
        it lacks the ``teacher`` or ``student`` column, or an epoch has no ρ = 1 row, no ρ < 1 row with a finite
        student accuracy, or different teacher accuracies on its rows.

    References
    ----------
    Ji & Zhu 2020, Fig. 5 (the best soft ratio is below 1 for an imperfect teacher). Chapter 5, claims
    digits-kernel and digits-mlp.
    """
    if not isinstance(results, pd.DataFrame):
        raise TypeError(f"results must be a pandas DataFrame, got {type(results).__name__}")
    if list(results.index.names) != ["epoch", "rho"]:
        raise ValueError(f"results must be indexed by (epoch, rho), got index levels {list(results.index.names)}")
    missing = {"teacher", "student"} - set(results.columns)
    if missing:
        raise ValueError(f"results lacks the column(s) {sorted(missing)}")
    if not results.index.is_unique:
        repeated = sorted(set(results.index[results.index.duplicated()].tolist()))
        raise ValueError(f"results must have one row per (epoch, rho), got repeated rows at {repeated}")
    for rho in results.index.get_level_values("rho").unique():
        check_in_unit_interval(rho, "results' rho", open_low=True)
    rows = {}
    for epoch, group in results.groupby(level="epoch"):
        group = group.droplevel("epoch")
        below = group[group.index < 1]
        if 1.0 not in group.index or below.empty:
            raise ValueError(f"epoch {epoch} needs a row with rho = 1 and one with rho < 1")
        if group["teacher"].nunique(dropna=False) != 1:
            raise ValueError(f"epoch {epoch} has different teacher accuracies on its rows "
                             f"({sorted(group['teacher'].unique().tolist())}): one teacher per epoch")
        if not np.isfinite(below["student"].to_numpy(dtype=float)).any():
            raise ValueError(f"epoch {epoch} has no finite student accuracy at rho < 1 (all NaN or infinite), so "
                             "there is no best rho < 1")
        rows[epoch] = {"teacher": group["teacher"].iloc[0], "student ρ = 1": group.loc[1.0, "student"],
                       "best ρ < 1": below["student"].idxmax(), "its student": below["student"].max()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("teacher epoch")


def poor_teacher_gain(table: pd.DataFrame, *, below: float = 0.85) -> float:
    r"""The smallest gain of the best :math:`\rho < 1` student over the :math:`\rho = 1` student, among the teachers
    whose accuracy is below ``below``: the quantity behind "hard labels correct a poor teacher" (Ji & Zhu 2020,
    Fig. 5).

    Parameters
    ----------
    table : pandas.DataFrame
        The output of :func:`best_rho_table`: one row per teacher, with columns ``"teacher"``,
        ``"student ρ = 1"`` and ``"its student"`` (accuracies in [0, 1]).
    below : float, default 0.85
        Teachers with accuracy strictly below this count as poor; in (0, 1].

    Returns
    -------
    float
        ``min(its student - student ρ = 1)`` over the poor teachers, NaN if there is none.

    Raises
    ------
    TypeError
        If ``table`` is not a DataFrame.
    ValueError
        If a column is missing or ``below`` is outside (0, 1].
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame (from best_rho_table), got {type(table).__name__}")
    missing = [c for c in ("teacher", "student ρ = 1", "its student") if c not in table.columns]
    if missing:
        raise ValueError(f"table must have the columns of best_rho_table; missing {missing}")
    below = check_in_unit_interval(below, "below", open_low=True)
    poor_rows = table[table["teacher"] < below]
    return float((poor_rows["its student"] - poor_rows["student ρ = 1"]).min()) if len(poor_rows) else math.nan
