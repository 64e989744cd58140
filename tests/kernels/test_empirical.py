"""kdnb.kernels.empirical: the three methods against each other and against per-example gradients from plain
autograd, chunking, output modes, the closed form refused where it would be wrong, FLOP counts."""


import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from kdnb.core.models import MLP, NTKMLP, AntisymmetricPair, DigitsCNN
from kdnb.core.runtime import select_device
from kdnb.core.timing import time_call
from kdnb.kernels.empirical import (
    dense_ntk_flops,
    empirical_ntk,
    ntk_features,
    structured_ntk_supported,
)
from tests.core.test_progress import run_with_stderr_to_file
from tests.helpers import gen, per_example_gradients

F64 = torch.float64


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


def per_example_gradient_gram(model, x1, x2):
    return torch.einsum("iap,jbp->ijab", per_example_gradients(model, x1), per_example_gradients(model, x2))


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


# ---------------------------------------------------------------------------------------------------------------------
# Models with train-mode layers or buffers: refused or restored, never silently changed; quiet progress bars
# ---------------------------------------------------------------------------------------------------------------------

TRAIN_MODE_MODELS = {
    "batchnorm2d": lambda: (nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                                          nn.Linear(8, 1)).double(), torch.randn(4, 1, 4, 4, generator=gen(0),
                                                                                 dtype=F64)),
    "batchnorm1d": lambda: (nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 1)).double(),
                            torch.randn(4, 3, generator=gen(0), dtype=F64)),
    "dropout": lambda: (nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 2)).double(),
                        torch.randn(6, 3, generator=gen(0), dtype=F64)),
}
NTK_CALLS = {
    "jacobian": lambda m, x: empirical_ntk(m, x, method="jacobian"),
    "ntk_vp": lambda m, x: empirical_ntk(m, x, method="ntk_vp"),
    "auto-two-inputs": lambda m, x: empirical_ntk(m, x, x[:2]),
    "structured": lambda m, x: empirical_ntk(m, x, method="structured"),
    "features": ntk_features,
}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()]


@pytest.mark.parametrize("call", list(NTK_CALLS))
@pytest.mark.parametrize("kind", list(TRAIN_MODE_MODELS))
def test_train_mode_layers_are_refused_before_any_forward_pass(kind, call):
    model, x = TRAIN_MODE_MODELS[kind]()
    state, flags = _state(model)
    rng = torch.get_rng_state()
    layer = {"dropout": "Dropout", "batchnorm1d": "BatchNorm1d", "batchnorm2d": "BatchNorm2d"}[kind]
    with pytest.raises(ValueError, match=rf"model has layers in train mode.*'1' \({layer}\).*Call model\.eval\(\)"):
        NTK_CALLS[call](model, x)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items()), "buffers or weights changed"
    assert torch.equal(torch.get_rng_state(), rng), "a random draw was made"


@pytest.mark.parametrize("kind", list(TRAIN_MODE_MODELS))
def test_in_eval_mode_the_kernel_is_the_gram_matrix_of_per_example_gradients(kind):
    model, x = TRAIN_MODE_MODELS[kind]()
    with torch.no_grad():  # running statistics away from (0, 1), so that eval-mode batch norm is not the identity
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-1, 1, generator=gen(3))
                m.running_var.uniform_(0.5, 2, generator=gen(4))
    model.eval()
    state, flags = _state(model)
    reference = per_example_gradient_gram(model, x, x)
    reference = reference[:, :, 0, 0] if reference.shape[2] == 1 else reference
    for method in ("jacobian", "ntk_vp"):
        torch.testing.assert_close(empirical_ntk(model, x, method=method), reference, rtol=1e-10, atol=1e-12)
    phi = ntk_features(model, x)  # (N, P) for one output, (N, O, P) for more
    gram = phi @ phi.T if phi.ndim == 2 else torch.einsum("iap,jbp->ijab", phi, phi)
    torch.testing.assert_close(gram, reference, rtol=1e-10, atol=1e-12)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


class _CountingLinear(nn.Module):
    """A layer whose forward counts its calls in a buffer, in eval mode too."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2, dtype=F64)
        self.register_buffer("calls", torch.zeros((), dtype=F64))

    def forward(self, x):
        self.calls += 1
        return self.linear(x)


@pytest.mark.parametrize("call", ["jacobian", "ntk_vp", "auto-two-inputs", "features"])
def test_a_forward_that_updates_a_buffer_is_undone_and_refused(call):
    model = _CountingLinear().eval()
    buffer = model.calls
    with pytest.raises(ValueError, match=r"model's forward changed its buffers \['calls'\] while "
                                         r"(empirical_ntk|ntk_features) evaluated it \(they were restored\)"):
        NTK_CALLS[call](model, torch.randn(4, 3, generator=gen(0), dtype=F64))
    assert model.calls is buffer and float(model.calls) == 0.0


def test_progress_must_be_a_bool_or_none():
    with pytest.raises(TypeError, match="progress must be True or False"):
        empirical_ntk(NTKMLP(5, [4], dtype=F64), torch.randn(3, 5, dtype=F64), progress="yes")


def test_empirical_ntk_is_silent_in_a_log_unless_forced(tmp_path):
    text = run_with_stderr_to_file("""
        import sys
        import torch
        from kdnb.core.models import MLP
        from kdnb.kernels.empirical import empirical_ntk

        model = MLP(3, (8,), 1, activation="tanh").double()  # no closed form: the blocked Jacobian path
        x = torch.randn(12, 3, dtype=torch.float64)
        for method in ("jacobian", "ntk_vp"):
            empirical_ntk(model, x, method=method, chunk_size=1)  # 78 blocks: a bar where someone watches
            empirical_ntk(model, x, x[:5], method=method, chunk_size=1, progress=False)
        sys.stderr.write("MARK\\n")
        empirical_ntk(model, x, method="jacobian", chunk_size=1, progress=True)
    """, tmp_path)
    quiet, forced = text.split("MARK\n")
    assert quiet == ""
    assert "empirical NTK blocks" in forced and "/78 [" in forced
