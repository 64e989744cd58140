"""kdnb.kernels.regression: kernel regression against weight-space training and direct solves, prefix norms from one
factorisation, the nested-sample identities with explicit features, jitter, and closed-form gradient flow against
the matrix exponential and small-step gradient descent."""


import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdnb.core.data import sample_sphere
from kdnb.core.models import NTKMLP
from kdnb.core.training import fit
from kdnb.kernels.analytic import relu_ntk
from kdnb.kernels.empirical import empirical_ntk
from kdnb.kernels.linearized import LinearizedModel, function_space_gd
from kdnb.kernels.regression import (
    DEFAULT_JITTER,
    FIT_TOLERANCE_FACTOR,
    KernelGradientFlow,
    NestedKernelRegression,
    cholesky_with_jitter,
    kernel_regression,
    weight_change_cosine,
    weight_change_norm,
)
from kdnb.papers.wide_network_kd import (
    hard_label_effect,
    kernel_students,
    sample_initial_function,
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



# ---------------------------------------------------------------------------------------------------------------------
# Kernels symmetric only to their dtype's precision (a float32 NTK), and degenerate systems that a jitter hides
# ---------------------------------------------------------------------------------------------------------------------

F32_EPS = torch.finfo(torch.float32).eps


def float32_ntk_vp_kernel():
    """kdnb's own float32 NTK by NTK-vector products (symmetric only to float32 rounding), and targets."""
    net = NTKMLP(10, [64], 1, generator=gen(0))  # float32, as built
    x = torch.randn(16, 10, generator=gen(1))
    return empirical_ntk(net, x, method="ntk_vp"), torch.randn(16, generator=gen(2), dtype=F64)


def test_a_float32_ntk_vp_kernel_is_symmetrised_and_interpolated():
    kernel, y = float32_ntk_vp_kernel()
    assert kernel.dtype == torch.float32
    k64 = kernel.double()
    asymmetry = float((k64 - k64.T).abs().max())
    # Asymmetric beyond a float64-style tolerance (1e-8 of the mean diagonal), within float32 rounding.
    assert asymmetry > 1e-8 * float(k64.diagonal().mean())
    assert asymmetry <= 16 * F32_EPS * float(k64.abs().max())
    solution = kernel_regression(kernel, y)
    symmetrised = (k64 + k64.T) / 2
    torch.testing.assert_close(solution.coefficients, torch.linalg.solve(symmetrised, y), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(solution.predict(symmetrised), y, rtol=0, atol=1e-8)
    torch.testing.assert_close(solution.predict(kernel), y, rtol=0, atol=1e-3)


SOLVERS = {
    "cholesky_with_jitter": lambda k, y: cholesky_with_jitter(k),
    "kernel_regression": lambda k, y: kernel_regression(k, y).coefficients,
    "weight_change_norm": lambda k, y: weight_change_norm(k, y, prefixes=True),
    "NestedKernelRegression": lambda k, y: NestedKernelRegression(k, y).coefficients(10),
    "KernelGradientFlow": lambda k, y: KernelGradientFlow(k, y).coefficients([1.0, 100.0]),
}


@pytest.mark.parametrize("name", list(SOLVERS))
def test_every_solver_takes_a_float32_kernel_as_its_float64_symmetrisation(name):
    kernel, y = float32_ntk_vp_kernel()
    k64 = kernel.double()
    assert torch.equal(SOLVERS[name](kernel, y), SOLVERS[name]((k64 + k64.T) / 2, y))


@pytest.mark.parametrize("name", list(SOLVERS))
def test_every_solver_refuses_a_kernel_asymmetric_beyond_its_precision(name):
    kernel, y = float32_ntk_vp_kernel()
    bad = kernel.clone()
    bad[0, 1] += 1e-4 * float(kernel.abs().max())  # far above 16 eps = 1.9e-6 of float32
    with pytest.raises(ValueError, match="symmetric .*precision of its dtype torch.float32"):
        SOLVERS[name](bad, y)
    k64 = kernel.double()
    bad = (k64 + k64.T) / 2
    bad[0, 1] += 1e-12 * float(k64.abs().max())  # far below float32 rounding, above 16 eps = 3.6e-15 of float64
    with pytest.raises(ValueError, match="symmetric .*precision of its dtype torch.float64"):
        SOLVERS[name](bad, y)


def test_exactly_symmetric_float64_kernels_are_used_as_they_are():
    """No symmetrisation, cast or jitter change on an exactly symmetric float64 kernel: the results are the plain
    factorisation's, bit for bit."""
    _, kernel, z = problem()
    assert torch.equal(kernel, kernel.T)
    shift = DEFAULT_JITTER * float(kernel.diagonal().abs().mean())
    factor = torch.linalg.cholesky(kernel + shift * torch.eye(60, dtype=F64))
    assert torch.equal(cholesky_with_jitter(kernel), factor)
    assert torch.equal(kernel_regression(kernel, z).coefficients, torch.cholesky_solve(z, factor))
    whitened = torch.linalg.solve_triangular(factor, z, upper=False)
    assert torch.equal(weight_change_norm(kernel, z, prefixes=True), whitened.square().cumsum(0).sqrt())
    assert torch.equal(NestedKernelRegression(kernel, z).whitened, whitened)
    teacher, (eigenvalues, eigenvectors) = KernelGradientFlow(kernel, z[:, 0]), torch.linalg.eigh(kernel)
    assert torch.equal(teacher.eigenvalues, eigenvalues) and torch.equal(teacher.eigenvectors, eigenvectors)


def repeated_input():
    """Five inputs in R^3, the last a copy of the first, and their NTK (singular: rows 0 and 4 are equal)."""
    x = torch.randn(5, 3, generator=gen(0), dtype=F64)
    x[4] = x[0]
    return x, relu_ntk(x, depth=1, weight_variance=2.0)


CONFLICT = torch.tensor([1.0, 0.0, 0.0, 0.0, -1.0], dtype=F64)  # the repeat with another target
SAME = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0], dtype=F64)  # the repeat with its own target


def reported_residual(error) -> float:
    return float(re.search(r"\|\|r\|\| = ([0-9.e+-]+)", str(error.value)).group(1))


def test_a_repeated_input_with_two_targets_has_no_interpolant():
    _, kernel = repeated_input()
    with pytest.raises(ValueError, match=r"singular and the targets are inconsistent.*repeated input") as error:
        kernel_regression(kernel, CONFLICT)
    # The null direction u = (e_0 - e_4)/√2 carries u·r = √2 = ||r||: the jittered solve cannot fit any of it, so
    # the relative residual is 1. The same, recomputed with a plain solve of the jittered system:
    shift = DEFAULT_JITTER * float(kernel.diagonal().mean())
    a = torch.linalg.solve(kernel + shift * torch.eye(5, dtype=F64), CONFLICT)
    direct = float((kernel @ a - CONFLICT).norm() / CONFLICT.norm())
    assert direct == pytest.approx(1.0, rel=1e-6)
    assert reported_residual(error) == pytest.approx(direct, rel=1e-2)


def test_a_repeated_input_with_its_own_target_gives_the_fit_without_the_repeat():
    x, kernel = repeated_input()
    with_repeat, without = kernel_regression(kernel, SAME), kernel_regression(kernel[:4, :4], SAME[:4])
    assert float(with_repeat.weight_change_norm) == pytest.approx(float(without.weight_change_norm), rel=1e-6)
    direct = float((SAME[:4] @ torch.linalg.solve(kernel[:4, :4], SAME[:4])).sqrt())
    assert float(with_repeat.weight_change_norm) == pytest.approx(direct, rel=1e-6)
    x_test = torch.randn(7, 3, generator=gen(1), dtype=F64)
    kernel_test = relu_ntk(x_test, x, depth=1, weight_variance=2.0)
    torch.testing.assert_close(with_repeat.predict(kernel_test), without.predict(kernel_test[:, :4]), rtol=1e-6,
                               atol=1e-8)
    # The input and its copy share the coefficient of the input alone.
    coefficients = with_repeat.coefficients
    assert float(coefficients[0] + coefficients[4]) == pytest.approx(float(without.coefficients[0]), rel=1e-6)


DEGENERATE = {
    "kernel_regression": lambda k, y: kernel_regression(k, y).weight_change_norm,
    "kernel_regression with f0": lambda k, y: kernel_regression(k, y + 2, f0=torch.full_like(y, 2.0))
    .weight_change_norm,
    "kernel_regression, second column": lambda k, y: kernel_regression(k, torch.stack([torch.ones_like(y), y], 1))
    .weight_change_norm[1],
    "weight_change_norm": lambda k, y: weight_change_norm(k, y),
    "weight_change_norm prefixes": lambda k, y: weight_change_norm(k, y, prefixes=True)[-1],
    "NestedKernelRegression norms": lambda k, y: NestedKernelRegression(k, y).norms()[-1],
    "NestedKernelRegression angles": lambda k, y: NestedKernelRegression(k, y).oracle_angles()[-1] * 0 + 1,
}


@pytest.mark.parametrize("name", list(DEGENERATE))
def test_every_solver_refuses_a_conflicting_repeat_and_keeps_a_consistent_one(name):
    _, kernel = repeated_input()
    with pytest.raises(ValueError, match="singular and the targets are inconsistent"):
        DEGENERATE[name](kernel, CONFLICT)
    expected = DEGENERATE[name](kernel[:4, :4], SAME[:4]) if "angles" not in name else 1
    assert float(DEGENERATE[name](kernel, SAME)) == pytest.approx(float(expected), rel=1e-6)


def test_the_message_names_the_inconsistent_target_column():
    _, kernel = repeated_input()
    with pytest.raises(ValueError, match=r"\(target column 1\)"):
        kernel_regression(kernel, torch.stack([SAME, CONFLICT], 1))


def test_prefix_norms_of_a_consistent_repeat_do_not_grow():
    _, kernel = repeated_input()
    norms = weight_change_norm(kernel, SAME, prefixes=True)
    torch.testing.assert_close(norms[:4], weight_change_norm(kernel[:4, :4], SAME[:4], prefixes=True), rtol=1e-9,
                               atol=0)
    assert float(norms[4]) == pytest.approx(float(norms[3]), rel=1e-6)


def test_nested_coefficients_check_their_own_prefix():
    """A conflict between the first two points, drowned in the other targets (1e8 times larger): the whole sample
    passes (its relative residual is √2 / ||r|| ~ 1e-9), the prefix of the first two points does not."""
    x = sample_sphere(12, 3, gen(3))
    x = torch.cat([x[:1], x])  # x_0 = x_1
    kernel = student_kernel(x)
    y = torch.cat([torch.tensor([1.0, -1.0], dtype=F64), 1e8 * torch.randn(11, generator=gen(4), dtype=F64)])
    nested = NestedKernelRegression(kernel, y)
    assert nested.coefficients(13).shape == (13,)
    assert nested.coefficients(1).shape == (1,)
    with pytest.raises(ValueError, match="inconsistent .* on the first 2 points"):
        nested.coefficients(2)
    with pytest.raises(ValueError, match="on the first 2 points"):
        nested.predict(2, kernel)


@settings(max_examples=60, deadline=None)
@given(log_lambda=st.floats(-9, 0), log_jitter=st.floats(-12, -7))
def test_the_fit_tolerance_is_1e4_times_the_jitter(log_lambda, log_jitter):
    """K = diag(1, λ), r = (0, 1): the jittered solve leaves the closed-form relative residual δ / (λ + δ), with
    δ = jitter x mean diagonal; it is refused exactly when that exceeds 1e4 x jitter (float64: jitter > eps)."""
    lam, jitter = 10.0**log_lambda, 10.0**log_jitter
    kernel = torch.diag(torch.tensor([1.0, lam], dtype=F64))
    r = torch.tensor([0.0, 1.0], dtype=F64)
    shift = jitter * (1 + lam) / 2
    residual, tolerance = shift / (lam + shift), FIT_TOLERANCE_FACTOR * jitter
    if abs(residual / tolerance - 1) < 1e-3:
        return  # too close to the boundary for rounding to decide
    if residual > tolerance:
        with pytest.raises(ValueError, match="inconsistent") as error:
            kernel_regression(kernel, r, jitter=jitter)
        assert reported_residual(error) == pytest.approx(residual, rel=1e-2)
    else:
        solution = kernel_regression(kernel, r, jitter=jitter)
        assert float(solution.coefficients[1]) == pytest.approx(1 / (lam + shift), rel=1e-9)


def test_the_fit_tolerance_follows_the_jitter_and_the_dtype():
    _, kernel = repeated_input()
    # A ridge-sized jitter: tolerance 1e4 x 1e-3 = 10, nothing is refused (and nothing interpolates).
    ridge = kernel_regression(kernel, CONFLICT, jitter=1e-3)
    assert float((kernel @ ridge.coefficients - CONFLICT).norm() / CONFLICT.norm()) > 0.5
    with pytest.raises(ValueError, match=r"tolerance 0\.01 "):
        kernel_regression(kernel, CONFLICT, jitter=1e-6)
    with pytest.raises(ValueError, match=r"tolerance 1e-06 "):
        kernel_regression(kernel, CONFLICT)
    # float32: tolerance 1e4 x eps = 1.19e-3; the conflict (residual 1) is still refused.
    with pytest.raises(ValueError, match=r"tolerance 0\.00119 "):
        kernel_regression(kernel.float(), CONFLICT)
    # jitter 0: the factorisation itself fails on the exactly singular kernel.
    with pytest.raises(ValueError, match="not positive definite even with jitter 0"):
        kernel_regression(kernel, SAME, jitter=0.0)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 25), seed=st.integers(0, 2**31 - 1), gap=st.floats(0.01, 10.0))
def test_distinct_inputs_interpolate_and_a_conflicting_repeat_is_refused(n, seed, gap):
    g = gen(seed)
    x = sample_sphere(n, 3, g)
    y = torch.randn(n, generator=g, dtype=F64)
    kernel = student_kernel(x)
    solution = kernel_regression(kernel, y)
    torch.testing.assert_close(kernel @ solution.coefficients, y, rtol=0, atol=1e-6 * float(y.norm()))
    i = seed % n
    repeated = torch.cat([x, x[i:i + 1]])
    with pytest.raises(ValueError, match="inconsistent"):
        kernel_regression(student_kernel(repeated), torch.cat([y, y[i:i + 1] + gap]))
    same = kernel_regression(student_kernel(repeated), torch.cat([y, y[i:i + 1]]))
    assert float(same.weight_change_norm) == pytest.approx(float(solution.weight_change_norm), rel=1e-6)


def test_gradient_flow_fits_a_conflicting_repeat_by_the_mean_of_its_targets():
    """KernelGradientFlow handles a singular kernel by design: no refusal, the closed form still equals the matrix
    exponential, and the repeated input's logit tends to the mean of its two targets (the least-squares fit)."""
    x = sample_sphere(10, 3, gen(0))
    x = torch.cat([x, x[:1]])
    kernel = student_kernel(x)
    y = 4 * torch.sign(torch.randn(11, generator=gen(1), dtype=F64))
    y[10] = -y[0]
    teacher = KernelGradientFlow(kernel, y)
    for tau in (10.0, 1000.0):
        flow = (torch.eye(11, dtype=F64) - torch.linalg.matrix_exp(-kernel * tau / 11)) @ y
        torch.testing.assert_close(teacher.logits(kernel, tau), flow, rtol=1e-8, atol=1e-8)
    late = teacher.logits(kernel, 1e8)
    torch.testing.assert_close(late[[0, 10]], torch.zeros(2, dtype=F64), rtol=0, atol=1e-6)
    torch.testing.assert_close(late[1:10], y[1:10], rtol=0, atol=1e-6)
    assert bool(torch.isfinite(teacher.weight_change_norm([1.0, 1e8])).all())


def repeated_student_task(same_label: bool):
    """21 points on the sphere, the last a copy of the first, with the teacher's logit and g of the first."""
    x = sample_sphere(20, 3, gen(2))
    x = torch.cat([x, x[:1]])
    z_t = 3 * torch.randn(21, generator=gen(3), dtype=F64)
    labels = (torch.randn(21, generator=gen(4), dtype=F64) > 0).to(F64)
    truth = torch.randn(21, generator=gen(5), dtype=F64)
    z_t[20], truth[20] = z_t[0], truth[0]
    labels[20] = labels[0] if same_label else 1 - labels[0]
    return student_kernel(x), student_kernel(x[:5], x), z_t, labels, truth


def test_the_wide_students_refuse_a_repeated_input_with_two_labels():
    kernel, kernel_test, z_t, labels, truth = repeated_student_task(same_label=False)
    with pytest.raises(ValueError, match="inconsistent"):
        kernel_students(kernel, kernel_test, z_t, labels, [0.5, 1.0], 5.0)
    with pytest.raises(ValueError, match="inconsistent"):
        hard_label_effect(kernel, z_t, labels, truth, 1.0, 5.0)  # ∂z/∂(1-ρ) depends on the label even at ρ = 1
    # Pure soft distillation ignores the labels: the targets agree at the repeat, and the students exist.
    soft = kernel_students(kernel, kernel_test, z_t, labels, 1.0, 5.0)
    torch.testing.assert_close(soft, kernel_students(kernel[:20, :20], kernel_test[:, :20], z_t[:20], labels[:20], 1.0,
                                                     5.0), rtol=1e-6, atol=1e-8)


def test_the_wide_students_of_a_repeated_input_with_its_own_label_ignore_the_repeat():
    kernel, kernel_test, z_t, labels, truth = repeated_student_task(same_label=True)
    rhos = [0.2, 0.5, 1.0]
    torch.testing.assert_close(kernel_students(kernel, kernel_test, z_t, labels, rhos, 5.0),
                               kernel_students(kernel[:20, :20], kernel_test[:, :20], z_t[:20], labels[:20], rhos, 5.0),
                               rtol=1e-6, atol=1e-8)
    effect = hard_label_effect(kernel, z_t, labels, truth, rhos, 5.0)
    alone = hard_label_effect(kernel[:20, :20], z_t[:20], labels[:20], truth[:20], rhos, 5.0)
    for field in ("inner_product", "cosine", "cosine_derivative"):
        torch.testing.assert_close(getattr(effect, field), getattr(alone, field), rtol=1e-6, atol=1e-9)


def test_sampling_the_initial_function_at_a_repeated_input_is_allowed():
    """Sampling needs no solve: with the jitter, a repeated input gets (almost) the same initial output."""
    x = sample_sphere(20, 3, gen(6))
    samples = sample_initial_function(torch.cat([x, x[:1]]), gen(7), n_samples=50)
    assert float((samples[20] - samples[0]).abs().max()) < 1e-4
    assert float(samples[0].std()) > 0.1
