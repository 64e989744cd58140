"""kdnb.papers.wide_network_kd.experiments: each driver of the paper's Figs. 2 to 5 against a recomputation from
scratch, determinism, and bad inputs."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from kdnb.core.data import (
    GaussianMixtureOnSphere,
    load_binary_digits,
    points_at_angles,
    sample_sphere,
)
from kdnb.core.models import MLP
from kdnb.core.sweeps import power_law_fit
from kdnb.core.training import distill, predict_logits, teacher_snapshots
from kdnb.kernels.regression import (
    KernelGradientFlow as EarlyStoppedTeacher,
)
from kdnb.kernels.regression import (
    NestedKernelRegression,
    kernel_regression,
)
from kdnb.papers.wide_network_kd import (
    accumulative_angle_distribution,
    best_rho_table,
    boundary_angles,
    circle_example,
    data_inefficiency,
    digits_experiment,
    early_stopped_distillation_norms,
    effective_student_logits,
    fitted_slope,
    imperfect_teacher_experiment,
    inefficiency_table,
    kernel_students,
    student_kernel,
    target_difficulty_norms,
    transfer_risk,
    transfer_risk_experiment,
)

F64 = torch.float64


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


def test_random_labels_have_the_spectral_asymptote():
    """On S² random labels give I ≈ d/(2(d−1)) = 0.75 (a coarse check of the whole pipeline)."""
    norms = []
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        x = sample_sphere(400, 3, g)
        norms.append(NestedKernelRegression(student_kernel(x), torch.randn(400, generator=g, dtype=F64)).norms())
    value = float(data_inefficiency(torch.stack(norms), [128, 256]).mean())
    assert 0.6 < value < 0.95


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


# --- Chapter drivers: the 1-D example (Fig. 4), the digits experiment (Fig. 5) and the chapters' summaries -------------


def circle_generator():
    return torch.Generator().manual_seed(3)


CIRCLE = dict(temperature=2.0, n_teacher=40, taus=(1.0, 30.0), rhos=(0.1, 0.5, 1.0), grid=300, t2_scaling=False)


def test_circle_example_recomputed_from_scratch():
    example = circle_example(circle_generator(), **CIRCLE)
    truth = lambda theta: torch.sin(3 * theta) + 0.5 * torch.sin(7 * theta)  # noqa: E731
    theta_teacher = 2 * math.pi * torch.rand(40, generator=circle_generator(), dtype=F64)
    x_teacher = points_at_angles(theta_teacher, dim=2)
    teacher = EarlyStoppedTeacher(student_kernel(x_teacher), 4.0 * torch.sign(truth(theta_teacher)))
    theta = torch.linspace(0, 2 * math.pi, 300, dtype=F64)
    assert torch.equal(example.theta, theta)
    assert torch.equal(example.labels, (truth(theta) > 0).to(F64))
    for j, tau in enumerate((1.0, 30.0)):
        torch.testing.assert_close(example.teacher_logits[:, j],
                                   teacher.logits(student_kernel(points_at_angles(theta, dim=2), x_teacher), tau))
    # the boundaries, found point by point
    labels = example.labels.tolist()
    changes = [i for i in range(299) if labels[i] != labels[i + 1]]
    assert example.sign_change.tolist() == changes and len(changes) >= 6  # sin 3θ + sin 7θ / 2 changes sign often
    assert example.elsewhere.tolist() == [i not in changes for i in range(299)]
    # each jump from two direct scalar calls of effective_student_logits at the boundary's teacher logit
    for b, i in enumerate(changes):
        middle = ((theta[i] + theta[i + 1]) / 2).reshape(1)
        z_t = teacher.logits(student_kernel(points_at_angles(middle, dim=2), x_teacher), 30.0)
        for j, rho in enumerate((0.1, 0.5, 1.0)):
            up = effective_student_logits(z_t, torch.ones(1, dtype=F64), rho, 2.0, t2_scaling=False)
            down = effective_student_logits(z_t, torch.zeros(1, dtype=F64), rho, 2.0, t2_scaling=False)
            assert math.isclose(float(example.jumps[b, j]), float(up - down), rel_tol=1e-12, abs_tol=1e-12)
    assert float(example.jumps[:, -1].abs().max()) < 1e-9  # ρ = 1 copies the teacher: no jump
    assert bool((example.jumps[:, 0] > example.jumps[:, 1]).all()) and bool((example.jumps[:, 1] > 0).all())
    # the step ratio, with numpy
    z = example.effective_logits.numpy()
    steps = np.abs(np.diff(z, axis=0))
    ratio = steps[changes].min(0) / np.delete(steps, changes, axis=0).max(0)
    np.testing.assert_allclose(example.step_ratio.numpy(), ratio, rtol=1e-12)
    assert float(example.step_ratio[0]) > 10 and float(example.step_ratio[-1]) < 10
    torch.testing.assert_close(example.effective_logits[:, -1], example.teacher_logits[:, -1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("change, error, match", [
    (dict(grid=2), ValueError, "grid"),
    (dict(grid=3), ValueError, "too coarse"),
    (dict(rhos=(0.0, 1.0)), ValueError, "rhos"),
    (dict(taus=(0.0,)), ValueError, "taus"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(n_teacher=1), ValueError, "n_teacher"),
    (dict(teacher_scale=-1.0), ValueError, "teacher_scale"),
])
def test_circle_example_refuses_bad_input(change, error, match):
    with pytest.raises(error, match=match):
        circle_example(circle_generator(), **{**CIRCLE, **change})
    with pytest.raises(TypeError, match="generator"):
        circle_example(3, **CIRCLE)


def digits_generator_for(*keys):
    return torch.Generator().manual_seed(int(np.random.SeedSequence([5, *keys]).generate_state(1)[0]))


DIGITS_SMALL = dict(seed=2, repeats=1, rhos=[0.5, 1.0], temperature=3.0, teacher_epochs=[1, 3], mlp_snapshots=[1],
                    mlp_rhos=[1.0, 0.5], mlp_epochs=2, n_teacher=1000, teacher_hidden=[4], teacher_lr=0.1,
                    student_hidden=[3], student_lr=1e-2, t2_scaling=False, example_accuracy=0.0)


def test_digits_experiment_matches_a_hand_written_loop():
    result = digits_experiment(digits_generator_for, **DIGITS_SMALL)
    # the same experiment, written out for its one split
    standard = load_binary_digits(seed=2000)
    sphere = load_binary_digits(seed=2000, sphere=True, dtype=F64)
    generator = digits_generator_for(2, 0)
    order = torch.randperm(len(standard.y_train), generator=generator)
    teacher_idx, student_idx = order[:1000], order[1000:]
    teacher = MLP(64, [4], 1, generator=generator)
    snapshots = teacher_snapshots(teacher, standard.x_train[teacher_idx], standard.y_train[teacher_idx],
                                  epochs=[1, 3], lr=0.1, generator=generator,
                                  evaluate_on=[standard.x_train[student_idx], standard.x_test])
    x_student, y_student = sphere.x_train[student_idx], sphere.y_train[student_idx]
    test_labels = sphere.y_test > 0
    kernel_rows, mlp_rows = [], []
    for k, (epoch, (z_student, z_test)) in enumerate(zip([1, 3], snapshots)):
        z_student, z_test = z_student.double(), z_test.double()
        teacher_accuracy = float(((z_test > 0) == test_labels).double().mean())
        for rho in (0.5, 1.0):
            logits = kernel_regression(student_kernel(x_student),
                                       effective_student_logits(z_student, y_student, rho, 3.0, t2_scaling=False)
                                       ).predict(student_kernel(sphere.x_test, x_student))
            kernel_rows.append((0, epoch, teacher_accuracy, rho, float(((logits > 0) == test_labels).double().mean())))
        if k == 1:
            for rho in (1.0, 0.5):
                student = MLP(64, [3], 1, generator=digits_generator_for(3, 0, 1))
                distill(student, standard.x_train[student_idx], z_student.float(), standard.y_train[student_idx],
                        rho=rho, temperature=3.0, t2_scaling=False, epochs=2, lr=1e-2, generator=generator)
                predicted = predict_logits(student, standard.x_test) > 0
                mlp_rows.append((0, epoch, teacher_accuracy, rho, float((predicted == test_labels).double().mean())))
        if k == 0:
            first = z_student
    rows = [tuple(r) for r in result.kernel_rows.itertuples(index=False)]
    assert [r[:4] for r in rows] == [r[:4] for r in kernel_rows]
    np.testing.assert_allclose([r[4] for r in rows], [r[4] for r in kernel_rows], rtol=0, atol=1e-12)
    assert [tuple(r) for r in result.mlp_rows.itertuples(index=False)] == mlp_rows
    assert result.kernel_results.index.names == ["epoch", "rho"] and list(result.kernel_results.columns) == [
        "teacher", "student"]
    assert result.mlp_results.index.tolist() == [(3, 0.5), (3, 1.0)]
    # example_accuracy = 0: the first snapshot of the first split
    assert result.example.epoch == 1 and result.example.split_seed == 2000
    assert torch.equal(result.example.z_student, first) and torch.equal(result.example.student_idx, student_idx)
    assert digits_experiment(digits_generator_for, **{**DIGITS_SMALL, "example_accuracy": 1.0,
                                                      "mlp_snapshots": []}).example is None


@pytest.mark.parametrize("change, error, match", [
    (dict(mlp_snapshots=[2]), ValueError, "mlp_snapshots"),
    (dict(teacher_epochs=[3, 1]), ValueError, "increasing"),
    (dict(rhos=[0.0, 1.0]), ValueError, "rhos"),
    (dict(mlp_rhos=[]), ValueError, "mlp_rhos"),
    (dict(repeats=0), ValueError, "repeats"),
    (dict(n_teacher=1257), ValueError, "n_teacher"),
    (dict(example_accuracy=1.5), ValueError, "example_accuracy"),
    (dict(t2_scaling="no"), TypeError, "t2_scaling"),
])
def test_digits_experiment_refuses_bad_input(change, error, match):
    with pytest.raises(error, match=match):
        digits_experiment(digits_generator_for, **{**DIGITS_SMALL, **change})
    with pytest.raises(TypeError, match="generator_for"):
        digits_experiment(None, **DIGITS_SMALL)


def results_frame(rows):
    frame = pd.DataFrame(rows, columns=["epoch", "rho", "teacher", "student"])
    return frame.set_index(["epoch", "rho"])


def test_best_rho_table_picks_the_best_soft_ratio_below_one():
    results = results_frame([(1, 0.1, 0.6, 0.80), (1, 0.5, 0.6, 0.80), (1, 1.0, 0.6, 0.61),
                             (4, 0.1, 0.9, 0.85), (4, 0.5, 0.9, 0.93), (4, 1.0, 0.9, 0.90)])
    table = best_rho_table(results)
    assert table.index.name == "teacher epoch" and table.index.tolist() == [1, 4]
    assert table.loc[1].tolist() == [0.6, 0.61, 0.1, 0.80]  # a tie goes to the first ρ
    assert table.loc[4].tolist() == [0.9, 0.90, 0.5, 0.93]


def test_best_rho_table_refuses_bad_input():
    with pytest.raises(ValueError, match="rho = 1"):
        best_rho_table(results_frame([(1, 0.1, 0.6, 0.8), (1, 0.5, 0.6, 0.7)]))
    with pytest.raises(ValueError, match="rho < 1"):
        best_rho_table(results_frame([(1, 1.0, 0.6, 0.8)]))
    with pytest.raises(ValueError, match="indexed"):
        best_rho_table(results_frame([(1, 1.0, 0.6, 0.8)]).reset_index())
    with pytest.raises(ValueError, match="student"):
        best_rho_table(results_frame([(1, 1.0, 0.6, 0.8)]).drop(columns="student"))
    with pytest.raises(TypeError, match="DataFrame"):
        best_rho_table({"teacher": [0.5]})


def test_fitted_slope_skips_small_n_and_zero_values():
    n_values = [8, 16, 32, 64, 128, 256]
    values = [0.9, 0.0] + [2.0 * n**-1.3 for n in (32, 64, 128)] + [0.0]
    slope, r_squared = fitted_slope(n_values, values, 16)
    assert math.isclose(slope, -1.3, rel_tol=1e-12) and math.isclose(r_squared, 1.0, rel_tol=1e-12)
    fit = power_law_fit([32, 64, 128], values[2:5])
    assert (slope, r_squared) == (fit.slope, fit.r_squared)
    assert fitted_slope(n_values, np.array(values), 16) == (slope, r_squared)
    nan_slope, nan_r2 = fitted_slope(n_values, [0.1, 0.1, 0.1, 0.0, 0.0, 0.1], 64)
    assert math.isnan(nan_slope) and math.isnan(nan_r2)  # one positive value at n >= 64: no fit
    with pytest.raises(ValueError, match="one entry per n"):
        fitted_slope(n_values, values[:-1], 16)
    with pytest.raises(ValueError, match="fit_from"):
        fitted_slope(n_values, values, 0)


def test_inefficiency_table_stacks_repeats_per_target():
    n = torch.arange(1, 65, dtype=F64)
    g = torch.Generator().manual_seed(0)
    norms = {"power": [n**0.4, 3 * n**0.4],
             "noisy": [n**0.2 * (1 + 0.1 * torch.rand(64, generator=g, dtype=F64)) for _ in range(3)]}
    table = inefficiency_table(norms, [8, 16, 32])
    assert list(table.columns) == ["power", "noisy"] and table.index.name == "n" and table.index.tolist() == [8, 16, 32]
    np.testing.assert_allclose(table["power"], 0.4, rtol=1e-12)  # a power law has a constant I(n)
    assert table["noisy"].tolist() == data_inefficiency(torch.stack(norms["noisy"]), [8, 16, 32]).tolist()
    with pytest.raises(ValueError, match="at least one"):
        inefficiency_table({}, [8])
    with pytest.raises(ValueError, match="at least one"):
        inefficiency_table({"power": []}, [8])
    with pytest.raises(TypeError, match="mapping"):
        inefficiency_table([n], [8])


def test_fitted_slope_validates_its_values():
    n_values = [8, 16, 32, 64]
    good = [0.5, 0.25, 0.125, 0.0625]
    slope, _ = fitted_slope(n_values, good, 8)
    assert math.isclose(slope, -1.0, rel_tol=1e-12)
    assert fitted_slope(n_values, torch.tensor(good, dtype=F64), 8) == fitted_slope(n_values, good, 8)
    assert fitted_slope(np.array(n_values), np.array(good, dtype=np.float32), 8) == fitted_slope(
        n_values, [float(v) for v in np.array(good, dtype=np.float32)], 8)
    assert fitted_slope(n_values, [0.5, math.nan, 0.125, 0.0625], 8)[0] == fitted_slope(
        [8, 32, 64], [0.5, 0.125, 0.0625], 8)[0]  # NaN is left out, like 0
    with pytest.raises(ValueError, match=r"values\[1\] must be a finite number >= 0 or NaN, got -0.25"):
        fitted_slope(n_values, [0.5, -0.25, 0.125, 0.0625], 8)
    with pytest.raises(ValueError, match=r"values\[3\] must be a finite number >= 0 or NaN"):
        fitted_slope(n_values, [0.5, 0.25, 0.125, math.inf], 8)
    with pytest.raises(TypeError, match="values must be a sequence.*got dict"):
        fitted_slope(n_values, dict(zip(good, n_values)), 8)
    with pytest.raises(TypeError, match="values must be a sequence.*got set"):
        fitted_slope(n_values, set(good), 8)
    with pytest.raises(TypeError, match="values must be a sequence.*got float"):
        fitted_slope(n_values, 0.5, 8)
    with pytest.raises(TypeError, match=r"values\[0\] must be a real number .*got bool"):
        fitted_slope(n_values, [True, 0.25, 0.125, 0.0625], 8)
    with pytest.raises(TypeError, match=r"values\[2\] must be a real number .*got str"):
        fitted_slope(n_values, [0.5, 0.25, "0.1", 0.0625], 8)
    with pytest.raises(ValueError, match="values must be 1-D"):
        fitted_slope(n_values, np.ones((4, 1)), 8)
    with pytest.raises(TypeError, match="n_values must be a sequence"):
        fitted_slope(8, good, 8)
    with pytest.raises(ValueError, match="n_values must not be empty"):
        fitted_slope([], [], 8)


def test_digits_experiment_names_a_sequence_argument_that_is_not_one():
    for name, bad in [("mlp_snapshots", 0), ("teacher_epochs", 3), ("rhos", 0.5), ("mlp_rhos", 1.0),
                      ("teacher_hidden", 4), ("student_hidden", 3)]:
        with pytest.raises(TypeError, match=f"{name} must be a sequence"):
            digits_experiment(digits_generator_for, **{**DIGITS_SMALL, name: bad})
    with pytest.raises(ValueError, match="teacher_hidden must be >= 1"):
        digits_experiment(digits_generator_for, **{**DIGITS_SMALL, "teacher_hidden": [0]})
    with pytest.raises(TypeError, match="progress must be True or False"):
        digits_experiment(digits_generator_for, **{**DIGITS_SMALL, "progress": "no"})


@pytest.mark.parametrize("rows, match", [
    ([(1, 0.5, 0.6, 0.8), (1, 0.5, 0.6, 0.7), (1, 1.0, 0.6, 0.6)], r"one row per \(epoch, rho\).*\(1, 0.5\)"),
    ([(1, 0.5, 0.6, 0.8), (1, 1.0, 0.6, 0.6), (1, 2.0, 0.6, 0.9)], r"results' rho must be in \(0, 1\], got 2.0"),
    ([(1, 0.0, 0.6, 0.8), (1, 1.0, 0.6, 0.6)], r"results' rho must be in \(0, 1\]"),
    ([(1, 0.5, 0.6, 0.8), (1, 1.0, 0.7, 0.6)], r"epoch 1 has different teacher accuracies.*one teacher per epoch"),
    ([(1, 0.1, 0.6, math.nan), (1, 0.5, 0.6, math.nan), (1, 1.0, 0.6, 0.6)],
     "epoch 1 has no finite student accuracy at rho < 1"),
])
def test_best_rho_table_refuses_ambiguous_tables(rows, match):
    with pytest.raises(ValueError, match=match):
        best_rho_table(results_frame(rows))


def test_best_rho_table_skips_a_nan_student_below_one():
    table = best_rho_table(results_frame([(1, 0.1, 0.6, math.nan), (1, 0.5, 0.6, 0.7), (1, 1.0, 0.6, 0.6)]))
    assert table.loc[1].tolist() == [0.6, 0.6, 0.5, 0.7]


def test_poor_teacher_gain_is_the_smallest_gain_among_poor_teachers():
    from kdnb.papers.wide_network_kd import poor_teacher_gain

    table = pd.DataFrame({"teacher": [0.6, 0.8, 0.9], "student ρ = 1": [0.6, 0.79, 0.9],
                          "its student": [0.75, 0.85, 0.91]})
    assert poor_teacher_gain(table) == pytest.approx(0.06)  # 0.85 - 0.79; the 0.9 teacher is not poor
    assert poor_teacher_gain(table, below=0.7) == pytest.approx(0.15)
    assert math.isnan(poor_teacher_gain(table, below=0.5))
    with pytest.raises(ValueError, match="missing"):
        poor_teacher_gain(table.drop(columns="its student"))
    with pytest.raises(ValueError, match=r"below must be in \(0, 1\]"):
        poor_teacher_gain(table, below=0.0)
    with pytest.raises(TypeError, match="table must be a pandas DataFrame"):
        poor_teacher_gain(table.to_dict())


def test_target_difficulty_norms_with_one_mode_width():
    kwargs = dict(n_points=48, n_modes=(1, 16), flip_probabilities=(0.2,))
    fixed = target_difficulty_norms(torch.Generator().manual_seed(3), mode_width=0.5, **kwargs)
    g = torch.Generator().manual_seed(3)
    x = sample_sphere(48, 3, g)
    one = GaussianMixtureOnSphere(3, 1, g, width=0.5)(x)
    sixteen = GaussianMixtureOnSphere(3, 16, g, width=0.5)(x)
    torch.testing.assert_close(fixed["modes=1"], NestedKernelRegression(student_kernel(x), one).norms())
    torch.testing.assert_close(fixed["modes=16"], NestedKernelRegression(student_kernel(x), sixteen).norms())
    default = target_difficulty_norms(torch.Generator().manual_seed(3), **kwargs)
    assert not torch.equal(default["modes=16"], fixed["modes=16"])  # 1/√16 = 0.25 is another width
    torch.testing.assert_close(default["random"], fixed["random"])  # the draws after the targets are the same
    with pytest.raises(ValueError, match="width"):
        target_difficulty_norms(torch.Generator(), mode_width=0.0, **kwargs)


def test_early_stopped_distillation_norms_with_a_teacher_of_another_kernel():
    taus, rhos = [3.0, 100.0], [0.5, 1.0]
    kwargs = dict(n_points=48, taus=taus, rhos=rhos, temperature=5.0, n_teacher=24, t2_scaling=False)
    result = early_stopped_distillation_norms(torch.Generator().manual_seed(1), teacher_architecture="three_layer",
                                              **kwargs)
    g = torch.Generator().manual_seed(1)
    truth = GaussianMixtureOnSphere(3, 4, g, width=0.5)
    x_teacher, x = sample_sphere(24, 3, g), sample_sphere(48, 3, g)
    labels = (truth(x) > 0).to(F64)
    teacher = EarlyStoppedTeacher(student_kernel(x_teacher, architecture="three_layer"),
                                  4 * torch.sign(truth(x_teacher)))
    z_t = teacher.logits(student_kernel(x, x_teacher, architecture="three_layer"), taus)
    kernel = student_kernel(x)  # the student keeps its own kernel
    for i in range(len(taus)):
        for j, rho in enumerate(rhos):
            target = effective_student_logits(z_t[:, i], labels, rho, 5.0, t2_scaling=False)
            direct = NestedKernelRegression(kernel, target).norms()
            torch.testing.assert_close(result.norms[:, i, j], direct, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result.teacher_norms, teacher.weight_change_norm(taus))
    # None is the student's own kernel, the behaviour without the argument
    same = early_stopped_distillation_norms(torch.Generator().manual_seed(1), teacher_architecture=None, **kwargs)
    default = early_stopped_distillation_norms(torch.Generator().manual_seed(1), **kwargs)
    assert torch.equal(same.norms, default.norms) and not torch.equal(same.norms, result.norms)
    with pytest.raises(ValueError, match="teacher_architecture"):
        early_stopped_distillation_norms(torch.Generator(), teacher_architecture="resnet", **kwargs)
