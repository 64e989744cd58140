"""kdnb.ntk: the empirical NTK by three methods and by plain autograd, the analytic kernels against closed forms and
Monte-Carlo, the linearized model, and the function-space solvers against explicit training in weight space."""

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import spherical_in

from kdnb.losses import binary_kd_loss_gradient
from kdnb.models import MLP, AntisymmetricPair, DigitsCNN, NTKLinear, NTKMLP
from kdnb.ntk import (
    LinearizedModel,
    cholesky_with_jitter,
    dense_ntk_flops,
    empirical_ntk,
    function_space_gd,
    kernel_regression,
    relu_kernels,
    relu_nngp,
    relu_ntk,
    sphere_eigenvalues,
    structured_ntk_supported,
    time_call,
    weight_change_norm,
)
from kdnb.runtime import select_device
from kdnb.training import distillation_objective, fit

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def unit(n, d, seed=0, dtype=F64):
    x = torch.randn(n, d, generator=gen(seed), dtype=dtype)
    return x / x.norm(dim=1, keepdim=True)


def relative_max_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


# ---------------------------------------------------------------------------------------------------------------------
# Empirical NTK
# ---------------------------------------------------------------------------------------------------------------------

MODELS = {
    "ntk-mlp-1": lambda dt: NTKMLP(5, [48], generator=gen(1), dtype=dt),
    "ntk-mlp-2-bias": lambda dt: NTKMLP(5, [32, 24], bias_variance=0.3, normalize_input=True, generator=gen(2), dtype=dt),
    "ntk-mlp-3-outputs": lambda dt: NTKMLP(5, [16, 8], 3, bias_variance=0.2, generator=gen(3), dtype=dt),
    "standard-mlp": lambda dt: MLP(5, (16, 12), 1, generator=gen(4)).to(dt),
    "standard-mlp-4-outputs": lambda dt: MLP(5, (16,), 4, generator=gen(5)).to(dt),
    "antisymmetric-pair": lambda dt: AntisymmetricPair(NTKMLP(5, [24], bias_variance=0.5, generator=gen(6), dtype=dt)),
}


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (F64, 1e-10)])
@pytest.mark.parametrize("name", list(MODELS))
def test_the_three_methods_agree(name, dtype, tolerance):
    model = MODELS[name](dtype)
    x1 = torch.randn(9, 5, generator=gen(10), dtype=dtype)
    x2 = torch.randn(6, 5, generator=gen(11), dtype=dtype)
    reference = empirical_ntk(model, x1, x2, method="jacobian")
    for method in ("ntk_vp", "structured", "auto"):
        assert relative_max_error(empirical_ntk(model, x1, x2, method=method), reference) <= tolerance, method
    gram = {m: empirical_ntk(model, x1, method=m) for m in ("jacobian", "ntk_vp", "structured")}
    for m in ("ntk_vp", "structured"):
        assert relative_max_error(gram[m], gram["jacobian"]) <= tolerance, m


def test_methods_agree_on_the_selected_device():
    """On a GPU machine this runs on CUDA (kdnb picks it); on CPU it is the same check on the CPU."""
    device = select_device()
    dtype = torch.float32 if device.type == "mps" else F64
    model = NTKMLP(4, [64, 32], bias_variance=0.1, generator=gen(0), dtype=dtype).to(device)
    x = torch.randn(20, 4, generator=gen(1), dtype=dtype).to(device)
    kernels = [empirical_ntk(model, x, method=m) for m in ("jacobian", "ntk_vp", "structured")]
    assert all(k.device.type == device.type for k in kernels)
    for k in kernels[1:]:
        assert relative_max_error(k, kernels[0]) <= (1e-5 if dtype == torch.float32 else 1e-10)


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


@pytest.mark.parametrize("name", ["ntk-mlp-2-bias", "ntk-mlp-3-outputs", "antisymmetric-pair"])
def test_empirical_ntk_is_the_gram_matrix_of_per_example_gradients(name):
    model = MODELS[name](F64)
    x1, x2 = torch.randn(5, 5, generator=gen(1), dtype=F64), torch.randn(4, 5, generator=gen(2), dtype=F64)
    expected = per_example_gradient_gram(model, x1, x2)
    got = empirical_ntk(model, x1, x2)
    if expected.shape[-1] == 1:
        expected = expected[:, :, 0, 0]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_frozen_parameters_are_left_out():
    model = nn_sequential = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).double()
    nn_sequential[0].weight.requires_grad_(False)
    x = torch.randn(6, 3, generator=gen(0), dtype=F64)
    expected = per_example_gradient_gram(model, x, x)[:, :, 0, 0]
    for method in ("jacobian", "ntk_vp", "structured"):
        torch.testing.assert_close(empirical_ntk(model, x, method=method), expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=12, deadline=None)
@given(n1=st.integers(1, 9), n2=st.integers(1, 7), chunk=st.integers(1, 10), symmetric=st.booleans())
def test_chunking_does_not_change_the_kernel(n1, n2, chunk, symmetric):
    model = MODELS["ntk-mlp-3-outputs"](F64)
    x1 = torch.randn(n1, 5, generator=gen(n1), dtype=F64)
    x2 = None if symmetric else torch.randn(n2, 5, generator=gen(100 + n2), dtype=F64)
    for method in ("jacobian", "structured", "ntk_vp"):
        whole = empirical_ntk(model, x1, x2, method=method)
        blocked = empirical_ntk(model, x1, x2, method=method, chunk_size=chunk, progress=False)
        torch.testing.assert_close(blocked, whole, rtol=1e-12, atol=1e-12)


def test_output_modes_for_multi_output_models():
    model = MODELS["ntk-mlp-3-outputs"](F64)
    x = torch.randn(4, 5, generator=gen(0), dtype=F64)
    full = empirical_ntk(model, x)
    assert full.shape == (4, 4, 3, 3)
    torch.testing.assert_close(empirical_ntk(model, x, outputs="trace"), full.diagonal(dim1=2, dim2=3).sum(-1))
    # A Gram matrix of a symmetric pair of inputs: Θ_ab(x, x') = Θ_ba(x', x).
    torch.testing.assert_close(full, full.permute(1, 0, 3, 2))
    assert empirical_ntk(MODELS["ntk-mlp-1"](F64), x).shape == (4, 4)  # scalar output: (N1, N2) in every mode


def test_auto_picks_the_closed_form_only_for_relu_networks():
    assert structured_ntk_supported(NTKMLP(3, [4]))
    assert structured_ntk_supported(MLP(3, (4, 4), 2))
    assert structured_ntk_supported(AntisymmetricPair(MLP(3, (4,), 1)))
    assert not structured_ntk_supported(MLP(3, (4,), 1, activation="tanh"))
    assert not structured_ntk_supported(DigitsCNN())
    assert not structured_ntk_supported(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(), torch.nn.Linear(4, 1)))
    tanh = MLP(3, (6,), 1, activation="tanh", generator=gen(0)).double()
    x = torch.randn(5, 3, generator=gen(1), dtype=F64)
    torch.testing.assert_close(empirical_ntk(tanh, x), empirical_ntk(tanh, x, method="jacobian"))


def test_cnn_kernel_by_jacobian_and_ntk_vector_products():
    model = DigitsCNN(channels=(4, 6), generator=gen(0)).double()
    x = torch.randn(3, 64, generator=gen(1), dtype=F64)
    jc, vp = empirical_ntk(model, x, method="jacobian"), empirical_ntk(model, x, method="ntk_vp")
    assert jc.shape == (3, 3, 10, 10)
    assert relative_max_error(vp, jc) < 1e-12


@pytest.mark.parametrize("call, error, message", [
    (lambda m, x: empirical_ntk(m, x, torch.randn(3, 4, dtype=F64)), ValueError, "same feature shape"),
    (lambda m, x: empirical_ntk(m, x.float()), TypeError, "dtype torch.float32 but the model's parameters"),
    (lambda m, x: empirical_ntk(m, x, method="exact"), ValueError, "method must be one of"),
    (lambda m, x: empirical_ntk(m, x, outputs="mean"), ValueError, "outputs must be one of"),
    (lambda m, x: empirical_ntk(m, x, chunk_size=0), ValueError, "chunk_size must be >= 1"),
    (lambda m, x: empirical_ntk(m, x[0]), ValueError, "x1 must have shape \\(N, ...\\)"),
    (lambda m, x: empirical_ntk(m, x * math.nan), ValueError, "finite"),
    (lambda m, x: empirical_ntk(lambda t: t, x), TypeError, "model must be a torch.nn.Module"),
    (lambda m, x: empirical_ntk(MLP(5, (4,), 1, activation="tanh").double(), x, method="structured"), ValueError,
     "needs a fully connected ReLU network"),
    (lambda m, x: empirical_ntk(m.requires_grad_(False), x), ValueError, "no parameter with requires_grad=True"),
])
def test_empirical_ntk_rejects_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call(NTKMLP(5, [4], dtype=F64), torch.randn(3, 5, dtype=F64))


def test_flop_model_and_timer():
    # Two-layer scalar network: 4 n² m + 2 n² d for the products, plus the passes.
    d, m, n = 7, 30, 11
    assert dense_ntk_flops([d, m, 1], n, n, "structured") == 2 * n * n * (m + d + m) + 2 * 2 * n * (d * m + m)
    assert dense_ntk_flops([d, m, 1], n, n, "jacobian") > dense_ntk_flops([d, m, 1], n, n, "structured")
    with pytest.raises(ValueError, match="layer_widths must be"):
        dense_ntk_flops([3, 4], 2, 2, "structured")
    assert time_call(lambda: sum(range(100)), repeats=2) > 0


# ---------------------------------------------------------------------------------------------------------------------
# Analytic kernels
# ---------------------------------------------------------------------------------------------------------------------


def two_layer_closed_forms(x1, x2):
    """Cho & Saul's arc-cosine kernels for f(x) = aᵀ relu(Wx)/√m, both layers trained (written out independently)."""
    n1, n2 = x1.norm(dim=1)[:, None], x2.norm(dim=1)[None, :]
    cos = ((x1 @ x2.T) / (n1 * n2)).clamp(-1, 1)
    theta = torch.arccos(cos)
    nngp = n1 * n2 * (torch.sin(theta) + (math.pi - theta) * cos) / (2 * math.pi)
    ntk = n1 * n2 * (torch.sin(theta) + 2 * (math.pi - theta) * cos) / (2 * math.pi)
    return nngp, ntk


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


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_deep_kernel_matches_arora_et_al_formula(depth):
    x1 = torch.randn(7, 4, generator=gen(depth), dtype=F64)
    x2 = torch.randn(5, 4, generator=gen(depth + 10), dtype=F64)
    got = relu_ntk(x1, x2, depth=depth, weight_variance=2.0, readout_weight_variance=1.0)
    np.testing.assert_allclose(got.numpy(), arora_ntk(x1, x2, depth), rtol=1e-10, atol=1e-12)


def test_closed_form_is_refused_where_it_would_be_wrong():
    """Tied layers, parametrized weights and subclasses with their own forward get the Jacobian method."""
    from torch import nn
    from torch.nn.utils import parametrize

    shared = nn.Linear(4, 4)
    tied = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(4, 1)).double()
    parametrized = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()

    class Doubled(nn.Module):
        def forward(self, weight):
            return 2 * weight

    parametrize.register_parametrization(parametrized[0], "weight", Doubled())

    class ScaledLinear(nn.Linear):
        def forward(self, x):
            return 3 * super().forward(x)

    subclass = nn.Sequential(ScaledLinear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    x = torch.randn(5, 3, generator=gen(0), dtype=F64)
    for model in (tied, parametrized, subclass):
        assert not structured_ntk_supported(model)
        expected = per_example_gradient_gram(model, x, x)[:, :, 0, 0]
        torch.testing.assert_close(empirical_ntk(model, x), expected, rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match="needs a fully connected ReLU network"):
            empirical_ntk(model, x, method="structured")


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


@pytest.mark.parametrize("build, error, message", [
    (lambda: NTKMLP(3, []), ValueError, "at least one layer"),
    (lambda: NTKMLP(3, 8), TypeError, "hidden must be a sequence"),
    (lambda: NTKMLP(3, [4], weight_variance=-2.0), ValueError, "weight_variance must be a finite number > 0"),
    (lambda: NTKMLP(3, [4], bias_variance=math.inf), ValueError, "bias_variance must be a finite number >= 0"),
    (lambda: NTKMLP(3, [4], dtype=torch.int32), TypeError, "floating-point"),
    (lambda: NTKLinear(3, 0), ValueError, "out_features must be >= 1"),
    (lambda: AntisymmetricPair("net"), TypeError, "module must be a torch.nn.Module"),
])
def test_ntk_models_reject_bad_arguments(build, error, message):
    with pytest.raises(error, match=message):
        build()


# ---------------------------------------------------------------------------------------------------------------------
# Doubling initialisation and the linearized model
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: NTKMLP(4, [32], bias_variance=0.5, generator=gen(0), dtype=F64),
    lambda: NTKMLP(4, [16, 16], 3, bias_variance=0.5, generator=gen(1), dtype=F64),
    lambda: MLP(4, (8, 8), 1, generator=gen(2)).double(),
])
def test_antisymmetric_pair_starts_at_zero_with_the_same_kernel(make):
    module = make()
    pair = AntisymmetricPair(module)
    x = torch.randn(10, 4, generator=gen(3), dtype=F64)
    assert torch.equal(pair(x), torch.zeros_like(pair(x)))  # exactly zero, not approximately
    # Jacobian method for the pair, closed form for the module: two independent computations.
    torch.testing.assert_close(empirical_ntk(pair, x, method="jacobian"), empirical_ntk(module, x), rtol=1e-12,
                               atol=1e-12)
    # The copies are independent parameters: moving one of them moves the output away from zero.
    pair.first.net[0].weight.data.add_(0.1)
    assert float(pair(x).detach().abs().max()) > 0


def test_two_layer_pair_is_a_network_with_duplicated_units():
    """For one hidden layer, the pair of width m/2 equals a width-m network whose second half copies the first."""
    half = NTKMLP(3, [10], generator=gen(0), dtype=F64)
    pair = AntisymmetricPair(half)
    full = NTKMLP(3, [20], generator=gen(1), dtype=F64)
    with torch.no_grad():
        full.net[0].weight.copy_(torch.cat([half.net[0].weight, half.net[0].weight]))
        full.net[2].weight.copy_(torch.cat([half.net[2].weight, -half.net[2].weight], 1))
    x = torch.randn(6, 3, generator=gen(2), dtype=F64)
    torch.testing.assert_close(empirical_ntk(pair, x), empirical_ntk(full, x), rtol=1e-12, atol=1e-12)


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


# ---------------------------------------------------------------------------------------------------------------------
# Function-space solvers
# ---------------------------------------------------------------------------------------------------------------------


def small_problem(n=12, width=24, seed=0):
    net = AntisymmetricPair(NTKMLP(3, [width], weight_variance=0.5, bias_variance=0.5, readout_bias_variance=0.0,
                                   generator=gen(seed), dtype=F64))
    x, x_test = unit(n, 3, seed + 1), unit(5, 3, seed + 2)
    teacher = 3 * torch.randn(n, generator=gen(seed + 3), dtype=F64)
    return net, x, x_test, teacher


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


def test_kernel_regression_is_where_weight_space_training_converges():
    """Gradient descent on the squared loss, run on the linearized model's weights, reaches the min-norm interpolant:
    same test predictions, and ‖w − w₀‖ equals √(zᵀK⁻¹z)."""
    net, x, x_test, z = small_problem(n=4, width=16)
    kernel = empirical_ntk(net, x)
    eigenvalues = torch.linalg.eigvalsh(kernel)  # condition number about 15
    lr = 2 * len(z) / float(eigenvalues.max() + eigenvalues.min())  # the fastest stable step for the squared loss
    lin = LinearizedModel(net)
    fit(lin, lambda out, target: 0.5 * (out - target).square().mean(), x, [z], epochs=300, generator=gen(0), lr=lr,
        optimizer="sgd", progress=False)
    solution = kernel_regression(kernel, z)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), z, rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(lin(x_test), solution.predict(empirical_ntk(net, x_test, x)), rtol=1e-6, atol=1e-6)
    assert math.isclose(float(lin.weight_change().detach().norm()), float(solution.weight_change_norm), rel_tol=1e-7)
    assert math.isclose(float(weight_change_norm(kernel, z)), float(solution.weight_change_norm), rel_tol=1e-12)


def test_kernel_regression_interpolates_and_accounts_for_the_initial_function():
    x = unit(20, 3, 0)
    kernel = relu_ntk(x, depth=2, bias_variance=0.2)
    z = torch.randn(20, 3, generator=gen(1), dtype=F64)  # three right-hand sides at once
    f0 = torch.randn(20, generator=gen(2), dtype=F64)
    solution = kernel_regression(kernel, z, f0=f0)
    torch.testing.assert_close(solution.predict(kernel, f0_test=f0), z, rtol=1e-8, atol=1e-8)
    assert solution.weight_change_norm.shape == (3,)
    for j in range(3):
        direct = torch.linalg.solve(kernel, z[:, j] - f0)
        assert math.isclose(float(solution.weight_change_norm[j]), float(((z[:, j] - f0) @ direct).sqrt()),
                            rel_tol=1e-8)


def test_prefix_norms_from_one_factorisation_equal_direct_solves():
    x = unit(40, 3, 3)
    kernel = relu_ntk(x, depth=1, weight_variance=0.5, bias_variance=0.5, readout_bias_variance=0.0)
    z = torch.randn(40, 2, generator=gen(4), dtype=F64)
    prefixes = weight_change_norm(kernel, z, prefixes=True, jitter=0.0)  # compared with exact solves
    assert prefixes.shape == (40, 2)
    for n in (1, 2, 7, 25, 40):
        for j in range(2):
            direct = z[:n, j] @ torch.linalg.solve(kernel[:n, :n], z[:n, j])
            assert math.isclose(float(prefixes[n - 1, j]), float(direct.sqrt()), rel_tol=1e-9)


def test_cholesky_jitter_is_stated_and_failures_are_loud():
    x = unit(5, 3, 0)
    kernel = relu_ntk(x, depth=1)
    factor = cholesky_with_jitter(kernel, jitter=1e-6)
    shift = 1e-6 * float(kernel.diagonal().mean())
    torch.testing.assert_close(factor @ factor.T, kernel + shift * torch.eye(5, dtype=F64))
    repeated = relu_ntk(torch.cat([x, x[:1]]), depth=1)
    with pytest.raises(ValueError, match="not positive definite even with jitter 0"):
        cholesky_with_jitter(repeated, jitter=0.0)


@pytest.mark.parametrize("call, error, message", [
    (lambda k, z: kernel_regression(torch.zeros(4, 4, 2, 2, dtype=F64), z), ValueError, "multi-output model"),
    (lambda k, z: kernel_regression(k[:, :3], z), ValueError, "square \\(N, N\\) Gram matrix"),
    (lambda k, z: kernel_regression(k, z[:3]), ValueError, "targets must have shape \\(4,\\)"),
    (lambda k, z: kernel_regression(k, z, f0=z[:, None]), ValueError, "f0 must have shape \\(4,\\)"),
    (lambda k, z: weight_change_norm(k, z, f0=z[:, None]), ValueError, "f0 must have shape \\(4,\\)"),
    (lambda k, z: kernel_regression(k, z).predict(k, f0_test=z[:, None]), ValueError, "f0_test must have shape"),
    (lambda k, z: kernel_regression(k + torch.triu(torch.ones_like(k), 1), z), ValueError, "must be symmetric"),
    (lambda k, z: kernel_regression(k, z, jitter=-1.0), ValueError, "jitter must be a finite number >= 0"),
    (lambda k, z: weight_change_norm(k, z.long()), ValueError, "floating point"),
    (lambda k, z: function_space_gd(k, lambda v: v[:2], lr=1.0, steps=2), ValueError, "loss_gradient must return"),
    (lambda k, z: function_space_gd(k, lambda v: v, lr=0.0, steps=2), ValueError, "lr must be a finite number > 0"),
    (lambda k, z: function_space_gd(k, lambda v: v, lr=1.0, steps=2, f0=torch.zeros(4, 2, dtype=F64)), ValueError,
     "scalar outputs"),
    (lambda k, z: function_space_gd(k, lambda v: v, lr=1.0, steps=2, kernel_test_train=k[:, :2]), ValueError,
     "kernel_test_train must be an \\(M, 4\\) matrix"),
    (lambda k, z: function_space_gd(k, "mse", lr=1.0, steps=2), TypeError, "loss_gradient must be callable"),
])
def test_solvers_reject_bad_input(call, error, message):
    kernel = relu_ntk(unit(4, 3, 0), depth=1)
    with pytest.raises(error, match=message):
        call(kernel, torch.randn(4, dtype=F64))
