"""kdnb.kernels.linearized: the linearized model is the first-order Taylor expansion, and gradient descent in
function space equals weight-space gradient descent of the linearized model."""

import functools
import io
import sys

import pytest
import torch
from torch import nn

from kdnb.core.losses import binary_kd_loss_gradient
from kdnb.core.models import NTKMLP
from kdnb.core.training import distillation_objective, fit
from kdnb.kernels.empirical import (
    empirical_ntk,
)
from kdnb.kernels.linearized import LinearizedModel, function_space_gd, gradient_descent_path
from tests.helpers import gen, per_example_gradients, small_problem

F64 = torch.float64


def test_linearized_model_is_the_first_order_taylor_expansion():
    model = NTKMLP(3, [16, 8], bias_variance=0.3, generator=gen(0), dtype=F64)
    lin = LinearizedModel(model)
    x = torch.randn(7, 3, generator=gen(1), dtype=F64)
    f0 = model(x).detach()
    torch.testing.assert_close(lin(x).detach(), f0, rtol=0, atol=1e-14)
    jacobian = per_example_gradients(model, x)[:, 0]
    step = [0.3 * torch.randn(p.shape, generator=gen(k), dtype=F64) for k, p in enumerate(lin.weights)]
    with torch.no_grad():
        for w, s in zip(lin.weights, step):
            w.add_(s)
    delta = torch.cat([s.reshape(-1) for s in step])
    torch.testing.assert_close(lin.weight_change(), delta)
    torch.testing.assert_close(lin(x).detach(), f0 + jacobian @ delta, rtol=1e-12, atol=1e-12)
    # Linear in w: doubling the weight change doubles the change of the output. The real network is not linear.
    with torch.no_grad():
        for w, s in zip(lin.weights, step):
            w.add_(s)
    torch.testing.assert_close(lin(x).detach(), f0 + 2 * jacobian @ delta, rtol=1e-12, atol=1e-12)
    assert torch.equal(model(x).detach(), f0), "the wrapped model must not change"
    with pytest.raises(ValueError, match="nothing to linearize"):
        LinearizedModel(NTKMLP(3, [4]).requires_grad_(False))


def test_function_space_gd_equals_weight_space_gd_of_the_linearized_model():
    net, x, x_test, zt = small_problem()
    labels = (zt > 0).to(F64)
    lin = LinearizedModel(net)
    objective = distillation_objective(0.5, 5.0, t2_scaling=False, binary=True)
    fit(lin, objective, x, [zt, labels], epochs=40, generator=gen(0), lr=8.0, optimizer="sgd", progress=False)
    gradient = functools.partial(binary_kd_loss_gradient, teacher_logits=zt, labels=labels, rho=0.5, temperature=5.0,
                                 t2_scaling=False)
    path = function_space_gd(empirical_ntk(net, x), gradient, lr=8.0, steps=40,
                             kernel_test_train=empirical_ntk(net, x_test, x), record_every=10)
    assert path.steps.tolist() == [0, 10, 20, 30, 40]
    with torch.no_grad():
        torch.testing.assert_close(lin(x), path.train[-1], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(lin(x_test), path.test[-1], rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------------------
# Train-mode layers and buffers: the linearization is that of the eval-mode function, and never changes the model
# ---------------------------------------------------------------------------------------------------------------------


def _normalised_dropout_net():
    """Linear, batch norm with running statistics away from (0, 1), dropout, readout: scalar logits, float64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 1),
                          nn.Flatten(0)).double()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1, generator=gen(1))
        model[1].running_var.uniform_(0.5, 2, generator=gen(2))
    return model


@pytest.mark.parametrize("layer", ["BatchNorm1d", "Dropout"])
def test_linearized_model_refuses_layers_in_train_mode(layer):
    model = _normalised_dropout_net().eval()
    module = model[1] if layer == "BatchNorm1d" else model[3]
    module.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"model has layers in train mode.*\({layer}\).*Call model\.eval\(\)"):
        LinearizedModel(model)
    assert module.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_linearized_model_expands_the_eval_mode_function_whatever_the_flags():
    model = _normalised_dropout_net().eval()
    lin = LinearizedModel(model)
    x = torch.randn(7, 3, generator=gen(3), dtype=F64)
    f0 = model(x).detach()
    jacobian = per_example_gradients(model, x)[:, 0]  # of the eval-mode function, by plain autograd
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # the wrapped model's flags, and the linearized module's, do not matter
    lin.train()
    step = [0.1 * torch.randn(p.shape, generator=gen(10 + k), dtype=F64) for k, p in enumerate(lin.weights)]
    with torch.no_grad():
        torch.testing.assert_close(lin(x), f0, rtol=0, atol=1e-14)
        torch.testing.assert_close(lin(x), lin(x), rtol=0, atol=0)  # no dropout mask drawn
        for w, s in zip(lin.weights, step):
            w.add_(s)
        torch.testing.assert_close(lin(x), f0 + jacobian @ torch.cat([s.reshape(-1) for s in step]), rtol=1e-12,
                                   atol=1e-12)
    assert all(m.training for m in model.modules()), "the wrapped model's flags are restored"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items()), "running statistics changed"


def test_fit_trains_the_linearization_of_the_eval_mode_function():
    """fit puts the linearized module in train mode every epoch; its path is still function-space GD on the
    eval-mode network's kernel."""
    model = _normalised_dropout_net().eval()
    x = torch.randn(9, 3, generator=gen(4), dtype=F64)
    y = torch.randn(9, generator=gen(5), dtype=F64)
    lin = LinearizedModel(model)
    fit(lin, lambda out, target: 0.5 * ((out - target) ** 2).mean(), x, [y], epochs=25, generator=gen(0), lr=0.5,
        optimizer="sgd", progress=False)
    path = function_space_gd(empirical_ntk(model, x), lambda z: z - y, lr=0.5, steps=25, f0=model(x).detach())
    with torch.no_grad():
        torch.testing.assert_close(lin(x), path.train[-1], rtol=1e-10, atol=1e-10)
    assert not model.training and not model[3].training


class _CountingLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1, dtype=F64)
        self.register_buffer("calls", torch.zeros((), dtype=F64))

    def forward(self, x):
        self.calls += 1
        return self.linear(x)


def test_a_forward_that_updates_a_buffer_is_refused_and_undone():
    model = _CountingLinear().eval()
    lin = LinearizedModel(model)
    with pytest.raises(ValueError, match=r"forward changed its buffers \['calls'\] while LinearizedModel evaluated"):
        lin(torch.randn(4, 3, generator=gen(0), dtype=F64))
    assert float(lin.get_buffer("_fixed_0")) == 0.0 and float(model.calls) == 0.0


def test_function_space_progress_bars_write_only_when_asked(monkeypatch):
    log = io.StringIO()  # not a terminal, as a log file
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    net, x, _, zt = small_problem(n=6, width=8)
    kernel = empirical_ntk(net, x)
    for progress in (False, None):
        function_space_gd(kernel, lambda z: z - zt, lr=0.1, steps=20, progress=progress)
        gradient_descent_path(net, lambda out, t: 0.5 * ((out - t) ** 2).mean(), x, [zt], lr=0.1, steps=3,
                              progress=progress)
    assert log.getvalue() == ""
    function_space_gd(kernel, lambda z: z - zt, lr=0.1, steps=20, progress=True)
    gradient_descent_path(net, lambda out, t: 0.5 * ((out - t) ** 2).mean(), x, [zt], lr=0.1, steps=3,
                          progress=True)
    assert "function-space GD" in log.getvalue() and "gradient descent" in log.getvalue()
    with pytest.raises(TypeError, match="progress must be True or False"):
        function_space_gd(kernel, lambda z: z - zt, lr=0.1, steps=2, progress=1)
