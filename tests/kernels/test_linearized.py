"""kdnb.kernels.linearized: the linearized model is the first-order Taylor expansion, and gradient descent in
function space equals weight-space gradient descent of the linearized model."""

import functools

import pytest
import torch

from kdnb.core.losses import binary_kd_loss_gradient
from kdnb.core.models import NTKMLP
from kdnb.core.training import distillation_objective, fit
from kdnb.kernels.empirical import (
    empirical_ntk,
)
from kdnb.kernels.linearized import LinearizedModel, function_space_gd
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

