"""kdnb.papers.ntk_linearization: the drivers of chapter 2 against direct runs of the kdnb.kernels building blocks,
the weight-space bridge against explicit pseudo-inverses, and the method agreement against a recomputation."""

import math

import numpy as np
import pytest
import torch

from kdnb.core.data import GaussianMixtureOnSphere, sample_sphere
from kdnb.core.losses import binary_kd_loss_gradient
from kdnb.core.models import NTKMLP, AntisymmetricPair
from kdnb.core.sweeps import power_law_fit, relative_error
from kdnb.core.training import distillation_objective
from kdnb.kernels.analytic import relu_ntk
from kdnb.kernels.empirical import empirical_ntk, ntk_features
from kdnb.kernels.linearized import function_space_gd, gradient_descent_path
from kdnb.papers.ntk_linearization import (
    distillation_task,
    linearization_gap_experiment,
    linearization_gaps,
    method_agreement,
    weight_space_bridge,
)

F64 = torch.float64
VARIANCES = dict(weight_variance=0.5, bias_variance=0.5, readout_weight_variance=1.0, readout_bias_variance=0.0)


def generator_for(*keys):
    """A stand-in for Chapter.generator_for: one fresh generator per tuple of keys."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([7, *keys]).generate_state(1)[0]))


def test_distillation_task_draws_teacher_then_train_then_test():
    task = distillation_task(generator_for(3, 0), n_train=9, n_test=5)
    g = generator_for(3, 0)
    teacher = GaussianMixtureOnSphere(3, 4, g)
    x_train, x_test = sample_sphere(9, 3, g), sample_sphere(5, 3, g)
    assert torch.equal(task.x_train, x_train) and torch.equal(task.x_test, x_test)
    assert torch.equal(task.teacher_logits, teacher(x_train))
    assert torch.equal(task.labels, (teacher(x_train) > 0).to(F64))
    assert set(task.labels.tolist()) <= {0.0, 1.0}
    single = distillation_task(generator_for(3, 0), n_train=9, n_test=5, dtype=torch.float32)
    assert single.x_train.dtype == torch.float32 and torch.equal(single.x_train, x_train.float())


def test_distillation_task_refuses_bad_input():
    with pytest.raises(ValueError, match="n_train"):
        distillation_task(generator_for(0), n_train=0, n_test=5)
    with pytest.raises(ValueError, match="dim"):
        distillation_task(generator_for(0), n_train=3, n_test=5, dim=1)
    with pytest.raises(TypeError, match="generator"):
        distillation_task(0, n_train=3, n_test=5)


SMALL = dict(widths=[8, 16], repeats=2, n_train=6, n_test=5, rho=0.5, temperature=2.0, steps=4, lr=1.0,
             t2_scaling=False, variances=VARIANCES, record_every=2)


def test_linearization_gap_experiment_matches_direct_runs():
    run = linearization_gap_experiment(generator_for, **SMALL)
    assert list(run.paths) == [("infinite", 0), (8, 0), (16, 0), ("infinite", 1), (8, 1), (16, 1)]
    assert list(zip(run.gaps.width, run.gaps.repeat)) == [(8, 0), (16, 0), (8, 1), (16, 1)]

    objective = distillation_objective(0.5, 2.0, t2_scaling=False, binary=True)
    for repeat in range(2):
        task = distillation_task(generator_for(3, repeat), n_train=6, n_test=5)

        def linear(kernel, kernel_test):
            def gradient(z):
                return binary_kd_loss_gradient(z, task.teacher_logits, task.labels, rho=0.5, temperature=2.0,
                                               t2_scaling=False)
            return function_space_gd(kernel, gradient, lr=1.0, steps=4, kernel_test_train=kernel_test,
                                     record_every=2)

        infinite = linear(relu_ntk(task.x_train, depth=1, **VARIANCES),
                          relu_ntk(task.x_test, task.x_train, depth=1, **VARIANCES))
        assert torch.equal(run.paths["infinite", repeat].test, infinite.test)
        for width in (8, 16):
            student = AntisymmetricPair(NTKMLP(3, [width // 2], generator=generator_for(4, width, repeat), dtype=F64,
                                               **VARIANCES))
            own = linear(empirical_ntk(student, task.x_train), empirical_ntk(student, task.x_test, task.x_train))
            network = gradient_descent_path(student, objective, task.x_train, [task.teacher_logits, task.labels],
                                            lr=1.0, steps=4, test_inputs=task.x_test, record_every=2)
            assert torch.equal(run.paths[width, repeat]["network"].test, network.test)
            assert network.steps.tolist() == [0, 2, 4]
            row = run.gaps[(run.gaps.width == width) & (run.gaps.repeat == repeat)].iloc[0]
            assert row["to its linearization"] == relative_error(network.test[-1], own.test[-1])
            assert row["to infinite width"] == relative_error(network.test[-1], infinite.test[-1])
            assert row["linearization to infinite width"] == relative_error(own.test[-1], infinite.test[-1])
            # the network starts at f0 = 0 exactly, as do both linear models
            assert float(network.test[0].abs().max()) == 0.0

    means = run.gaps.groupby("width")["to its linearization"].mean()
    assert run.gap_by_width["to its linearization"].tolist() == means.tolist()
    assert run.gap_fit.slope == power_law_fit(means.index, means.values).slope
    for repeat, slope in run.gap_slopes.items():  # one fit per task, not through the means
        own = run.gaps[run.gaps.repeat == repeat]
        assert slope == power_law_fit(own.width, own["to its linearization"]).slope
    assert list(run.gap_slopes.index) == [0, 1]
    assert run.widths == (8, 16) and run.repeats == 2 and run.steps == 4


def test_linearization_gaps_vanish_for_identical_trajectories_and_need_the_infinite_model():
    run = linearization_gap_experiment(generator_for, **{**SMALL, "repeats": 1})
    same = {key: ({"network": p["linearization"], "linearization": p["linearization"]} if key[0] != "infinite" else p)
            for key, p in run.paths.items()}
    assert linearization_gaps(same)["to its linearization"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="infinite"):
        linearization_gaps({k: p for k, p in run.paths.items() if k[0] != "infinite"})
    with pytest.raises(TypeError, match="mapping"):
        linearization_gaps([])


@pytest.mark.parametrize("change, error, match", [
    (dict(widths=[8]), ValueError, "at least two"),
    (dict(widths=[16, 8]), ValueError, "increasing"),
    (dict(widths=[8, 15]), ValueError, "even"),
    (dict(rho=1.5), ValueError, "rho"),
    (dict(steps=0), ValueError, "steps"),
    (dict(lr=0.0), ValueError, "lr"),
    (dict(variances={"depth": 2}), ValueError, "variances"),
    (dict(variances=[1.0]), TypeError, "variances"),
    (dict(t2_scaling=1), TypeError, "t2_scaling"),
    (dict(widths="8"), TypeError, "widths"),
])
def test_linearization_gap_experiment_refuses_bad_input(change, error, match):
    with pytest.raises(error, match=match):
        linearization_gap_experiment(generator_for, **{**SMALL, **change})
    with pytest.raises(TypeError, match="generator_for"):
        linearization_gap_experiment(None, **SMALL)


def bridge_problem(n=10, width=8):
    task = distillation_task(generator_for(3, 1000), n_train=n, n_test=3)
    student = AntisymmetricPair(NTKMLP(3, [width], generator=generator_for(7), dtype=F64, **VARIANCES))
    return student, task.x_train, task.teacher_logits


def test_weight_space_bridge_against_pseudo_inverse_and_kernel_solves():
    student, x, z = bridge_problem()
    bridge = weight_space_bridge(student, x, z, infinite_kernel=relu_ntk(x, depth=1, **VARIANCES))
    prefixes = sorted({int(k) for k in np.unique(np.geomspace(4, 10, 12).astype(int))} | {10})
    assert bridge.table.index.tolist() == prefixes == [4, 5, 6, 7, 8, 9, 10]
    features = ntk_features(student, x)
    assert bridge.n_parameters == features.shape[1] > len(x)
    kernel, infinite = empirical_ntk(student, x), relu_ntk(x, depth=1, **VARIANCES)
    full = torch.linalg.pinv(features) @ z  # min-norm solution of Φ Δw = z
    for n in prefixes:
        change = torch.linalg.pinv(features[:n]) @ z[:n]
        assert math.isclose(bridge.table.loc[n, "norm, weight space"], float(change.norm()), rel_tol=1e-8)
        for column, k in (("norm, kernel", kernel), ("norm, infinite width", infinite)):
            direct = float(z[:n] @ torch.linalg.solve(k[:n, :n], z[:n])) ** 0.5
            assert math.isclose(bridge.table.loc[n, column], direct, rel_tol=1e-8)
        cosine = float(change @ full / (change.norm() * full.norm()))
        assert math.isclose(bridge.table.loc[n, "cos angle, weight space"], cosine, rel_tol=1e-8)
    assert bridge.table["norm ratio"].iloc[-1] == 1.0
    assert bridge.norm_error < 1e-8 and bridge.projection_error < 1e-8  # the projection identity


def test_weight_space_bridge_refuses_bad_input():
    student, x, z = bridge_problem()
    infinite = relu_ntk(x, depth=1, **VARIANCES)
    with pytest.raises(ValueError, match="targets"):
        weight_space_bridge(student, x, z[:-1], infinite_kernel=infinite)
    with pytest.raises(ValueError, match="infinite_kernel"):
        weight_space_bridge(student, x, z, infinite_kernel=infinite[:-1])
    with pytest.raises(ValueError, match="smallest_prefix"):
        weight_space_bridge(student, x, z, infinite_kernel=infinite, smallest_prefix=11)
    with pytest.raises(ValueError, match="n_prefixes"):
        weight_space_bridge(student, x, z, infinite_kernel=infinite, n_prefixes=1)
    with pytest.raises(TypeError, match="student"):
        weight_space_bridge(lambda v: v, x, z, infinite_kernel=infinite)
    with pytest.raises(TypeError, match="targets"):
        weight_space_bridge(student, x, z.tolist(), infinite_kernel=infinite)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (F64, 1e-10)])
def test_method_agreement_recomputes_the_largest_pairwise_difference(dtype, tolerance):
    network = NTKMLP(4, [32], generator=generator_for(5), dtype=dtype)
    inputs = torch.randn(12, 4, generator=generator_for(6), dtype=dtype)
    kernels = [empirical_ntk(network, inputs, method=m) for m in ("jacobian", "ntk_vp", "structured")]
    scale = float(kernels[0].abs().max())
    direct = max(float((kernels[a] - kernels[b]).abs().max()) / scale for a, b in [(0, 1), (0, 2), (1, 2)])
    assert method_agreement(network, inputs) == direct
    assert 0 <= direct < tolerance
    assert method_agreement(network, inputs, methods=["structured", "jacobian"]) == float(
        (kernels[2] - kernels[0]).abs().max()) / float(kernels[2].abs().max())


def test_method_agreement_refuses_bad_methods():
    network = NTKMLP(2, [4], generator=generator_for(5))
    inputs = torch.randn(3, 2, generator=generator_for(6))
    with pytest.raises(ValueError, match="two distinct"):
        method_agreement(network, inputs, methods=["jacobian"])
    with pytest.raises(ValueError, match="two distinct"):
        method_agreement(network, inputs, methods=["jacobian", "jacobian"])
    with pytest.raises(ValueError, match="among"):
        method_agreement(network, inputs, methods=["jacobian", "exact"])
    with pytest.raises(TypeError, match="methods"):
        method_agreement(network, inputs, methods="jacobian")
