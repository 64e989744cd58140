"""kdnb.kernels: the empirical NTK by three methods and by plain autograd, the analytic kernels against closed forms and
Monte-Carlo, the linearized model, and the function-space solvers against explicit training in weight space."""

import functools
import math

import numpy as np
import pytest
import torch

from kdnb.core.losses import binary_kd_loss_gradient
from kdnb.core.models import MLP, NTKMLP, AntisymmetricPair
from kdnb.core.training import distillation_objective, fit
from kdnb.kernels.empirical import (
    empirical_ntk,
)
from kdnb.kernels.linearized import LinearizedModel, function_space_gd

F64 = torch.float64



def gen(seed=0):
    return torch.Generator().manual_seed(seed)



def unit(n, d, seed=0, dtype=F64):
    x = torch.randn(n, d, generator=gen(seed), dtype=dtype)
    return x / x.norm(dim=1, keepdim=True)



def relative_max_error(a, b):
    return float((a - b).abs().max() / b.abs().max())



MODELS = {
    "ntk-mlp-1": lambda dt: NTKMLP(5, [48], generator=gen(1), dtype=dt),
    "ntk-mlp-2-bias": lambda dt: NTKMLP(5, [32, 24], bias_variance=0.3, normalize_input=True, generator=gen(2), dtype=dt),
    "ntk-mlp-3-outputs": lambda dt: NTKMLP(5, [16, 8], 3, bias_variance=0.2, generator=gen(3), dtype=dt),
    "standard-mlp": lambda dt: MLP(5, (16, 12), 1, generator=gen(4)).to(dt),
    "standard-mlp-4-outputs": lambda dt: MLP(5, (16,), 4, generator=gen(5)).to(dt),
    "antisymmetric-pair": lambda dt: AntisymmetricPair(NTKMLP(5, [24], bias_variance=0.5, generator=gen(6), dtype=dt)),
}



def per_example_gradients(model, x):
    """The definition, with plain autograd: one backward pass per example and output, shape (N, O, P)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for xi in x:
        out = model(xi[None]).reshape(-1)
        rows.append(torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[o], params,
                                                                                        retain_graph=True)])
                                 for o in range(out.numel())]))
    return torch.stack(rows)



def per_example_gradient_gram(model, x1, x2):
    return torch.einsum("iap,jbp->ijab", per_example_gradients(model, x1), per_example_gradients(model, x2))



def two_layer_closed_forms(x1, x2):
    """Cho & Saul's arc-cosine kernels for f(x) = aᵀ relu(Wx)/√m, both layers trained (written out independently)."""
    n1, n2 = x1.norm(dim=1)[:, None], x2.norm(dim=1)[None, :]
    cos = ((x1 @ x2.T) / (n1 * n2)).clamp(-1, 1)
    theta = torch.arccos(cos)
    nngp = n1 * n2 * (torch.sin(theta) + (math.pi - theta) * cos) / (2 * math.pi)
    ntk = n1 * n2 * (torch.sin(theta) + 2 * (math.pi - theta) * cos) / (2 * math.pi)
    return nngp, ntk



def arora_ntk(x1, x2, depth):
    """Arora et al. (2019), Eqs. (4)-(5), written out with numpy and arccos, independently of kdnb: c_σ = 2,
    Σ⁽⁰⁾ = xᵀx', Σ⁽ʰ⁾ = c_σ E[relu relu], Σ̇⁽ʰ⁾ = c_σ E[relu' relu'] = (π − θ)/π, and
    Θ = Σ_{h=1}^{L+1} Σ⁽ʰ⁻¹⁾ Π_{h'=h}^{L+1} Σ̇⁽ʰ'⁾ with Σ̇⁽ᴸ⁺¹⁾ = 1."""
    x1, x2 = x1.numpy(), x2.numpy()
    cov, var1, var2 = x1 @ x2.T, (x1**2).sum(1), (x2**2).sum(1)
    sigmas, dots = [cov], []
    for _ in range(depth):
        norms = np.sqrt(np.outer(var1, var2))
        theta = np.arccos(np.clip(cov / norms, -1, 1))
        dots.append((np.pi - theta) / np.pi)
        cov = norms * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / np.pi
        sigmas.append(cov)  # the diagonal stays var (c_σ = 2 preserves it)
    dots.append(np.ones_like(cov))
    total = np.zeros_like(cov)
    for h in range(1, depth + 2):
        product = np.ones_like(cov)
        for hp in range(h, depth + 2):
            product = product * dots[hp - 1]
        total += sigmas[h - 1] * product
    return total



def small_problem(n=12, width=24, seed=0):
    net = AntisymmetricPair(NTKMLP(3, [width], weight_variance=0.5, bias_variance=0.5, readout_bias_variance=0.0,
                                   generator=gen(seed), dtype=F64))
    x, x_test = unit(n, 3, seed + 1), unit(5, 3, seed + 2)
    teacher = 3 * torch.randn(n, generator=gen(seed + 3), dtype=F64)
    return net, x, x_test, teacher



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

