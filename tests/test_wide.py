"""kdnb.wide: effective logits against an independent root finder and finite differences, the nested student against
direct solves and explicit feature vectors, Theorem 1's geometry, the data-inefficiency estimator, and the
early-stopped teacher against the matrix exponential."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

from kdnb.data import GaussianMixtureOnSphere, sample_sphere
from kdnb.losses import binary_kd_loss, binary_kd_loss_gradient
from kdnb.ntk import kernel_regression, relu_ntk, weight_change_norm
from kdnb.wide import (
    ARCHITECTURES,
    EarlyStoppedTeacher,
    NestedKernelRegression,
    accumulative_angle_distribution,
    boundary_angles,
    data_inefficiency,
    early_stopped_distillation_norms,
    effective_logits_hard_derivative,
    effective_student_logits,
    flip_signs,
    hard_label_effect,
    imperfect_teacher_experiment,
    kernel_diagonal,
    kernel_students,
    sample_initial_function,
    student_kernel,
    student_nngp,
    target_difficulty_norms,
    transfer_risk,
    transfer_risk_experiment,
    weight_change_cosine,
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


# ---------------------------------------------------------------------------------------------------------------------
# Effective logits
# ---------------------------------------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(z_t=st.lists(st.floats(-30, 30), min_size=1, max_size=8), rho=st.floats(1e-3, 1.0),
       temperature=st.floats(0.2, 50), t2=st.booleans(), seed=st.integers(0, 2**16))
def test_effective_logits_are_roots(z_t, rho, temperature, t2, seed):
    z_t = torch.tensor(z_t, dtype=F64)
    y = torch.randint(0, 2, z_t.shape, generator=torch.Generator().manual_seed(seed)).to(F64)
    z = effective_student_logits(z_t, y, rho, temperature, t2_scaling=t2)
    assert float(residual(z, z_t, y, rho, temperature, t2).abs().max()) <= 1e-10
    # the root is where the closed-form KD gradient vanishes
    grad = binary_kd_loss_gradient(z, z_t, y, rho=rho, temperature=temperature, t2_scaling=t2)
    assert float(grad.abs().max()) <= 1e-10


def test_effective_logits_minimise_the_kd_loss():
    z_t = torch.linspace(-6, 6, 13, dtype=F64)
    y = (z_t > 0).to(F64)
    z = effective_student_logits(z_t, y, 0.3, 5.0)
    loss = binary_kd_loss(z, z_t, y, rho=0.3, temperature=5.0, t2_scaling=False, reduction="none")
    for shift in (-1e-3, 1e-3):
        shifted = binary_kd_loss(z + shift, z_t, y, rho=0.3, temperature=5.0, t2_scaling=False, reduction="none")
        assert bool((shifted > loss).all())


@pytest.mark.parametrize("t2", [False, True])
def test_effective_logits_match_an_independent_root_finder(t2):
    for z_t, y, rho, temperature in [(0.7, 1.0, 0.05, 5.0), (-3.0, 1.0, 0.3, 2.0), (8.0, 0.0, 0.5, 10.0),
                                     (1e-9, 1.0, 0.9, 5.0), (25.0, 0.0, 0.01, 1.0)]:
        z = effective_student_logits(torch.tensor([z_t], dtype=F64), torch.tensor([y], dtype=F64), rho, temperature,
                                     t2_scaling=t2)
        assert float(z) == pytest.approx(independent_root(z_t, y, rho, temperature, t2), abs=1e-9)


def test_pure_soft_returns_teacher_logits_exactly():
    z_t = torch.linspace(-40, 40, 101, dtype=F64)
    y = torch.randint(0, 2, (101,), generator=torch.Generator().manual_seed(0)).to(F64)
    for t2 in (False, True):
        assert torch.equal(effective_student_logits(z_t, y, 1.0, 3.0, t2_scaling=t2), z_t)


def test_rho_zero_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="no finite effective"):
        effective_student_logits(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64), 0.0, 5.0)
    with pytest.raises(ValueError, match="no finite effective"):
        effective_student_logits(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64), [0.5, 0], 5.0)


@pytest.mark.parametrize("rho", [-0.1, 1.01, float("nan")])
def test_rho_outside_the_interval_raises(rho):
    with pytest.raises(ValueError, match="rho"):
        effective_student_logits(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64), rho, 5.0)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf")])
def test_temperature_must_be_positive(temperature):
    with pytest.raises(ValueError, match="temperature"):
        effective_student_logits(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64), 0.5, temperature)


def test_bad_labels_and_shapes_raise():
    z_t = torch.zeros(4, dtype=F64)
    with pytest.raises(ValueError, match="labels must have the shape"):
        effective_student_logits(z_t, torch.ones(3, dtype=F64), 0.5, 5.0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        effective_student_logits(z_t, torch.full((4,), 2.0, dtype=F64), 0.5, 5.0)
    with pytest.raises(TypeError, match="t2_scaling"):
        effective_student_logits(z_t, torch.ones(4, dtype=F64), 0.5, 5.0, t2_scaling="yes")
    with pytest.raises(TypeError, match="teacher_logits"):
        effective_student_logits([0.0], torch.ones(1, dtype=F64), 0.5, 5.0)


def test_a_sequence_of_rho_adds_a_last_axis():
    z_t = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    y = (z_t > 0).to(F64)
    many = effective_student_logits(z_t, y, [0.1, 0.5, 1.0], 5.0)
    assert many.shape == (5, 3, 3)
    for j, rho in enumerate([0.1, 0.5, 1.0]):
        # equal up to rounding: vectorised sigmoids may round differently in differently sized batches
        torch.testing.assert_close(many[..., j], effective_student_logits(z_t, y, rho, 5.0), rtol=1e-13, atol=1e-13)
    assert torch.equal(effective_student_logits(z_t, y, [0.1, 0.5, 1.0], 5.0), many)  # deterministic


@settings(max_examples=60, deadline=None)
@given(z_t=st.floats(-20, 20), rho=st.floats(0.01, 1.0), temperature=st.floats(0.5, 20), t2=st.booleans(),
       y=st.sampled_from([0.0, 1.0]))
def test_effective_logits_are_antisymmetric(z_t, rho, temperature, t2, y):
    plus = effective_student_logits(torch.tensor([z_t], dtype=F64), torch.tensor([y], dtype=F64), rho, temperature,
                                    t2_scaling=t2)
    minus = effective_student_logits(torch.tensor([-z_t], dtype=F64), torch.tensor([1 - y], dtype=F64), rho,
                                     temperature, t2_scaling=t2)
    assert float(minus) == pytest.approx(-float(plus), abs=1e-9)


@pytest.mark.parametrize("t2", [False, True])
@pytest.mark.parametrize("rho", [0.05, 0.3, 0.9])
def test_effective_logits_increase_with_the_teacher(t2, rho):
    z_t = torch.linspace(-10, 10, 401, dtype=F64)
    for y in (0.0, 1.0):
        z = effective_student_logits(z_t, torch.full_like(z_t, y), rho, 5.0, t2_scaling=t2)
        assert bool((z.diff() > 0).all())


def test_correct_teacher_keeps_the_sign_and_inflates_logits():
    z_t = torch.linspace(-10, 10, 400, dtype=F64)  # no exact zero
    y = (z_t > 0).to(F64)
    for rho in (0.05, 0.3, 0.9):
        for t2 in (False, True):
            z = effective_student_logits(z_t, y, rho, 5.0, t2_scaling=t2)
            assert torch.equal(z > 0, z_t > 0)
            assert bool((z.abs() > z_t.abs()).all())


def test_conventions_agree_at_unit_temperature():
    z_t = torch.linspace(-8, 8, 33, dtype=F64)
    y = (z_t < 0).to(F64)  # a wrong teacher, to exercise both terms
    torch.testing.assert_close(effective_student_logits(z_t, y, [0.2, 0.7], 1.0, t2_scaling=False),
                               effective_student_logits(z_t, y, [0.2, 0.7], 1.0, t2_scaling=True), rtol=0, atol=0)


@pytest.mark.parametrize("t2", [False, True])
def test_jump_at_zero_matches_an_independent_solve(t2):
    """The discontinuity a correct teacher's hard label makes at z_t = 0 is 2 z_eff(0+, 1) (antisymmetry)."""
    tiny = torch.tensor([1e-12], dtype=F64)
    previous = math.inf
    for rho in (0.05, 0.1, 0.3, 0.5, 0.9):
        right = float(effective_student_logits(tiny, torch.ones(1, dtype=F64), rho, 5.0, t2_scaling=t2))
        left = float(effective_student_logits(-tiny, torch.zeros(1, dtype=F64), rho, 5.0, t2_scaling=t2))
        jump = right - left
        assert jump == pytest.approx(2 * independent_root(0.0, 1.0, rho, 5.0, t2), abs=1e-5)
        assert jump < previous
        previous = jump


def test_plain_jump_grows_with_temperature():
    jumps = [2 * float(effective_student_logits(torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64), 0.05, t))
             for t in (1.0, 2.0, 5.0, 10.0, 20.0)]
    assert all(b > a for a, b in zip(jumps, jumps[1:]))


@pytest.mark.parametrize("t2", [False, True])
def test_hard_label_derivative_matches_finite_differences(t2):
    z_t = torch.tensor([-4.0, -0.5, 0.3, 2.0, 7.0], dtype=F64)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0], dtype=F64)
    eps = 1e-5
    for rho in (0.1, 0.5, 0.9, 0.99):
        analytic = effective_logits_hard_derivative(z_t, y, rho, 5.0, t2_scaling=t2)
        # ∂/∂(1 − ρ) = −∂/∂ρ
        numeric = -(effective_student_logits(z_t, y, rho + eps, 5.0, t2_scaling=t2)
                    - effective_student_logits(z_t, y, rho - eps, 5.0, t2_scaling=t2)) / (2 * eps)
        torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-6)
    at_one = effective_logits_hard_derivative(z_t, y, [0.5, 1.0], 5.0, t2_scaling=t2)
    assert at_one.shape == (5, 2)
    assert bool(torch.isfinite(at_one).all())


# ---------------------------------------------------------------------------------------------------------------------
# The student's kernel and random targets
# ---------------------------------------------------------------------------------------------------------------------


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


def test_flip_signs():
    values = torch.linspace(0.1, 1, 10000, dtype=F64)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(flip_signs(values, 0.0, g), values)
    assert torch.equal(flip_signs(values, 1.0, g), -values)
    flipped = flip_signs(values, 0.2, g)
    assert torch.equal(flipped.abs(), values)
    assert float((flipped < 0).to(F64).mean()) == pytest.approx(0.2, abs=0.015)
    with pytest.raises(ValueError, match="p_flip"):
        flip_signs(values, 1.5, g)


# ---------------------------------------------------------------------------------------------------------------------
# The nested student
# ---------------------------------------------------------------------------------------------------------------------


def problem(n=60, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = sample_sphere(n, 3, g)
    return x, student_kernel(x), torch.randn(n, k, generator=g, dtype=F64)


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


def explicit_features(n, dim_features, seed):
    """A finite feature map Φ (D x N) and its Gram matrix, for checks in weight space."""
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(dim_features, n, generator=g, dtype=F64)
    return phi, phi.T @ phi, g


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


# ---------------------------------------------------------------------------------------------------------------------
# Transfer risk and Theorem 1
# ---------------------------------------------------------------------------------------------------------------------


def test_transfer_risk():
    s = torch.tensor([1.0, -2.0, 3.0, -0.5], dtype=F64)
    o = torch.tensor([2.0, 1.0, 1.0, -1.0], dtype=F64)
    assert float(transfer_risk(s, o)) == 0.25
    assert transfer_risk(torch.stack([s, -s], 1), torch.stack([o, o], 1)).tolist() == [0.25, 0.75]
    with pytest.raises(ValueError, match="same shape"):
        transfer_risk(s, o[:3])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**20), dim_features=st.integers(2, 30), n=st.integers(1, 30))
def test_theorem_one_holds_for_any_vectors(seed, dim_features, n):
    """R ≤ p(∠(u, v)): if sign⟨φ, u⟩ ≠ sign⟨φ, v⟩, φ is within ∠(u, v) of the hyperplane v^⊥."""
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn(200, dim_features, generator=g, dtype=F64) * torch.rand(200, 1, generator=g, dtype=F64)
    u, v = torch.randn(dim_features, generator=g, dtype=F64), torch.randn(dim_features, generator=g, dtype=F64)
    if n % 2:  # also nearly aligned pairs, where the bound is tight-ish
        u = v + 0.1 * u
    angle = torch.arccos((u @ v / (u.norm() * v.norm())).clamp(-1, 1))
    risk = transfer_risk(phi @ u, phi @ v)
    distance = boundary_angles(phi @ v, phi.square().sum(1), v.norm())
    # the closed form is the angle to the hyperplane computed from the vectors
    direct = (math.pi / 2 - torch.arccos((phi @ v / (phi.norm(dim=1) * v.norm())).clamp(-1, 1))).abs()
    torch.testing.assert_close(distance, direct, rtol=0, atol=1e-7)
    assert float(risk) <= float(accumulative_angle_distribution(distance, angle)) + 1e-12


def test_accumulative_angle_distribution_shapes_and_monotonicity():
    angles = torch.rand(500, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * math.pi / 2
    beta = torch.linspace(0, math.pi / 2, 20, dtype=F64)
    cdf = accumulative_angle_distribution(angles, beta)
    assert cdf.shape == (20, 3)
    assert bool((cdf.diff(dim=0) >= 0).all()) and float(cdf[-1].min()) == 1.0
    per_column = accumulative_angle_distribution(angles, beta[[3, 7, 11]])
    assert per_column.shape == (3,)
    assert per_column.tolist() == [float(cdf[3, 0]), float(cdf[7, 1]), float(cdf[11, 2])]
    assert accumulative_angle_distribution(angles[:, 0], 0.5).shape == ()


def test_boundary_angles_refuse_inconsistent_norms():
    with pytest.raises(ValueError, match="not those of a weight vector"):
        boundary_angles(torch.tensor([3.0], dtype=F64), torch.ones(1, dtype=F64), 1.0)


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


# ---------------------------------------------------------------------------------------------------------------------
# Data inefficiency
# ---------------------------------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(slope=st.floats(-0.5, 1.5), seed=st.integers(0, 2**16))
def test_data_inefficiency_recovers_a_power_law(slope, seed):
    n = torch.arange(1, 801, dtype=F64)
    g = torch.Generator().manual_seed(seed)
    noise = 0.3 * torch.randn(100, 800, generator=g, dtype=F64)
    norms = 2.5 * n[None, :] ** slope * torch.exp(noise - noise.mean(0))  # zero-mean noise in the logarithm
    estimate = data_inefficiency(norms, [16, 64, 256, 512])
    torch.testing.assert_close(estimate, torch.full((4,), slope, dtype=F64), rtol=0, atol=1e-9)
    exact = 2.5 * n[None, :] ** slope
    assert float(data_inefficiency(exact, 100, window=None)) == pytest.approx(100 * slope * math.log(101 / 100),
                                                                              rel=1e-9)


def test_data_inefficiency_shapes_and_errors():
    norms = torch.rand(4, 100, 3, generator=torch.Generator().manual_seed(0), dtype=F64) + 1
    assert data_inefficiency(norms, [8, 16]).shape == (2, 3)
    with pytest.raises(ValueError, match="needs prefix norms up to"):
        data_inefficiency(norms, 80)
    with pytest.raises(ValueError, match="window"):
        data_inefficiency(norms, 8, window=1.0)
    with pytest.raises(ValueError, match="positive"):
        data_inefficiency(torch.zeros(2, 10, dtype=F64), 4)
    with pytest.raises(ValueError, match=r"\(R, N\)"):
        data_inefficiency(torch.ones(10, dtype=F64), 4)


def test_random_labels_have_the_spectral_asymptote():
    """On S² random labels give I ≈ d/(2(d−1)) = 0.75 (a coarse check of the whole pipeline)."""
    norms = []
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        x = sample_sphere(400, 3, g)
        norms.append(NestedKernelRegression(student_kernel(x), torch.randn(400, generator=g, dtype=F64)).norms())
    value = float(data_inefficiency(torch.stack(norms), [128, 256]).mean())
    assert 0.6 < value < 0.95


# ---------------------------------------------------------------------------------------------------------------------
# The early-stopped teacher
# ---------------------------------------------------------------------------------------------------------------------


def teacher_problem(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = sample_sphere(n, 3, g)
    y = 4 * torch.sign(torch.randn(n, generator=g, dtype=F64))
    return x, student_kernel(x), y


def test_teacher_matches_the_matrix_exponential():
    x, kernel, y = teacher_problem()
    teacher = EarlyStoppedTeacher(kernel, y)
    for tau in (0.5, 10.0, 300.0):
        train = (torch.eye(40, dtype=F64) - torch.linalg.matrix_exp(-kernel * tau / 40)) @ y
        torch.testing.assert_close(teacher.logits(kernel, tau), train, rtol=1e-8, atol=1e-8)
        c = teacher.coefficients(tau)
        assert float(teacher.weight_change_norm(tau)) == pytest.approx(float(c @ kernel @ c) ** 0.5, rel=1e-8)


def test_teacher_matches_gradient_descent_with_small_steps():
    x, kernel, y = teacher_problem(n=20)
    teacher = EarlyStoppedTeacher(kernel, y)
    lr, steps = 0.01, 2000
    f = torch.zeros(20, dtype=F64)
    for _ in range(steps):
        f = f - lr * kernel @ (f - y) / 20
    torch.testing.assert_close(teacher.logits(kernel, lr * steps), f, rtol=0, atol=2e-3)


def test_teacher_grows_with_tau_and_converges_to_the_interpolant():
    x, kernel, y = teacher_problem()
    teacher = EarlyStoppedTeacher(kernel, y)
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
        EarlyStoppedTeacher(kernel, y[:5])


def test_teacher_handles_a_singular_kernel():
    x = sample_sphere(10, 3, torch.Generator().manual_seed(0))
    x = torch.cat([x, x[:2]])  # repeated points: a singular Gram matrix
    kernel = relu_ntk(x, depth=1, weight_variance=0.5, bias_variance=0.5, readout_weight_variance=1.0,
                      readout_bias_variance=0.0)
    teacher = EarlyStoppedTeacher(kernel, torch.ones(12, dtype=F64))
    assert bool(torch.isfinite(teacher.coefficients([1.0, 1e6])).all())
    assert bool(torch.isfinite(teacher.weight_change_norm([1.0, 1e6])).all())
    np.testing.assert_array_less(0, teacher.weight_change_norm([1.0, 1e6]).numpy())


# ---------------------------------------------------------------------------------------------------------------------
# Review additions: extremes, bad inputs, and the experiment helpers against direct computations
# ---------------------------------------------------------------------------------------------------------------------


def test_derivative_at_pure_soft_has_its_closed_form():
    """At ρ = 1, z_eff = z_t and ∂z/∂(1−ρ) = −(σ(z_t) − y) / ((c_T/T²) σ'(z_t/T))."""
    z_t = torch.tensor([-3.0, -0.2, 0.4, 5.0], dtype=F64)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=F64)
    for t2 in (False, True):
        c_t = 25.0 if t2 else 1.0
        slope = torch.sigmoid(z_t / 5) * torch.sigmoid(-z_t / 5)
        expected = -(torch.sigmoid(z_t) - y) / (c_t / 25.0 * slope)
        torch.testing.assert_close(effective_logits_hard_derivative(z_t, y, 1.0, 5.0, t2_scaling=t2), expected,
                                   rtol=1e-12, atol=1e-12)


def test_large_logits_are_exact_or_refused():
    """Beyond ~700 float64 sigmoids underflow and g reads 0: such roots must be refused, not returned wrong."""
    z = effective_student_logits(torch.tensor([500.0], dtype=F64), torch.ones(1, dtype=F64), 0.5, 1.0)
    assert float(z) == pytest.approx(500 + math.log(2), abs=1e-9)  # σ(z) − σ(z_t) = σ(−z) ⇒ z = z_t + ln 2
    with pytest.raises(ValueError, match="teacher_logits"):
        effective_student_logits(torch.tensor([100.0], dtype=F64), torch.ones(1, dtype=F64), 0.5, 0.1)
    with pytest.raises(ValueError, match="teacher_logits"):
        effective_student_logits(torch.tensor([1e4], dtype=F64), torch.ones(1, dtype=F64), 0.5, 1.0)
    with pytest.raises(ValueError, match="larger rho"):
        effective_student_logits(torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64), 1e-300, 1.0)
    # pure soft needs no root: any finite logit is returned as is
    assert float(effective_student_logits(torch.tensor([1e4], dtype=F64), torch.ones(1, dtype=F64), 1.0, 1.0)) == 1e4


def test_effective_logits_do_not_track_gradients():
    z_t = torch.linspace(-2, 2, 5, dtype=F64, requires_grad=True)
    z = effective_student_logits(z_t, (z_t > 0).to(F64), 0.5, 5.0)
    assert not z.requires_grad


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


# ---------------------------------------------------------------------------------------------------------------------
# Imperfect teachers
# ---------------------------------------------------------------------------------------------------------------------


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
    from kdnb.models import NTKMLP
    from kdnb.ntk import ntk_features

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
