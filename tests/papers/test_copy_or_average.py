"""kdnb.papers.copy_or_average: the interaction function against quadrature, the analytic gradient against
differences and autograd, the Hessian against differences of the gradient, invariances, the closed forms against a
scalar minimiser, copy-average points, the fits, the classifier, and bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.polynomial.hermite_e import hermegauss
from scipy import integrate
from scipy.optimize import minimize_scalar
from scipy.special import erf

from kdnb.papers import copy_or_average as ca

SCALES = [ca.DEFAULT_ERF_SCALE, 1.0]


def random_network(seed, n=3, k=4, d=5):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 0.7, (n, d)), rng.normal(0, 1, n), rng.normal(0, 0.7, (k, d)), rng.normal(0, 1, k))


def quadrature_interaction(w, v, scale, points=80):
    """E[erf(c w·x) erf(c v·x)] by 2-D Gauss–Hermite quadrature in the plane spanned by w and v."""
    basis, _ = np.linalg.qr(np.stack([w, v]).T)  # (d, 2), orthonormal
    pw, pv = basis.T @ w, basis.T @ v
    nodes, weights = hermegauss(points)  # for the weight exp(-x²/2)
    weights = weights / math.sqrt(2 * math.pi)
    x1, x2 = np.meshgrid(nodes, nodes, indexing="ij")
    values = erf(scale * (pw[0] * x1 + pw[1] * x2)) * erf(scale * (pv[0] * x1 + pv[1] * x2))
    return float(weights @ values @ weights)


# --- the interaction function -------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", SCALES)
def test_erf_interaction_matches_gauss_hermite_quadrature(scale):
    rng = np.random.default_rng(0)
    for _ in range(5):
        w, v = rng.normal(0, 0.6, 4), rng.normal(0, 0.6, 4)
        closed = ca.interaction(w[None], v[None], erf_scale=scale)[0, 0]
        assert closed == pytest.approx(quadrature_interaction(w, v, scale), abs=1e-8)
        assert ca.interaction(w[None], w[None], erf_scale=scale)[0, 0] == pytest.approx(
            quadrature_interaction(w, w, scale), abs=1e-8)


def test_relu_interaction_matches_dblquad():
    w, v = np.array([1.0, 0.3]), np.array([-0.4, 0.9])
    density = lambda y, x: math.exp(-(x * x + y * y) / 2) / (2 * math.pi)
    value, _ = integrate.dblquad(lambda y, x: max(w @ [x, y], 0) * max(v @ [x, y], 0) * density(y, x),
                                 -9, 9, -9, 9, epsabs=1e-11)
    assert ca.interaction(w[None], v[None], "relu")[0, 0] == pytest.approx(value, abs=1e-8)
    # Orthogonal unit ReLU neurons interact with g = 1/(2π); a unit neuron has energy 1/2.
    expected = np.array([[0.5, 1 / (2 * np.pi)], [1 / (2 * np.pi), 0.5]])
    assert np.allclose(ca.interaction(np.eye(2), np.eye(2), "relu"), expected, atol=1e-15)


def test_teacher_energy_and_orthogonal_neurons():
    V, _ = ca.orthonormal_teacher(4)
    G = ca.interaction(V, V)
    assert np.allclose(G, np.eye(4) / 3, atol=1e-15)  # (2/π) arcsin(1/2) = 1/3, orthogonal neurons do not interact


# --- the loss, its gradient and Hessian ------------------------------------------------------------------------------

def test_loss_matches_monte_carlo_also_for_a_non_orthonormal_teacher():
    W, a, V, b = random_network(1)  # a teacher with random, non-orthogonal rows and weights
    loss = ca.population_loss(W, a, V, b)
    mc, se = ca.monte_carlo_loss(W, a, V, b, n_samples=400_000, seed=3)
    assert abs(mc - loss) < 4 * se
    mc_relu, se_relu = ca.monte_carlo_loss(W, a, V, b, "relu", n_samples=400_000, seed=4)
    assert abs(mc_relu - ca.population_loss(W, a, V, b, "relu")) < 4 * se_relu


def test_half_halves_the_loss_gradient_and_hessian():
    W, a, V, b = random_network(2)
    assert ca.population_loss(W, a, V, b, half=True) == pytest.approx(ca.population_loss(W, a, V, b) / 2, rel=1e-15)
    full, half = ca.population_gradient(W, a, V, b), ca.population_gradient(W, a, V, b, half=True)
    assert np.allclose(half[0], full[0] / 2) and np.allclose(half[1], full[1] / 2)
    assert np.allclose(ca.population_hessian(W, a, V, b, half=True), ca.population_hessian(W, a, V, b) / 2)
    mc, _ = ca.monte_carlo_loss(W, a, V, b, n_samples=1000, seed=0)
    assert ca.monte_carlo_loss(W, a, V, b, n_samples=1000, seed=0, half=True)[0] == pytest.approx(mc / 2)


def flat_loss(theta, n, d, V, b, activation, scale):
    return ca.population_loss(theta[:n * d].reshape(n, d), theta[n * d:], V, b, activation, scale)


def flat_gradient(theta, n, d, V, b, activation="erf", scale=ca.DEFAULT_ERF_SCALE):
    gW, ga = ca.population_gradient(theta[:n * d].reshape(n, d), theta[n * d:], V, b, activation, scale)
    return np.concatenate([gW.ravel(), ga])


@pytest.mark.parametrize("activation, scale", [("erf", ca.DEFAULT_ERF_SCALE), ("erf", 1.0), ("relu", 1.0)])
def test_gradient_matches_central_differences_and_autograd(activation, scale):
    W, a, V, b = random_network(5)
    n, d = W.shape
    theta = np.concatenate([W.ravel(), a])
    analytic = flat_gradient(theta, n, d, V, b, activation, scale)
    h = 1e-6
    numeric = np.array([(flat_loss(theta + h * e, n, d, V, b, activation, scale)
                         - flat_loss(theta - h * e, n, d, V, b, activation, scale)) / (2 * h)
                        for e in np.eye(theta.size)])
    assert np.abs(analytic - numeric).max() < 1e-7
    t = torch.from_numpy(theta).requires_grad_(True)
    loss = ca._torch_loss(t, n, d, torch.from_numpy(V), torch.from_numpy(b), activation, scale)
    (auto,) = torch.autograd.grad(loss, t)
    assert float(loss.detach()) == pytest.approx(ca.population_loss(W, a, V, b, activation, scale), rel=1e-13)
    assert np.abs(analytic - auto.numpy()).max() < 1e-12


@pytest.mark.parametrize("activation, scale", [("erf", ca.DEFAULT_ERF_SCALE), ("erf", 1.0), ("relu", 1.0)])
def test_hessian_matches_differences_of_the_gradient(activation, scale):
    W, a, V, b = random_network(6)
    n, d = W.shape
    theta = np.concatenate([W.ravel(), a])
    H = ca.population_hessian(W, a, V, b, activation, erf_scale=scale)
    h = 1e-6
    numeric = np.stack([(flat_gradient(theta + h * e, n, d, V, b, activation, scale)
                         - flat_gradient(theta - h * e, n, d, V, b, activation, scale)) / (2 * h)
                        for e in np.eye(theta.size)])
    assert np.allclose(H, H.T)
    assert np.abs(H - numeric).max() < 1e-6


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("shape", [(1, 3, 3), (3, 4, 5), (7, 8, 8)])
def test_analytic_erf_hessian_matches_autograd(scale, shape):
    n, k, d = shape
    W, a, V, b = random_network(sum(shape), n, k, d)
    theta = torch.from_numpy(np.concatenate([W.ravel(), a]))
    auto = torch.autograd.functional.hessian(
        lambda t: ca._torch_loss(t, n, d, torch.from_numpy(V), torch.from_numpy(b), "erf", scale), theta).numpy()
    assert np.abs(ca.population_hessian(W, a, V, b, erf_scale=scale) - auto).max() < 1e-12


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), flip=st.integers(0, 2))
def test_loss_invariances(seed, flip):
    W, a, V, b = random_network(seed)
    loss = ca.population_loss(W, a, V, b)
    flipped_W, flipped_a = W.copy(), a.copy()
    flipped_W[flip], flipped_a[flip] = -W[flip], -a[flip]  # erf is odd
    assert ca.population_loss(flipped_W, flipped_a, V, b) == pytest.approx(loss, rel=1e-12, abs=1e-14)
    order = np.random.default_rng(seed).permutation(W.shape[0])
    assert ca.population_loss(W[order], a[order], V, b) == pytest.approx(loss, rel=1e-12, abs=1e-14)
    Q, _ = np.linalg.qr(np.random.default_rng(seed + 1).normal(size=(W.shape[1],) * 2))
    assert ca.population_loss(W @ Q, a, V @ Q, b) == pytest.approx(loss, rel=1e-10, abs=1e-13)
    assert ca.population_loss(W @ Q, a, V @ Q, b, "relu") == pytest.approx(ca.population_loss(W, a, V, b, "relu"),
                                                                           rel=1e-10, abs=1e-13)


# --- closed forms ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 13])
def test_single_neuron_optimum_matches_a_scalar_minimiser(m):
    V, b = ca.orthonormal_teacher(m)
    u = np.ones((1, m)) / math.sqrt(m)

    def along(r):
        w = r * u
        a = (ca.interaction(w, V) @ b) / ca.interaction(w, w)[0]
        return ca.population_loss(w, a, V, b)

    found = minimize_scalar(along, bounds=(1e-3, 3), method="bounded", options={"xatol": 1e-12})
    assert found.fun == pytest.approx(ca.optimal_average_loss(m), abs=1e-12)
    if m > 1:
        assert found.x == pytest.approx(ca.optimal_average_norm(m), abs=1e-5)
    W, a = ca.copy_average_config([m])
    assert np.linalg.norm(W) == pytest.approx(ca.optimal_average_norm(m)) and a[0] == m


def test_optimal_average_loss_is_concave_and_tends_to_its_asymptote():
    L = ca.optimal_average_loss(np.arange(1, 201))
    assert ca.optimal_average_loss(1) == pytest.approx(0.0, abs=1e-15)
    assert np.all(L[2:] - 2 * L[1:-1] + L[:-2] < 0)
    assert L[-1] / 200 == pytest.approx(1 / 3 - 1 / math.pi - 1 / (24 * math.pi * 200**2), rel=1e-9)
    for m in (10, 100, 1000):
        assert ca.average_loss_remainder(m) == pytest.approx(-3 / (640 * math.pi * m**3), rel=1e-2)


def test_copy_average_points_are_critical_with_the_sum_of_group_losses():
    for groups in [(1, 3), (2, 2), (1, 2, 3), (3, 3), (1, 1, 4)]:
        k = sum(groups)
        V, b = ca.orthonormal_teacher(k)
        W, a = ca.copy_average_config(groups)
        gW, ga = ca.population_gradient(W, a, V, b)
        assert max(np.abs(gW).max(), np.abs(ga).max()) < 1e-13
        assert ca.population_loss(W, a, V, b) == pytest.approx(ca.ca_loss(groups), abs=1e-13)


def test_an_uncovered_teacher_neuron_breaks_criticality():
    V, b = ca.orthonormal_teacher(4)
    W, a = np.eye(3, 4), np.ones(3)  # copies of v_1..v_3, v_4 left uncovered
    gW, _ = ca.population_gradient(W, a, V, b)
    assert np.abs(gW).max() > 1e-2


def test_optimal_partition_and_partitions():
    assert ca.optimal_partition(8, 3) == (1, 1, 6)
    assert ca.partitions(6, 3) == [(1, 1, 4), (1, 2, 3), (2, 2, 2)]
    assert len(ca.partitions(10, 4)) == 9
    for k, n in [(8, 3), (10, 4), (12, 5)]:
        best = min(ca.partitions(k, n), key=ca.ca_loss)
        assert sorted(best) == sorted(ca.optimal_partition(k, n))


def test_relu_single_neuron_closed_form_matches_bfgs():
    for k in (2, 3, 5):
        # Single ReLU neurons have spurious critical points (pointing at part of the teacher): the best of a few
        # inits is the optimum.
        best = min(ca.fit_student(k, 1, seed=[1, k, i], method="bfgs", activation="relu", polish=False).loss
                   for i in range(4))
        assert best == pytest.approx(ca.relu_single_neuron_loss(k), abs=1e-8)
    assert ca.relu_single_neuron_loss(1) == pytest.approx(0.0, abs=1e-15)


# --- fitting and classifying ----------------------------------------------------------------------------------------

def test_fit_student_reaches_the_optimal_ca_point_and_is_deterministic():
    first = ca.fit_student(4, 2, seed=[0, 4, 2, 0])
    again = ca.fit_student(4, 2, seed=[0, 4, 2, 0])
    assert np.array_equal(first.W, again.W) and first.loss == again.loss
    assert first.gradient_norm < 1e-12
    assert first.loss == pytest.approx(ca.optimal_average_loss(3), abs=1e-10)
    bfgs = ca.fit_student(4, 2, seed=[0, 4, 2, 0], method="bfgs")
    assert bfgs.loss == pytest.approx(first.loss, abs=1e-10)
    V, _ = ca.orthonormal_teacher(4)
    label = ca.classify_solution(first.W, V, first.a)
    assert label.label == "copy-average" and sorted(label.neurons) == ["average", "copy"]


def test_gradient_descent_and_flow():
    gd = ca.fit_student(3, 1, seed=1, method="gd", max_iterations=300, lr=0.05)
    start = ca.fit_student(3, 1, seed=1, method="gd", max_iterations=1, lr=0.05)
    assert gd.loss < start.loss and gd.newton_steps == 0
    flow = ca.fit_student(3, 2, seed=2, method="flow", time_span=2e3)
    assert flow.gradient_norm < 1e-10 and flow.loss >= ca.optimal_average_loss(2) - 1e-12


def test_classify_solution_labels():
    V, _ = ca.orthonormal_teacher(4)
    W, a = ca.copy_average_config([1, 3])
    assert ca.classify_solution(W, V, a).neurons == ("copy", "average")
    assert ca.classify_solution(-W, V, -a).label == "copy-average"
    perturbed = np.array([[0.95, 0.3, 0.0, 0.0], [0.0, 0.2, 0.97, 0.1]])
    assert ca.classify_solution(perturbed, V).label == "perturbed copy"
    assert ca.classify_solution(np.array([[0.5, 0.5, 0.5, 0.1]]), V).label == "other"
    twice = np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    assert ca.classify_solution(twice, V).label == "other"  # one teacher neuron copied twice is not a CA point


# --- bad input --------------------------------------------------------------------------------------------------------

def test_bad_inputs_raise_clearly():
    W, a, V, b = random_network(0)
    with pytest.raises(ValueError, match="group_sizes must sum to k"):
        ca.copy_average_config([1, 2], k=4)
    with pytest.raises(ValueError, match="needs n < k"):
        ca.copy_average_config([1, 1, 1])
    assert ca.copy_average_config([1])[1][0] == 1.0  # the m = 1 case of L*(m)
    with pytest.raises(ValueError, match="n must be < k"):
        ca.optimal_partition(3, 3)
    with pytest.raises(ValueError, match="d must be >= k"):
        ca.orthonormal_teacher(4, d=3)
    with pytest.raises(ValueError, match="d must be >= k"):
        ca.copy_average_config([1, 3], d=3)
    with pytest.raises(ValueError, match="erf_scale"):
        ca.interaction(W, V, erf_scale=0.0)
    with pytest.raises(ValueError, match="erf_scale must be 1/√2"):
        ca.optimal_average_loss(3, erf_scale=1.0)
    with pytest.raises(ValueError, match="m must be >= 1"):
        ca.optimal_average_loss(0)
    with pytest.raises(ValueError, match="m must be >= 1"):
        ca.optimal_average_norm(0)
    with pytest.raises(TypeError, match="m must be an int"):
        ca.optimal_average_loss(2.5)
    with pytest.raises(ValueError, match="same input dimension"):
        ca.population_loss(W, a, V[:, :3], b)
    with pytest.raises(ValueError, match="a must be a 1-D array of length 3"):
        ca.population_loss(W, a[:2], V, b)
    bad = W.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="W must be finite"):
        ca.population_gradient(bad, a, V, b)
    with pytest.raises(ValueError, match="activation"):
        ca.population_loss(W, a, V, b, activation="tanh")
    with pytest.raises(ValueError, match="method"):
        ca.fit_student(3, 1, seed=0, method="adam")
    with pytest.raises(ValueError, match="n_samples"):
        ca.monte_carlo_loss(W, a, V, b, n_samples=1, seed=0)
    with pytest.raises(TypeError, match="half"):
        ca.population_loss(W, a, V, b, half=1)
    with pytest.raises(ValueError, match="teacher must have k = 3"):
        ca.fit_student(3, 1, seed=0, teacher=ca.orthonormal_teacher(4))
