"""kdnb.kernels.regression: kernel regression against weight-space training and direct solves, prefix norms from one
factorisation, the nested-sample identities with explicit features, jitter, and closed-form gradient flow against
the matrix exponential and small-step gradient descent."""


import math

import numpy as np
import pytest
import torch

from kdnb.core.data import sample_sphere
from kdnb.core.training import fit
from kdnb.kernels.analytic import relu_ntk
from kdnb.kernels.empirical import empirical_ntk
from kdnb.kernels.linearized import LinearizedModel, function_space_gd
from kdnb.kernels.regression import (
    KernelGradientFlow,
    NestedKernelRegression,
    cholesky_with_jitter,
    kernel_regression,
    weight_change_cosine,
    weight_change_norm,
)
from kdnb.papers.wide_network_kd import (
    student_kernel,
)
from tests.helpers import (
    gen,
    problem,
    small_problem,
    teacher_problem,
    unit,
)

F64 = torch.float64


def explicit_features(n, dim_features, seed):
    """A finite feature map Φ (D x N) and its Gram matrix, for checks in weight space."""
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(dim_features, n, generator=g, dtype=F64)
    return phi, phi.T @ phi, g


def test_kernel_regression_is_where_weight_space_training_converges():
    """Gradient descent on the squared loss, run on the linearized model's weights, reaches the min-norm interpolant:
    same test predictions, and ‖w − w₀‖ equals √(zᵀK⁻¹z)."""
    net, x, x_test, z = small_problem(n=4, width=16)
    kernel = empirical_ntk(net, x)
    eigenvalues = torch.linalg.eigvalsh(kernel)  # condition number about 15
    lr = 2 * len(z) / float(eigenvalues.max() + eigenvalues.min())  # the fastest stable step for the squared loss
    lin = LinearizedModel(net)
    fit(lin, lambda out, target: 0.5 * (out - target).square().mean(), x, [z], epochs=300, generator=gen(0), lr=lr,
        optimizer="sgd", progress=False)
    solution = kernel_regression(kernel, z)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), z, rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(lin(x_test), solution.predict(empirical_ntk(net, x_test, x)), rtol=1e-6, atol=1e-6)
    assert math.isclose(float(lin.weight_change().detach().norm()), float(solution.weight_change_norm), rel_tol=1e-7)
    assert math.isclose(float(weight_change_norm(kernel, z)), float(solution.weight_change_norm), rel_tol=1e-12)


def test_kernel_regression_interpolates_and_accounts_for_the_initial_function():
    x = unit(20, 3, 0)
    kernel = relu_ntk(x, depth=2, bias_variance=0.2)
    z = torch.randn(20, 3, generator=gen(1), dtype=F64)  # three right-hand sides at once
    f0 = torch.randn(20, generator=gen(2), dtype=F64)
    solution = kernel_regression(kernel, z, f0=f0)
    torch.testing.assert_close(solution.predict(kernel, f0_test=f0), z, rtol=1e-8, atol=1e-8)
    assert solution.weight_change_norm.shape == (3,)
    for j in range(3):
        direct = torch.linalg.solve(kernel, z[:, j] - f0)
        assert math.isclose(float(solution.weight_change_norm[j]), float(((z[:, j] - f0) @ direct).sqrt()),
                            rel_tol=1e-8)


def test_prefix_norms_from_one_factorisation_equal_direct_solves():
    x = unit(40, 3, 3)
    kernel = relu_ntk(x, depth=1, weight_variance=0.5, bias_variance=0.5, readout_bias_variance=0.0)
    z = torch.randn(40, 2, generator=gen(4), dtype=F64)
    prefixes = weight_change_norm(kernel, z, prefixes=True, jitter=0.0)  # compared with exact solves
    assert prefixes.shape == (40, 2)
    for n in (1, 2, 7, 25, 40):
        for j in range(2):
            direct = z[:n, j] @ torch.linalg.solve(kernel[:n, :n], z[:n, j])
            assert math.isclose(float(prefixes[n - 1, j]), float(direct.sqrt()), rel_tol=1e-9)


def test_cholesky_jitter_is_stated_and_failures_are_loud():
    x = unit(5, 3, 0)
    kernel = relu_ntk(x, depth=1)
    factor = cholesky_with_jitter(kernel, jitter=1e-6)
    shift = 1e-6 * float(kernel.diagonal().mean())
    torch.testing.assert_close(factor @ factor.T, kernel + shift * torch.eye(5, dtype=F64))
    repeated = relu_ntk(torch.cat([x, x[:1]]), depth=1)
    with pytest.raises(ValueError, match="not positive definite even with jitter 0"):
        cholesky_with_jitter(repeated, jitter=0.0)


@pytest.mark.parametrize("call, error, message", [
    (lambda k, z: kernel_regression(torch.zeros(4, 4, 2, 2, dtype=F64), z), ValueError, "multi-output model"),
    (lambda k, z: kernel_regression(k[:, :3], z), ValueError, "square \\(N, N\\) Gram matrix"),
    (lambda k, z: kernel_regression(k, z[:3]), ValueError, "targets must have shape \\(4,\\)"),
    (lambda k, z: kernel_regression(k, z, f0=z[:, None]), ValueError, "f0 must have shape \\(4,\\)"),
    (lambda k, z: weight_change_norm(k, z, f0=z[:, None]), ValueError, "f0 must have shape \\(4,\\)"),
    (lambda k, z: kernel_regression(k, z).predict(k, f0_test=z[:, None]), ValueError, "f0_test must have shape"),
    (lambda k, z: kernel_regression(k + torch.triu(torch.ones_like(k), 1), z), ValueError, "must be symmetric"),
    (lambda k, z: kernel_regression(k, z, jitter=-1.0), ValueError, "jitter must be a finite number >= 0"),
    (lambda k, z: weight_change_norm(k, z.long()), ValueError, "floating point"),
    (lambda k, z: function_space_gd(k, lambda v: v[:2], lr=1.0, steps=2), ValueError, "loss_gradient must return"),
    (lambda k, z: function_space_gd(k, lambda v: v, lr=0.0, steps=2), ValueError, "lr must be a finite number > 0"),
    (lambda k, z: function_space_gd(k, lambda v: v, lr=1.0, steps=2, f0=torch.zeros(4, 2, dtype=F64)), ValueError,
     "scalar outputs"),
    (lambda k, z: function_space_gd(k, lambda v: v, lr=1.0, steps=2, kernel_test_train=k[:, :2]), ValueError,
     "kernel_test_train must be an \\(M, 4\\) matrix"),
    (lambda k, z: function_space_gd(k, "mse", lr=1.0, steps=2), TypeError, "loss_gradient must be callable"),
])
def test_solvers_reject_bad_input(call, error, message):
    kernel = relu_ntk(unit(4, 3, 0), depth=1)
    with pytest.raises(error, match=message):
        call(kernel, torch.randn(4, dtype=F64))


def test_prefix_norms_equal_direct_solves():
    _, kernel, z = problem()
    nested = NestedKernelRegression(kernel, z)
    norms = nested.norms()
    for n in (1, 5, 17, 60):
        direct = kernel_regression(kernel[:n, :n], z[:n])
        torch.testing.assert_close(norms[n - 1], direct.weight_change_norm, rtol=1e-9, atol=0)
        torch.testing.assert_close(nested.coefficients(n), direct.coefficients, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(norms, weight_change_norm(kernel, z, prefixes=True), rtol=1e-12, atol=0)


def test_rank_one_norm_increment():
    """‖Δŵ_{n+1}‖² − ‖Δŵ_n‖² = (z_{n+1} − μ_n(x_{n+1}))² / s_n²(x_{n+1})."""
    _, kernel, z = problem(k=1)
    z = z[:, 0]
    norms = NestedKernelRegression(kernel, z).norms()
    for n in (1, 4, 20, 45):
        k_new = kernel[n, :n]
        mean = k_new @ torch.linalg.solve(kernel[:n, :n], z[:n])
        variance = kernel[n, n] - k_new @ torch.linalg.solve(kernel[:n, :n], k_new)
        increment = norms[n] ** 2 - norms[n - 1] ** 2
        assert float(increment) == pytest.approx(float((z[n] - mean) ** 2 / variance), rel=1e-6)


def test_predictions_match_kernel_regression():
    x, kernel, z = problem()
    x_test = sample_sphere(15, 3, torch.Generator().manual_seed(9))
    kernel_test = student_kernel(x_test, x)
    f0, f0_test = torch.randn(60, dtype=F64), torch.randn(15, dtype=F64)
    nested = NestedKernelRegression(kernel, z, f0=f0)
    for n in (8, 60):
        direct = kernel_regression(kernel[:n, :n], z[:n], f0=f0[:n])
        torch.testing.assert_close(nested.predict(n, kernel_test, f0_test), direct.predict(kernel_test[:, :n], f0_test),
                                   rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="n must be in"):
        nested.predict(61, kernel_test)
    with pytest.raises(ValueError, match="at least n"):
        nested.predict(20, kernel_test[:, :10])


def test_projection_identity_in_weight_space():
    phi, kernel, g = explicit_features(40, 200, 0)
    z = torch.randn(40, generator=g, dtype=F64)
    nested = NestedKernelRegression(kernel, z)
    full = phi @ nested.coefficients(40)
    for n in (3, 10, 25):
        student = phi[:, :n] @ nested.coefficients(n)
        # Δŵ_n is the orthogonal projection of Δŵ_N onto span Φ_n
        basis, _ = torch.linalg.qr(phi[:, :n])
        torch.testing.assert_close(student, basis @ (basis.T @ full), rtol=1e-7, atol=1e-9)
        cosine = student @ full / (student.norm() * full.norm())
        assert float(torch.cos(nested.oracle_angles()[n - 1])) == pytest.approx(float(cosine), rel=1e-8)
        assert float(weight_change_cosine(kernel, nested.coefficients(n), nested.coefficients(40))) == \
            pytest.approx(float(cosine), rel=1e-8)
    assert float(nested.oracle_angles()[-1]) == 0.0
    assert bool((nested.oracle_angles().diff() <= 1e-12).all())


def test_zero_weight_change_separates():
    """Δŵ − Δw_z = Φ K⁻¹ z: the weight change relative to the zero weight change depends only on the targets."""
    phi, kernel, g = explicit_features(30, 100, 1)
    z, f0 = torch.randn(30, generator=g, dtype=F64), torch.randn(30, generator=g, dtype=F64)
    total = phi @ NestedKernelRegression(kernel, z, f0=f0).coefficients(30)
    zero = phi @ NestedKernelRegression(kernel, -f0).coefficients(30)
    torch.testing.assert_close(total - zero, phi @ NestedKernelRegression(kernel, z).coefficients(30),
                               rtol=1e-8, atol=1e-8)


def test_weight_change_cosine_errors():
    _, kernel, _ = problem()
    with pytest.raises(ValueError, match="more than the kernel"):
        weight_change_cosine(kernel, torch.ones(61, dtype=F64), torch.ones(60, dtype=F64))
    with pytest.raises(ValueError, match="same k"):
        weight_change_cosine(kernel, torch.ones(6, 2, dtype=F64), torch.ones(60, 3, dtype=F64))


def test_teacher_matches_the_matrix_exponential():
    x, kernel, y = teacher_problem()
    teacher = KernelGradientFlow(kernel, y)
    for tau in (0.5, 10.0, 300.0):
        train = (torch.eye(40, dtype=F64) - torch.linalg.matrix_exp(-kernel * tau / 40)) @ y
        torch.testing.assert_close(teacher.logits(kernel, tau), train, rtol=1e-8, atol=1e-8)
        c = teacher.coefficients(tau)
        assert float(teacher.weight_change_norm(tau)) == pytest.approx(float(c @ kernel @ c) ** 0.5, rel=1e-8)


def test_teacher_matches_gradient_descent_with_small_steps():
    x, kernel, y = teacher_problem(n=20)
    teacher = KernelGradientFlow(kernel, y)
    lr, steps = 0.01, 2000
    f = torch.zeros(20, dtype=F64)
    for _ in range(steps):
        f = f - lr * kernel @ (f - y) / 20
    torch.testing.assert_close(teacher.logits(kernel, lr * steps), f, rtol=0, atol=2e-3)


def test_teacher_grows_with_tau_and_converges_to_the_interpolant():
    x, kernel, y = teacher_problem()
    teacher = KernelGradientFlow(kernel, y)
    taus = [0.1, 1, 10, 100, 1e3, 1e4, 1e5]
    norms = teacher.weight_change_norm(taus)
    assert norms.shape == (7,) and bool((norms.diff() > 0).all())
    x_test = sample_sphere(30, 3, torch.Generator().manual_seed(5))
    logits = teacher.logits(student_kernel(x_test, x), taus)
    assert logits.shape == (30, 7)
    assert bool((logits.norm(dim=0).diff() > 0).all())
    interpolant = kernel_regression(kernel, y)
    torch.testing.assert_close(teacher.coefficients(1e12), interpolant.coefficients, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(teacher.logits(kernel, 1e12), y, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="tau"):
        teacher.coefficients(0.0)
    with pytest.raises(ValueError, match="targets must have shape"):
        KernelGradientFlow(kernel, y[:5])


def test_teacher_handles_a_singular_kernel():
    x = sample_sphere(10, 3, torch.Generator().manual_seed(0))
    x = torch.cat([x, x[:2]])  # repeated points: a singular Gram matrix
    kernel = relu_ntk(x, depth=1, weight_variance=0.5, bias_variance=0.5, readout_weight_variance=1.0,
                      readout_bias_variance=0.0)
    teacher = KernelGradientFlow(kernel, torch.ones(12, dtype=F64))
    assert bool(torch.isfinite(teacher.coefficients([1.0, 1e6])).all())
    assert bool(torch.isfinite(teacher.weight_change_norm([1.0, 1e6])).all())
    np.testing.assert_array_less(0, teacher.weight_change_norm([1.0, 1e6]).numpy())

