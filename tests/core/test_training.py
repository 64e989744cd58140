"""The fit loop, its determinism and history, evaluation, and the sweep helper."""

import pytest
import torch

from kdnb.core.models import MLP
from kdnb.core.training import (
    accuracy,
    cross_entropy_objective,
    distillation_objective,
    fit,
    predict_logits,
)


def toy(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def train(seed, batch_size=16, epochs=15):
    x, y = toy()
    model = MLP(4, (8,), 2, generator=torch.Generator().manual_seed(seed))
    history = fit(model, cross_entropy_objective(), x, [y], epochs=epochs, lr=0.05, batch_size=batch_size,
                  generator=torch.Generator().manual_seed(seed), evaluate=lambda m: {"acc": accuracy(m, x, y)},
                  eval_every=5, progress=False)
    return model, history


def test_fit_learns_and_records_history():
    model, history = train(0)
    assert len(history.loss) == 15 and history.loss[-1] < 0.5 * history.loss[0]
    assert history.epochs == [5, 10, 15] and history.metrics["acc"][-1] > 0.9
    frame = history.to_frame()
    assert list(frame.columns) == ["loss", "acc"] and frame["acc"].notna().sum() == 3
    assert not model.training  # left in eval mode


def test_same_seed_gives_identical_numbers():
    (m1, h1), (m2, h2) = train(3), train(3)
    assert h1.loss == h2.loss
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
    _, h3 = train(4)
    assert h3.loss != h1.loss


def test_sgd_full_batch_matches_a_hand_written_gradient_step():
    x, y = toy(8)
    model = MLP(4, (), 2, generator=torch.Generator().manual_seed(0))
    w0, b0 = model.net[0].weight.detach().clone(), model.net[0].bias.detach().clone()
    fit(model, cross_entropy_objective(), x, [y], epochs=1, lr=0.1, optimizer="sgd", generator=torch.Generator(),
        progress=False)
    p = torch.softmax(x @ w0.T + b0, 1)
    residual = (p - torch.nn.functional.one_hot(y, 2)) / len(y)
    assert torch.allclose(model.net[0].weight, w0 - 0.1 * residual.T @ x, atol=1e-6)
    assert torch.allclose(model.net[0].bias, b0 - 0.1 * residual.sum(0), atol=1e-6)


def test_distillation_objective_trains_a_student_toward_its_teacher():
    x, y = toy()
    teacher = MLP(4, (16,), 2, generator=torch.Generator().manual_seed(1))
    fit(teacher, cross_entropy_objective(), x, [y], epochs=40, lr=0.05, generator=torch.Generator(), progress=False)
    z_t = predict_logits(teacher, x)
    student = MLP(4, (8,), 2, generator=torch.Generator().manual_seed(2))
    h = fit(student, distillation_objective(1.0, 2.0), x, [z_t, None, None], epochs=60, lr=0.05,
            generator=torch.Generator(), progress=False)
    assert h.loss[-1] < 0.1 * h.loss[0]
    assert accuracy(student, x, z_t.argmax(1)) > 0.95


def test_binary_accuracy_and_objective():
    logits, labels = torch.tensor([2.0, -1.0, 0.5, -3.0]), torch.tensor([1, 0, 0, 0])
    assert accuracy(logits, labels) == 0.75
    loss = cross_entropy_objective()(logits, labels)
    assert torch.allclose(loss, torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float()))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(epochs=0), ValueError, "epochs must be >= 1"),
    (dict(lr=-1.0), ValueError, "lr must be a finite number > 0"),
    (dict(optimizer="lbfgs"), ValueError, "optimizer must be one of"),
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay must be a finite number >= 0"),
    (dict(weight_decay=float("nan")), ValueError, "weight_decay must not be NaN"),
    (dict(targets=torch.zeros(3)), TypeError, "targets must be a list or tuple"),
    (dict(targets=[torch.zeros(5, dtype=torch.long)]), ValueError, "first dimension 64"),
    (dict(model="mlp"), TypeError, "model must be a torch.nn.Module"),
    (dict(objective=None), TypeError, "objective must be callable"),
])
def test_fit_rejects_bad_arguments(kwargs, error, message):
    x, y = toy()
    args = dict(model=MLP(4, (3,), 2), objective=cross_entropy_objective(), inputs=x, targets=[y], epochs=1,
                generator=torch.Generator(), progress=False)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        fit(args.pop("model"), args.pop("objective"), args.pop("inputs"), args.pop("targets"), **args)


def test_accuracy_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="disagree in length"):
        accuracy(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))


def test_teacher_snapshots_are_one_gradient_descent_run():
    from kdnb.core.training import (
        cross_entropy_objective,
        fit,
        predict_logits,
        teacher_snapshots,
    )

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g)
    y = (x[:, 0] > 0).float()
    x_eval = torch.randn(7, 5, generator=g)
    model = MLP(5, (8,), 1, generator=torch.Generator().manual_seed(1))
    snaps = teacher_snapshots(model, x, y, epochs=[3, 10], evaluate_on=[x, x_eval], generator=torch.Generator())
    assert len(snaps) == 2 and [t.shape for t in snaps[1]] == [(40,), (7,)]
    for epochs, (_, logits) in zip([3, 10], snaps):
        fresh = MLP(5, (8,), 1, generator=torch.Generator().manual_seed(1))
        fit(fresh, cross_entropy_objective(), x, [y], epochs=epochs, generator=torch.Generator(), lr=0.1,
            optimizer="sgd", progress=False)
        torch.testing.assert_close(logits, predict_logits(fresh, x_eval), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="increasing"):
        teacher_snapshots(model, x, y, epochs=[5, 5], evaluate_on=[x], generator=g)
    with pytest.raises(TypeError, match="list of input tensors"):
        teacher_snapshots(model, x, y, epochs=[1], evaluate_on=x, generator=g)


class Scalar(torch.nn.Module):
    """``f(x) = w * x``, one parameter: with the objective ``sum(outputs)`` and inputs summing to 1 the gradient
    is exactly 1 at every step, so each SGD step moves ``w`` by minus the learning rate."""

    def __init__(self, w=0.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x):
        return self.w * x


def unit_gradient_inputs(n=4):
    return torch.full((n,), 1.0 / n, dtype=torch.float64)


def sum_objective(outputs, *targets):
    return outputs.sum()


def test_cosine_schedule_learning_rates_follow_the_closed_form():
    import math

    x = unit_gradient_inputs(8)
    model = Scalar()
    path = []
    fit(model, sum_objective, x, [], epochs=3, lr=0.2, batch_size=2, optimizer="sgd", schedule="cosine",
        generator=torch.Generator().manual_seed(0), progress=False,
        callback=lambda step, loss, m: path.append(float(m.w.detach())))
    total = 3 * 4  # 3 epochs of 4 mini-batches
    assert len(path) == total
    # the mini-batch gradient is the sum of its two inputs: 2/8
    steps = -torch.diff(torch.tensor([0.0, *path], dtype=torch.float64)) / (2 / 8)
    expected = torch.tensor([0.5 * 0.2 * (1 + math.cos(math.pi * t / total)) for t in range(total)],
                            dtype=torch.float64)
    torch.testing.assert_close(steps, expected, rtol=1e-12, atol=1e-15)
    assert float(steps[0]) == pytest.approx(0.2) and 0 < float(steps[-1]) < 0.01


def test_constant_schedule_is_the_default_and_cosine_changes_training():
    x, y = toy()
    runs = {}
    for schedule in (None, "constant", "cosine"):
        model = MLP(4, (8,), 2, generator=torch.Generator().manual_seed(0))
        extra = {} if schedule is None else dict(schedule=schedule)
        h = fit(model, cross_entropy_objective(), x, [y], epochs=5, lr=0.05, batch_size=16,
                generator=torch.Generator().manual_seed(1), progress=False, **extra)
        runs[schedule] = (h.loss, [p.detach().clone() for p in model.parameters()])
    assert runs[None][0] == runs["constant"][0]
    assert all(torch.equal(p, q) for p, q in zip(runs[None][1], runs["constant"][1]))
    assert runs["cosine"][0] != runs[None][0]


def test_momentum_matches_a_hand_written_heavy_ball_update():
    x, y = toy(8)
    model = MLP(4, (), 2, generator=torch.Generator().manual_seed(0))
    w, b = model.net[0].weight.detach().clone(), model.net[0].bias.detach().clone()
    fit(model, cross_entropy_objective(), x, [y], epochs=3, lr=0.1, optimizer="sgd", momentum=0.9,
        generator=torch.Generator(), progress=False)
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    for _ in range(3):
        residual = (torch.softmax(x @ w.T + b, 1) - torch.nn.functional.one_hot(y, 2)) / len(y)
        vw, vb = 0.9 * vw + residual.T @ x, 0.9 * vb + residual.sum(0)
        w, b = w - 0.1 * vw, b - 0.1 * vb
    torch.testing.assert_close(model.net[0].weight.detach(), w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.net[0].bias.detach(), b, rtol=1e-5, atol=1e-6)


def test_nesterov_matches_a_hand_written_update():
    x = unit_gradient_inputs()
    model = Scalar(1.0)
    path = []
    fit(model, sum_objective, x, [], epochs=3, lr=0.1, optimizer="sgd", momentum=0.5, nesterov=True,
        generator=torch.Generator(), progress=False, callback=lambda step, loss, m: path.append(float(m.w.detach())))
    # gradient 1 at every step: v_t = 0.5 v_{t-1} + 1, w_t = w_{t-1} - 0.1 (1 + 0.5 v_t)
    w, v, expected = 1.0, 0.0, []
    for _ in range(3):
        v = 0.5 * v + 1.0
        w = w - 0.1 * (1.0 + 0.5 * v)
        expected.append(w)
    assert path == pytest.approx(expected, abs=1e-12)


def test_callback_is_called_once_per_step_with_the_loss_it_descended():
    x, y = toy()
    model = MLP(4, (8,), 2, generator=torch.Generator().manual_seed(0))
    calls = []

    def callback(step, loss, m):
        assert m is model and m.training
        calls.append((step, loss))

    history = fit(model, cross_entropy_objective(), x, [y], epochs=6, lr=0.05, batch_size=16, callback=callback,
                  generator=torch.Generator().manual_seed(1), progress=False)
    assert [s for s, _ in calls] == list(range(1, 6 * 4 + 1))  # 64 examples in batches of 16: 4 steps per epoch
    losses = [loss for _, loss in calls]
    assert all(isinstance(v, float) for v in losses)
    # the epoch loss is the mean of that epoch's four equal-sized mini-batch losses
    for epoch in range(6):
        assert history.loss[epoch] == pytest.approx(sum(losses[4 * epoch:4 * epoch + 4]) / 4, rel=1e-12)
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4])  # an easy problem: the loss falls


def test_callback_sees_a_decreasing_loss_on_full_batch_gradient_descent():
    x = torch.linspace(-1, 1, 20).reshape(-1, 1)
    y = 3 * x.squeeze(1) - 1
    model = torch.nn.Linear(1, 1)
    losses = []
    fit(model, lambda out, target: (out.squeeze(1) - target).square().mean(), x, [y], epochs=25, lr=0.1,
        optimizer="sgd", generator=torch.Generator(), progress=False,
        callback=lambda step, loss, m: losses.append(loss))
    assert len(losses) == 25 and all(b < a for a, b in zip(losses, losses[1:]))


def test_parameter_groups_get_their_own_learning_rates():
    x, y = toy(8)
    model = MLP(4, (3,), 2, generator=torch.Generator().manual_seed(0))
    hidden, head = model.net[0], model.net[2]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    grads = dict(zip(before, torch.autograd.grad(cross_entropy_objective()(model(x), y), list(model.parameters()))))
    fit(model, cross_entropy_objective(), x, [y], epochs=1, lr=0.1, optimizer="sgd",
        params=[{"params": hidden.parameters(), "lr": 0.5}, {"params": list(head.parameters())}],
        generator=torch.Generator(), progress=False)
    rates = {"net.0.weight": 0.5, "net.0.bias": 0.5, "net.2.weight": 0.1, "net.2.bias": 0.1}
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name] - rates[name] * grads[name], rtol=1e-6, atol=1e-7)


def test_params_can_freeze_part_of_the_model_and_train_an_extra_module():
    x, y = toy(16)
    model = MLP(4, (3,), 2, generator=torch.Generator().manual_seed(0))
    scale = torch.nn.Parameter(torch.tensor(1.0))  # a module outside the model, trained by the objective
    frozen = model.net[0].weight.detach().clone()

    def objective(logits, labels):
        return cross_entropy_objective()(scale * logits, labels)

    fit(model, objective, x, [y], epochs=3, lr=0.05, params=[*model.net[2].parameters(), scale],
        generator=torch.Generator(), progress=False)
    assert torch.equal(model.net[0].weight.detach(), frozen) and float(scale.detach()) != 1.0


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(momentum=0.9), ValueError, "momentum and nesterov apply to optimizer='sgd' only"),
    (dict(optimizer="sgd", momentum=1.0), ValueError, "momentum must be in \\[0, 1\\)"),
    (dict(optimizer="sgd", momentum=-0.1), ValueError, "momentum must be in \\[0, 1\\)"),
    (dict(optimizer="sgd", nesterov=True), ValueError, "nesterov=True needs momentum > 0"),
    (dict(optimizer="sgd", momentum=0.5, nesterov=1), TypeError, "nesterov must be True or False"),
    (dict(schedule="linear"), ValueError, "schedule must be one of"),
    (dict(callback=3), TypeError, "callback must be callable"),
    (dict(params=torch.zeros(2)), TypeError, "params must be a list"),
    (dict(params=[]), ValueError, "params must not be empty"),
    (dict(params=[torch.zeros(2)]), ValueError, "leaf tensor with requires_grad=True"),
    (dict(params=["w"]), TypeError, "params\\[0\\] must be a torch.Tensor"),
    (dict(params=[{"lr": 0.1}]), ValueError, "must be a dict with a 'params' entry"),
    (dict(params=[{"params": [], "lr": 0.1}]), ValueError, "must not be empty"),
    (dict(params=[{"params": [torch.nn.Parameter(torch.zeros(1))], "betas": (0.9, 0.9)}]), ValueError, "'betas'"),
    (dict(params=[{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": -1.0}]), ValueError,
     "params\\[0\\]\\['lr'\\] must be a finite number > 0"),
    (dict(params=[{"params": [torch.nn.Parameter(torch.zeros(1))], "weight_decay": -1.0}]), ValueError,
     "weight_decay'\\] must be a finite number >= 0"),
    (dict(params=[{"params": [torch.nn.Parameter(torch.zeros(1))]}, torch.nn.Parameter(torch.zeros(1))]), TypeError,
     "not a mix"),
])
def test_fit_rejects_bad_new_options(kwargs, error, message):
    x, y = toy()
    with pytest.raises(error, match=message):
        fit(MLP(4, (3,), 2), cross_entropy_objective(), x, [y], epochs=1, generator=torch.Generator(),
            progress=False, **kwargs)


def test_fit_rejects_a_parameter_in_two_groups():
    x, y = toy()
    model = MLP(4, (3,), 2)
    with pytest.raises(ValueError, match="more than once"):
        fit(model, cross_entropy_objective(), x, [y], epochs=1, generator=torch.Generator(), progress=False,
            params=[{"params": model.parameters()}, {"params": [model.net[0].weight]}])


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(generator=None, batch_size=16), TypeError, "generator must be a torch.Generator"),
    (dict(generator=None), TypeError, "generator must be a torch.Generator, got NoneType"),
    (dict(generator=0, batch_size=16), TypeError, "generator must be a torch.Generator, got int"),
    (dict(inputs=torch.zeros(0, 4), targets=[torch.zeros(0, dtype=torch.long)]), ValueError,
     "inputs must be an \\(N, ...\\) tensor with N >= 1 examples, got shape \\(0, 4\\)"),
    (dict(inputs=torch.tensor(1.0), targets=[]), ValueError, "inputs must be an \\(N, ...\\) tensor"),
    (dict(batch_size="4"), TypeError, "batch_size must be an int, got str"),
    (dict(batch_size=True), TypeError, "batch_size must be an int, got bool"),
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(optimizer="sgd", momentum=0.5, nesterov="no"), TypeError, "nesterov must be True or False"),
])
def test_fit_names_the_generator_inputs_and_batch_size(kwargs, error, message):
    x, y = toy()
    args = dict(model=MLP(4, (3,), 2), objective=cross_entropy_objective(), inputs=x, targets=[y], epochs=1,
                generator=torch.Generator(), progress=False)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        fit(args.pop("model"), args.pop("objective"), args.pop("inputs"), args.pop("targets"), **args)


def test_fit_accepts_a_numpy_bool_nesterov_and_large_batches_as_full_batch():
    import numpy as np

    x, y = toy()

    def trained(**kwargs):
        model = MLP(4, (8,), 2, generator=torch.Generator().manual_seed(0))
        fit(model, cross_entropy_objective(), x, [y], epochs=3, lr=0.1, optimizer="sgd", momentum=0.9,
            generator=torch.Generator().manual_seed(1), progress=False, **kwargs)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(trained(nesterov=np.True_, batch_size=16), trained(nesterov=True, batch_size=16))
    assert not torch.equal(trained(nesterov=np.False_, batch_size=16), trained(nesterov=True, batch_size=16))
    assert torch.equal(trained(batch_size=64.0), trained(batch_size=None))
    assert torch.equal(trained(batch_size=10**6), trained())


def test_distillation_objective_requires_bool_flags():
    with pytest.raises(TypeError, match="binary must be True or False"):
        distillation_objective(0.5, 2.0, binary="no")
    with pytest.raises(TypeError, match="t2_scaling must be True or False"):
        distillation_objective(0.5, 2.0, t2_scaling=None)
    import numpy as np

    z_s, z_t = torch.randn(5, generator=torch.Generator().manual_seed(0)), torch.zeros(5)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    assert torch.equal(distillation_objective(0.5, 2.0, t2_scaling=np.False_, binary=np.True_)(z_s, z_t, y),
                       distillation_objective(0.5, 2.0, t2_scaling=False, binary=True)(z_s, z_t, y))


def test_distill_with_fit_options_is_fit_with_the_distillation_objective():
    """distill forwards its optimiser options to fit: SGD with momentum and a cosine schedule, bit for bit."""
    from kdnb.core.training import distill

    x, y = toy(48)
    teacher_logits = torch.randn(48, 2, generator=torch.Generator().manual_seed(5))
    options = dict(optimizer="sgd", momentum=0.9, schedule="cosine", weight_decay=5e-4)
    runs = []
    for via_distill in (True, False):
        student = MLP(4, (8,), 2, generator=torch.Generator().manual_seed(1))
        g = torch.Generator().manual_seed(2)
        if via_distill:
            h = distill(student, x, teacher_logits, y, rho=0.9, temperature=4.0, epochs=3, generator=g, lr=0.05,
                        batch_size=16, **options)
        else:
            h = fit(student, distillation_objective(0.9, 4.0), x, [teacher_logits, y, None], epochs=3, generator=g,
                    lr=0.05, batch_size=16, progress=False, **options)
        runs.append((h.loss, [p.detach().clone() for p in student.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(p, q) for p, q in zip(runs[0][1], runs[1][1]))
    adam = MLP(4, (8,), 2, generator=torch.Generator().manual_seed(1))
    h_adam = distill(adam, x, teacher_logits, y, rho=0.9, temperature=4.0, epochs=3,
                     generator=torch.Generator().manual_seed(2), lr=0.05, batch_size=16)
    assert h_adam.loss != runs[0][0]  # the default is still Adam
    with pytest.raises(ValueError, match="momentum"):
        distill(adam, x, teacher_logits, y, rho=0.9, temperature=4.0, epochs=1, generator=torch.Generator(),
                momentum=0.9)


def test_n_predicted_classes_counts_distinct_argmax_classes():
    from kdnb.core.training import n_predicted_classes

    x, y = toy(40)
    model = MLP(4, (8,), 3, generator=torch.Generator().manual_seed(0))
    expected = predict_logits(model, x).argmax(1).unique().numel()
    assert n_predicted_classes(model, x) == expected
    dead = MLP(4, (8,), 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in dead.parameters():
            p.zero_()
        dead.net[-1].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
    assert n_predicted_classes(dead, x) == 1  # a collapsed classifier
    with pytest.raises(ValueError, match="N >= 1"):
        n_predicted_classes(model, x[:0])
    with pytest.raises(ValueError, match="C >= 2"):
        n_predicted_classes(MLP(4, (8,), 1), x)
