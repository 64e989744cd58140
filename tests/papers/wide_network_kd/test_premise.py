"""kdnb.papers.wide_network_kd.premise: the finite student's architecture against the analytic kernel, training to the
effective logits checked against the loss's own gradient, and the gap to the kernel student shrinking with width."""

import math

import numpy as np
import pytest
import torch

from kdnb.core.data import GaussianMixtureOnSphere, sample_sphere
from kdnb.core.losses import binary_kd_loss_gradient
from kdnb.kernels.empirical import empirical_ntk
from kdnb.papers.wide_network_kd import (
    effective_student_logits,
    premise_experiment,
    student_kernel,
    student_network,
    train_to_effective_logits,
)

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def generator_for(*keys):
    return torch.Generator().manual_seed(int(np.random.SeedSequence([0, *keys]).generate_state(1)[0]))


def task(n=6, seed=0):
    g = gen(seed)
    teacher = GaussianMixtureOnSphere(3, 4, g, width=0.5)
    x = sample_sphere(n, 3, g)
    z_t = teacher(x)
    return x, z_t, (z_t > 0).to(F64)


def test_student_network_starts_at_zero_and_its_kernel_is_the_students():
    x = sample_sphere(10, 3, gen(1))
    net = student_network(16384, gen(2))
    assert torch.equal(net(x), torch.zeros(10, dtype=F64))
    # The empirical NTK fluctuates about the analytic one by O(m^{-1/2}): about 1% at m = 16384.
    assert float((empirical_ntk(net, x) - student_kernel(x)).abs().max()) < 0.05
    narrow = student_network(8, gen(2))
    assert float((empirical_ntk(narrow, x) - student_kernel(x)).abs().max()) > 0.05  # the test can fail
    with pytest.raises(ValueError, match="even"):
        student_network(7, gen(0))
    with pytest.raises(ValueError, match="width"):
        student_network(0, gen(0))


@pytest.mark.parametrize("t2_scaling", [False, True])
@pytest.mark.parametrize("rho", [0.3, 1.0])
def test_training_reaches_the_root_of_the_loss_gradient(t2_scaling, rho):
    x, z_t, y = task()
    net = student_network(512, gen(3))
    result = train_to_effective_logits(net, x, z_t, y, rho=rho, temperature=5.0, t2_scaling=t2_scaling,
                                       tolerance=1e-7)
    assert result.converged and result.residual <= 1e-7 and result.evaluations >= 1
    with torch.no_grad():
        logits = net(x)
    # Independent of the bisection solver: the loss's own closed-form gradient vanishes at the trained logits.
    gradient = binary_kd_loss_gradient(logits, z_t, y, rho=rho, temperature=5.0, t2_scaling=t2_scaling)
    assert float(gradient.abs().max()) < 1e-7
    target = effective_student_logits(z_t, y, rho, 5.0, t2_scaling=t2_scaling)
    assert float((logits - target).abs().max()) == pytest.approx(result.residual, abs=1e-12)


def test_an_exhausted_budget_is_reported_unconverged():
    x, z_t, y = task()
    result = train_to_effective_logits(student_network(64, gen(4)), x, z_t, y, rho=0.5, temperature=5.0,
                                       max_evaluations=1)
    assert not result.converged and 1 <= result.evaluations <= 26 and result.residual > 1e-5


def test_training_refuses_bad_arguments():
    x, z_t, y = task()
    net = student_network(16, gen(0))
    with pytest.raises(ValueError, match="rho"):
        train_to_effective_logits(net, x, z_t, y, rho=0.0, temperature=5.0)
    with pytest.raises(ValueError, match="tolerance"):
        train_to_effective_logits(net, x, z_t, y, rho=0.5, temperature=5.0, tolerance=0.0)
    with pytest.raises(ValueError, match="max_evaluations"):
        train_to_effective_logits(net, x, z_t, y, rho=0.5, temperature=5.0, max_evaluations=0)
    with pytest.raises(TypeError, match="model"):
        train_to_effective_logits("net", x, z_t, y, rho=0.5, temperature=5.0)
    wide_output = torch.nn.Linear(3, 2).to(F64)
    with pytest.raises(ValueError, match="one logit per input"):
        train_to_effective_logits(wide_output, x, z_t, y, rho=0.5, temperature=5.0)


def test_the_gap_to_the_kernel_student_shrinks_with_width():
    run = premise_experiment(generator_for, widths=(32, 512, 8192), repeats=2, n_train=5, n_test=100, rho=0.5,
                             temperature=5.0)
    table = run.table
    assert len(table) == 2 * 2 * 3 and bool(table["converged"].all()) and run.excluded == 0
    assert np.allclose(table["initial_gap"], 1.0)  # f0 = 0, so the untrained network is 100% away
    assert list(run.slopes.columns) == ["repeat", "t2_scaling", "slope", "r_squared", "widths_used"]
    assert len(run.slopes) == 4 and bool((run.slopes["slope"] < 0).all())
    by_width = table.groupby("width")["gap"].mean()
    assert by_width[8192] < 0.5 * by_width[32]


def test_unconverged_networks_are_excluded_and_counted():
    run = premise_experiment(generator_for, widths=(16, 32, 64), repeats=1, n_train=4, n_test=20, rho=0.5,
                             temperature=5.0, conventions=(False,), max_evaluations=1)
    assert run.excluded == 3 and run.excluded_repeats == 1 and run.slopes.empty
    assert run.table["gap"].isna().all() and not math.isnan(float(run.table["residual"].iloc[0]))


@pytest.mark.parametrize("kwargs, match", [
    ({"widths": (64, 32)}, "increasing"),
    ({"widths": (32,)}, "at least two"),
    ({"widths": (33, 64)}, "even"),
    ({"conventions": (True, True)}, "repeat"),
    ({"min_widths": 3}, "min_widths"),
])
def test_premise_experiment_refuses_bad_settings(kwargs, match):
    settings = {"widths": (32, 64), "repeats": 1, "n_train": 4, "n_test": 10, "rho": 0.5, "temperature": 5.0} | kwargs
    with pytest.raises(ValueError, match=match):
        premise_experiment(generator_for, **settings)
    with pytest.raises(TypeError, match="generator_for"):
        premise_experiment(None, widths=(32, 64), repeats=1, n_train=4, n_test=10, rho=0.5, temperature=5.0)
