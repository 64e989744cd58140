"""kdnb.core.testing: the gradient-reach assertion passes where it must and fails, naming the parameters, where it
must."""

import pytest
import torch

from kdnb.core.losses import kd_loss
from kdnb.core.models import MLP
from kdnb.core.testing import assert_gradient_reaches


def teacher_student(seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = MLP(4, (6,), 3, generator=g)
    student = MLP(4, (5,), 3, generator=g)
    x = torch.randn(10, 4, generator=g)
    return teacher, student, x


def test_a_distillation_loss_reaches_the_student_and_not_the_teacher():
    teacher, student, x = teacher_student()
    loss = kd_loss(student(x), teacher(x).detach(), rho=1.0, temperature=2.0)
    grads = assert_gradient_reaches(loss, {"student": student}, {"teacher": teacher})
    assert list(grads)[:4] == ["student.net.0.weight", "student.net.0.bias", "student.net.2.weight",
                               "student.net.2.bias"]
    assert all(grads[f"teacher.{name}"] is None for name, _ in teacher.named_parameters())
    # the returned gradients are autograd's, and .grad is left alone
    expected = torch.autograd.grad(loss, list(student.parameters()), retain_graph=True)
    for name, g in zip(["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"], expected):
        assert torch.equal(grads[f"student.{name}"], g)
    assert all(p.grad is None for p in student.parameters())
    loss.backward()  # the graph was retained


def test_forms_of_reached_and_untouched():
    teacher, student, x = teacher_student()
    frozen = torch.nn.Parameter(torch.ones(3))
    loss = (student(x) * frozen.detach()).sum() + 0 * teacher(x).sum()  # teacher in the graph with zero gradient
    assert_gradient_reaches(loss, student, teacher)
    assert_gradient_reaches(loss, [student.net[0].weight, student.net[2]], [teacher, frozen])
    assert_gradient_reaches(loss, student.net[0].weight, untouched={"frozen": frozen})
    no_grad = MLP(4, (2,), 3).requires_grad_(False)
    assert_gradient_reaches(loss + no_grad(x).sum(), student, no_grad)  # untouched: it does not require gradients


def test_fails_naming_a_parameter_the_gradient_misses():
    teacher, student, x = teacher_student()
    loss = kd_loss(student(x), teacher(x).detach(), rho=1.0, temperature=2.0)
    with pytest.raises(AssertionError, match=r"teacher\.net\.0\.weight: not reached") as info:
        assert_gradient_reaches(loss, {"student": student, "teacher": teacher})
    assert "4 gradient check(s) failed" in str(info.value) and "student" not in str(info.value)


def test_fails_naming_a_parameter_the_gradient_leaks_into():
    teacher, student, x = teacher_student()
    loss = kd_loss(student(x), teacher(x), rho=1.0, temperature=2.0)  # teacher logits not detached
    with pytest.raises(AssertionError, match=r"teacher\.net\.2\.bias: should be untouched but its gradient is "
                                             r"nonzero \(max \|grad\| = "):
        assert_gradient_reaches(loss, {"student": student}, {"teacher": teacher})


def test_fails_on_a_zero_or_non_finite_gradient_and_on_a_frozen_reached_parameter():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    with pytest.raises(AssertionError, match=r"w: gradient is zero everywhere"):
        assert_gradient_reaches(0.0 * w.sum(), {"w": w})
    with pytest.raises(AssertionError, match=r"w: gradient is not finite"):
        assert_gradient_reaches(torch.sqrt(w - 1.0).sum(), {"w": w})  # d sqrt(u)/du = inf at u = 0
    frozen = torch.tensor([1.0], requires_grad=False)
    with pytest.raises(AssertionError, match="frozen: does not require gradients"):
        assert_gradient_reaches(w.sum() + frozen.sum(), {"w": w, "frozen": frozen})
    # a partly zero gradient still counts as reaching the parameter
    assert_gradient_reaches(w[0] * 3.0, {"w": w})


def test_rejects_bad_arguments():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="scalar"):
        assert_gradient_reaches(w * 2, w)
    with pytest.raises(TypeError, match="loss must be a torch.Tensor"):
        assert_gradient_reaches(1.0, w)
    with pytest.raises(ValueError, match="both reached and untouched"):
        assert_gradient_reaches(w.sum(), {"w": w}, [w])
    with pytest.raises(ValueError, match="at least one parameter"):
        assert_gradient_reaches(w.sum(), [])
    with pytest.raises(TypeError, match="reached\\[0\\] must be a torch.nn.Module or a torch.Tensor"):
        assert_gradient_reaches(w.sum(), ["w"])
    with pytest.raises(TypeError, match="untouched must be a module"):
        assert_gradient_reaches(w.sum(), w, untouched=3)


def test_refuses_two_tensors_under_one_name():
    teacher, student, x = teacher_student()
    loss = kd_loss(student(x), teacher(x).detach(), None, rho=1.0, temperature=2.0)
    with pytest.raises(ValueError, match=r"share the name\(s\) \['m.net.0.bias', 'm.net.0.weight'"):
        assert_gradient_reaches(loss, {"m": student}, {"m": teacher})
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=r"share the name\(s\) \['1'\]"):
        assert_gradient_reaches((a + b).sum(), {1: a, "1": b})
    # distinct labels: every gradient is kept, reached first
    grads = assert_gradient_reaches(loss, {"student": student}, {"teacher": teacher})
    assert len(grads) == len(list(student.parameters())) + len(list(teacher.parameters()))
    assert list(grads)[0].startswith("student.") and all(grads[k] is None for k in grads if k.startswith("teacher."))


def test_retain_graph_must_be_a_bool():
    import numpy as np

    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(TypeError, match="retain_graph must be True or False"):
        assert_gradient_reaches(w.sum(), w, retain_graph="no")
    assert set(assert_gradient_reaches(w.sum(), {"w": w}, retain_graph=np.False_)) == {"w"}
