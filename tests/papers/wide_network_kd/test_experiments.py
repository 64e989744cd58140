"""kdnb.papers.wide_network_kd: effective logits against an independent root finder and finite differences, the nested student against
direct solves and explicit feature vectors, Theorem 1's geometry, the data-inefficiency estimator, and the
early-stopped teacher against the matrix exponential."""

import math

import pytest
import torch
from scipy.optimize import brentq

from kdnb.core.data import GaussianMixtureOnSphere, sample_sphere
from kdnb.kernels.regression import (
    KernelGradientFlow as EarlyStoppedTeacher,
)
from kdnb.kernels.regression import (
    NestedKernelRegression,
    kernel_regression,
)
from kdnb.papers.wide_network_kd import (
    accumulative_angle_distribution,
    boundary_angles,
    data_inefficiency,
    early_stopped_distillation_norms,
    effective_student_logits,
    imperfect_teacher_experiment,
    kernel_students,
    student_kernel,
    target_difficulty_norms,
    transfer_risk,
    transfer_risk_experiment,
)

F64 = torch.float64



def residual(z, z_t, y, rho, temperature, t2_scaling):
    """g(z) with the plain formula (no stable rewriting), as an independent check."""
    c_t = temperature**2 if t2_scaling else 1.0
    return (rho * c_t / temperature * (torch.sigmoid(z / temperature) - torch.sigmoid(z_t / temperature))
            + (1 - rho) * (torch.sigmoid(z) - y))



def independent_root(z_t, y, rho, temperature, t2_scaling):
    c_t = temperature**2 if t2_scaling else 1.0

    def g(z):
        return (rho * c_t / temperature * (1 / (1 + math.exp(-z / temperature)) - 1 / (1 + math.exp(-z_t / temperature)))
                + (1 - rho) * (1 / (1 + math.exp(-z)) - y))

    return brentq(g, -200, 200, xtol=1e-14, rtol=1e-15, maxiter=500)



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



def test_transfer_risk_experiment_is_deterministic_and_bounded():
    kwargs = dict(n_values=[8, 16, 32], rhos=[0.5, 1.0], temperature=5.0, n_oracle=128, n_test=200)
    first = transfer_risk_experiment(torch.Generator().manual_seed(0), **kwargs)
    second = transfer_risk_experiment(torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(first.risk, second.risk) and torch.equal(first.bound, second.bound)
    assert first.risk.shape == first.bound.shape == first.angles.shape == (3, 2)
    assert bool((first.risk_to_proxy <= first.bound).all())
    assert first.projection_error < 1e-6
    assert bool((first.angles.diff(dim=0) <= 0).all())
    with pytest.raises(ValueError, match="n_oracle"):
        transfer_risk_experiment(torch.Generator(), **{**kwargs, "n_values": [8, 128]})



def test_random_labels_have_the_spectral_asymptote():
    """On S² random labels give I ≈ d/(2(d−1)) = 0.75 (a coarse check of the whole pipeline)."""
    norms = []
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        x = sample_sphere(400, 3, g)
        norms.append(NestedKernelRegression(student_kernel(x), torch.randn(400, generator=g, dtype=F64)).norms())
    value = float(data_inefficiency(torch.stack(norms), [128, 256]).mean())
    assert 0.6 < value < 0.95



def test_transfer_risk_experiment_matches_direct_solves():
    """Every reported number at every n, recomputed from scratch with the same random draws."""
    n_values, rhos = [8, 16, 32], [0.3, 1.0]
    result = transfer_risk_experiment(torch.Generator().manual_seed(4), n_values=n_values, rhos=rhos,
                                      temperature=5.0, n_oracle=96, n_test=150)
    g = torch.Generator().manual_seed(4)
    teacher = GaussianMixtureOnSphere(3, 4, g, width=0.5)
    x, x_test = sample_sphere(96, 3, g), sample_sphere(150, 3, g)

    def targets(points):
        z_t = teacher(points)
        return effective_student_logits(z_t, (z_t > 0).to(F64), rhos, 5.0)

    z, z_star = targets(x), targets(x_test)
    kernel, kernel_test = student_kernel(x), student_kernel(x_test, x)
    oracle = kernel_regression(kernel, z)
    proxy = oracle.predict(kernel_test)
    for i, n in enumerate(n_values):
        student = kernel_regression(kernel[:n, :n], z[:n])
        prediction = student.predict(kernel_test[:, :n])
        torch.testing.assert_close(result.risk[i], transfer_risk(prediction, z_star))
        torch.testing.assert_close(result.risk_to_proxy[i], transfer_risk(prediction, proxy))
        # angle from explicit inner products ⟨Δŵ_n, Δŵ_N⟩ = a_nᵀ K_{nN} a_N
        inner = (student.coefficients * (kernel[:n] @ oracle.coefficients)).sum(0)
        cosine = inner / (student.weight_change_norm * oracle.weight_change_norm)
        torch.testing.assert_close(result.angles[i], torch.arccos(cosine), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(result.direct_angles[i], torch.arccos(cosine), rtol=1e-6, atol=1e-7)
        distance = boundary_angles(proxy, torch.ones(150, dtype=F64), oracle.weight_change_norm)
        torch.testing.assert_close(result.bound[i], accumulative_angle_distribution(distance, result.angles[i]))
    torch.testing.assert_close(result.norms[-1], oracle.weight_change_norm, rtol=1e-9, atol=0)



def test_target_difficulty_norms():
    first = target_difficulty_norms(torch.Generator().manual_seed(0), n_points=64, n_modes=(1, 16),
                                    flip_probabilities=(0.0, 0.5))
    assert list(first) == ["modes=1", "modes=16", "flip=0", "flip=0.5", "random", "zero"]
    assert all(v.shape == (64,) and bool((v.diff() >= 0).all()) for v in first.values())
    again = target_difficulty_norms(torch.Generator().manual_seed(0), n_points=64, n_modes=(1, 16),
                                    flip_probabilities=(0.0, 0.5))
    assert all(torch.equal(first[k], again[k]) for k in first)
    # recompute two columns directly from the same draws
    g = torch.Generator().manual_seed(0)
    x = sample_sphere(64, 3, g)
    smooth = GaussianMixtureOnSphere(3, 1, g)(x)
    torch.testing.assert_close(first["modes=1"], NestedKernelRegression(student_kernel(x), smooth).norms())



def test_early_stopped_distillation_norms_match_direct_solves():
    taus, rhos = [3.0, 1000.0], [0.1, 0.5, 1.0]
    result = early_stopped_distillation_norms(torch.Generator().manual_seed(0), n_points=64, taus=taus, rhos=rhos,
                                              temperature=5.0, n_teacher=32)
    assert result.norms.shape == (64, 2, 3) and result.teacher_norms.shape == (2,)
    g = torch.Generator().manual_seed(0)
    truth = GaussianMixtureOnSphere(3, 4, g, width=0.5)
    x_teacher, x = sample_sphere(32, 3, g), sample_sphere(64, 3, g)
    labels = (truth(x) > 0).to(F64)
    teacher = EarlyStoppedTeacher(student_kernel(x_teacher), 4 * torch.sign(truth(x_teacher)))
    z_t = teacher.logits(student_kernel(x, x_teacher), taus)
    kernel = student_kernel(x)
    for i in range(len(taus)):
        assert float(result.teacher_accuracy[i]) == float(((z_t[:, i] > 0) == (labels > 0)).to(F64).mean())
        for j, rho in enumerate(rhos):
            direct = NestedKernelRegression(kernel, effective_student_logits(z_t[:, i], labels, rho, 5.0)).norms()
            torch.testing.assert_close(result.norms[:, i, j], direct, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.teacher_norms, teacher.weight_change_norm(taus))



def test_imperfect_teacher_experiment():
    kwargs = dict(taus=[0.3, 1000.0], rhos=[0.1, 0.9, 1.0], temperature=5.0, n_teacher=64, n_student=48,
                  n_test=300)
    run = imperfect_teacher_experiment(torch.Generator().manual_seed(0), **kwargs)
    again = imperfect_teacher_experiment(torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(run.student_accuracy, again.student_accuracy)
    assert run.student_accuracy.shape == run.inner_product.shape == (2, 3)
    assert run.teacher_accuracy.shape == (2,) and bool(run.teacher_accuracy[1] > run.teacher_accuracy[0])
    torch.testing.assert_close(run.check_derivative, run.finite_difference, rtol=0, atol=1e-6)
    torch.testing.assert_close(run.soft_derivative, run.soft_finite_difference, rtol=1e-3, atol=0)
    torch.testing.assert_close(run.soft_derivative, run.cosine_derivative[:, -1])  # ρ = 1 is the grid's last
    with pytest.raises(ValueError, match="check_rhos"):
        imperfect_teacher_experiment(torch.Generator(), **kwargs, check_rhos=[1.0])

    # recompute the students and the teachers from the same draws
    g = torch.Generator().manual_seed(0)
    truth = GaussianMixtureOnSphere(3, 4, g, width=0.5)
    x_teacher, x, x_test = sample_sphere(64, 3, g), sample_sphere(48, 3, g), sample_sphere(300, 3, g)
    teacher = EarlyStoppedTeacher(student_kernel(x_teacher), 4 * torch.sign(truth(x_teacher)))
    z_t = teacher.logits(student_kernel(x, x_teacher), [0.3, 1000.0])
    z_t_test = teacher.logits(student_kernel(x_test, x_teacher), [0.3, 1000.0])
    truth_test = truth(x_test) > 0
    torch.testing.assert_close(run.teacher_accuracy, ((z_t_test > 0) == truth_test[:, None]).to(F64).mean(0))
    for i in range(2):
        logits = kernel_students(student_kernel(x), student_kernel(x_test, x), z_t[:, i], (truth(x) > 0).to(F64),
                                 [0.1, 0.9, 1.0], 5.0)
        torch.testing.assert_close(run.student_accuracy[i], ((logits > 0) == truth_test[:, None]).to(F64).mean(0))

