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
    (dict(weight_decay=-0.1), ValueError, "weight_decay must be >= 0"),
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

