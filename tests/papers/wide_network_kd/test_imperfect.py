"""kdnb.papers.wide_network_kd.imperfect: the ground-truth logit of the hard-label test, held-out paired gains, and
the sign switch; and the experiment's two conventions and second teacher."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdnb.core.data import GaussianMixtureOnSphere, sample_sphere
from kdnb.kernels.regression import KernelGradientFlow
from kdnb.papers.wide_network_kd import (
    GROUND_TRUTH_LOGITS,
    ground_truth_logit,
    hard_label_effect,
    held_out_soft_gain,
    imperfect_teacher_experiment,
    sign_switch,
    student_kernel,
)

F64 = torch.float64


def test_ground_truth_logit_conventions():
    f = torch.tensor([-2.0, -0.1, 0.0, 0.3, 5.0], dtype=F64)
    assert torch.equal(ground_truth_logit(f, "smooth"), f)
    assert torch.equal(ground_truth_logit(f, "step"), torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0], dtype=F64))
    assert ground_truth_logit(f.float(), "smooth").dtype == F64
    assert GROUND_TRUTH_LOGITS == ("smooth", "step")
    with pytest.raises(ValueError, match="convention"):
        ground_truth_logit(f, "sign")
    with pytest.raises((TypeError, ValueError), match="truth"):
        ground_truth_logit(torch.tensor([1.0, float("nan")]), "step")


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.01, 100.0), seed=st.integers(0, 10_000))
def test_the_sign_of_the_hard_label_effect_ignores_the_scale_of_the_step(scale, seed):
    """The inner product is linear in g: c (2y − 1) gives c times the value for (2y − 1), the same sign."""
    g = torch.Generator().manual_seed(seed)
    x = sample_sphere(20, 3, g)
    kernel = student_kernel(x)
    f = torch.randn(20, generator=g, dtype=F64)
    labels = (f > 0).to(F64)
    z_t = f + torch.randn(20, generator=g, dtype=F64)
    step = ground_truth_logit(f, "step")
    base = hard_label_effect(kernel, z_t, labels, step, [0.5, 1.0], 5.0).inner_product
    scaled = hard_label_effect(kernel, z_t, labels, scale * step, [0.5, 1.0], 5.0).inner_product
    torch.testing.assert_close(scaled, scale * base, rtol=1e-7, atol=1e-12)


def test_held_out_soft_gain_chooses_without_the_repeat():
    # 3 repeats, 1 teacher, rhos (0.5, 0.9, 1.0)
    accuracy = np.array([[[0.9, 0.1, 0.5]], [[0.2, 0.8, 0.5]], [[0.3, 0.7, 0.6]]])
    gain = held_out_soft_gain(accuracy, [0.5, 0.9, 1.0])
    # repeat 0: the others favour 0.9 (mean 0.75 vs 0.25) -> 0.1 - 0.5; repeat 1: others favour 0.5 (0.6 vs 0.4)
    # -> 0.2 - 0.5; repeat 2: others 0.55 vs 0.45 -> 0.5 wins -> 0.3 - 0.6
    np.testing.assert_allclose(gain, [[-0.4], [-0.3], [-0.3]])
    # the same-repeat maximum would be biased: noise alone gives a positive best-of-many, held out does not
    rng = np.random.default_rng(0)
    noise = rng.normal(0.9, 0.01, size=(400, 2, 11))
    rhos = [0.1 * k for k in range(1, 11)] + [1.0]
    rhos[-2] = 0.95
    assert abs(held_out_soft_gain(noise, rhos).mean()) < 0.003
    assert (noise[:, :, :-1].max(2) - noise[:, :, -1]).mean() > 0.01
    assert held_out_soft_gain(torch.tensor(noise), rhos).shape == (400, 2)


@pytest.mark.parametrize("accuracy, rhos, match", [
    (np.zeros((1, 2, 3)), [0.5, 0.9, 1.0], "R >= 2"),
    (np.zeros((2, 3)), [0.5, 0.9, 1.0], r"\(R, τ, ρ\)"),
    (np.zeros((2, 2, 3)), [0.5, 1.0], "one value per column"),
    (np.zeros((2, 2, 2)), [0.5, 0.9], "contain 1.0"),
    (np.full((2, 2, 2), np.nan), [0.5, 1.0], "finite"),
])
def test_held_out_soft_gain_refuses_bad_input(accuracy, rhos, match):
    with pytest.raises(ValueError, match=match):
        held_out_soft_gain(accuracy, rhos)


def test_sign_switch():
    teacher, student = [0.7, 0.8, 0.9, 0.97, 0.99], [0.95, 0.95, 0.95, 0.96, 0.97]
    found = sign_switch([1, 0.5, 0.2, -0.5, -1], teacher, student)
    assert (found.crossing, found.switch, found.holds) == (3, 3, True)
    late = sign_switch([1, 1, 1, 0.5, -1], teacher, student, tolerance=0)
    assert (late.crossing, late.switch, late.holds) == (3, 4, False)
    assert sign_switch([1, 1, 1, 0.5, -1], teacher, student).holds  # one step is "near"
    never = sign_switch([1, 0.5, -0.2, -0.5, -1], [0.7] * 5, student)  # no teacher overtakes
    assert (never.crossing, never.switch, never.holds) == (None, 2, False)
    back = sign_switch([-1, -1, 0.5, -0.5, 0.2], teacher, student)  # ends positive: no switch
    assert back.switch is None and not back.holds
    assert sign_switch([-1, -1], [0.9, 0.9], [0.5, 0.5]).switch == 0
    with pytest.raises(ValueError, match="one length"):
        sign_switch([1, -1], [0.5], [0.5, 0.6])
    with pytest.raises(ValueError, match="tolerance"):
        sign_switch([1, -1], [0.5, 0.6], [0.5, 0.6], tolerance=-1)
    with pytest.raises(TypeError, match="tolerance"):
        sign_switch([1, -1], [0.5, 0.6], [0.5, 0.6], tolerance=1.0)


KWARGS = dict(taus=[0.3, 1000.0], rhos=[0.5, 0.9, 1.0], temperature=5.0, n_teacher=64, n_student=40, n_test=200)


def test_experiment_gives_both_conventions_and_checks_the_chosen_one():
    smooth = imperfect_teacher_experiment(torch.Generator().manual_seed(1), **KWARGS)
    step = imperfect_teacher_experiment(torch.Generator().manual_seed(1), **KWARGS, ground_truth_logits="step")
    assert smooth.ground_truth_logits == "smooth" and step.ground_truth_logits == "step"
    for run in (smooth, step):
        assert set(run.inner_product_by_convention) == set(GROUND_TRUTH_LOGITS)
        torch.testing.assert_close(run.inner_product_by_convention[run.ground_truth_logits], run.inner_product)
        torch.testing.assert_close(run.check_derivative, run.finite_difference, rtol=0, atol=1e-6)
    for name in GROUND_TRUTH_LOGITS:
        torch.testing.assert_close(smooth.inner_product_by_convention[name], step.inner_product_by_convention[name])
    assert torch.equal(smooth.student_accuracy, step.student_accuracy)  # the logit changes only the sign test
    # recompute the step convention's inner product from the same draws
    g = torch.Generator().manual_seed(1)
    truth = GaussianMixtureOnSphere(3, 4, g, width=0.5)
    x_teacher, x = sample_sphere(64, 3, g), sample_sphere(40, 3, g)
    teacher = KernelGradientFlow(student_kernel(x_teacher), 4 * torch.sign(truth(x_teacher)))
    z_t = teacher.logits(student_kernel(x, x_teacher), [0.3, 1000.0])
    labels = (truth(x) > 0).to(F64)
    for i in range(2):
        effect = hard_label_effect(student_kernel(x), z_t[:, i], labels, 2 * labels - 1, [0.5, 0.9, 1.0], 5.0)
        torch.testing.assert_close(step.inner_product[i], effect.inner_product)
    with pytest.raises(ValueError, match="ground_truth_logits"):
        imperfect_teacher_experiment(torch.Generator(), **KWARGS, ground_truth_logits="oracle")


def test_experiment_with_a_teacher_of_another_kernel():
    run = imperfect_teacher_experiment(torch.Generator().manual_seed(2), **KWARGS, teacher_architecture="three_layer")
    assert run.teacher_architecture == "three_layer"
    g = torch.Generator().manual_seed(2)
    truth = GaussianMixtureOnSphere(3, 4, g, width=0.5)
    x_teacher, _, x_test = sample_sphere(64, 3, g), sample_sphere(40, 3, g), sample_sphere(200, 3, g)
    teacher = KernelGradientFlow(student_kernel(x_teacher, architecture="three_layer"),
                                 4 * torch.sign(truth(x_teacher)))
    z_test = teacher.logits(student_kernel(x_test, x_teacher, architecture="three_layer"), [0.3, 1000.0])
    expected = ((z_test > 0) == (truth(x_test) > 0)[:, None]).to(F64).mean(0)
    torch.testing.assert_close(run.teacher_accuracy, expected)
    default = imperfect_teacher_experiment(torch.Generator().manual_seed(2), **KWARGS)
    assert default.teacher_architecture == "two_layer_bias"
    assert not torch.equal(default.teacher_accuracy, run.teacher_accuracy)
    with pytest.raises(ValueError, match="teacher_architecture"):
        imperfect_teacher_experiment(torch.Generator(), **KWARGS, teacher_architecture="resnet")
