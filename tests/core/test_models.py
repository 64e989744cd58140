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

