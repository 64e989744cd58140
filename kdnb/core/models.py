r"""Models: a fully connected MLP and a small CNN for 8x8 digits, and the wide networks of the NTK chapters.

:class:`MLP` and :class:`DigitsCNN` use PyTorch's default (Kaiming-uniform) initialisation in the *standard*
parameterisation. :class:`NTKMLP` is a ReLU network in the *NTK* parameterisation (Jacot et al. 2018), whose
infinite-width kernels are :func:`kdnb.kernels.analytic.relu_ntk` and :func:`kdnb.kernels.analytic.relu_nngp`; :class:`AntisymmetricPair` is the
"doubling" construction that makes a network's initial output exactly zero. Every model draws its initial weights from
an explicit ``generator`` when one is given, so that a model's weights depend on its seed only.
"""

from __future__ import annotations

from typing import Sequence

import copy
import math

import torch
from torch import nn

from .validation import check_choice, check_positive_int, check_variance

__all__ = ["MLP", "AntisymmetricPair", "DigitsCNN", "NTKLinear", "NTKMLP", "count_parameters"]

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _init_from(module: nn.Module, generator: torch.Generator | None) -> None:
    """Re-draw every parameter from ``generator`` with the same law as PyTorch's default init."""
    if generator is None:
        return
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                fan_in = layer.weight[0].numel()
                bound = 1.0 / fan_in**0.5  # kaiming_uniform_(a=sqrt(5)) and the bias init both give 1/sqrt(fan_in)
                layer.weight.copy_(torch.empty_like(layer.weight).uniform_(-bound, bound, generator=generator))
                if layer.bias is not None:
                    layer.bias.copy_(torch.empty_like(layer.bias).uniform_(-bound, bound, generator=generator))


class MLP(nn.Module):
    """``in_features -> hidden[0] -> ... -> hidden[-1] -> out_features`` with an activation between linear layers.

    ``out_features=1`` gives one logit per example, returned with shape (N,) (the binary convention of
    :func:`kdnb.core.losses.binary_kd_loss`); otherwise logits have shape (N, out_features).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        in_features = check_positive_int(in_features, "in_features")
        out_features = check_positive_int(out_features, "out_features")
        if isinstance(hidden, int):
            raise TypeError("hidden must be a sequence of layer widths, e.g. (128,) for one hidden layer")
        hidden = [check_positive_int(h, "hidden width") for h in hidden]
        check_choice(activation, "activation", tuple(ACTIVATIONS))
        widths = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        self.in_features, self.out_features = in_features, out_features
        _init_from(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"MLP expects input of shape (N, {self.in_features}), got {tuple(x.shape)}")
        out = self.net(x)
        return out.squeeze(1) if self.out_features == 1 else out


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions (padding 1, ReLU, 2x2 max-pool after the second) and a linear head, for (N, 1, 8, 8) input.

    Also accepts flat (N, 64) input, which it reshapes, so it is a drop-in replacement for an MLP on digits.
    """

    def __init__(self, channels: Sequence[int] = (16, 32), n_classes: int = 10, generator: torch.Generator | None = None):
        super().__init__()
        if len(channels) != 2:
            raise ValueError(f"channels must have two entries (one per convolution), got {tuple(channels)}")
        c1, c2 = (check_positive_int(c, "channels") for c in channels)
        n_classes = check_positive_int(n_classes, "n_classes", minimum=2)
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(c2 * 4 * 4, n_classes)
        _init_from(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2 and x.shape[1] == 64:
            x = x.reshape(-1, 1, 8, 8)
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"DigitsCNN expects input of shape (N, 1, 8, 8) or (N, 64), got {tuple(x.shape)}")
        return self.head(self.features(x).flatten(1))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class NTKLinear(nn.Module):
    r"""A dense layer in the NTK parameterisation: :math:`y = \frac{\sigma_w}{\sqrt{n_\mathrm{in}}} W x + \sigma_b b`.

    ``W`` and ``b`` are drawn from N(0, 1); the scale factors are constants of the layer, not parameters, so gradient
    descent on ``W`` and ``b`` moves the output at a rate independent of the width (Jacot et al. 2018). This is
    neural-tangents' ``stax.Dense(parameterization="ntk")``. ``bias_variance = 0`` means no bias parameter at all.
    ``normalize_input=False`` drops the :math:`1/\sqrt{n_\mathrm{in}}` (used for the first layer of the Jacot/Arora
    convention, where the input is not divided by its dimension).
    """

    def __init__(self, in_features: int, out_features: int, *, weight_variance: float = 1.0,
                 bias_variance: float = 0.0, normalize_input: bool = True, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.weight_variance = check_variance(weight_variance, "weight_variance", positive=True)
        self.bias_variance = check_variance(bias_variance, "bias_variance")
        self.weight_scale = math.sqrt(self.weight_variance / (self.in_features if normalize_input else 1))
        self.bias_scale = math.sqrt(self.bias_variance)
        self.weight = nn.Parameter(torch.randn(out_features, in_features, generator=generator, dtype=dtype))
        if self.bias_variance > 0:
            self.bias = nn.Parameter(torch.randn(out_features, generator=generator, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.weight_scale * (x @ self.weight.T)
        return out if self.bias is None else out + self.bias_scale * self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"weight_scale={self.weight_scale:.4g}, bias_scale={self.bias_scale:.4g}")


class NTKMLP(nn.Module):
    r"""A fully connected ReLU network in the NTK parameterisation, the finite-width model of :func:`kdnb.kernels.analytic.relu_ntk`.

    .. math:: h_0 = x, \quad h_l = \mathrm{relu}\Big(\frac{\sigma_w}{\sqrt{n_{l-1}}} W_l h_{l-1} + \sigma_b b_l\Big)
              \ (l = 1..L), \qquad f(x) = \frac{\sigma_{w,\mathrm{out}}}{\sqrt{n_L}} W_{L+1} h_L
              + \sigma_{b,\mathrm{out}} b_{L+1},

    with every entry of every :math:`W_l, b_l` drawn from N(0, 1), and :math:`n_0` replaced by 1 in the first layer
    when ``normalize_input=False``. As the hidden widths grow, the empirical NTK of this network at initialisation
    converges to ``relu_ntk(x1, x2, **model.kernel_parameters)`` and the covariance of its initial output to
    ``relu_nngp`` (see :mod:`kdnb.kernels` for the conventions). ``out_features=1`` gives (N,) logits.

    Parameters
    ----------
    hidden : widths of the L >= 1 hidden layers.
    weight_variance, bias_variance : :math:`\sigma_w^2` and :math:`\sigma_b^2` of the hidden layers (bias 0: none).
    readout_weight_variance, readout_bias_variance : those of the output layer; ``None`` takes the hidden values.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int = 1, *,
                 weight_variance: float = 1.0, bias_variance: float = 0.0,
                 readout_weight_variance: float | None = None, readout_bias_variance: float | None = None,
                 normalize_input: bool = False, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        in_features = check_positive_int(in_features, "in_features")
        out_features = check_positive_int(out_features, "out_features")
        if isinstance(hidden, int) or not isinstance(hidden, Sequence):
            raise TypeError("hidden must be a sequence of layer widths, e.g. (1024,) for one hidden layer")
        hidden = [check_positive_int(h, "hidden width") for h in hidden]
        if not hidden:
            raise ValueError("hidden must have at least one layer (depth >= 1)")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch dtype, got {dtype}")
        if readout_weight_variance is None:
            readout_weight_variance = weight_variance
        if readout_bias_variance is None:
            readout_bias_variance = bias_variance
        self.kernel_parameters = dict(
            depth=len(hidden),
            weight_variance=check_variance(weight_variance, "weight_variance", positive=True),
            bias_variance=check_variance(bias_variance, "bias_variance"),
            readout_weight_variance=check_variance(readout_weight_variance, "readout_weight_variance", positive=True),
            readout_bias_variance=check_variance(readout_bias_variance, "readout_bias_variance"),
            normalize_input=bool(normalize_input),
        )
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [NTKLinear(a, b, weight_variance=weight_variance, bias_variance=bias_variance,
                                 normalize_input=normalize_input or i > 0, generator=generator, dtype=dtype),
                       nn.ReLU()]
        layers.append(NTKLinear(hidden[-1], out_features, weight_variance=readout_weight_variance,
                                bias_variance=readout_bias_variance, generator=generator, dtype=dtype))
        self.net = nn.Sequential(*layers)
        self.in_features, self.out_features, self.hidden = in_features, out_features, tuple(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"NTKMLP expects input of shape (N, {self.in_features}), got {tuple(x.shape)}")
        out = self.net(x)
        return out.squeeze(1) if self.out_features == 1 else out


class AntisymmetricPair(nn.Module):
    r"""The antisymmetric ("doubling") initialisation: :math:`f(x) = \big(g(x; \theta_a) - g(x; \theta_b)\big)/\sqrt 2`
    with :math:`\theta_b = \theta_a` at initialisation, so that :math:`f(x; w_0) \equiv 0` exactly.

    Both copies are trained independently afterwards. At initialisation the empirical NTK of the pair equals that of
    ``module``, :math:`\Theta_f = (\Theta_a + \Theta_b)/2 = \Theta_g`, so the kernel keeps its expectation while the
    initial function, and with it the "zero weight change" that cancels it, vanishes (Chizat et al. 2019; Ji & Zhu
    2020). For a one-hidden-layer network of width m/2 the pair *is* a width-m network whose second half of hidden
    units copies the first with negated readout weights; its kernel fluctuates about :math:`\sqrt 2` times more than
    a freely drawn width-m network, since it has half as many independent units.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.first = module
        self.second = copy.deepcopy(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.first(x) - self.second(x)) / math.sqrt(2.0)
