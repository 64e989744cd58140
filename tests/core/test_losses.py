"""The KD losses against hand-written formulas, autograd, finite differences, and their invariances."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kdnb.core.losses import (
    binary_kd_loss,
    binary_kd_loss_gradient,
    kd_loss,
    kd_loss_gradient,
    soften,
)


@pytest.fixture(autouse=True)
def float64_default():
    """Closed forms are compared in float64; restore the default afterwards so other test modules are unaffected."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def hand_kd(zs, zt, y, rho, T, t2):
    """The textbook formula, written out with explicit softmax and logs (no log-sum-exp tricks)."""
    pt = torch.exp(zt / T) / torch.exp(zt / T).sum(1, keepdim=True)
    ps = torch.exp(zs / T) / torch.exp(zs / T).sum(1, keepdim=True)
    kl = (pt * (torch.log(pt) - torch.log(ps))).sum(1)
    p1 = torch.exp(zs) / torch.exp(zs).sum(1, keepdim=True)
    ce = -torch.log(p1[torch.arange(len(y)), y])
    return (rho * (T**2 if t2 else 1.0) * kl + (1 - rho) * ce).mean()


def hand_binary(zs, zt, y, rho, T, t2):
    sig = lambda a: 1 / (1 + torch.exp(-a))  # noqa: E731
    p, q = sig(zt / T), sig(zs / T)
    kl = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))
    ce = -(y * torch.log(sig(zs)) + (1 - y) * torch.log(1 - sig(zs)))
    return (rho * (T**2 if t2 else 1.0) * kl + (1 - rho) * ce).mean()


def batch(n=7, c=5, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, c, generator=g), scale * torch.randn(n, c, generator=g),
            torch.randint(0, c, (n,), generator=g))


@pytest.mark.parametrize("rho", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("T", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("t2", [True, False])
def test_kd_loss_matches_hand_formula(rho, T, t2):
    zs, zt, y = batch()
    got = kd_loss(zs, zt, y, rho=rho, temperature=T, t2_scaling=t2)
    assert torch.allclose(got, hand_kd(zs, zt, y, rho, T, t2), atol=1e-12)


@pytest.mark.parametrize("rho", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("T", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("t2", [True, False])
def test_binary_kd_loss_matches_hand_formula(rho, T, t2):
    g = torch.Generator().manual_seed(1)
    zs, zt = 3 * torch.randn(9, generator=g), 3 * torch.randn(9, generator=g)
    y = torch.rand(9, generator=g).round()
    got = binary_kd_loss(zs, zt, y, rho=rho, temperature=T, t2_scaling=t2)
    assert torch.allclose(got, hand_binary(zs, zt, y, rho, T, t2), atol=1e-12)


def test_t2_switch_scales_soft_term_by_t_squared():
    zs, zt, y = batch()
    for T in [0.3, 2.0, 7.0]:
        with_t2 = kd_loss(zs, zt, rho=1.0, temperature=T, t2_scaling=True)
        plain = kd_loss(zs, zt, rho=1.0, temperature=T, t2_scaling=False)
        assert torch.allclose(with_t2, T**2 * plain, rtol=1e-12)
    # The hard term is not scaled.
    assert torch.allclose(kd_loss(zs, zt, y, rho=0.0, temperature=5.0, t2_scaling=True),
                          kd_loss(zs, zt, y, rho=0.0, temperature=5.0, t2_scaling=False))


@pytest.mark.parametrize("t2", [True, False])
@pytest.mark.parametrize("rho", [0.0, 0.4, 1.0])
def test_closed_form_gradient_matches_autograd(rho, t2):
    zs, zt, y = batch(seed=3)
    zs.requires_grad_(True)
    kd_loss(zs, zt, y, rho=rho, temperature=3.0, t2_scaling=t2, reduction="sum").backward()
    closed = kd_loss_gradient(zs.detach(), zt, y, rho=rho, temperature=3.0, t2_scaling=t2)
    assert torch.allclose(zs.grad, closed, atol=1e-12)


@pytest.mark.parametrize("t2", [True, False])
def test_binary_closed_form_gradient_matches_autograd(t2):
    g = torch.Generator().manual_seed(4)
    zs, zt, y = torch.randn(11, generator=g).requires_grad_(True), torch.randn(11, generator=g), torch.rand(11, generator=g)
    binary_kd_loss(zs, zt, y, rho=0.3, temperature=2.5, t2_scaling=t2, reduction="sum").backward()
    closed = binary_kd_loss_gradient(zs.detach(), zt, y, rho=0.3, temperature=2.5, t2_scaling=t2)
    assert torch.allclose(zs.grad, closed, atol=1e-12)


def test_autograd_gradient_matches_finite_differences():
    zs, zt, y = batch(n=4, c=3, seed=5)
    zs.requires_grad_(True)
    labelled = torch.tensor([True, False, True, True])
    assert torch.autograd.gradcheck(
        lambda z: kd_loss(z, zt, y, rho=0.6, temperature=2.0, labelled=labelled), (zs,), eps=1e-6, atol=1e-8)
    zb = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z: binary_kd_loss(z, torch.zeros(5), torch.ones(5), rho=0.6, temperature=0.7), (zb,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [0.1, 1.0, 100.0])
@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_stable_for_huge_logits_and_extreme_temperatures(dtype, T, scale):
    zs, zt, y = batch(n=16, c=10, seed=6, scale=scale)
    zs, zt = zs.to(dtype).requires_grad_(True), zt.to(dtype)
    loss = kd_loss(zs, zt, y, rho=0.5, temperature=T)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zs.grad).all()
    zb = zs[:, 0].detach().requires_grad_(True)
    lb = binary_kd_loss(zb, zt[:, 0], (y % 2).to(dtype), rho=0.5, temperature=T)
    lb.backward()
    assert torch.isfinite(lb) and torch.isfinite(zb.grad).all()


def test_huge_logits_agree_with_float64_reference():
    zs, zt, y = batch(n=8, c=4, seed=7, scale=1e4)
    ref = kd_loss(zs, zt, y, rho=0.5, temperature=0.1)
    got = kd_loss(zs.float(), zt.float(), y, rho=0.5, temperature=0.1)
    assert math.isclose(float(got), float(ref), rel_tol=1e-5)


def test_binary_equals_two_class_softmax():
    """A single logit z is the two-class softmax with logits (0, z): the binary and multi-class losses agree."""
    g = torch.Generator().manual_seed(8)
    zs, zt, y = torch.randn(10, generator=g), torch.randn(10, generator=g), torch.randint(0, 2, (10,), generator=g)
    two = lambda z: torch.stack([torch.zeros_like(z), z], 1)  # noqa: E731
    for rho, T in [(0.0, 1.0), (0.5, 3.0), (1.0, 0.4)]:
        assert torch.allclose(binary_kd_loss(zs, zt, y.double(), rho=rho, temperature=T),
                              kd_loss(two(zs), two(zt), y, rho=rho, temperature=T), atol=1e-12)


def test_labelled_mask_averages_hard_term_over_labelled_only():
    zs, zt, y = batch(n=6, seed=9)
    mask = torch.tensor([True, False, False, True, True, False])
    got = kd_loss(zs, zt, y, rho=0.25, temperature=2.0, labelled=mask)
    soft = kd_loss(zs, zt, rho=1.0, temperature=2.0)
    hard = F.cross_entropy(zs[mask], y[mask])
    assert torch.allclose(got, 0.25 * soft + 0.75 * hard, atol=1e-12)
    # No labelled example at all: only the soft term remains.
    none = torch.zeros(6, dtype=torch.bool)
    assert torch.allclose(kd_loss(zs, zt, y, rho=0.25, temperature=2.0, labelled=none), 0.25 * soft)


def test_reductions_are_consistent():
    zs, zt, y = batch(seed=10)
    per = kd_loss(zs, zt, y, rho=0.7, temperature=2.0, reduction="none")
    assert per.shape == (7,)
    assert torch.allclose(per.sum(), kd_loss(zs, zt, y, rho=0.7, temperature=2.0, reduction="sum"))
    assert torch.allclose(per.mean(), kd_loss(zs, zt, y, rho=0.7, temperature=2.0))


def test_soften_is_softmax_of_scaled_logits():
    zs, _, _ = batch()
    assert torch.allclose(soften(zs, 2.0), torch.softmax(zs / 2.0, 1))
    assert torch.allclose(soften(zs, 2.0).sum(1), torch.ones(7))


logits = st.lists(st.floats(-50, 50, allow_nan=False), min_size=6, max_size=6)


@settings(max_examples=60, deadline=None)
@given(zs=logits, zt=logits, rho=st.floats(0, 1), T=st.floats(0.1, 100), shift=st.floats(-100, 100))
def test_properties_hold_for_all_inputs(zs, zt, rho, T, shift):
    zs, zt = torch.tensor(zs).reshape(2, 3), torch.tensor(zt).reshape(2, 3)
    y = torch.tensor([0, 2])
    loss = kd_loss(zs, zt, y, rho=rho, temperature=T)
    assert loss >= -1e-9  # KL >= 0 and CE >= 0
    # Softmax is invariant to adding a constant to every logit of an example.
    assert torch.allclose(kd_loss(zs + shift, zt - shift, y, rho=rho, temperature=T), loss, atol=1e-6, rtol=1e-6)
    # A student equal to its teacher pays no soft loss.
    assert kd_loss(zt, zt, rho=1.0, temperature=T) <= 1e-9


@settings(max_examples=60, deadline=None)
@given(z=st.floats(-30, 30), T=st.floats(0.1, 100), t2=st.booleans())
def test_pure_soft_gradient_vanishes_at_the_teacher(z, T, t2):
    zt = torch.tensor([z])
    assert torch.allclose(binary_kd_loss_gradient(zt.clone(), zt, rho=1.0, temperature=T, t2_scaling=t2),
                          torch.zeros(1), atol=1e-12)


Z = torch.zeros(3, 4)
Y = torch.zeros(3, dtype=torch.long)
BAD_INPUTS = [
    (dict(rho=1.5), ValueError, "rho must be in \\[0, 1\\]"),
    (dict(rho=-0.1), ValueError, "rho"),
    (dict(rho=float("nan")), ValueError, "rho must not be NaN"),
    (dict(rho="0.5"), TypeError, "rho must be a real number"),
    (dict(rho=True), TypeError, "rho"),
    (dict(temperature=0.0), ValueError, "temperature must be a finite number > 0"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(temperature=None), TypeError, "temperature"),
    (dict(student_logits=torch.zeros(3, 5)), ValueError, "same shape"),
    (dict(student_logits=Z.double()), TypeError, "same dtype"),
    (dict(student_logits=torch.full((3, 4), float("nan"))), ValueError, "student_logits must contain only finite"),
    (dict(teacher_logits=torch.full((3, 4), float("inf"))), ValueError, "teacher_logits must contain only finite"),
    (dict(student_logits=[[0.0] * 4] * 3), TypeError, "student_logits must be a torch.Tensor"),
    (dict(student_logits=torch.zeros(3, 4, dtype=torch.long), teacher_logits=torch.zeros(3, 4, dtype=torch.long)),
     TypeError, "floating-point"),
    (dict(labels=None), ValueError, "labels are required when rho < 1"),
    (dict(labels=torch.zeros(3)), TypeError, "integer tensor"),
    (dict(labels=torch.zeros(4, dtype=torch.long)), ValueError, "labels must have shape \\(3,\\)"),
    (dict(labels=torch.tensor([0, 1, 4])), ValueError, "labels must lie in \\[0, 4\\)"),
    (dict(labels=torch.tensor([0, -1, 2])), ValueError, "labels must lie"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(labelled=torch.ones(3)), TypeError, "labelled must have dtype torch.bool"),
    (dict(labelled=torch.ones(2, dtype=torch.bool)), ValueError, "labelled must have shape"),
    (dict(labelled=[True] * 3), TypeError, "labelled must be a bool torch.Tensor"),
    (dict(student_logits=torch.zeros(3), teacher_logits=torch.zeros(3)), ValueError, "shape \\(N, C\\)"),
]


@pytest.mark.parametrize("overrides, error, message", BAD_INPUTS)
def test_bad_inputs_raise_clear_errors(overrides, error, message):
    args = dict(student_logits=Z, teacher_logits=Z, labels=Y, rho=0.5, temperature=2.0)
    args.update(overrides)
    with pytest.raises(error, match=message):
        kd_loss(args.pop("student_logits"), args.pop("teacher_logits"), args.pop("labels"), **args)


@pytest.mark.parametrize("overrides, message", [
    (dict(labels=torch.tensor([0.0, 2.0, 1.0])), "binary labels must lie in \\[0, 1\\]"),
    (dict(student_logits=torch.zeros(3, 1), teacher_logits=torch.zeros(3, 1)), "shape \\(N,\\)"),
    (dict(labels=torch.zeros(4)), "labels must have shape"),
])
def test_binary_bad_inputs(overrides, message):
    args = dict(student_logits=torch.zeros(3), teacher_logits=torch.zeros(3), labels=torch.zeros(3), rho=0.5,
                temperature=1.0)
    args.update(overrides)
    with pytest.raises(ValueError, match=message):
        binary_kd_loss(args.pop("student_logits"), args.pop("teacher_logits"), args.pop("labels"), **args)
