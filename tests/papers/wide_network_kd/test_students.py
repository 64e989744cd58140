"""kdnb.papers.wide_network_kd.students: the student kernel against its closed form, the initial function's covariance,
kernel students against kernel regression, and the hard-label effect against weight space and finite differences."""

import math

import pytest
import torch

from kdnb.core.data import sample_sphere
from kdnb.kernels.regression import (
    KernelGradientFlow as EarlyStoppedTeacher,
)
from kdnb.kernels.regression import (
    kernel_regression,
)
from kdnb.papers.wide_network_kd import (
    ARCHITECTURES,
    accumulative_angle_distribution,
    boundary_angles,
    data_inefficiency,
    early_stopped_distillation_norms,
    effective_logits_hard_derivative,
    effective_student_logits,
    hard_label_effect,
    kernel_diagonal,
    kernel_students,
    sample_initial_function,
    student_kernel,
    student_nngp,
    target_difficulty_norms,
    transfer_risk_experiment,
)
from tests.helpers import problem, teacher_problem

F64 = torch.float64


def test_student_kernel_is_the_augmented_input_formula():
    x = sample_sphere(20, 3, torch.Generator().manual_seed(0))
    aug = torch.cat([x, torch.ones(20, 1, dtype=F64)], 1) / math.sqrt(2)
    norms = aug.norm(dim=1)
    cos = ((aug @ aug.T) / (norms[:, None] * norms[None, :])).clamp(-1, 1)
    theta = torch.arccos(cos)
    theta.diagonal().zero_()  # arccos(1 − ε) ≈ √(2ε) would be the test's rounding error, not kdnb's
    expected = norms[:, None] * norms[None, :] * (torch.sin(theta) + 2 * (math.pi - theta) * cos) / (2 * math.pi)
    torch.testing.assert_close(student_kernel(x), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(kernel_diagonal(x, block=7), torch.ones(20, dtype=F64), rtol=1e-12, atol=1e-12)


def test_every_architecture_gives_a_positive_definite_kernel():
    x = sample_sphere(30, 3, torch.Generator().manual_seed(1))
    for name in ARCHITECTURES:
        assert float(torch.linalg.eigvalsh(student_kernel(x, architecture=name)).min()) > 0
    with pytest.raises(ValueError, match="architecture"):
        student_kernel(x, architecture="resnet")


def test_initial_function_has_the_nngp_covariance():
    x = sample_sphere(4, 3, torch.Generator().manual_seed(2))
    samples = sample_initial_function(x, torch.Generator().manual_seed(3), n_samples=20000)
    empirical = samples @ samples.T / samples.shape[1]
    torch.testing.assert_close(empirical, student_nngp(x), rtol=0, atol=0.03)
    again = sample_initial_function(x, torch.Generator().manual_seed(3), n_samples=20000)
    assert torch.equal(samples, again)
    assert sample_initial_function(x, torch.Generator().manual_seed(3)).shape == (4,)


def test_architecture_diagonals():
    """Θ(x, x) on the unit sphere: 1 for the x̃ kernel; 2(L + 1) for bias-free He networks with L hidden layers (each
    layer keeps the pre-activation variance at 2 and adds it to the kernel: Θ_1 = 2, Θ_{l+1} = 2 + Θ_l)."""
    x = sample_sphere(5, 3, torch.Generator().manual_seed(0))
    for name, value in [("two_layer_bias", 1.0), ("two_layer", 4.0), ("three_layer", 6.0)]:
        torch.testing.assert_close(kernel_diagonal(x, architecture=name), torch.full((5,), value, dtype=F64),
                                   rtol=1e-12, atol=1e-12)


def test_bad_inputs_of_the_helpers():
    z = torch.tensor([0.1, 0.2, 0.3], dtype=F64)
    with pytest.raises(ValueError, match="oracle_norm must be a number"):
        boundary_angles(z, torch.ones(3, dtype=F64), torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    with pytest.raises(ValueError, match="kernel_diagonal"):
        boundary_angles(z, torch.ones(2, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="oracle_norm must be positive"):
        boundary_angles(z, torch.ones(3, dtype=F64), 0.0)
    with pytest.raises(ValueError, match="beta"):
        accumulative_angle_distribution(z, float("nan"))
    x, kernel, y = teacher_problem(n=10)
    teacher = EarlyStoppedTeacher(kernel, y)
    assert teacher.coefficients(torch.tensor(3.0)).shape == (10,)
    with pytest.raises(ValueError, match="tau"):
        teacher.coefficients(torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"kernel_test_train must be an \(M, 10\)"):
        teacher.logits(kernel[:, :5], 1.0)
    with pytest.raises(ValueError, match="needs prefix norms up to"):
        data_inefficiency(torch.ones(2, 10, dtype=F64), 10, window=None)
    g = torch.Generator()
    with pytest.raises(TypeError, match="rhos must be a sequence"):
        transfer_risk_experiment(g, n_values=[8], rhos=0.5, temperature=5.0, n_oracle=32, n_test=10)
    with pytest.raises(ValueError, match="no finite effective"):
        transfer_risk_experiment(g, n_values=[8], rhos=[0.0, 1.0], temperature=5.0, n_oracle=32, n_test=10)
    with pytest.raises(ValueError, match="n_values must not be empty"):
        transfer_risk_experiment(g, n_values=[], rhos=[1.0], temperature=5.0, n_oracle=32, n_test=10)
    with pytest.raises(ValueError, match="must not repeat"):
        target_difficulty_norms(g, n_points=16, n_modes=(4, 4))
    with pytest.raises(TypeError, match="taus must be a sequence"):
        early_stopped_distillation_norms(g, n_points=16, taus=3.0, rhos=[1.0], temperature=5.0)


def test_kernel_students_are_kernel_regression_on_effective_logits():
    x, kernel, _ = problem(n=40)
    x_test = sample_sphere(12, 3, torch.Generator().manual_seed(3))
    kernel_test = student_kernel(x_test, x)
    z_t = 3 * torch.randn(40, generator=torch.Generator().manual_seed(4), dtype=F64)
    y = (torch.rand(40, generator=torch.Generator().manual_seed(5), dtype=F64) < 0.5).to(F64)
    out = kernel_students(kernel, kernel_test, z_t, y, [0.2, 1.0], 5.0)
    for j, rho in enumerate([0.2, 1.0]):
        direct = kernel_regression(kernel, effective_student_logits(z_t, y, rho, 5.0)).predict(kernel_test)
        torch.testing.assert_close(out[:, j], direct, rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match=r"kernel_test_train must be an \(M, 40\)"):
        kernel_students(kernel, kernel_test[:, :5], z_t, y, 0.5, 5.0)
    with pytest.raises(ValueError, match=r"teacher_logits must be a tensor of shape \(N,\)"):
        kernel_students(kernel, kernel_test, z_t[:, None], y[:, None], 0.5, 5.0)


@pytest.mark.parametrize("t2", [False, True])
def test_hard_label_effect_matches_weight_space(t2):
    """⟨δŵ_h, Δŵ_c⟩ from kernels equals the same inner product of explicit weight vectors of a finite network."""
    from kdnb.core.models import NTKMLP
    from kdnb.kernels.empirical import ntk_features

    g = torch.Generator().manual_seed(0)
    x = sample_sphere(24, 3, g)
    model = NTKMLP(3, [64], generator=g, dtype=F64)
    phi = ntk_features(model, x).T  # (P, N): P = 64·3 + 64 + 64 + 1 > N, so K is invertible
    kernel = phi.T @ phi
    truth = torch.randn(24, generator=g, dtype=F64)
    labels = (truth > 0).to(F64)
    z_t = truth + 1.5 * torch.randn(24, generator=g, dtype=F64)  # an imperfect teacher
    rhos = [0.3, 0.8, 1.0]
    effect = hard_label_effect(kernel, z_t, labels, truth, rhos, 5.0, t2_scaling=t2)
    solve = torch.linalg.solve
    for j, rho in enumerate(rhos):
        z = effective_student_logits(z_t, labels, rho, 5.0, t2_scaling=t2)
        dz = effective_logits_hard_derivative(z_t, labels, rho, 5.0, t2_scaling=t2)
        student, hard, oracle = (phi @ solve(kernel, v) for v in (z, dz, truth))
        orthogonal = oracle - (student @ oracle) / (student @ student) * student
        assert float(effect.inner_product[j]) == pytest.approx(float(hard @ orthogonal), rel=1e-6, abs=1e-9)
        cosine = student @ oracle / (student.norm() * oracle.norm())
        assert float(effect.cosine[j]) == pytest.approx(float(cosine), rel=1e-6)  # K is ill-conditioned: ~1e-8


def test_hard_label_effect_is_the_derivative_of_the_cosine():
    x, kernel, _ = problem(n=50)
    gen = torch.Generator().manual_seed(8)
    truth = torch.randn(50, generator=gen, dtype=F64)
    labels = (truth > 0).to(F64)
    z_t = truth + torch.randn(50, generator=gen, dtype=F64)
    eps = 1e-5
    for rho in (0.2, 0.5, 0.9):
        effect = hard_label_effect(kernel, z_t, labels, truth, rho, 5.0)
        up = hard_label_effect(kernel, z_t, labels, truth, rho + eps, 5.0).cosine
        down = hard_label_effect(kernel, z_t, labels, truth, rho - eps, 5.0).cosine
        assert float(effect.cosine_derivative) == pytest.approx(float(-(up - down) / (2 * eps)), rel=1e-5, abs=1e-8)
    with pytest.raises(ValueError, match="truth_logits must have the shape"):
        hard_label_effect(kernel, z_t, labels, truth[:10], 0.5, 5.0)

