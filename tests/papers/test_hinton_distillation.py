"""Chapter-1 building blocks: students in each regime, the soft-gradient norm, the mean soft targets."""

import math

import pytest
import torch

from kdnb.core.models import MLP
from kdnb.papers.hinton_distillation import (
    mean_soft_targets,
    soft_gradient_norm,
    train_student,
)


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g)
    y = torch.div(x[:, 0].argsort().argsort(), 40, rounding_mode="floor")  # three balanced classes by rank
    teacher_logits = 4 * torch.nn.functional.one_hot(y, 3).float() + 0.1 * torch.randn(120, 3, generator=g)
    return x, y, teacher_logits


@pytest.mark.parametrize("regime", ["scratch", "kd", "transfer"])
def test_train_student_regimes_are_deterministic(problem, regime):
    x, y, z = problem
    kwargs = dict(regime=regime, n_labels=12, hidden=(8,), rho=0.5, temperature=2.0, epochs=5)
    a = train_student(x, y, z, generator=torch.Generator().manual_seed(1), **kwargs)
    b = train_student(x, y, z, generator=torch.Generator().manual_seed(1), **kwargs)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_transfer_set_uses_unlabelled_inputs(problem):
    """With rho = 1 the transfer regime learns from the teacher on every input, labels or not."""
    x, y, z = problem
    student = train_student(x, y, z, regime="transfer", n_labels=3, hidden=(16,), rho=1.0, temperature=1.0,
                            epochs=150, lr=0.05, generator=torch.Generator().manual_seed(2))
    assert (student(x).argmax(1) == z.argmax(1)).float().mean() > 0.8


def test_omit_class_removes_it_from_training(problem):
    x, y, z = problem
    with pytest.raises(ValueError, match="omit_class must be in \\[0, 3\\)"):
        train_student(x, y, z, regime="kd", n_labels=None, hidden=(4,), rho=0.5, temperature=1.0, epochs=1,
                      generator=torch.Generator(), omit_class=3)
    # With class 2 omitted only 80 examples remain: asking for more labels than that must fail.
    with pytest.raises(ValueError, match="n must be <= the number of examples \\(80\\)"):
        train_student(x, y, z, regime="scratch", n_labels=81, hidden=(4,), rho=0.0, temperature=1.0, epochs=1,
                      generator=torch.Generator(), omit_class=2)
    with pytest.raises(ValueError, match="regime must be one of"):
        train_student(x, y, z, regime="distil", n_labels=None, hidden=(4,), rho=0.5, temperature=1.0, epochs=1,
                      generator=torch.Generator())


def test_soft_gradient_norm_high_temperature_limits():
    """At large T, ||grad|| -> ||(z_s - z_t) - mean||/C with T^2 scaling and that over T^2 without it."""
    g = torch.Generator().manual_seed(3)
    zs, zt = torch.randn(50, 4, generator=g, dtype=torch.float64), torch.randn(50, 4, generator=g, dtype=torch.float64)
    d = zs - zt
    limit = ((d - d.mean(1, keepdim=True)).norm(dim=1) / 4).mean().item()
    T = 1e4
    assert math.isclose(soft_gradient_norm(zs, zt, T, t2_scaling=True), limit, rel_tol=1e-3)
    assert math.isclose(soft_gradient_norm(zs, zt, T, t2_scaling=False), limit / T**2, rel_tol=1e-3)


def test_mean_soft_targets_rows_are_distributions():
    g = torch.Generator().manual_seed(4)
    model = MLP(5, (6,), 3, generator=g)
    x, y = torch.randn(30, 5, generator=g), torch.arange(30) % 3
    m = mean_soft_targets(model, x, y, 2.0, 3)
    assert m.shape == (3, 3) and torch.allclose(m.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match="class 2 has no examples"):
        mean_soft_targets(model, x, y % 2, 2.0, 3)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        mean_soft_targets(model, x, y, 0.0, 3)

