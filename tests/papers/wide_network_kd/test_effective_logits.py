"""kdnb.papers.wide_network_kd.effective_logits: roots against an independent root finder, the KD loss minimised there,
antisymmetry, the two conventions, the jump at z_t = 0, and the hard-label derivative against finite differences."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

from kdnb.core.losses import binary_kd_loss, binary_kd_loss_gradient
from kdnb.papers.wide_network_kd import (
    effective_logits_hard_derivative,
    effective_student_logits,
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
    z = effective_student_logits(z_t, y, 0.3, 5.0, t2_scaling=False)
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
    jumps = [2 * float(effective_student_logits(torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64), 0.05, t, t2_scaling=False))
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

