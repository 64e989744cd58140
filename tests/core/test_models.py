"""Model shapes, seeded initialisation and input checks."""

import math

import pytest
import torch

from kdnb.core.models import (
    MLP,
    NTKMLP,
    AntisymmetricPair,
    DigitsCNN,
    NTKLinear,
    count_parameters,
)


def test_mlp_shapes_and_parameter_count():
    m = MLP(64, (32, 16), 10)
    assert m(torch.zeros(5, 64)).shape == (5, 10)
    assert count_parameters(m) == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert MLP(3, (4,), 1)(torch.zeros(7, 3)).shape == (7,)  # binary: one logit per example
    assert len([x for x in MLP(3, (), 2).modules() if isinstance(x, torch.nn.Linear)]) == 1


def test_generator_makes_initialisation_reproducible():
    a = MLP(8, (5,), 3, generator=torch.Generator().manual_seed(1))
    b = MLP(8, (5,), 3, generator=torch.Generator().manual_seed(1))
    c = MLP(8, (5,), 3, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    bound = 8**-0.5
    assert a.net[0].weight.abs().max() <= bound  # PyTorch's default law, U(-1/sqrt(fan_in), 1/sqrt(fan_in))


def test_cnn_accepts_images_and_flat_vectors():
    m = DigitsCNN(generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 1, 8, 8)
    assert m(x).shape == (4, 10)
    assert torch.equal(m(x), m(x.reshape(4, 64)))


@pytest.mark.parametrize("build, error, message", [
    (lambda: MLP(0, (4,), 2), ValueError, "in_features must be >= 1"),
    (lambda: MLP(4, 8, 2), TypeError, "hidden must be a sequence"),
    (lambda: MLP(4, (0,), 2), ValueError, "hidden width must be >= 1"),
    (lambda: MLP(4, (3,), 2, activation="swish"), ValueError, "activation must be one of"),
    (lambda: DigitsCNN(channels=(4,)), ValueError, "channels must have two entries"),
    (lambda: DigitsCNN(n_classes=1), ValueError, "n_classes must be >= 2"),
])
def test_bad_model_arguments(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_bad_input_shapes():
    with pytest.raises(ValueError, match="MLP expects input of shape \\(N, 4\\)"):
        MLP(4, (3,), 2)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="DigitsCNN expects"):
        DigitsCNN()(torch.zeros(2, 1, 7, 7))


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


def _pytorch_default_draw(layer, generator):
    """PyTorch's own default initialisation law (reset_parameters), drawn from ``generator``."""
    weight, bias = torch.empty_like(layer.weight), torch.empty_like(layer.bias)
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(weight)
    torch.nn.init.uniform_(bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=generator)
    return weight, bias


@pytest.mark.parametrize("make", [
    lambda: torch.nn.Linear(7, 5),
    lambda: torch.nn.Conv2d(3, 6, 3),
    lambda: torch.nn.Conv2d(4, 6, (3, 2), groups=2),
    lambda: torch.nn.ConvTranspose2d(3, 8, 4, stride=2),
    lambda: torch.nn.ConvTranspose2d(6, 4, (3, 5), groups=2),
    lambda: torch.nn.ConvTranspose1d(5, 2, 3),
], ids=["linear", "conv2d", "conv2d-groups", "convtranspose2d", "convtranspose2d-groups", "convtranspose1d"])
def test_initialize_from_draws_pytorchs_default_law(make):
    from kdnb.core.models import initialize_from

    layer = make()
    assert initialize_from(layer, torch.Generator().manual_seed(4)) is layer
    weight, bias = _pytorch_default_draw(layer, torch.Generator().manual_seed(4))
    torch.testing.assert_close(layer.weight.detach(), weight, rtol=0, atol=1e-7)
    torch.testing.assert_close(layer.bias.detach(), bias, rtol=0, atol=1e-7)


def test_convtranspose2d_bounds_use_the_output_channels_as_fan_in():
    from kdnb.core.models import initialize_from

    layer = torch.nn.ConvTranspose2d(64, 3, 4)  # weight (in=64, out=3, 4, 4): fan_in = 3 * 16 = 48, not 64 * 16
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(layer.weight)
    assert fan_in == 48 == layer.weight[0].numel()
    initialize_from(layer, torch.Generator().manual_seed(0))
    w = layer.weight.detach().double()
    bound = 1 / math.sqrt(48)
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound
    assert float(w.var()) == pytest.approx(bound**2 / 3, rel=0.05)  # U(-b, b) has variance b^2 / 3
    assert float(layer.bias.detach().abs().max()) <= bound


def test_seeded_models_keep_their_draws_and_share_initialize_from():
    from kdnb.core.models import initialize_from

    # MLP and DigitsCNN draw weight then bias, layer by layer, from the generator: the law and order of
    # initialize_from, with the first values of the stream in the first layer's weight.
    mlp = MLP(8, (5,), 3, generator=torch.Generator().manual_seed(1))
    first = torch.empty(5, 8).uniform_(-8**-0.5, 8**-0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mlp.net[0].weight.detach(), first)
    fresh = initialize_from(MLP(8, (5,), 3), torch.Generator().manual_seed(1))
    assert all(torch.equal(p, q) for p, q in zip(mlp.parameters(), fresh.parameters()))
    cnn = DigitsCNN(generator=torch.Generator().manual_seed(2))
    again = initialize_from(DigitsCNN(), torch.Generator().manual_seed(2))
    assert all(torch.equal(p, q) for p, q in zip(cnn.parameters(), again.parameters()))


def test_initialize_from_keeps_norm_layers_and_refuses_unknown_parameters():
    from kdnb.core.models import initialize_from

    generator_net = torch.nn.Sequential(torch.nn.ConvTranspose2d(4, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Tanh())
    initialize_from(generator_net, torch.Generator().manual_seed(0))
    assert torch.equal(generator_net[1].weight.detach(), torch.ones(2))
    assert torch.equal(generator_net[1].bias.detach(), torch.zeros(2))
    with pytest.raises(TypeError, match=r"net\.0 \(NTKLinear\)"):
        initialize_from(NTKMLP(3, [4]), torch.Generator())
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        initialize_from(MLP(3, (), 2), 0)
    with pytest.raises(TypeError, match="module must be a torch.nn.Module"):
        initialize_from("mlp", torch.Generator())


def test_feature_taps_return_the_manual_forward_and_leave_no_hooks():
    from kdnb.core.models import FeatureTaps

    cnn = DigitsCNN(generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    taps = FeatureTaps(cnn, ["features.2", "features.4", "head"])
    out, features = taps(x)
    f = cnn.features
    conv2 = f[2](f[1](f[0](x)))
    pooled = f[4](f[3](conv2))
    assert list(features) == ["features.2", "features.4", "head"]
    assert torch.equal(features["features.2"], conv2) and torch.equal(features["features.4"], pooled)
    assert torch.equal(features["head"], out) and torch.equal(out, cnn(x))
    assert all(not m._forward_hooks for m in cnn.modules())
    # the features are in the graph: a loss on one reaches the layers before it only
    features["features.2"].sum().backward()
    assert cnn.features[0].weight.grad is not None and cnn.head.weight.grad is None
    detached = FeatureTaps(cnn, ["features.2"], detach=True)(x)[1]["features.2"]
    assert not detached.requires_grad and torch.equal(detached, conv2.detach())


def test_feature_taps_remove_hooks_when_the_forward_fails_and_check_names():
    from kdnb.core.models import FeatureTaps

    mlp = MLP(4, (3,), 2)
    with pytest.raises(ValueError, match="MLP expects"):
        FeatureTaps(mlp, ["net.1"])(torch.zeros(2, 5))
    assert all(not m._forward_hooks for m in mlp.modules())
    with pytest.raises(ValueError, match=r"unknown module name\(s\) \['net.7'\].*valid names: \['net', 'net.0'"):
        FeatureTaps(mlp, ["net.7"])
    with pytest.raises(TypeError, match="sequence of module names"):
        FeatureTaps(mlp, "net.0")
    with pytest.raises(ValueError, match="distinct"):
        FeatureTaps(mlp, ["net.0", "net.0"])
    with pytest.raises(ValueError, match="at least one"):
        FeatureTaps(mlp, [])
    shared = torch.nn.Linear(3, 3)
    twice = torch.nn.Sequential(shared, torch.nn.ReLU(), shared)
    with pytest.raises(RuntimeError, match="ran more than once"):
        FeatureTaps(twice, ["0"])(torch.zeros(1, 3))
    assert not shared._forward_hooks


def test_feature_taps_train_the_model_through_fit():
    from kdnb.core.models import FeatureTaps
    from kdnb.core.training import fit

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    target = x @ torch.randn(4, 6, generator=g)  # reachable by the first layer
    mlp = MLP(4, (6,), 2, generator=torch.Generator().manual_seed(1))

    def hidden_matches(outputs, target):
        _, features = outputs
        return (features["net.0"] - target).square().mean()

    history = fit(FeatureTaps(mlp, ["net.0"]), hidden_matches, x, [target], epochs=50, lr=0.05,
                  generator=torch.Generator(), progress=False)
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert not mlp.training and all(not m._forward_hooks for m in mlp.modules())


def test_initialize_from_refuses_extra_parameters_of_a_supported_layer():
    from kdnb.core.models import initialize_from

    class ScaledLinear(torch.nn.Linear):
        def __init__(self, *args):
            super().__init__(*args)
            self.scale = torch.nn.Parameter(torch.randn(1))  # drawn from the global state: cannot be seeded

    class ScaledNorm(torch.nn.LayerNorm):
        def __init__(self, *args):
            super().__init__(*args)
            self.gain = torch.nn.Parameter(torch.randn(1))

    for model, label in [(torch.nn.Sequential(torch.nn.Linear(3, 2), ScaledLinear(2, 2)), r"1 \(ScaledLinear: scale\)"),
                         (ScaledLinear(2, 2), r"\(root\) \(ScaledLinear: scale\)"),
                         (torch.nn.Sequential(ScaledNorm(3)), r"0 \(ScaledNorm: gain\)")]:
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(TypeError, match=label + ".*may hold only its own 'weight' and 'bias'"):
            initialize_from(model, torch.Generator().manual_seed(0))
        assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))  # refused before any draw


def test_initialize_from_refuses_lazy_layers_until_they_have_run():
    from kdnb.core.models import initialize_from

    model = torch.nn.Sequential(torch.nn.LazyLinear(4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match=r"uninitialized \(lazy\) parameters of 0 \(LazyLinear\)"):
        initialize_from(model, torch.Generator().manual_seed(0))
    model(torch.zeros(2, 3))  # the lazy layer becomes a Linear(3, 4)
    initialize_from(model, torch.Generator().manual_seed(0))
    reference = initialize_from(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)),
                                torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))


def test_flags_of_the_models_must_be_bools():
    import numpy as np

    from kdnb.core.models import FeatureTaps

    mlp = MLP(5, (4,), 2, generator=torch.Generator().manual_seed(0))
    for bad in ("no", 1, None):
        with pytest.raises(TypeError, match="detach must be True or False"):
            FeatureTaps(mlp, ["net.0"], detach=bad)
        with pytest.raises(TypeError, match="normalize_input must be True or False"):
            NTKLinear(3, 2, normalize_input=bad)
        with pytest.raises(TypeError, match="normalize_input must be True or False"):
            NTKMLP(3, [4], normalize_input=bad)
    taps = FeatureTaps(mlp, ["net.0"], detach=np.True_)
    assert taps.detach is True and not taps(torch.zeros(2, 5))[1]["net.0"].requires_grad
    a = NTKMLP(3, [4], normalize_input=np.True_, generator=torch.Generator().manual_seed(0))
    b = NTKMLP(3, [4], normalize_input=True, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a(x), b(x)) and a.kernel_parameters == b.kernel_parameters
