"""Models: a fully connected MLP and a small CNN for 8x8 digits.

Both use PyTorch's default (Kaiming-uniform) initialisation in the standard parameterisation, and both draw their
initial weights from an explicit ``generator`` when one is given, so that a model's weights depend on its seed only.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .validation import check_choice, check_positive_int

__all__ = ["MLP", "DigitsCNN", "count_parameters"]

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
    :func:`kdnb.losses.binary_kd_loss`); otherwise logits have shape (N, out_features).
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
