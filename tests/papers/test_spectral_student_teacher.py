"""Chapter-10 building blocks: the spectral layer, its penalty, node scores, pruning, the ramp and the collapse fit."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar

from kdnb.core.testing import assert_gradient_reaches
from kdnb.papers import spectral_student_teacher as sp


def gen(seed):
    return torch.Generator().manual_seed(seed)


def random_eigenvalues(layer, seed):
    with torch.no_grad():
        layer.eigenvalues_in.copy_(torch.randn(layer.in_features, generator=gen(seed)))
        layer.eigenvalues_out.copy_(torch.randn(layer.out_features, generator=gen(seed + 1)))
    return layer


# --- the layer -------------------------------------------------------------------------------------------------------

def test_forward_is_x_times_w_with_the_spectral_weights():
    layer = random_eigenvalues(sp.SpectralLinear(7, 5, train_in_eigenvalues=True, generator=gen(0)), 1)
    x = torch.randn(30, 7, generator=gen(3))
    w = layer.phi * (layer.eigenvalues_in[:, None] - layer.eigenvalues_out[None, :])
    torch.testing.assert_close(layer(x), x @ w, atol=1e-6, rtol=0)
    # the definition, entry by entry
    i, j = 4, 2
    with torch.no_grad():
        assert float(layer.weight()[i, j]) == pytest.approx(
            float(layer.phi[i, j] * (layer.eigenvalues_in[i] - layer.eigenvalues_out[j])))


@settings(max_examples=25, deadline=None)
@given(n_in=st.integers(1, 6), n_out=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_operator_block_is_w_transposed_and_its_eigenvalues_are_the_lambdas(n_in, n_out, seed):
    layer = random_eigenvalues(sp.SpectralLinear(n_in, n_out, train_in_eigenvalues=True, generator=gen(seed)),
                               seed + 1)
    a = layer.operator()
    assert a.dtype == torch.float64 and a.shape == (n_in + n_out, n_in + n_out)
    with torch.no_grad():
        w64 = layer.phi.double() * (layer.eigenvalues_in.double()[:, None] - layer.eigenvalues_out.double()[None, :])
    np.testing.assert_allclose(a[n_in:, :n_in].numpy(), w64.T.numpy(), atol=1e-8, rtol=0)
    torch.testing.assert_close(w64.float(), layer.weight().detach(), atol=1e-6, rtol=0)
    eig = np.sort_complex(np.linalg.eigvals(a.numpy()))
    expected = np.sort_complex(torch.cat([layer.eigenvalues_in, layer.eigenvalues_out]).detach().double().numpy()
                               + 0j)
    np.testing.assert_allclose(eig, expected, atol=1e-8)


def test_initialisation_follows_the_authors_code():
    layer = sp.SpectralLinear(10, 30, generator=gen(0))
    assert torch.equal(layer.eigenvalues_in, torch.zeros(10)) and torch.equal(layer.eigenvalues_out, torch.ones(30))
    bound = math.sqrt(6 / 40)
    assert bound >= float(layer.phi.detach().abs().max()) > 0.8 * bound
    assert not layer.eigenvalues_in.requires_grad and layer.eigenvalues_out.requires_grad
    torch.testing.assert_close(layer.weight(), -layer.phi)  # λ_in = 0, λ_out = 1: a plain dense layer
    again = sp.SpectralLinear(10, 30, generator=gen(0))
    assert torch.equal(again.phi, layer.phi)


def test_direct_mode_gives_the_eigenvalues_no_gradient():
    layer = sp.SpectralLinear(4, 3, mode="direct", generator=gen(0))
    loss = layer(torch.randn(8, 4, generator=gen(1))).pow(2).sum() + sp.spectral_penalty(layer)
    assert_gradient_reaches(loss, {"phi": layer.phi}, {"eigenvalues_out": layer.eigenvalues_out,
                                                       "eigenvalues_in": layer.eigenvalues_in})
    spectral = sp.SpectralLinear(4, 3, generator=gen(0))
    loss = spectral(torch.randn(8, 4, generator=gen(1))).pow(2).sum()
    assert_gradient_reaches(loss, {"phi": spectral.phi, "eigenvalues_out": spectral.eigenvalues_out},
                            {"eigenvalues_in": spectral.eigenvalues_in})


# --- pruning is exact node removal -------------------------------------------------------------------------------------

def delete_node(model, x, j):
    kept = [k for k in range(model.hidden.out_features) if k != j]
    with torch.no_grad():
        hidden = torch.relu(x @ model.hidden.weight()[:, kept])
        return torch.relu(hidden @ model.second.weight[:, kept].T).sum(-1)


@pytest.mark.parametrize("train_in", [False, True])
def test_a_zero_eigenvalue_is_the_network_with_the_node_deleted(train_in):
    model = sp.make_student(9, generator=gen(0), train_in_eigenvalues=train_in).double()
    with torch.no_grad():
        model.hidden.eigenvalues_out.copy_(torch.linspace(0.5, 2.0, 9))
        if train_in:
            model.hidden.eigenvalues_in.copy_(torch.randn(10, generator=gen(5)))
    x = torch.randn(200, 10, generator=gen(1), dtype=torch.float64)
    pruned = sp.prune_nodes(model, 8)
    (dropped,) = torch.nonzero(pruned.hidden.eigenvalues_out == 0).ravel().tolist()
    assert dropped == int(sp.node_importance(model).argmin())
    torch.testing.assert_close(pruned(x), delete_node(model, x, dropped), atol=1e-7, rtol=0)
    assert float(model.hidden.eigenvalues_out.detach().min()) > 0, "prune_nodes must not modify its argument"


def test_prune_keeps_the_most_important_nodes():
    model = sp.make_student(6, generator=gen(0))
    with torch.no_grad():
        model.hidden.eigenvalues_out.copy_(torch.tensor([3.0, 0.1, 2.0, 0.2, 1.0, 0.3]))
    scores = sp.node_importance(model)
    pruned = sp.prune_nodes(model, 3)
    kept = torch.nonzero(pruned.hidden.eigenvalues_out != 0).ravel()
    assert set(kept.tolist()) == set(torch.topk(scores, 3).indices.tolist())
    assert float(sp.prune_nodes(model, 0).hidden.eigenvalues_out.detach().abs().sum()) == 0


# --- the penalty and the group lasso --------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha, beta", [(1e-2, 1e-2), (1e-2, 5e-4), (0.3, 2e-3), (1.0, 4.0)])
def test_group_lasso_identity_against_minimize_scalar(alpha, beta):
    w = torch.randn(6, 10, generator=gen(0), dtype=torch.float64)
    closed = sp.group_lasso_penalty(w, alpha, beta)
    for w_j, value in zip(w, closed):
        norm2 = float(w_j.pow(2).sum())
        best = minimize_scalar(lambda lam, n2=norm2: alpha * n2 / lam ** 2 + beta * lam ** 2, bounds=(1e-4, 1e4),
                               method="bounded", options={"xatol": 1e-12})
        assert best.fun == pytest.approx(float(value), rel=1e-6)
        assert best.x ** 2 == pytest.approx(math.sqrt(alpha / beta) * math.sqrt(norm2), rel=1e-4)


def test_penalty_gradient_matches_its_closed_form():
    model = sp.make_student(7, generator=gen(0), train_in_eigenvalues=True)
    layer = random_eigenvalues(model.hidden, 3)
    alpha, beta, l1 = 0.03, 0.02, 0.01
    penalty = sp.spectral_penalty(model, alpha, beta, l1)
    grads = torch.autograd.grad(penalty, [layer.phi, layer.eigenvalues_in, layer.eigenvalues_out])
    torch.testing.assert_close(grads[0], 2 * alpha * layer.phi)
    for grad, lam in zip(grads[1:], (layer.eigenvalues_in, layer.eigenvalues_out)):
        torch.testing.assert_close(grad, 2 * beta * lam + l1 * torch.sign(lam))
    expected = (alpha * layer.phi.pow(2).sum() + beta * (layer.eigenvalues_in.pow(2).sum()
                + layer.eigenvalues_out.pow(2).sum()) + l1 * (layer.eigenvalues_in.abs().sum()
                + layer.eigenvalues_out.abs().sum()))
    torch.testing.assert_close(penalty, expected)
    # the second (dense) layer is not regularised
    assert sp.spectral_penalty(model, alpha, beta, l1).grad_fn is not None
    assert_gradient_reaches(sp.spectral_penalty(model, alpha, beta), {"hidden": model.hidden}, {"second": model.second})


def test_penalty_skips_frozen_eigenvalues():
    layer = sp.SpectralLinear(3, 4, mode="direct", generator=gen(0))
    torch.testing.assert_close(sp.spectral_penalty(layer, 0.1, 5.0), 0.1 * layer.phi.pow(2).sum())


# --- scores, active counts, the ramp ----------------------------------------------------------------------------------

def test_rescaled_importance_is_sqrt_width_times_the_column_norm():
    model = sp.make_student(12, generator=gen(0))
    with torch.no_grad():
        model.hidden.eigenvalues_out.copy_(torch.randn(12, generator=gen(1)))
    expected = math.sqrt(12) * model.hidden.weight().detach().norm(dim=0)
    torch.testing.assert_close(sp.node_importance(model), expected)
    torch.testing.assert_close(sp.node_importance(model.hidden, "eigenvalue"), model.hidden.eigenvalues_out.abs())


def test_active_count_counts_scores_above_the_threshold():
    layer = sp.SpectralLinear(2, 5, generator=gen(0))
    with torch.no_grad():
        layer.phi.fill_(1.0)
        layer.eigenvalues_out.copy_(torch.tensor([1.0, 0.5, 0.06, 0.04, 0.0]))
    assert sp.active_count(layer) == 3
    assert sp.active_count(layer, threshold=0.55) == 1
    with torch.no_grad():
        layer.eigenvalues_out.zero_()
    assert sp.active_count(layer) == 0


@pytest.fixture(scope="module")
def trained():
    teacher = sp.make_teacher()
    x, xt = sp.gaussian_inputs(500, generator=gen(0)), sp.gaussian_inputs(500, generator=gen(1))
    student = sp.make_student(30, generator=gen(2))
    losses = sp.train_student(student, x, teacher(x), epochs=60, generator=gen(3))
    return teacher, student, xt, teacher(xt), losses


def test_training_lowers_the_objective(trained):
    *_, losses = trained
    assert len(losses) == 60 and losses[-1] < losses[0]


def test_keeping_every_node_costs_exactly_nothing(trained):
    _, student, xt, yt, _ = trained
    ramp = sp.mse_ramp(student, xt, yt, [30, 10, 0])
    assert ramp.dtype == np.float64 and ramp.shape == (3,)
    assert ramp[0] == 0.0 and ramp[2] > 0


def test_the_same_seed_gives_the_same_active_counts():
    teacher = sp.make_teacher()
    x = sp.gaussian_inputs(300, generator=gen(0))
    counts = []
    for _ in range(2):
        student = sp.make_student(25, generator=gen(7))
        sp.train_student(student, x, teacher(x), epochs=40, generator=gen(8))
        counts.append((sp.active_count(student), sp.node_importance(student).tolist()))
    assert counts[0] == counts[1]


def test_student_run_measures_nan_beyond_the_width(trained):
    _, student, xt, yt, _ = trained
    result = sp.StudentRun.measure(student, xt, yt, [5, 30, 40], repeat=0)
    assert result.width == 30 and result.mode == "spectral"
    assert math.isnan(result.ramp[2]) and result.ramp[1] == 0.0
    assert result.importance[0] == 1.0 and np.all(np.diff(result.importance) <= 0)
    assert result.active == sp.active_count(student)


def test_teacher_is_frozen_and_has_the_authors_shape():
    teacher = sp.make_teacher()
    assert teacher.hidden.out_features == 20 and teacher.second.out_features == 10
    assert not any(p.requires_grad for p in teacher.parameters())
    x = sp.gaussian_inputs(4, generator=gen(0))
    assert teacher(x).shape == (4,)
    assert torch.equal(sp.make_teacher()(x), teacher(x))


def test_path_magnitudes_are_rescaling_invariant_and_sorted():
    model = sp.make_student(6, generator=gen(0))
    paths = sp.path_magnitudes(model)
    assert paths.shape == (10 * 6 * 10,) and np.all(np.diff(paths) <= 0)
    w1, w2 = model.hidden.weight().detach().double(), model.second.weight.detach().double().T
    assert paths[0] == pytest.approx(float((w1[:, :, None] * w2[None]).abs().max()))
    with torch.no_grad():  # node 2: incoming weights × 3 (through λ), outgoing ÷ 3
        model.hidden.eigenvalues_out[2] *= 3
        model.second.weight[:, 2] /= 3
    np.testing.assert_allclose(sp.path_magnitudes(model), paths, rtol=1e-6)
    pruned = sp.prune_nodes(model, 4)
    assert np.count_nonzero(sp.path_magnitudes(pruned)) <= 10 * 4 * 10
    assert sp.path_magnitudes(sp.make_teacher()).shape == (10 * 20 * 10,)


def test_collapse_fit_recovers_an_exponential():
    x = np.linspace(-0.8, 0.5, 40)
    y = 0.05 * np.exp(-4.0 * x) + 0.01
    fit = sp.collapse_fit(x, y)
    assert (fit.a, fit.b, fit.c) == pytest.approx((0.05, 4.0, 0.01), rel=1e-4, abs=1e-6)
    assert fit.residual < 1e-8
    np.testing.assert_allclose(fit(x[x < 0]), y[x < 0], atol=1e-7)


# --- bad input ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, error, message", [
    (lambda: sp.SpectralLinear(0, 3), ValueError, "in_features"),
    (lambda: sp.SpectralLinear(3, 0), ValueError, "out_features"),
    (lambda: sp.SpectralLinear(2.5, 3), TypeError, "in_features"),
    (lambda: sp.SpectralLinear(3, 3, mode="dense"), ValueError, "mode"),
    (lambda: sp.SpectralLinear(3, 3, mode="direct", train_in_eigenvalues=True), ValueError, "train_in_eigenvalues"),
    (lambda: sp.SpectralLinear(3, 3, train_in_eigenvalues=1), TypeError, "train_in_eigenvalues"),
    (lambda: sp.make_student(0, generator=gen(0)), ValueError, "out_features"),
    (lambda: sp.make_student(5, generator=None), TypeError, "generator"),
    (lambda: sp.make_teacher(hidden=0), ValueError, "out_features"),
    (lambda: sp.make_teacher(seed=-1), ValueError, "seed"),
    (lambda: sp.gaussian_inputs(0, generator=gen(0)), ValueError, "n"),
    (lambda: sp.spectral_penalty(sp.SpectralLinear(2, 2), alpha_phi=-1.0), ValueError, "alpha_phi"),
    (lambda: sp.spectral_penalty(sp.SpectralLinear(2, 2), alpha_lambda=-1e-3), ValueError, "alpha_lambda"),
    (lambda: sp.spectral_penalty(sp.SpectralLinear(2, 2), l1_lambda=-1.0), ValueError, "l1_lambda"),
    (lambda: sp.spectral_penalty("model"), TypeError, "model"),
    (lambda: sp.group_lasso_penalty(torch.ones(3), 0.0, 1.0), ValueError, "alpha"),
    (lambda: sp.node_importance(sp.SpectralLinear(2, 2), score="norm"), ValueError, "score"),
    (lambda: sp.node_importance(torch.nn.Linear(2, 2)), TypeError, "SpectralNet"),
    (lambda: sp.active_count(sp.SpectralLinear(2, 2), threshold=0.0), ValueError, "threshold"),
    (lambda: sp.active_count(sp.SpectralLinear(2, 2), threshold=1.0), ValueError, "threshold"),
    (lambda: sp.prune_nodes(sp.make_student(4, generator=gen(0)), 5), ValueError, "keep"),
    (lambda: sp.prune_nodes(sp.make_student(4, generator=gen(0)), -1), ValueError, "keep"),
    (lambda: sp.mse_ramp(sp.make_student(4, generator=gen(0)), torch.ones(5, 10), torch.ones(5), [7]), ValueError,
     "keep"),
    (lambda: sp.mse_ramp(sp.make_student(4, generator=gen(0)), torch.ones(5, 3), torch.ones(5), [2]), ValueError,
     "x must have shape"),
    (lambda: sp.mse_ramp(sp.make_student(4, generator=gen(0)), torch.ones(5, 10), torch.ones(4), [2]), ValueError,
     "y must have shape"),
    (lambda: sp.train_student(sp.make_student(4, generator=gen(0)), torch.ones(5, 3), torch.ones(5), epochs=1,
                              generator=gen(0)), ValueError, "x must have shape"),
    (lambda: sp.train_student(sp.make_student(4, generator=gen(0)), torch.ones(5, 10), torch.ones(5), epochs=0,
                              generator=gen(0)), ValueError, "epochs"),
    (lambda: sp.collapse_fit([-1.0, 0.5], [1.0, 0.0]), ValueError, "at least 3"),
    (lambda: sp.path_magnitudes(sp.SpectralLinear(2, 2)), TypeError, "SpectralNet"),
    (lambda: sp.collapse_fit([-1.0, -0.5, -0.2], [1.0, 0.5]), ValueError, "same length"),
])
def test_bad_input_raises_and_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
