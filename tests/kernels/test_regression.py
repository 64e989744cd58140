"""kdnb.kernels: the empirical NTK by three methods and by plain autograd, the analytic kernels against closed forms and
Monte-Carlo, the linearized model, and the function-space solvers against explicit training in weight space."""


import math

import numpy as np
import pytest
import torch

from kdnb.core.data import sample_sphere
from kdnb.core.models import MLP, NTKMLP, AntisymmetricPair
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

F64 = torch.float64



def gen(seed=0):
    return torch.Generator().manual_seed(seed)



def unit(n, d, seed=0, dtype=F64):
    x = torch.randn(n, d, generator=gen(seed), dtype=dtype)
    return x / x.norm(dim=1, keepdim=True)



def relative_max_error(a, b):
    return float((a - b).abs().max() / b.abs().max())



MODELS = {
    "ntk-mlp-1": lambda dt: NTKMLP(5, [48], generator=gen(1), dtype=dt),
    "ntk-mlp-2-bias": lambda dt: NTKMLP(5, [32, 24], bias_variance=0.3, normalize_input=True, generator=gen(2), dtype=dt),
    "ntk-mlp-3-outputs": lambda dt: NTKMLP(5, [16, 8], 3, bias_variance=0.2, generator=gen(3), dtype=dt),
    "standard-mlp": lambda dt: MLP(5, (16, 12), 1, generator=gen(4)).to(dt),
    "standard-mlp-4-outputs": lambda dt: MLP(5, (16,), 4, generator=gen(5)).to(dt),
    "antisymmetric-pair": lambda dt: AntisymmetricPair(NTKMLP(5, [24], bias_variance=0.5, generator=gen(6), dtype=dt)),
}



def per_example_gradients(model, x):
    """The definition, with plain autograd: one backward pass per example and output, shape (N, O, P)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for xi in x:
        out = model(xi[None]).reshape(-1)
        rows.append(torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[o], params,
                                                                                        retain_graph=True)])
                                 for o in range(out.numel())]))
    return torch.stack(rows)



def per_example_gradient_gram(model, x1, x2):
    return torch.einsum("iap,jbp->ijab", per_example_gradients(model, x1), per_example_gradients(model, x2))



def two_layer_closed_forms(x1, x2):
    """Cho & Saul's arc-cosine kernels for f(x) = aᵀ relu(Wx)/√m, both layers trained (written out independently)."""
    n1, n2 = x1.norm(dim=1)[:, None], x2.norm(dim=1)[None, :]
    cos = ((x1 @ x2.T) / (n1 * n2)).clamp(-1, 1)
    theta = torch.arccos(cos)
    nngp = n1 * n2 * (torch.sin(theta) + (math.pi - theta) * cos) / (2 * math.pi)
    ntk = n1 * n2 * (torch.sin(theta) + 2 * (math.pi - theta) * cos) / (2 * math.pi)
    return nngp, ntk



def arora_ntk(x1, x2, depth):
    """Arora et al. (2019), Eqs. (4)-(5), written out with numpy and arccos, independently of kdnb: c_σ = 2,
    Σ⁽⁰⁾ = xᵀx', Σ⁽ʰ⁾ = c_σ E[relu relu], Σ̇⁽ʰ⁾ = c_σ E[relu' relu'] = (π − θ)/π, and
    Θ = Σ_{h=1}^{L+1} Σ⁽ʰ⁻¹⁾ Π_{h'=h}^{L+1} Σ̇⁽ʰ'⁾ with Σ̇⁽ᴸ⁺¹⁾ = 1."""
    x1, x2 = x1.numpy(), x2.numpy()
    cov, var1, var2 = x1 @ x2.T, (x1**2).sum(1), (x2**2).sum(1)
    sigmas, dots = [cov], []
    for _ in range(depth):
        norms = np.sqrt(np.outer(var1, var2))
        theta = np.arccos(np.clip(cov / norms, -1, 1))
        dots.append((np.pi - theta) / np.pi)
        cov = norms * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / np.pi
        sigmas.append(cov)  # the diagonal stays var (c_σ = 2 preserves it)
    dots.append(np.ones_like(cov))
    total = np.zeros_like(cov)
    for h in range(1, depth + 2):
        product = np.ones_like(cov)
        for hp in range(h, depth + 2):
            product = product * dots[hp - 1]
        total += sigmas[h - 1] * product
    return total



def problem(n=60, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = sample_sphere(n, 3, g)
    return x, student_kernel(x), torch.randn(n, k, generator=g, dtype=F64)


def explicit_features(n, dim_features, seed):
    """A finite feature map Φ (D x N) and its Gram matrix, for checks in weight space."""
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(dim_features, n, generator=g, dtype=F64)
    return phi, phi.T @ phi, g


def teacher_problem(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = sample_sphere(n, 3, g)
    y = 4 * torch.sign(torch.randn(n, generator=g, dtype=F64))
    return x, student_kernel(x), y



def small_problem(n=12, width=24, seed=0):
    net = AntisymmetricPair(NTKMLP(3, [width], weight_variance=0.5, bias_variance=0.5, readout_bias_variance=0.0,
                                   generator=gen(seed), dtype=F64))
    x, x_test = unit(n, 3, seed + 1), unit(5, 3, seed + 2)
    teacher = 3 * torch.randn(n, generator=gen(seed + 3), dtype=F64)
    return net, x, x_test, teacher



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

