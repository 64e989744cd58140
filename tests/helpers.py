"""Helpers shared by the tests of kdnb.kernels and kdnb.papers: seeded generators, unit vectors, reference
computations written independently of the code under test."""

import torch

from kdnb.core.data import sample_sphere
from kdnb.core.models import NTKMLP, AntisymmetricPair
from kdnb.papers.wide_network_kd import student_kernel

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


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


def problem(n=60, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = sample_sphere(n, 3, g)
    return x, student_kernel(x), torch.randn(n, k, generator=g, dtype=F64)


def small_problem(n=12, width=24, seed=0):
    net = AntisymmetricPair(NTKMLP(3, [width], weight_variance=0.5, bias_variance=0.5, readout_bias_variance=0.0,
                                   generator=gen(seed), dtype=F64))
    x, x_test = unit(n, 3, seed + 1), unit(5, 3, seed + 2)
    teacher = 3 * torch.randn(n, generator=gen(seed + 3), dtype=F64)
    return net, x, x_test, teacher


def teacher_problem(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = sample_sphere(n, 3, g)
    y = 4 * torch.sign(torch.randn(n, generator=g, dtype=F64))
    return x, student_kernel(x), y


def unit(n, d, seed=0, dtype=F64):
    x = torch.randn(n, d, generator=gen(seed), dtype=dtype)
    return x / x.norm(dim=1, keepdim=True)

