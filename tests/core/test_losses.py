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


# ---------------------------------------------------------------------------------------------------------------------
# Extreme finite logits: a class masked at torch.finfo(dtype).min (or pushed to .max), where z / T overflows to ±inf.
# The masked class has probability 0 under the teacher and must contribute 0 to the KL, never 0 * inf = NaN.
# ---------------------------------------------------------------------------------------------------------------------

ALL_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
HALF_DTYPES = [torch.float16, torch.bfloat16]
LOW_AND_HIGH_T = [0.1, 0.5, 1.0, 100.0]


def working_dtype(dtype):
    """The dtype kdnb computes in: float32 for 16-bit logits."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def rel_tol(dtype):
    """Relative agreement expected of kdnb against a float64 reference, from the working dtype's precision."""
    return 1e-10 if working_dtype(dtype) == torch.float64 else 2e-5


def ordinary(shape, seed, dtype, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


def plain_kl(zs, zt, T):
    """Per-example KL(softmax(zt/T) || softmax(zs/T)) in float64 by the textbook formula (ordinary logits only)."""
    zs, zt = zs.double(), zt.double()
    pt = torch.exp(zt / T) / torch.exp(zt / T).sum(1, keepdim=True)
    ps = torch.exp(zs / T) / torch.exp(zs / T).sum(1, keepdim=True)
    return (pt * (torch.log(pt) - torch.log(ps))).sum(1)


def assert_close(got, want, dtype, T, what=""):
    """Finite and close to ``want``. The KL is a sum of differences of log-probabilities of order one, so its rounding
    error is absolute, of order eps of the working dtype, times c_T = T² (it dominates for a tiny KL at T = 100)."""
    assert torch.isfinite(got).all(), f"{what}: {got}"
    atol = T**2 * (1e-14 if working_dtype(dtype) == torch.float64 else 2e-6)
    assert torch.allclose(got.double(), want.double(), rtol=rel_tol(dtype), atol=atol), f"{what}: {got} vs {want}"


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("T", LOW_AND_HIGH_T)
def test_class_masked_at_finfo_min_in_both_contributes_nothing(dtype, T):
    """Both mask class 3 at finfo.min: the KL is that over the other three classes (case 01, T < 1 overflows z / T)."""
    zs, zt = ordinary((3, 4), 0, dtype), ordinary((3, 4), 1, dtype)
    zs[:, 3] = zt[:, 3] = torch.finfo(dtype).min
    want = T**2 * plain_kl(zs[:, :3], zt[:, :3], T)
    assert_close(kd_loss(zs, zt, rho=1.0, temperature=T, reduction="none"), want, dtype, T, "kd_loss")
    # The gradient: finite, equal to the closed form, and 0 on the masked class (both probabilities are 0 there).
    s = zs.clone().requires_grad_(True)
    kd_loss(s, zt, rho=1.0, temperature=T, reduction="sum").backward()
    closed = kd_loss_gradient(zs, zt, rho=1.0, temperature=T)
    assert torch.isfinite(s.grad).all() and torch.isfinite(closed).all()
    assert torch.allclose(s.grad.double(), closed.double(), atol=1e-2 if dtype in HALF_DTYPES else 1e-5)
    assert torch.all(closed[:, 3] == 0)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("T", LOW_AND_HIGH_T)
def test_class_masked_by_the_teacher_only(dtype, T):
    """Only the teacher masks class 3 (p_t = 0 there): the sum runs over the teacher's other classes."""
    zs, zt = ordinary((3, 4), 2, dtype), ordinary((3, 4), 3, dtype)
    zt[:, 3] = torch.finfo(dtype).min
    zs64, zt64 = zs.double(), zt[:, :3].double()
    log_pt = zt64 / T - torch.logsumexp(zt64 / T, 1, keepdim=True)
    log_ps = (zs64 / T - torch.logsumexp(zs64 / T, 1, keepdim=True))[:, :3]
    want = T**2 * (log_pt.exp() * (log_pt - log_ps)).sum(1)
    assert_close(kd_loss(zs, zt, rho=1.0, temperature=T, reduction="none"), want, dtype, T, "kd_loss")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_student_masking_a_class_the_teacher_keeps_costs_infinity(dtype):
    """Teacher probability > 0 where the student's is exactly 0: the KL is +inf (not NaN), the gradient is finite."""
    zs, zt = ordinary((2, 3), 4, dtype), ordinary((2, 3), 5, dtype)
    zs[0, 1] = torch.finfo(dtype).min
    s = zs.clone().requires_grad_(True)
    per = kd_loss(s, zt, rho=1.0, temperature=0.5, reduction="none")
    assert torch.isposinf(per[0]) and torch.isfinite(per[1])
    assert torch.allclose(per[1].double(), 0.25 * plain_kl(zs[1:], zt[1:], 0.5)[0], rtol=rel_tol(dtype))
    per.sum().backward()
    assert torch.isfinite(s.grad).all()
    # Closed form: c_T / T (p_s - p_t) with p_s = 0 on the masked class.
    assert torch.allclose(s.grad.double(), kd_loss_gradient(zs, zt, rho=1.0, temperature=0.5).double(),
                          atol=1e-2 if dtype in HALF_DTYPES else 1e-6)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("T", LOW_AND_HIGH_T)
def test_class_at_finfo_max_takes_all_probability(dtype, T):
    """A logit at finfo.max (z / T overflows to +inf for T < 1) takes the whole probability of its example."""
    big = torch.finfo(dtype).max
    zs, zt = ordinary((3, 4), 6, dtype), ordinary((3, 4), 7, dtype)
    zt[:, 0] = big  # p_t = e_0: the KL is -log p_s(class 0)
    zs64 = zs.double()
    want = -T**2 * (zs64 / T - torch.logsumexp(zs64 / T, 1, keepdim=True))[:, 0]
    assert_close(kd_loss(zs, zt, rho=1.0, temperature=T, reduction="none"), want, dtype, T, "one class at max")
    # Two classes at finfo.max share the probability equally, the others get exactly 0.
    zt[:, 1] = big
    p = soften(zt, T)
    assert p.dtype == dtype and torch.equal(p.double(), torch.tensor([[0.5, 0.5, 0.0, 0.0]] * 3))
    want = T**2 * (0.5 * (math.log(0.5) - (zs64 / T - torch.logsumexp(zs64 / T, 1, keepdim=True))[:, :2])).sum(1)
    assert_close(kd_loss(zs, zt, rho=1.0, temperature=T, reduction="none"), want, dtype, T, "two classes at max")
    # A student that matches (its own logits at finfo.max on the same classes) pays nothing.
    assert torch.all(kd_loss(zt, zt, rho=1.0, temperature=T, reduction="none") == 0)
    g = kd_loss_gradient(zs, zt, rho=1.0, temperature=T)
    assert torch.isfinite(g).all()
    ps = torch.softmax(zs64 / T, 1)
    want_g = T * (ps - torch.tensor([0.5, 0.5, 0.0, 0.0]))
    assert torch.allclose(g.double(), want_g, atol=T * (8e-3 if dtype in HALF_DTYPES else 1e-6))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_soften_at_dtype_extremes(dtype):
    fi = torch.finfo(dtype)
    z = torch.tensor([[fi.min, 0.0, 0.0], [fi.max, fi.min, fi.max], [fi.max, 0.0, fi.min]], dtype=dtype)
    for T in LOW_AND_HIGH_T:
        p = soften(z, T)
        assert p.dtype == dtype
        assert torch.equal(p.double(), torch.tensor([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [1.0, 0.0, 0.0]])), T


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("T", LOW_AND_HIGH_T)
def test_binary_teacher_at_dtype_extremes(dtype, T):
    """Teacher logit at finfo.min (p_t = 0): KL = T² softplus(z_s/T); at finfo.max (p_t = 1): T² softplus(-z_s/T)."""
    fi = torch.finfo(dtype)
    zs = ordinary((5,), 8, dtype)
    a = zs.double() / T
    for mask, want in [(fi.min, F.softplus(a)), (fi.max, F.softplus(-a))]:
        zt = torch.full((5,), mask, dtype=dtype)
        got = binary_kd_loss(zs, zt, rho=1.0, temperature=T, reduction="none")
        assert_close(got, T**2 * want, dtype, T, f"teacher at {mask}")
        # The student at the same extreme matches the teacher: no loss, no gradient.
        assert torch.all(binary_kd_loss(zt, zt, rho=1.0, temperature=T, reduction="none") == 0)
        s = zs.clone().requires_grad_(True)
        binary_kd_loss(s, zt, rho=1.0, temperature=T, reduction="sum").backward()
        closed = binary_kd_loss_gradient(zs, zt, rho=1.0, temperature=T)
        assert torch.isfinite(s.grad).all() and torch.isfinite(closed).all()
        assert torch.allclose(s.grad.double(), closed.double(), atol=T * (1e-2 if dtype in HALF_DTYPES else 1e-6))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_binary_student_at_the_opposite_extreme_costs_infinity(dtype):
    fi = torch.finfo(dtype)
    zs = torch.tensor([fi.min, fi.max], dtype=dtype).requires_grad_(True)
    zt = torch.tensor([fi.max, 0.0], dtype=dtype)  # teacher p_t = 1 and 1/2; student probability 0 and 1
    per = binary_kd_loss(zs, zt, rho=1.0, temperature=0.5, reduction="none")
    assert torch.isposinf(per).all()
    per.sum().backward()
    assert torch.isfinite(zs.grad).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_a_term_of_weight_zero_contributes_zero_even_if_infinite(reduction):
    """rho = 0 with an infinite soft term gives the plain cross-entropy, not 0 * inf = NaN; likewise for the binary loss."""
    zs, zt = ordinary((3, 4), 9, torch.float32), ordinary((3, 4), 10, torch.float32)
    zs[:, 2] = torch.finfo(torch.float32).min  # the soft term is +inf at T = 0.5 (the teacher keeps class 2)
    y = torch.tensor([0, 1, 3])
    assert torch.isposinf(kd_loss(zs, zt, rho=1.0, temperature=0.5))
    got = kd_loss(zs, zt, y, rho=0.0, temperature=0.5, reduction=reduction)
    assert torch.equal(got, F.cross_entropy(zs, y, reduction=reduction))
    # A label on the student's masked class: the cross-entropy is -log p = -(finfo.min - logsumexp), huge but finite
    # at T = 1; a labelled mask that leaves that example out removes it.
    y_bad = torch.tensor([2, 1, 3])
    per = kd_loss(zs, zt, y_bad, rho=0.0, temperature=0.5, reduction="none")
    assert torch.isfinite(per).all() and per[0] > 3e38
    keep = torch.tensor([False, True, True])
    got = kd_loss(zs, zt, y_bad, rho=0.0, temperature=0.5, labelled=keep)
    assert torch.allclose(got, F.cross_entropy(zs[1:], y_bad[1:]))
    # Binary: the student at finfo.min where the teacher is at +1 (soft term +inf), with rho = 0.
    bs = torch.tensor([torch.finfo(torch.float32).min, 0.3])
    bt, by = torch.tensor([1.0, -0.2]), torch.tensor([0.0, 1.0])
    got = binary_kd_loss(bs, bt, by, rho=0.0, temperature=0.5, reduction=reduction)
    assert torch.equal(got, F.binary_cross_entropy_with_logits(bs, by, reduction=reduction))


# ---------------------------------------------------------------------------------------------------------------------
# 16-bit logits: computed in float32, the loss returned in float32, gradients flowing back to the 16-bit student.
# ---------------------------------------------------------------------------------------------------------------------


def close_pair(dtype, seed=0, noise=0.01):
    """A student close to its teacher (the end of distillation), rounded to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    zt = 3 * torch.randn(64, 10, generator=g, dtype=torch.float64)
    zs = zt + noise * torch.randn(64, 10, generator=g, dtype=torch.float64)
    return zs.to(dtype), zt.to(dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_half_precision_kl_of_a_close_student(dtype, T):
    """Case 02: within 1% of the float64 KL of the same rounded logits (bf16 arithmetic read negative, fp16 16x)."""
    zs, zt = close_pair(dtype)
    exact = kd_loss(zs.double(), zt.double(), rho=1.0, temperature=T)
    got = kd_loss(zs, zt, rho=1.0, temperature=T)
    assert got.dtype == torch.float32
    assert got > 0 and abs(float(got) - float(exact)) < 1e-2 * float(exact)
    per = kd_loss(zs, zt, rho=1.0, temperature=T, reduction="none")
    assert per.dtype == torch.float32 and torch.all(per >= 0)
    # Binary loss, one logit per example.
    bs, bt = zs[:, 0], zt[:, 0]
    exact = binary_kd_loss(bs.double(), bt.double(), rho=1.0, temperature=T)
    got = binary_kd_loss(bs, bt, rho=1.0, temperature=T)
    assert got.dtype == torch.float32 and got > 0 and abs(float(got) - float(exact)) < 1e-2 * float(exact)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_precision_hard_terms_and_masks(dtype):
    """The hard terms (cross-entropy, binary cross-entropy) and the labelled mask in 16 bits agree with float64."""
    zs, zt = close_pair(dtype, seed=1, noise=0.5)
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(2))
    keep = torch.arange(64) % 3 != 0
    for red in ["mean", "sum", "none"]:
        got = kd_loss(zs, zt, y, rho=0.3, temperature=2.0, labelled=keep, reduction=red)
        exact = kd_loss(zs.double(), zt.double(), y, rho=0.3, temperature=2.0, labelled=keep, reduction=red)
        assert got.dtype == torch.float32 and torch.allclose(got.double(), exact, rtol=1e-5, atol=1e-6)
        yb = (y % 2).to(dtype)
        got = binary_kd_loss(zs[:, 0], zt[:, 0], yb, rho=0.3, temperature=2.0, labelled=keep, reduction=red)
        exact = binary_kd_loss(zs[:, 0].double(), zt[:, 0].double(), yb.double(), rho=0.3, temperature=2.0,
                               labelled=keep, reduction=red)
        assert got.dtype == torch.float32 and torch.allclose(got.double(), exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_precision_large_logits_at_low_temperature(dtype):
    """float16 logits of size 1e4 at T = 0.1: z / T = 1e5 overflows float16, not the float32 working dtype."""
    zs, zt, y = batch(n=8, c=4, seed=11, scale=1e4)
    zs, zt = zs.to(dtype), zt.to(dtype)
    got = kd_loss(zs, zt, y, rho=0.5, temperature=0.1)
    exact = kd_loss(zs.double(), zt.double(), y, rho=0.5, temperature=0.1)
    assert math.isclose(float(got), float(exact), rel_tol=1e-5)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("rho", [0.0, 0.4, 1.0])
def test_half_precision_gradients_flow_to_the_student(dtype, rho):
    """Autograd reaches 16-bit student logits (gradient in their dtype); the closed forms return the logits' dtype."""
    zs, zt = close_pair(dtype, seed=3, noise=0.3)
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(4))
    s = zs.clone().requires_grad_(True)
    kd_loss(s, zt, y, rho=rho, temperature=3.0, reduction="sum").backward()
    exact = kd_loss_gradient(zs.double(), zt.double(), y, rho=rho, temperature=3.0)
    closed = kd_loss_gradient(zs, zt, y, rho=rho, temperature=3.0)
    eps = torch.finfo(dtype).eps
    for grad in (s.grad, closed):
        assert grad.dtype == dtype
        # Rounding of the float32 result to 16 bits: at most one half-ulp of each entry (plus float32 noise).
        assert torch.all((grad.double() - exact).abs() <= eps * exact.abs() + 1e-6)
    b = zs[:, 0].clone().requires_grad_(True)
    yb = (y % 2).to(dtype)
    binary_kd_loss(b, zt[:, 0], yb, rho=rho, temperature=3.0, reduction="sum").backward()
    exact = binary_kd_loss_gradient(zs[:, 0].double(), zt[:, 0].double(), yb.double(), rho=rho, temperature=3.0)
    closed = binary_kd_loss_gradient(zs[:, 0], zt[:, 0], yb, rho=rho, temperature=3.0)
    for grad in (b.grad, closed):
        assert grad.dtype == dtype
        assert torch.all((grad.double() - exact).abs() <= eps * exact.abs() + 1e-6)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_half_precision_soften_is_the_rounded_exact_softmax(dtype):
    zs, _ = close_pair(dtype, seed=5)
    for T in [0.1, 1.0, 4.0]:
        p = soften(zs, T)
        exact = torch.softmax(zs.double() / T, 1)
        assert p.dtype == dtype
        assert torch.all((p.double() - exact).abs() <= torch.finfo(dtype).eps * exact + 1e-7)


# ---------------------------------------------------------------------------------------------------------------------
# Properties for every finite input, in every floating dtype, the dtype's extremes included, and T in [0.1, 100].
# ---------------------------------------------------------------------------------------------------------------------


def any_logit(dtype):
    """Ordinary logits, the dtype's extremes (a class mask), and any finite value of the dtype."""
    fi = torch.finfo(dtype)
    return st.one_of(st.floats(-30, 30), st.sampled_from([fi.min, fi.max, fi.min / 3, fi.max / 3, 0.0]),
                     st.floats(fi.min, fi.max))


@st.composite
def extreme_inputs(draw, binary=False):
    dtype = draw(st.sampled_from(ALL_DTYPES))
    n, c = draw(st.integers(1, 3)), (1 if binary else draw(st.integers(2, 4)))
    shape = (n,) if binary else (n, c)
    # Values <= finfo.max in float64 round to at most finfo.max in ``dtype``: every logit is finite.
    def draw_logits():
        values = draw(st.lists(any_logit(dtype), min_size=n * c, max_size=n * c))
        return torch.tensor(values, dtype=torch.float64).reshape(shape).to(dtype)

    zs, zt = draw_logits(), draw_logits()
    if binary:
        y = torch.tensor(draw(st.lists(st.sampled_from([0.0, 0.3, 1.0]), min_size=n, max_size=n)), dtype=dtype)
    else:
        y = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    T = draw(st.floats(0.1, 100))
    rho = draw(st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1)))
    return dtype, zs, zt, y, T, rho


def shifted_log_softmax64(z, T):
    """float64 log-softmax along the last axis, shifted by the row maximum first (entries <= 0, never NaN)."""
    z = z.double()
    a = (z - z.max(-1, keepdim=True).values) / T
    return a - torch.logsumexp(a, -1, keepdim=True)


def weighted(w, x):
    """``w * x``, and 0 for ``w == 0`` even where ``x`` is infinite."""
    return w * x if w != 0 else torch.zeros_like(x)


def check_loss_properties(per, ref, tol, justified, mean_loss):
    assert not torch.isnan(per).any() and not torch.isnan(mean_loss), (per, mean_loss)
    assert torch.all(per >= -tol), (per, tol)
    for i in range(len(per)):
        if torch.isposinf(per[i]):
            # +inf only where the target gives positive probability to an outcome of student probability exactly 0.
            assert justified[i], (i, per, ref)
        else:
            assert abs(float(per[i]) - float(ref[i])) <= float(tol[i]) + 1e-4 * abs(float(ref[i])), (i, per, ref, tol)


@settings(max_examples=200, deadline=None)
@given(inputs=extreme_inputs())
def test_kd_loss_properties_for_any_finite_logits(inputs):
    dtype, zs, zt, y, T, rho = inputs
    eps = torch.finfo(working_dtype(dtype)).eps
    c_t = T**2
    s = zs.clone().requires_grad_(True)
    per = kd_loss(s, zt, y, rho=rho, temperature=T, reduction="none")
    assert per.dtype == working_dtype(dtype)
    # float64 reference from the same (rounded) logits.
    lt, ls, l1 = shifted_log_softmax64(zt, T), shifted_log_softmax64(zs, T), shifted_log_softmax64(zs, 1.0)
    pt = lt.exp()
    soft_terms = torch.where(pt > 0, pt * (lt - ls), torch.zeros_like(pt))
    ce = -l1[torch.arange(len(y)), y]
    ref = weighted(rho * c_t, soft_terms.sum(1)) + weighted(1 - rho, ce)
    scale = torch.where(pt > 0, pt * (lt.abs() + ls.abs()), torch.zeros_like(pt)).sum(1)
    tol = 64 * eps * (weighted(c_t * rho, 1 + scale) + weighted(1 - rho, 1 + ce.abs()))
    justified = ((rho > 0) & ((pt > 0) & (ls.exp() == 0)).any(1)) | ((rho < 1) & (ce.neg().exp() == 0))
    mean_loss = kd_loss(zs, zt, y, rho=rho, temperature=T)
    check_loss_properties(per.detach(), ref, tol, justified, mean_loss)
    # Gradients: finite everywhere (even where the loss is +inf), and the closed form agrees with autograd.
    per.sum().backward()
    closed = kd_loss_gradient(zs, zt, y, rho=rho, temperature=T)
    assert s.grad.dtype == closed.dtype == dtype
    assert torch.isfinite(s.grad).all() and torch.isfinite(closed).all(), (s.grad, closed)
    atol = (T + 1) * max(4 * torch.finfo(dtype).eps, 1e-5)
    assert torch.allclose(s.grad.double(), closed.double(), atol=atol), (s.grad, closed)
    # soften: finite probabilities whose rows sum to 1.
    p = soften(zs, T)
    assert p.dtype == dtype and torch.isfinite(p).all() and torch.all(p >= 0)
    assert torch.allclose(p.double().sum(1), torch.ones(len(y)), atol=4 * zs.shape[1] * torch.finfo(dtype).eps)


@settings(max_examples=200, deadline=None)
@given(inputs=extreme_inputs(binary=True))
def test_binary_kd_loss_properties_for_any_finite_logits(inputs):
    dtype, zs, zt, y, T, rho = inputs
    eps = torch.finfo(working_dtype(dtype)).eps
    c_t = T**2
    s = zs.clone().requires_grad_(True)
    per = binary_kd_loss(s, zt, y, rho=rho, temperature=T, reduction="none")
    assert per.dtype == working_dtype(dtype)
    a_s, a_t, z64, y64 = zs.double() / T, zt.double() / T, zs.double(), y.double()
    # Bernoulli log-probabilities (positive, negative outcome) of teacher and student, float64.
    lt = torch.stack([-F.softplus(-a_t), -F.softplus(a_t)], 1)
    ls = torch.stack([-F.softplus(-a_s), -F.softplus(a_s)], 1)
    # The teacher's outcome probabilities as the loss forms them in its working dtype, σ(z_t/T) and 1 - σ(z_t/T) (the
    # book's formula, kept so that float32 / float64 results stay as they are): 1 - σ carries an absolute rounding
    # error of one eps of that dtype where σ is near 1, which no formula on these inputs can be judged against.
    p_pos = torch.sigmoid(zt.to(working_dtype(dtype)) / T)
    pt = torch.stack([p_pos, 1 - p_pos], 1).double()
    soft = torch.where(pt > 0, pt * (lt - ls), torch.zeros_like(pt)).sum(1)
    target = torch.stack([y64, 1 - y64], 1)
    l1 = torch.stack([-F.softplus(-z64), -F.softplus(z64)], 1)
    bce = torch.where(target > 0, -target * l1, torch.zeros_like(l1)).sum(1)
    ref = weighted(rho * c_t, soft) + weighted(1 - rho, bce)
    scale = torch.where(pt > 0, pt * (lt.abs() + ls.abs()), torch.zeros_like(pt)).sum(1)
    tol = 64 * eps * (weighted(c_t * rho, 1 + scale) + weighted(1 - rho, 1 + z64.abs() + bce))
    justified = (((rho > 0) & ((pt > 0) & (ls.exp() == 0)).any(1))
                 | ((rho < 1) & ((target > 0) & (l1.exp() == 0)).any(1)))
    mean_loss = binary_kd_loss(zs, zt, y, rho=rho, temperature=T)
    check_loss_properties(per.detach(), ref, tol, justified, mean_loss)
    per.sum().backward()
    closed = binary_kd_loss_gradient(zs, zt, y, rho=rho, temperature=T)
    assert s.grad.dtype == closed.dtype == dtype
    assert torch.isfinite(s.grad).all() and torch.isfinite(closed).all(), (s.grad, closed)
    atol = (T + 1) * max(4 * torch.finfo(dtype).eps, 1e-5)
    assert torch.allclose(s.grad.double(), closed.double(), atol=atol), (s.grad, closed)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_weight_that_rounds_to_zero_in_the_dtype_counts_as_zero(dtype):
    """rho = 1e-300 is 0 in float32: its infinite soft term must not give 0 * inf = NaN (found by the property test)."""
    zs, zt = ordinary((2, 3), 12, dtype), ordinary((2, 3), 13, dtype)
    zs[:, 0] = torch.finfo(dtype).min  # soft term +inf at T = 0.5
    y = torch.tensor([1, 2])
    assert torch.isposinf(kd_loss(zs, zt, rho=1.0, temperature=0.5))
    got = kd_loss(zs, zt, y, rho=1e-300, temperature=0.5, reduction="none")
    assert torch.equal(got, F.cross_entropy(zs.float(), y, reduction="none"))
    b = binary_kd_loss(zs[:, 0], zt[:, 1].abs() + 1, y.to(dtype) - 1, rho=1e-300, temperature=0.5, reduction="none")
    assert torch.equal(b, F.binary_cross_entropy_with_logits(zs[:, 0].float(), (y - 1).float(), reduction="none"))


# ---------------------------------------------------------------------------------------------------------------------
# float32 / float64 on ordinary inputs: bit-identical to the formulas the chapters were computed with.
# ---------------------------------------------------------------------------------------------------------------------


def reference_reduce(soft, hard, rho, c_t, labelled, reduction):
    """The book's reduction as the chapters computed it (before the extreme-logit and 16-bit handling)."""
    if labelled is not None:
        hard = torch.where(labelled, hard, torch.zeros_like(hard))
    if reduction == "none":
        return rho * c_t * soft + (1.0 - rho) * hard
    if reduction == "sum":
        return rho * c_t * soft.sum() + (1.0 - rho) * hard.sum()
    n_hard = hard.numel() if labelled is None else int(labelled.sum())
    hard_mean = hard.sum() / n_hard if n_hard > 0 else hard.sum() * 0.0
    return rho * c_t * soft.mean() + (1.0 - rho) * hard_mean


def reference_kd_loss(zs, zt, y, rho, T, t2, labelled, reduction):
    log_p_teacher = F.log_softmax(zt / T, dim=1)
    log_p_student = F.log_softmax(zs / T, dim=1)
    soft = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    if rho < 1.0:
        labels = y if labelled is None else torch.where(labelled, y, torch.zeros_like(y))
        hard = F.cross_entropy(zs, labels, reduction="none")
    else:
        hard = torch.zeros_like(soft)
    return reference_reduce(soft, hard, rho, T**2 if t2 else 1.0, labelled, reduction)


def reference_binary_kd_loss(zs, zt, y, rho, T, t2, labelled, reduction):
    a_t, a_s = zt / T, zs / T
    p_t = torch.sigmoid(a_t)
    soft = p_t * (F.softplus(-a_s) - F.softplus(-a_t)) + (1 - p_t) * (F.softplus(a_s) - F.softplus(a_t))
    hard = F.binary_cross_entropy_with_logits(zs, y, reduction="none") if rho < 1.0 else torch.zeros_like(soft)
    return reference_reduce(soft, hard, rho, T**2 if t2 else 1.0, labelled, reduction)


def reference_kd_loss_gradient(zs, zt, y, rho, T, t2):
    c_t = T**2 if t2 else 1.0
    grad = rho * c_t / T * (torch.softmax(zs / T, 1) - torch.softmax(zt / T, 1))
    if rho < 1.0:
        grad = grad + (1.0 - rho) * (torch.softmax(zs, 1) - F.one_hot(y, zs.shape[1]).to(zs.dtype))
    return grad


def reference_binary_kd_loss_gradient(zs, zt, y, rho, T, t2):
    c_t = T**2 if t2 else 1.0
    grad = rho * c_t / T * (torch.sigmoid(zs / T) - torch.sigmoid(zt / T))
    if rho < 1.0:
        grad = grad + (1.0 - rho) * (torch.sigmoid(zs) - y)
    return grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [0.1, 3.0, 1e2, 1e4])
@pytest.mark.parametrize("T", [0.1, 0.5, 1.0, 4.0, 100.0])
@pytest.mark.parametrize("rho", [0.0, 0.3, 1.0])
def test_ordinary_float32_float64_results_are_bit_identical_to_the_chapters_formulas(dtype, scale, T, rho):
    g = torch.Generator().manual_seed(int(scale * 10) + int(T * 10) + int(rho * 10))
    zs = (scale * torch.randn(9, 5, generator=g, dtype=torch.float64)).to(dtype)
    zt = (scale * torch.randn(9, 5, generator=g, dtype=torch.float64)).to(dtype)
    y = torch.randint(0, 5, (9,), generator=g)
    yb = torch.rand(9, generator=g, dtype=torch.float64).to(dtype)
    for t2, reduction, labelled in [(True, "mean", None), (False, "sum", None), (True, "none", None),
                                    (True, "mean", torch.arange(9) % 2 == 0)]:
        for ours, theirs, student, teacher, target in [(kd_loss, reference_kd_loss, zs, zt, y),
                                                       (binary_kd_loss, reference_binary_kd_loss, zs[:, 0], zt[:, 0], yb)]:
            a, b = student.clone().requires_grad_(True), student.clone().requires_grad_(True)
            got = ours(a, teacher, target, rho=rho, temperature=T, t2_scaling=t2, labelled=labelled, reduction=reduction)
            want = theirs(b, teacher, target, rho, T, t2, labelled, reduction)
            assert got.dtype == want.dtype == dtype and torch.equal(got, want), (ours.__name__, t2, reduction)
            got.sum().backward()
            want.sum().backward()
            assert torch.equal(a.grad, b.grad), (ours.__name__, t2, reduction)
        for t2 in [True, False]:
            assert torch.equal(kd_loss_gradient(zs, zt, y, rho=rho, temperature=T, t2_scaling=t2),
                               reference_kd_loss_gradient(zs, zt, y, rho, T, t2))
            assert torch.equal(binary_kd_loss_gradient(zs[:, 0], zt[:, 0], yb, rho=rho, temperature=T, t2_scaling=t2),
                               reference_binary_kd_loss_gradient(zs[:, 0], zt[:, 0], yb, rho, T, t2))
    assert torch.equal(soften(zs, T), torch.softmax(zs / T, dim=-1))
