"""Tests of kdnb.papers.ensemble_distillation: the per-teacher KD losses and gradients, the capped min-norm solver
(against SLSQP, a brute-force active-set enumeration, scikit-learn's one-class SVM and the M = 2 closed form), its
KKT conditions and invariances, the projection, the objective and the teachers."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from kdnb.core.losses import kd_loss, kd_loss_gradient
from kdnb.core.training import fit
from kdnb.core.models import MLP
from kdnb.papers import ensemble_distillation as ed


def random_problem(rng, m=None, rank_deficient=False):
    m = int(rng.integers(2, 7)) if m is None else m
    d = int(rng.integers(1, m)) if rank_deficient else m + int(rng.integers(1, 8))
    vectors = rng.normal(size=(m, d)) * rng.uniform(0.2, 3.0, size=(m, 1))
    cap = float(rng.uniform(1.0 / m, 1.2))
    return vectors, vectors @ vectors.T, cap


def brute_force(gram, cap):
    """The exact optimum by enumerating every active set (each weight at 0, at C, or free)."""
    m = len(gram)
    cap = min(cap, 1.0)
    best = None
    for part in itertools.product(range(3), repeat=m):
        part = np.array(part)
        free, upper = part == 2, part == 1
        w = np.zeros(m)
        w[upper] = cap
        nf = int(free.sum())
        if nf == 0:
            if abs(cap * upper.sum() - 1) > 1e-12:
                continue
        else:
            kkt = np.zeros((nf + 1, nf + 1))
            kkt[:nf, :nf] = gram[np.ix_(free, free)]
            kkt[:nf, nf], kkt[nf, :nf] = -1.0, 1.0
            rhs = np.r_[-cap * gram[np.ix_(free, upper)].sum(1), 1 - cap * upper.sum()]
            sol, *_ = np.linalg.lstsq(kkt, rhs, rcond=None)
            if np.abs(kkt @ sol - rhs).max() > 1e-9:
                continue
            w[free] = sol[:nf]
        if w.min() < -1e-12 or w.max() > cap + 1e-12:
            continue
        value = w @ gram @ w
        if best is None or value < best[0]:
            best = (value, w)
    return best[1]


def slsqp(gram, cap):
    m = len(gram)
    result = minimize(lambda w: w @ gram @ w, np.full(m, 1.0 / m), jac=lambda w: 2 * gram @ w, method="SLSQP",
                      bounds=[(0.0, min(cap, 1.0))] * m,
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(m)}],
                      options=dict(ftol=1e-16, maxiter=1000))
    return result.x


def objective(gram, w):
    return float(w @ gram @ w)


# --- losses and gradients -----------------------------------------------------------------------------------------

def logits(n=7, m=3, k=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g, dtype=dtype) * 2, torch.randn(n, m, k, generator=g, dtype=dtype) * 3)


def test_per_teacher_losses_are_kd_loss_with_rho_one():
    z, zt = logits(dtype=torch.float64)
    losses = ed.per_teacher_kd_losses(z, zt, 3.0)
    expected = torch.stack([kd_loss(z, zt[:, m], rho=1.0, temperature=3.0) for m in range(zt.shape[1])])
    torch.testing.assert_close(losses, expected, rtol=1e-12, atol=1e-12)


def test_logit_gradients_equal_autograd_of_each_loss_in_float32():
    z, zt = logits()
    grads = ed.kd_logit_gradients(z, zt, 4.0)
    assert grads.shape == (3, 7, 5)
    for m in range(3):
        zz = z.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(ed.per_teacher_kd_losses(zz, zt, 4.0)[m], zz)
        assert float((grads[m] - auto).abs().max()) <= 1e-6
        closed = kd_loss_gradient(z, zt[:, m], rho=1.0, temperature=4.0) / z.shape[0]
        torch.testing.assert_close(grads[m], closed)


def test_logit_alignment_weighted_gradient_is_kd_towards_the_mixture():
    z, zt = logits(dtype=torch.float64)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    grads = ed.kd_logit_gradients(z, zt, 2.0)
    mixture = (w[None, :, None] * torch.softmax(zt / 2.0, -1)).sum(1)
    expected = 2.0 / z.shape[0] * (torch.softmax(z / 2.0, -1) - mixture)
    torch.testing.assert_close((w[:, None, None] * grads).sum(0), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make, error, match", [
    (lambda z, zt: (z, zt[:, :1]), ValueError, "M >= 2"),
    (lambda z, zt: (z[:3], zt), ValueError, "teacher_logits must have shape"),
    (lambda z, zt: (z, zt[..., :4]), ValueError, "teacher_logits must have shape"),
    (lambda z, zt: (z.double(), zt), TypeError, "same dtype"),
    (lambda z, zt: (z.fill_(float("nan")), zt), ValueError, "student_logits"),
    (lambda z, zt: (z[:, :1], zt[..., :1]), ValueError, "K >= 2"),
])
def test_bad_logits_raise(make, error, match):
    z, zt = make(*logits())
    with pytest.raises(error, match=match):
        ed.per_teacher_kd_losses(z, zt)
    with pytest.raises(error, match=match):
        ed.kd_logit_gradients(z, zt)


@pytest.mark.parametrize("t", [0.0, -1.0, float("nan")])
def test_bad_temperature_raises(t):
    with pytest.raises(ValueError, match="temperature"):
        ed.per_teacher_kd_losses(*logits(), t)


# --- the solver ---------------------------------------------------------------------------------------------------

def test_solver_matches_brute_force_and_slsqp_on_300_full_rank_problems():
    rng = np.random.default_rng(1)
    worst_w = worst_gap = worst_slsqp = 0.0
    for _ in range(300):
        _, gram, cap = random_problem(rng)
        w = ed.capped_min_norm(gram, cap)
        exact = brute_force(gram, cap)
        scale = np.diag(gram).max()
        worst_w = max(worst_w, np.abs(w - exact).max())
        worst_gap = max(worst_gap, (objective(gram, w) - objective(gram, exact)) / scale)
        reference = slsqp(gram, cap)
        worst_slsqp = max(worst_slsqp, (objective(gram, w) - objective(gram, reference)) / scale)
    assert worst_w <= 1e-5
    assert worst_gap <= 1e-9
    assert worst_slsqp <= 1e-9


def test_solver_objective_matches_on_rank_deficient_grams():
    rng = np.random.default_rng(2)
    for _ in range(150):
        _, gram, cap = random_problem(rng, m=int(rng.integers(3, 7)), rank_deficient=True)
        w = ed.capped_min_norm(gram, cap)
        scale = np.diag(gram).max()
        assert (objective(gram, w) - objective(gram, brute_force(gram, cap))) / scale <= 1e-9
        assert (objective(gram, w) - objective(gram, slsqp(gram, cap))) / scale <= 1e-9
        assert abs(w.sum() - 1) < 1e-9 and w.min() >= -1e-12 and w.max() <= min(cap, 1) + 1e-9


def test_solver_matches_one_class_svm():
    rng = np.random.default_rng(3)
    for _ in range(100):
        _, gram, cap = random_problem(rng)
        m = len(gram)
        cap = float(rng.uniform(1 / m + 1e-3, 1.0))
        w = ed.capped_min_norm(gram, cap)
        assert np.abs(ed.capped_min_norm(gram, cap, solver="ocsvm") - w).max() <= 1e-5


def test_two_teachers_closed_form():
    rng = np.random.default_rng(4)
    for _ in range(100):
        g = rng.normal(size=(2, 6))
        cap = float(rng.uniform(0.5, 1.3))
        c = min(cap, 1.0)
        w1 = np.clip((g[1] - g[0]) @ g[1] / np.sum((g[0] - g[1]) ** 2), 1 - c, c)
        assert abs(ed.capped_min_norm(g @ g.T, cap)[0] - w1) <= 1e-10


def test_kkt_uncapped_teachers_see_a_descent_direction():
    rng = np.random.default_rng(5)
    for _ in range(300):
        vectors, gram, cap = random_problem(rng)
        w = ed.capped_min_norm(gram, cap)
        d = w @ vectors
        tol = 1e-8 * (np.linalg.norm(vectors, axis=1) ** 2).max()
        for m in np.flatnonzero(w < min(cap, 1.0) - 1e-6):
            assert vectors[m] @ d >= d @ d - tol


def test_slack_only_for_capped_teachers_and_primal_dual_gap_zero():
    rng = np.random.default_rng(6)
    for _ in range(100):
        vectors, gram, cap = random_problem(rng)
        c = min(cap, 1.0)
        w = ed.capped_min_norm(gram, cap)
        rho, slack = ed.min_norm_slack(gram, w, cap)
        assert (slack >= 0).all()
        assert (slack[w < c - 1e-7] == 0).all()
        d = w @ vectors
        inner = vectors @ d
        assert (inner + slack >= rho - 1e-9 * np.diag(gram).max()).all()
        # strong duality: primal 1/2|d|^2 - rho + C sum(xi) equals the dual -1/2|d|^2
        primal = 0.5 * d @ d - rho + c * slack.sum()
        assert abs(primal + 0.5 * d @ d) <= 1e-9 * np.diag(gram).max()


def test_limits_of_the_cap():
    rng = np.random.default_rng(7)
    _, gram, _ = random_problem(rng, m=5)
    assert np.array_equal(ed.capped_min_norm(gram, 0.2), np.full(5, 0.2))
    assert np.array_equal(ed.capped_min_norm(gram, 1 / 5, solver="ocsvm"), np.full(5, 0.2))
    np.testing.assert_allclose(ed.capped_min_norm(gram, 3.0), ed.capped_min_norm(gram, 1.0), atol=1e-12)
    with pytest.raises(ValueError, match="C must be >= 1/M"):
        ed.capped_min_norm(gram, 0.1)
    assert np.array_equal(ed.capped_min_norm(gram, 0.1, infeasible="uniform"), np.full(5, 0.2))
    values = [objective(gram, ed.capped_min_norm(gram, c)) for c in np.linspace(0.2, 1.5, 40)]
    assert np.all(np.diff(values) <= 1e-10 * np.diag(gram).max())


def test_warm_start_gives_the_same_optimum():
    rng = np.random.default_rng(8)
    for _ in range(50):
        _, gram, cap = random_problem(rng)
        start = rng.dirichlet(np.ones(len(gram)))
        np.testing.assert_allclose(ed.capped_min_norm(gram, cap, initial=start), ed.capped_min_norm(gram, cap),
                                   atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(1e-4, 1e4))
def test_invariant_to_rescaling_and_permutation(seed, scale):
    rng = np.random.default_rng(seed)
    _, gram, cap = random_problem(rng)
    w = ed.capped_min_norm(gram, cap)
    np.testing.assert_allclose(ed.capped_min_norm(gram * scale**2, cap), w, atol=1e-9)
    perm = rng.permutation(len(gram))
    np.testing.assert_allclose(ed.capped_min_norm(gram[np.ix_(perm, perm)], cap), w[perm], atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(v=st.lists(st.floats(-10, 10), min_size=1, max_size=8), fraction=st.floats(0, 1))
def test_projection_sums_to_one_respects_bounds_and_matches_bisection(v, fraction):
    v = np.array(v)
    m = len(v)
    cap = 1 / m + fraction * (1.5 - 1 / m)
    w = ed.project_capped_simplex(v, cap)
    c = min(cap, 1.0)
    assert abs(w.sum() - 1) <= 1e-12 and w.min() >= 0 and w.max() <= c
    lo, hi = v.min() - c - 1, v.max() + 1
    for _ in range(200):
        tau = (lo + hi) / 2
        lo, hi = (tau, hi) if np.clip(v - tau, 0, c).sum() > 1 else (lo, tau)
    np.testing.assert_allclose(w, np.clip(v - (lo + hi) / 2, 0, c), atol=1e-9)


def test_projection_is_the_nearest_feasible_point():
    rng = np.random.default_rng(9)
    v = rng.normal(size=5)
    w = ed.project_capped_simplex(v, 0.35)
    for _ in range(200):
        other = ed.project_capped_simplex(rng.normal(size=5) * 3, 0.35)
        assert np.sum((v - w) ** 2) <= np.sum((v - other) ** 2) + 1e-12


@pytest.mark.parametrize("gram, cap, error, match", [
    (np.eye(3), 0.0, ValueError, "C must be finite and > 0"),
    (np.eye(3), -1.0, ValueError, "C must be finite and > 0"),
    (np.eye(3), float("nan"), ValueError, "C must be finite"),
    (np.eye(3), 0.2, ValueError, "C must be >= 1/M"),
    (np.eye(3), True, TypeError, "C must be a real number"),
    (np.ones((2, 3)), 0.6, ValueError, "square"),
    (np.array([[1.0, 0.5], [0.0, 1.0]]), 0.6, ValueError, "symmetric"),
    (np.array([[1.0, 2.0], [2.0, 1.0]]), 0.6, ValueError, "positive semi-definite"),
    (np.ones((1, 1)), 1.0, ValueError, "M >= 2"),
    (np.array([[1.0, np.nan], [np.nan, 1.0]]), 0.6, ValueError, "finite"),
])
def test_bad_solver_inputs_raise(gram, cap, error, match):
    with pytest.raises(error, match=match):
        ed.capped_min_norm(gram, cap)


def test_bad_solver_choices_raise():
    with pytest.raises(ValueError, match="solver"):
        ed.capped_min_norm(np.eye(3), 0.6, solver="frank-wolfe")
    with pytest.raises(ValueError, match="infeasible"):
        ed.capped_min_norm(np.eye(3), 0.6, infeasible="clamp")
    with pytest.raises(ValueError, match="initial"):
        ed.capped_min_norm(np.eye(3), 0.6, initial=[0.5, 0.5])
    with pytest.raises(ValueError, match="C must be >= 1/M"):
        ed.project_capped_simplex([0.1, 0.2, 0.3], 0.2)


# --- weights from gradients ---------------------------------------------------------------------------------------

def test_ensemble_weights_flat_and_batch_mean_grams():
    z, zt = logits(n=16, m=4, k=10, dtype=torch.float64)
    grads = ed.kd_logit_gradients(z, zt)
    flat = grads.reshape(4, -1).numpy()
    np.testing.assert_allclose(ed.ensemble_weights(grads, 0.6), ed.capped_min_norm(flat @ flat.T, 0.6), atol=1e-12)
    mean = grads.mean(1).numpy()
    np.testing.assert_allclose(ed.ensemble_weights(grads, 0.6, gram="batch_mean"),
                               ed.capped_min_norm(mean @ mean.T, 0.6), atol=1e-12)


def test_normalized_weights_sum_to_one_and_can_exceed_the_cap():
    rng = np.random.default_rng(10)
    exceeded = 0
    for _ in range(100):
        grads = torch.as_tensor(rng.normal(size=(3, 1, 4)) * rng.uniform(0.05, 5, size=(3, 1, 1)))
        w = ed.ensemble_weights(grads, 0.6, normalize=True)
        assert abs(w.sum() - 1) < 1e-12 and w.min() >= 0
        exceeded += w.max() > 0.6 + 1e-9
    assert exceeded > 0
    with pytest.raises(ValueError, match="zero gradient"):
        ed.ensemble_weights(torch.zeros(3, 2, 4, dtype=torch.float64), 0.6, normalize=True)
    with pytest.raises(ValueError, match="grads must have shape"):
        ed.ensemble_weights(torch.zeros(1, 2, 4), 0.6)


# --- the loss and the objective -----------------------------------------------------------------------------------

def test_ensemble_loss_methods():
    z, zt = logits(n=8, m=3, k=5, dtype=torch.float64)
    y = torch.arange(8) % 5
    losses = ed.per_teacher_kd_losses(z, zt)
    ce = torch.nn.functional.cross_entropy(z, y)
    torch.testing.assert_close(ed.ensemble_kd_loss(z, zt, y, method="ce"), ce)
    torch.testing.assert_close(ed.ensemble_kd_loss(z, zt, y, method="aver"), ce + 0.9 * losses.mean())
    torch.testing.assert_close(ed.ensemble_kd_loss(z, zt, y, [0.2, 0.3, 0.5], alpha=0.5, gamma=0.0),
                               0.5 * (torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64) * losses).sum())
    mix = torch.softmax(zt / 4, -1).mean(1)
    expected = ce + 0.9 * 16 * kd_loss(z, torch.log(mix) * 4, rho=1.0, temperature=4.0) / 16
    torch.testing.assert_close(ed.ensemble_kd_loss(z, zt, y, method="prob_average"), expected)
    with pytest.raises(ValueError, match="weights are required"):
        ed.ensemble_kd_loss(z, zt, y, method="aekd")
    with pytest.raises(ValueError, match="labels are required"):
        ed.ensemble_kd_loss(z, zt, None, method="aver")
    with pytest.raises(ValueError, match="method"):
        ed.ensemble_kd_loss(z, zt, y, method="mean")


def test_weights_carry_no_gradient_and_gradient_is_kd_to_mixture():
    z, zt = logits(n=8, m=3, k=5, dtype=torch.float64)
    z.requires_grad_(True)
    w = ed.ensemble_weights(ed.kd_logit_gradients(z, zt), 0.6)
    (grad,) = torch.autograd.grad(ed.ensemble_kd_loss(z, zt, None, w, gamma=0.0, alpha=1.0), z)
    mixture = (torch.as_tensor(w)[None, :, None] * torch.softmax(zt / 4, -1)).sum(1)
    torch.testing.assert_close(grad, 4 / 8 * (torch.softmax(z.detach() / 4, -1) - mixture))


def small_run(method, cap=0.6, **kwargs):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (40,), generator=g)
    zt = torch.randn(40, 3, 4, generator=g, dtype=torch.float64) * 2
    student = MLP(6, (5,), 4, generator=torch.Generator().manual_seed(1)).double()
    obj = ed.EnsembleObjective(method=method, C=cap, **kwargs)
    fit(student, obj, x, [zt, y], epochs=3, batch_size=16, generator=torch.Generator().manual_seed(2),
        optimizer="sgd", lr=0.05, progress=False)
    return obj


def test_objective_records_every_step_and_cap_one_over_m_is_aver():
    aekd, aver = small_run("aekd", cap=1 / 3), small_run("aver")
    assert aekd.weight_history().shape == (9, 3)
    assert np.array_equal(aekd.weight_history(), aver.weight_history())
    np.testing.assert_allclose(aekd.losses, aver.losses, rtol=1e-12)
    capped = small_run("aekd", cap=0.6).weight_history()
    assert np.abs(capped.sum(1) - 1).max() < 1e-9 and capped.min() >= -1e-12 and capped.max() <= 0.6 + 1e-9
    assert small_run("ce").weights == []


def test_distill_decay_schedule():
    obj = ed.EnsembleObjective(distill_decay=True, total_steps=100)
    assert obj.coefficients(0) == (0.9, pytest.approx(0.1))
    assert obj.coefficients(75)[0] == pytest.approx(0.45)
    assert obj.coefficients(100) == (0.0, 1.0)
    assert ed.EnsembleObjective().coefficients(99) == (0.9, 1.0)
    with pytest.raises(ValueError, match="total_steps"):
        ed.EnsembleObjective(distill_decay=True)
    with pytest.raises(ValueError, match="C"):
        ed.EnsembleObjective(C=0.0)


# --- teachers -------------------------------------------------------------------------------------------------------

def test_teacher_ensemble_is_deterministic_and_noise_hurts():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=g) * 3
    y = torch.randint(0, 4, (200,), generator=g)
    x = centres[y] + torch.randn(200, 8, generator=g)

    def make():
        return ed.train_teacher_ensemble(x[:120], y[:120], x[120:], y[120:], generator=torch.Generator().manual_seed(3),
                                         noise_rates=(0.0, 0.9), hidden=(16,), epochs=50, n_classes=4)

    first, second = make(), make()
    assert first.train_logits.shape == (120, 2, 4) and first.test_logits.shape == (80, 2, 4)
    torch.testing.assert_close(first.train_logits, second.train_logits, rtol=0, atol=0)
    assert first.accuracies[0] > first.accuracies[1]
    with pytest.raises(ValueError, match="noise_rates"):
        ed.train_teacher_ensemble(x, y, x, y, generator=g, noise_rates=(0.0,))
