r"""The experiments of Ji & Zhu (2020), Figs. 2 to 5, each in one call that returns the measured quantities."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ...core.data import GaussianMixtureOnSphere, flip_signs, sample_sphere
from ...core.runtime import float64_device
from ...core.validation import (
    check_in_unit_interval,
    check_positive,
    check_positive_int,
    check_sequence,
    check_soft_ratios,
)
from ...kernels.regression import KernelGradientFlow, NestedKernelRegression, weight_change_cosine
from .effective_logits import effective_student_logits
from .geometry import accumulative_angle_distribution, boundary_angles, transfer_risk
from .students import hard_label_effect, kernel_diagonal, kernel_students, sample_initial_function, student_kernel

__all__ = ["ImperfectTeacherRun", "StoppedTeacherNorms", "TransferRiskRun", "early_stopped_distillation_norms",
           "imperfect_teacher_experiment", "target_difficulty_norms", "transfer_risk_experiment"]


@dataclass(frozen=True)
class TransferRiskRun:
    r"""One repeat of the transfer-risk experiment (:func:`transfer_risk_experiment`); axes are (n, ρ).

    ``risk``: against the true oracle logits :math:`z_*` at test points; ``risk_to_proxy``: against the oracle proxy
    (the student trained on all :math:`N_\mathrm{or}` points), the quantity Theorem 1 bounds; ``angles``:
    :math:`\bar\alpha_n` from the norm ratio, ``direct_angles`` the same from the inner product
    :math:`a_n^\top K a_N` (:func:`weight_change_cosine`); ``bound``: :math:`p(\bar\alpha_n)`;
    ``boundary_angles`` (M, ρ) give :math:`p(\beta)`; ``projection_error``: the largest relative gap between the
    two cosines over all n; ``norms`` (N_or, ρ): :math:`\|\Delta\hat w_n\|` for every prefix."""

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
) -> dict[str, torch.Tensor]:
    r"""Prefix norms :math:`\|\Delta\hat w_n - \Delta w_z\|`, n = 1..``n_points``, for the targets of Ji & Zhu's
    Fig. 3, all on one sample of the sphere and solved from one factorisation.

    Keys: ``"modes=K"`` for a Gaussian-mixture function with K bumps of width :math:`1/\sqrt K`
    (:class:`kdnb.core.data.GaussianMixtureOnSphere`); ``"flip=p"`` for the ``flip_modes`` function with each sign flipped
    with probability p; ``"random"`` for independent :math:`\mathcal N(0, 1)` targets; ``"zero"`` for
    :math:`-f_0(X)`, undoing a random initial function (:func:`sample_initial_function`). Targets are regressed
    directly (the student distils a teacher whose logits are these values, with ρ = 1). Each value is (n_points,), on
    the CPU; the kernel and its factorisation run on ``device`` (default CPU), the random draws on the CPU.
    """
    n_points = check_positive_int(n_points, "n_points", minimum=2)
    modes = [check_positive_int(k, "n_modes") for k in check_sequence(n_modes, "n_modes")]
    flips = [check_in_unit_interval(p, "flip_probabilities") for p in flip_probabilities]
    if len(set(modes)) != len(modes) or len(set(flips)) != len(flips):
        raise ValueError("n_modes and flip_probabilities must not repeat a value (each names one target)")
    x = sample_sphere(n_points, dim, generator)
    columns: dict[str, torch.Tensor] = {}
    for k in modes:
        columns[f"modes={k}"] = GaussianMixtureOnSphere(dim, k, generator)(x)
    if flips:
        base = GaussianMixtureOnSphere(dim, check_positive_int(flip_modes, "flip_modes"), generator)(x)
        for p in flips:
            columns[f"flip={p:g}"] = flip_signs(base, p, generator)
    columns["random"] = torch.randn(n_points, generator=generator, dtype=torch.float64)
    columns["zero"] = -sample_initial_function(x, generator, architecture=architecture)
    device = float64_device("cpu" if device is None else device)  # MPS has no float64: CPU
    targets = torch.stack(list(columns.values()), 1).to(device)
    norms = NestedKernelRegression(student_kernel(x.to(device), architecture=architecture), targets).norms().cpu()
    return {name: norms[:, j] for j, name in enumerate(columns)}


def _teacher_task(generator, *, dim, n_modes, mode_width, n_teacher, teacher_scale, sizes, architecture, device):
    """The shared setup of Figs. 4 and 5: a ground-truth function g, an :class:`KernelGradientFlow` trained on
    ``n_teacher`` points of its own with targets ``teacher_scale`` x sign g, and fresh samples of the given ``sizes``
    with their values of g. Draws, in this order and on the CPU: g, the teacher's points, each sample."""
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
    r"""Result of :func:`early_stopped_distillation_norms`: ``norms`` (N, τ, ρ) are the students' prefix norms,
    ``teacher_norms`` (τ,) the teachers' :math:`\|\Delta w_t(\tau)\|`, ``teacher_accuracy`` (τ,) their sign
    agreement with the ground truth on the students' points."""

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
) -> StoppedTeacherNorms:
    r"""Ji & Zhu's Fig. 4 (right): distil early-stopped teachers with several soft ratios and return the students'
    prefix norms for :func:`data_inefficiency`.

    The ground truth is the sign of a Gaussian-mixture function on :math:`S^{d-1}`. Each teacher is an
    :class:`KernelGradientFlow` trained on ``n_teacher`` points of its own with targets
    ``teacher_scale`` x (±1), stopped at time τ. The students see ``n_points`` other points, with the teacher's
    logits :math:`z_t` and the true hard labels :math:`y_g`, and regress :math:`z_\mathrm{eff}(z_t, y_g)`.
    """
    n_points = check_positive_int(n_points, "n_points", minimum=2)
    rho_vector, _ = check_soft_ratios(check_sequence(rhos, "rhos"))
    taus = [check_positive(t, "taus") for t in check_sequence(taus, "taus")]
    teacher, x_teacher, [(x, g)] = _teacher_task(
        generator, dim=dim, n_modes=n_modes, mode_width=mode_width, n_teacher=n_teacher, teacher_scale=teacher_scale,
        sizes=[n_points], architecture=architecture, device=device)
    labels = (g > 0).to(torch.float64)
    z_t = teacher.logits(student_kernel(x, x_teacher, architecture=architecture), taus)  # (N, τ)
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
    ``inner_product`` and ``cosine_derivative`` (τ, ρ): the :class:`HardLabelEffect` values; ``finite_difference``
    (τ, len(check_rhos)): central differences of the cosine in :math:`1-\rho`, to compare with ``check_derivative``,
    the analytic values at the same ρ; ``soft_finite_difference`` (τ,): a one-sided second-order difference at
    ρ = 1, :math:`[-3c(1) + 4c(1-h) - c(1-2h)]/(2h)`, to compare with ``soft_derivative``, the analytic value there."""

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
) -> ImperfectTeacherRun:
    r"""Ji & Zhu's Fig. 5 (synthetic): distil teachers of increasing quality with every soft ratio.

    The ground truth is the sign of a Gaussian-mixture function g on :math:`S^{d-1}`. Each teacher is an
    :class:`KernelGradientFlow` on ``n_teacher`` points of its own (targets ``teacher_scale`` x sign g), stopped at
    each τ: early teachers are poor, late ones good. Students are wide kernel students on ``n_student`` other points,
    with the teacher's logits and the true hard labels (:func:`kernel_students`), scored on ``n_test`` test points.
    :func:`hard_label_effect` is evaluated on the students' points with g as the ground-truth logit, and its
    derivative is checked against a central difference with step ``epsilon`` at ``check_rhos``, and at ρ = 1 (where
    the sign test is made) against a one-sided second-order difference with step ``soft_step``. Random draws on the
    CPU, kernels on ``device`` (default CPU), results on the CPU.
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
    teacher, x_teacher, [(x, g), (x_test, g_test)] = _teacher_task(
        generator, dim=dim, n_modes=n_modes, mode_width=mode_width, n_teacher=n_teacher, teacher_scale=teacher_scale,
        sizes=[n_student, n_test], architecture=architecture, device=device)
    labels, test_labels = (g > 0).to(torch.float64), g_test > 0
    z_t = teacher.logits(student_kernel(x, x_teacher, architecture=architecture), taus)  # (N, τ)
    z_t_test = teacher.logits(student_kernel(x_test, x_teacher, architecture=architecture), taus)  # (M, τ)
    kernel = student_kernel(x, architecture=architecture)
    kernel_test = student_kernel(x_test, x, architecture=architecture)

    rhos_list, checks = rho_vector.tolist(), check_vector.tolist()
    # One call per teacher for every ρ needed: the grid, the check points and their ± epsilon, and 1, 1 − h, 1 − 2h.
    n_r, n_c = len(rhos_list), len(checks)
    all_rhos = (rhos_list + checks + [r + epsilon for r in checks] + [r - epsilon for r in checks]
                + [1.0, 1.0 - soft_step, 1.0 - 2 * soft_step])
    student_accuracy, inner, derivative, check, finite, soft_derivative, soft_finite = [], [], [], [], [], [], []
    for i in range(len(taus)):
        logits = kernel_students(kernel, kernel_test, z_t[:, i], labels, rhos_list, temperature,
                                 t2_scaling=t2_scaling)
        student_accuracy.append(((logits > 0) == test_labels[:, None]).to(torch.float64).mean(0))
        effect = hard_label_effect(kernel, z_t[:, i], labels, g, all_rhos, temperature, t2_scaling=t2_scaling)
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
                               soft_finite_difference=torch.stack(soft_finite))
