"""kdnb.kernels.analytic: the ReLU NTK and NNGP against closed forms, the Arora et al. recursion, Monte-Carlo over
finite networks, symmetry and positive semi-definiteness, and the spherical spectrum against Funk–Hecke."""

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import spherical_in

from kdnb.core.models import NTKMLP
from kdnb.kernels.analytic import relu_kernels, relu_nngp, relu_ntk, sphere_eigenvalues
from kdnb.kernels.empirical import (
    empirical_ntk,
)
from tests.helpers import gen, unit

F64 = torch.float64


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


def test_two_layer_kernels_match_the_arc_cosine_closed_forms():
    x1 = torch.randn(7, 4, generator=gen(0), dtype=F64) * 2
    x2 = torch.randn(5, 4, generator=gen(1), dtype=F64)
    nngp, ntk = two_layer_closed_forms(x1, x2)
    kernels = relu_kernels(x1, x2, depth=1)
    torch.testing.assert_close(kernels.ntk, ntk, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kernels.nngp, nngp, rtol=1e-12, atol=1e-12)
    # At θ = π/2: NTK = ‖x‖‖x'‖/(2π); at θ = 0: ‖x‖² (NNGP: half of it).
    e = torch.eye(3, dtype=F64)
    torch.testing.assert_close(relu_ntk(e[:1], e[1:2], depth=1), torch.tensor([[1 / (2 * math.pi)]], dtype=F64))
    torch.testing.assert_close(relu_nngp(e[:1] * 3, depth=1), torch.tensor([[4.5]], dtype=F64))


def test_input_bias_convention_is_the_kernel_of_the_augmented_input():
    """A first-layer bias with σ_w² = σ_b² = 1/2 is the bias-free kernel of x̃ = [x, 1]/√2."""
    x1, x2 = unit(6, 3, 0), unit(4, 3, 1)
    augment = lambda x: torch.cat([x, torch.ones(len(x), 1, dtype=F64)], 1) / math.sqrt(2)  # noqa: E731
    got = relu_ntk(x1, x2, depth=1, weight_variance=0.5, bias_variance=0.5, readout_weight_variance=1.0,
                   readout_bias_variance=0.0)
    torch.testing.assert_close(got, two_layer_closed_forms(augment(x1), augment(x2))[1], rtol=1e-12, atol=1e-12)
    assert torch.allclose(relu_ntk(x1, depth=1, weight_variance=0.5, bias_variance=0.5, readout_weight_variance=1.0,
                                   readout_bias_variance=0.0).diagonal(), torch.ones(6, dtype=F64), atol=1e-14)


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 8])
def test_diagonal_closed_forms_for_unit_inputs(depth):
    x = unit(10, 6, depth)
    arora = relu_kernels(x, depth=depth, weight_variance=2.0, readout_weight_variance=1.0)
    assert torch.allclose(arora.ntk.diagonal(), torch.full((10,), depth + 1.0, dtype=F64), rtol=1e-13)
    assert torch.allclose(arora.nngp.diagonal(), torch.ones(10, dtype=F64), rtol=1e-13)
    # General bias-free closed form: Θ(x,x) = (L+1) (σ_out²/2) σ_w² (σ_w²/2)^(L-1) ‖x‖², here with ‖x‖ = 3.
    sw, so = 1.7, 0.6
    expected = (depth + 1) * (so / 2) * sw * (sw / 2) ** (depth - 1) * 9
    got = relu_ntk(3 * x, depth=depth, weight_variance=sw, readout_weight_variance=so).diagonal()
    assert torch.allclose(got, torch.full((10,), expected, dtype=F64), rtol=1e-13)


@settings(max_examples=20, deadline=None)
@given(depth=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_he_and_unit_variance_conventions_differ_by_two_to_the_depth_plus_one(depth, seed):
    x1, x2 = torch.randn(5, 3, generator=gen(seed), dtype=F64), torch.randn(4, 3, generator=gen(seed + 1), dtype=F64)
    he, plain = relu_kernels(x1, x2, depth=depth, weight_variance=2.0), relu_kernels(x1, x2, depth=depth)
    torch.testing.assert_close(he.ntk, 2 ** (depth + 1) * plain.ntk, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(he.nngp, 2 ** (depth + 1) * plain.nngp, rtol=1e-10, atol=1e-12)
    arora = relu_ntk(x1, x2, depth=depth, weight_variance=2.0, readout_weight_variance=1.0)
    torch.testing.assert_close(he.ntk, 2 * arora, rtol=1e-10, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 14), d=st.integers(1, 6), depth=st.integers(1, 4), sw=st.floats(0.1, 3.0),
       sb=st.floats(0.0, 2.0), seed=st.integers(0, 10_000))
def test_analytic_kernels_are_symmetric_and_positive_semidefinite(n, d, depth, sw, sb, seed):
    x = torch.randn(n, d, generator=gen(seed), dtype=F64) * 2
    kernels = relu_kernels(x, depth=depth, weight_variance=sw, bias_variance=sb)
    for k in kernels:
        assert torch.equal(k, k.T)
        # Deeper layers carry about 1e-8 relative rounding for (nearly) parallel inputs (see relu_kernels).
        tolerance = 1e-12 if depth == 1 else 1e-7
        assert float(torch.linalg.eigvalsh(k).min()) >= -tolerance * n * float(k.abs().max())
    # The symmetric path equals the general path, and swapping the inputs transposes the kernel.
    y = torch.randn(3, d, generator=gen(seed + 1), dtype=F64)
    torch.testing.assert_close(relu_ntk(x, y, depth=depth, weight_variance=sw, bias_variance=sb),
                               relu_ntk(y, x, depth=depth, weight_variance=sw, bias_variance=sb).T)
    torch.testing.assert_close(relu_ntk(x, x, depth=depth, weight_variance=sw, bias_variance=sb), kernels.ntk,
                               rtol=1e-7, atol=1e-7 * float(kernels.ntk.abs().max()))


def test_first_layer_angles_are_exact_for_parallel_and_antiparallel_inputs():
    x = torch.tensor([[1.0], [3.0], [-2.0], [1e-3]], dtype=F64)  # one dimension: every angle is 0 or π
    nngp, ntk = two_layer_closed_forms(x, x)
    kernels = relu_kernels(x, depth=1)
    torch.testing.assert_close(kernels.ntk, ntk, rtol=1e-15, atol=1e-15)
    assert abs(float(kernels.ntk[0, 2])) < 1e-15 and abs(float(kernels.nngp[1, 2])) < 1e-15  # θ = π: zero


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_deep_kernel_matches_arora_et_al_formula(depth):
    x1 = torch.randn(7, 4, generator=gen(depth), dtype=F64)
    x2 = torch.randn(5, 4, generator=gen(depth + 10), dtype=F64)
    got = relu_ntk(x1, x2, depth=depth, weight_variance=2.0, readout_weight_variance=1.0)
    np.testing.assert_allclose(got.numpy(), arora_ntk(x1, x2, depth), rtol=1e-10, atol=1e-12)


def test_zero_inputs_give_finite_kernels():
    x = torch.zeros(2, 3, dtype=F64)
    x[1, 0] = 1.0
    for k in relu_kernels(x, depth=3, bias_variance=0.1):
        assert bool(torch.isfinite(k).all())
    assert float(relu_ntk(x, depth=2)[0, 0]) == 0.0


@pytest.mark.parametrize("depth, width, kwargs, constant", [
    (1, 16384, dict(), 5.0),
    (1, 8192, dict(weight_variance=0.5, bias_variance=0.5, readout_bias_variance=0.0), 5.0),
    (2, 2048, dict(weight_variance=2.0, bias_variance=0.1, normalize_input=True), 8.0),
])
def test_analytic_kernels_are_the_wide_limit_of_the_empirical_ntk(depth, width, kwargs, constant):
    """Monte-Carlo: the relative Frobenius error of one draw falls like 1/√width (chapter 2 measures the constant at
    about 2 for one hidden layer; Hanin & Nica 2020: it grows with depth), so `constant/√width` bounds it. A wrong
    convention factor (2, or the 1/d of normalize_input) gives errors of order 1; exact off-diagonal values are
    checked against Arora et al.'s formula in the next test."""
    x = unit(32, 5, 0)
    net = NTKMLP(5, [width] * depth, generator=gen(depth), dtype=F64, **kwargs)
    empirical = empirical_ntk(net, x)
    analytic = relu_ntk(x, **net.kernel_parameters)
    error = float((empirical - analytic).norm() / analytic.norm())
    assert error <= constant / math.sqrt(width)
    # The NNGP is the covariance of the initial output; given the last hidden layer it is σ_out² hᵀh'/n + σ_b,out².
    with torch.no_grad():
        hidden = net.net[:-1](x)
    readout = net.net[-1]
    conditional = readout.weight_scale**2 * hidden @ hidden.T + readout.bias_scale**2
    nngp = relu_nngp(x, **net.kernel_parameters)
    assert float((conditional - nngp).norm() / nngp.norm()) <= constant / math.sqrt(width)


def test_sphere_eigenvalues_against_a_known_spectrum_and_the_zero_odd_harmonics():
    # exp(t) on S²: μ_k = ½ ∫ e^t P_k(t) dt = i_k(1), the modified spherical Bessel function.
    mu, mult = sphere_eigenvalues(lambda a, b: torch.exp(a @ b.T), 3, 8)
    torch.testing.assert_close(mu, torch.tensor(spherical_in(range(9), 1.0), dtype=F64), rtol=1e-12, atol=1e-13)
    assert mult.tolist() == [2 * k + 1 for k in range(9)]
    # Multiplicities on S⁴ (d = 5): dimensions of the spaces of spherical harmonics, 1, 5, 14, 30, 55.
    assert sphere_eigenvalues(lambda a, b: a @ b.T, 5, 4)[1].tolist() == [1, 5, 14, 30, 55]
    # Bietti & Mairal (2019): the bias-free two-layer ReLU NTK has μ_k = 0 for odd k >= 3; a bias makes them positive.
    mu, _ = sphere_eigenvalues(functools.partial(relu_ntk, depth=1), 3, 9)
    assert all(abs(float(mu[k])) < 1e-12 * float(mu[0]) for k in (3, 5, 7, 9))
    assert all(float(mu[k]) > 1e-6 for k in (0, 1, 2, 4, 6, 8))
    biased = functools.partial(relu_ntk, depth=1, weight_variance=0.5, bias_variance=0.5, readout_bias_variance=0.0)
    mu_biased, _ = sphere_eigenvalues(biased, 3, 9)
    assert bool((mu_biased > 1e-6).all())


def test_funk_hecke_expansion_reconstructs_the_kernel():
    """κ(t) = Σ_k N(d, k) μ_k P_k(t): exact for a polynomial kernel (degree 3 on S⁴)."""
    from scipy.special import eval_gegenbauer

    kernel = lambda a, b: (a @ b.T) ** 3 + 0.5 * (a @ b.T)  # noqa: E731
    mu, mult = sphere_eigenvalues(kernel, 5, 5)
    assert abs(float(mu[4])) < 1e-14 and abs(float(mu[5])) < 1e-14
    t = torch.linspace(-1, 1, 9, dtype=F64)
    series = sum(float(mult[k] * mu[k]) * eval_gegenbauer(k, 1.5, t.numpy()) / eval_gegenbauer(k, 1.5, 1.0)
                 for k in range(6))
    torch.testing.assert_close(torch.as_tensor(series), t**3 + 0.5 * t, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("call, error, message", [
    (lambda x: relu_ntk(x, depth=0), ValueError, "depth must be >= 1"),
    (lambda x: relu_ntk(x, depth=1.5), TypeError, "depth must be an int"),
    (lambda x: relu_ntk(x, depth=2, weight_variance=-1.0), ValueError, "weight_variance must be a finite number > 0"),
    (lambda x: relu_ntk(x, depth=2, bias_variance=-0.1), ValueError, "bias_variance must be a finite number >= 0"),
    (lambda x: relu_ntk(x, depth=2, readout_weight_variance=0.0), ValueError, "readout_weight_variance"),
    (lambda x: relu_nngp(x, torch.randn(2, 4, dtype=F64), depth=1), ValueError, "same number of features"),
    (lambda x: relu_ntk(x[0], depth=1), ValueError, "x1 must have shape \\(N, d\\)"),
    (lambda x: relu_ntk(x.long(), depth=1), TypeError, "floating-point"),
    (lambda x: relu_ntk(x.numpy(), depth=1), TypeError, "x1 must be a torch.Tensor"),
    (lambda x: sphere_eigenvalues(functools.partial(relu_ntk, depth=1), 2, 4), ValueError, "dim must be >= 3"),
])
def test_analytic_kernels_reject_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call(torch.randn(3, 3, dtype=F64))


def test_normalize_input_must_be_a_bool():
    x = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    for bad in ("no", 1, None):
        with pytest.raises(TypeError, match="normalize_input must be True or False"):
            relu_kernels(x, depth=2, normalize_input=bad)
    for flag in (True, False):
        assert torch.equal(relu_ntk(x, depth=2, normalize_input=np.bool_(flag)),
                           relu_ntk(x, depth=2, normalize_input=flag))
    assert not torch.allclose(relu_nngp(x, depth=1, normalize_input=True), relu_nngp(x, depth=1))
