r"""Models: a fully connected MLP and a small CNN for 8x8 digits, and the wide networks of the NTK chapters.

:class:`MLP` and :class:`DigitsCNN` use PyTorch's default (Kaiming-uniform) initialisation in the *standard*
parameterisation. :class:`NTKMLP` is a ReLU network in the *NTK* parameterisation (Jacot et al. 2018), whose
infinite-width kernels are :func:`kdnb.kernels.analytic.relu_ntk` and :func:`kdnb.kernels.analytic.relu_nngp`; :class:`AntisymmetricPair` is the
"doubling" construction that makes a network's initial output exactly zero. Every model draws its initial weights from
an explicit ``generator`` when one is given, so that a model's weights depend on its seed only; new models do the same
with :func:`initialize_from`. :class:`FeatureTaps` returns named intermediate outputs of any model (feature maps for
feature-based distillation) without changing its ``forward``.
"""

from __future__ import annotations

from typing import Sequence

import copy
import math

import torch
from torch import nn

from .validation import check_bool, check_choice, check_positive_int, check_variance

__all__ = [
    "MLP",
    "AntisymmetricPair",
    "DigitsCNN",
    "FeatureTaps",
    "NTKLinear",
    "NTKMLP",
    "count_parameters",
    "initialize_from",
]

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


# Layers whose default initialisation is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
SEEDED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# Layers whose default initialisation draws nothing (ones, zeros or a constant), so it needs no generator.
CONSTANT_INIT_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
                        nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.GroupNorm, nn.PReLU)
# The only parameters a supported layer may hold itself (a subclass adding another one is refused).
LAYER_PARAMETERS = ("weight", "bias")


def initialize_from(module: nn.Module, generator: torch.Generator) -> nn.Module:
    r"""Re-draw the parameters of every linear and convolutional layer of ``module`` from ``generator``, with the law
    of PyTorch's default initialisation.

    Each weight and then its bias is drawn from :math:`U(-b, b)`, :math:`b = 1/\sqrt{\mathrm{fan_{in}}}`, layer by
    layer in the order of ``module.modules()``. That is PyTorch's default law: ``kaiming_uniform_(a=sqrt(5))`` gives the
    weight bound :math:`\sqrt 3 \cdot \sqrt{2/(1+5)}/\sqrt{\mathrm{fan_{in}}} = 1/\sqrt{\mathrm{fan_{in}}}`, and the
    bias uses the same bound. The fan-in is PyTorch's, ``weight.size(1)`` times the kernel size, which is
    ``weight[0].numel()``: for :class:`~torch.nn.Linear` (out, in) it is ``in``; for ``Conv*d`` (out, in/groups,
    k...) it is in/groups times the kernel size; for ``ConvTranspose*d``, whose weight is laid out (in, out/groups,
    k...), it is out/groups times the kernel size. Normalisation layers and :class:`~torch.nn.PReLU` keep their
    constant initial values. Any other module holding parameters of its own is refused, and so is a supported layer
    (e.g. a subclass of ``Linear``) holding a parameter other than its ``weight`` and ``bias``, since their values
    would otherwise come from the global random state. Lazy layers (``LazyLinear``, ...) must have run a forward pass.

    Parameters
    ----------
    module : torch.nn.Module
        The model, changed in place. Supported layers: ``Linear``, ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``
        (re-drawn); ``BatchNorm``, ``InstanceNorm``, ``LayerNorm``, ``GroupNorm``, ``PReLU`` (left as they are).
    generator : torch.Generator
        Generator of the draws, on the parameters' device (a CPU generator for CPU parameters).

    Returns
    -------
    torch.nn.Module
        ``module`` itself.

    Raises
    ------
    TypeError
        If ``module`` is not a module, ``generator`` not a torch.Generator, a submodule of another type holds
        parameters of its own, or a supported layer holds a parameter other than ``weight`` and ``bias`` (the message
        names the submodule).
    ValueError
        If a submodule still has uninitialized (lazy) parameters (the message names it).

    References
    ----------
    He, K., Zhang, X., Ren, S. and Sun, J. (2015). Delving deep into rectifiers. ICCV 2015 (the Kaiming-uniform
    law), with PyTorch's ``a = sqrt(5)`` default of ``reset_parameters``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    lazy = [f"{name or '(root)'} ({type(layer).__name__})" for name, layer in module.named_modules()
            if any(nn.parameter.is_lazy(p) for p in layer.parameters(recurse=False))]
    if lazy:
        raise ValueError(f"initialize_from cannot seed the uninitialized (lazy) parameters of {', '.join(lazy)}: run "
                         "one forward pass first, so that their shapes are known")
    unknown = [f"{name or '(root)'} ({type(layer).__name__})" for name, layer in module.named_modules()
               if not isinstance(layer, SEEDED_LAYERS + CONSTANT_INIT_LAYERS)
               and next(layer.parameters(recurse=False), None) is not None]
    if unknown:
        raise TypeError(f"initialize_from cannot seed the parameters of {', '.join(unknown)}: it re-draws Linear, "
                        "Conv and ConvTranspose layers and keeps normalisation layers and PReLU; initialise the "
                        "others from the generator yourself")
    extra = [f"{name or '(root)'} ({type(layer).__name__}: {', '.join(own)})" for name, layer in module.named_modules()
             if isinstance(layer, SEEDED_LAYERS + CONSTANT_INIT_LAYERS)
             and (own := [n for n, _ in layer.named_parameters(recurse=False) if n not in LAYER_PARAMETERS])]
    if extra:
        raise TypeError(f"initialize_from cannot seed the parameters of {', '.join(extra)}: a supported layer may "
                        "hold only its own 'weight' and 'bias'; initialise the others from the generator yourself")
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, SEEDED_LAYERS):
                if layer.weight.numel() == 0:
                    continue  # nothing to draw; PyTorch's bias bound for fan_in = 0 is 0, and the bias is already 0
                fan_in = layer.weight[0].numel()
                bound = 1.0 / fan_in**0.5  # kaiming_uniform_(a=sqrt(5)) and the bias init both give 1/sqrt(fan_in)
                layer.weight.copy_(torch.empty_like(layer.weight).uniform_(-bound, bound, generator=generator))
                if layer.bias is not None:
                    layer.bias.copy_(torch.empty_like(layer.bias).uniform_(-bound, bound, generator=generator))
    return module


def _init_from(module: nn.Module, generator: torch.Generator | None) -> None:
    """:func:`initialize_from` when a generator is given; PyTorch's own initialisation is kept otherwise."""
    if generator is None:
        return
    initialize_from(module, generator)


class MLP(nn.Module):
    """A fully connected network ``in_features -> hidden[0] -> ... -> hidden[-1] -> out_features``.

    Linear layers (in ``self.net``, an :class:`~torch.nn.Sequential` whose modules are named ``"0"``, ``"1"``, ...)
    alternate with the activation; there is none after the last. ``out_features=1`` gives one logit per example,
    returned with shape (N,) (the binary convention of :func:`kdnb.core.losses.binary_kd_loss`); otherwise logits have
    shape (N, out_features). Standard parameterisation with PyTorch's default initialisation law.

    Parameters
    ----------
    in_features : int
        Input dimension, >= 1.
    hidden : sequence of int
        Widths of the hidden layers, each >= 1; empty for a linear model.
    out_features : int
        Number of outputs, >= 1 (1 for a binary logit).
    activation : {"relu", "tanh", "gelu"}, default "relu"
        Nonlinearity between the linear layers.
    generator : torch.Generator, optional
        Generator of the initial weights (:func:`initialize_from`); ``None`` keeps PyTorch's draw from the global
        random state.

    Raises
    ------
    TypeError
        If ``hidden`` is an int rather than a sequence.
    ValueError
        If a width is < 1 or ``activation`` is unknown.
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
        """Logits of a batch.

        Parameters
        ----------
        x : torch.Tensor
            (N, in_features) inputs.

        Returns
        -------
        torch.Tensor
            (N, out_features) logits, or (N,) when ``out_features == 1``.

        Raises
        ------
        ValueError
            If ``x`` does not have shape (N, in_features).
        """
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"MLP expects input of shape (N, {self.in_features}), got {tuple(x.shape)}")
        out = self.net(x)
        return out.squeeze(1) if self.out_features == 1 else out


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits: two 3x3 convolutions (padding 1, each followed by ReLU, a 2x2 max-pool after the
    second) and a linear head.

    ``features`` is ``Sequential(conv, relu, conv, relu, maxpool)`` (modules ``"features.0"`` to ``"features.4"``,
    the names :class:`FeatureTaps` takes) and ``head`` the linear layer. Accepts (N, 1, 8, 8) images and flat
    (N, 64) input, which it reshapes, so it is a drop-in replacement for an MLP on digits.

    Parameters
    ----------
    channels : sequence of two int, default (16, 32)
        Output channels of the two convolutions, each >= 1.
    n_classes : int, default 10
        Number of logits, >= 2.
    generator : torch.Generator, optional
        Generator of the initial weights (:func:`initialize_from`); ``None`` keeps PyTorch's draw.

    Raises
    ------
    ValueError
        If ``channels`` does not have two entries, a channel count is < 1, or ``n_classes < 2``.
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
        """Logits of a batch of images.

        Parameters
        ----------
        x : torch.Tensor
            (N, 1, 8, 8) images or (N, 64) flattened images.

        Returns
        -------
        torch.Tensor
            (N, n_classes) logits.

        Raises
        ------
        ValueError
            If ``x`` has neither shape.
        """
        if x.ndim == 2 and x.shape[1] == 64:
            x = x.reshape(-1, 1, 8, 8)
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"DigitsCNN expects input of shape (N, 1, 8, 8) or (N, 64), got {tuple(x.shape)}")
        return self.head(self.features(x).flatten(1))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (entries of the parameters with ``requires_grad``).

    Parameters
    ----------
    model : torch.nn.Module
        Any module.

    Returns
    -------
    int
        The number of trainable scalar parameters.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class NTKLinear(nn.Module):
    r"""A dense layer in the NTK parameterisation: :math:`y = \frac{\sigma_w}{\sqrt{n_\mathrm{in}}} W x + \sigma_b b`.

    ``W`` and ``b`` are drawn from N(0, 1); the scale factors are constants of the layer, not parameters, so gradient
    descent on ``W`` and ``b`` moves the output at a rate independent of the width (Jacot et al. 2018). This is
    neural-tangents' ``stax.Dense(parameterization="ntk")``.

    Parameters
    ----------
    in_features, out_features : int
        Input and output dimensions, each >= 1.
    weight_variance : float, default 1.0
        :math:`\sigma_w^2 > 0`.
    bias_variance : float, default 0.0
        :math:`\sigma_b^2 \ge 0`; 0 means no bias parameter at all.
    normalize_input : bool, default True
        Divide by :math:`\sqrt{n_\mathrm{in}}`; False drops it (the first layer of the Jacot/Arora convention, where
        the input is not divided by its dimension).
    generator : torch.Generator, optional
        Generator of the N(0, 1) draws (weight, then bias).
    dtype : torch.dtype, default torch.float32
        Dtype of the parameters.

    Raises
    ------
    TypeError
        If ``normalize_input`` is not a bool.
    ValueError
        If a dimension is < 1 or a variance is out of range.

    References
    ----------
    Jacot, A., Gabriel, F. and Hongler, C. (2018). Neural tangent kernel: convergence and generalization in neural
    networks. NeurIPS 2018.
    """

    def __init__(self, in_features: int, out_features: int, *, weight_variance: float = 1.0,
                 bias_variance: float = 0.0, normalize_input: bool = True, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.weight_variance = check_variance(weight_variance, "weight_variance", positive=True)
        self.bias_variance = check_variance(bias_variance, "bias_variance")
        normalize_input = check_bool(normalize_input, "normalize_input")
        self.weight_scale = math.sqrt(self.weight_variance / (self.in_features if normalize_input else 1))
        self.bias_scale = math.sqrt(self.bias_variance)
        self.weight = nn.Parameter(torch.randn(out_features, in_features, generator=generator, dtype=dtype))
        if self.bias_variance > 0:
            self.bias = nn.Parameter(torch.randn(out_features, generator=generator, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer.

        Parameters
        ----------
        x : torch.Tensor
            (N, in_features) inputs.

        Returns
        -------
        torch.Tensor
            (N, out_features) outputs.
        """
        out = self.weight_scale * (x @ self.weight.T)
        return out if self.bias is None else out + self.bias_scale * self.bias

    def extra_repr(self) -> str:
        """The layer's sizes and scale factors, for ``repr``.

        Returns
        -------
        str
            ``"in_features=..., out_features=..., weight_scale=..., bias_scale=..."``.
        """
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
    in_features : int
        Input dimension, >= 1.
    hidden : sequence of int
        Widths of the L >= 1 hidden layers.
    out_features : int, default 1
        Number of outputs, >= 1.
    weight_variance, bias_variance : float, default 1.0 and 0.0
        :math:`\sigma_w^2 > 0` and :math:`\sigma_b^2 \ge 0` of the hidden layers (bias variance 0: no biases).
    readout_weight_variance, readout_bias_variance : float, optional
        Those of the output layer; ``None`` takes the hidden values.
    normalize_input : bool, default False
        Divide the first layer's pre-activation by :math:`\sqrt{n_0}` as well.
    generator : torch.Generator, optional
        Generator of the N(0, 1) parameters, drawn layer by layer.
    dtype : torch.dtype, default torch.float32
        Floating-point dtype of the parameters.

    Raises
    ------
    TypeError
        If ``hidden`` is not a sequence, ``normalize_input`` is not a bool or ``dtype`` is not floating point.
    ValueError
        If ``hidden`` is empty or a width or variance is out of range.

    References
    ----------
    Jacot, A., Gabriel, F. and Hongler, C. (2018). Neural tangent kernel: convergence and generalization in neural
    networks. NeurIPS 2018.
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
        normalize_input = check_bool(normalize_input, "normalize_input")
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
            normalize_input=normalize_input,
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
        """Outputs of a batch.

        Parameters
        ----------
        x : torch.Tensor
            (N, in_features) inputs.

        Returns
        -------
        torch.Tensor
            (N, out_features) outputs, or (N,) when ``out_features == 1``.

        Raises
        ------
        ValueError
            If ``x`` does not have shape (N, in_features).
        """
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

    Parameters
    ----------
    module : torch.nn.Module
        The network g; it becomes ``first``, and a deep copy of it ``second``.

    Raises
    ------
    TypeError
        If ``module`` is not a torch.nn.Module.

    References
    ----------
    Chizat, L., Oyallon, E. and Bach, F. (2019). On lazy training in differentiable programming. NeurIPS 2019.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.first = module
        self.second = copy.deepcopy(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r"""The pair's output :math:`(g(x; \theta_a) - g(x; \theta_b))/\sqrt 2`.

        Parameters
        ----------
        x : torch.Tensor
            A batch in the input format of ``module``.

        Returns
        -------
        torch.Tensor
            Outputs of ``module``'s shape.
        """
        return (self.first(x) - self.second(x)) / math.sqrt(2.0)


class FeatureTaps(nn.Module):
    """A model that also returns named intermediate outputs: ``FeatureTaps(model, names)(x)`` is
    ``(model(x), {name: output of that submodule})``.

    Forward hooks are registered on the named submodules for the duration of each call and removed afterwards, even
    when the forward pass raises, so ``model`` itself is never changed and runs as before outside the call. The
    features are the tensors the submodules return, in the autograd graph (so a loss on them trains the model) unless
    ``detach=True``. ``FeatureTaps`` is a module whose parameters are ``model``'s, and ``train()``/``eval()`` reach
    ``model``, so it can be passed to :func:`kdnb.core.training.fit` with an objective
    ``loss((outputs, features), *targets)``; use ``model`` itself for plain predictions.

    A tapped output is the tensor itself: an in-place operation later in the forward pass (e.g.
    ``nn.ReLU(inplace=True)``) changes it too, so tap the module after it instead.

    Parameters
    ----------
    model : torch.nn.Module
        The network to tap.
    names : sequence of str
        Names of submodules as in ``model.named_modules()``, e.g. ``["features.2", "head"]`` for
        :class:`DigitsCNN`; at least one, distinct, the root (``""``) excluded.
    detach : bool, default False
        Return the features detached from the graph (e.g. a teacher's).

    Raises
    ------
    TypeError
        If ``model`` is not a module, ``names`` is not a sequence of str, or ``detach`` is not a bool.
    ValueError
        If ``names`` is empty, repeats a name, or names no submodule of ``model`` (the message lists the valid
        names).

    Examples
    --------
    >>> import torch
    >>> cnn = DigitsCNN(generator=torch.Generator().manual_seed(0))
    >>> logits, features = FeatureTaps(cnn, ["features.3"])(torch.zeros(2, 64))
    >>> tuple(features["features.3"].shape)
    (2, 32, 8, 8)
    """

    def __init__(self, model: nn.Module, names: Sequence[str], *, detach: bool = False):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"names must be a sequence of module names (str), e.g. ['features.2'], got {names!r}")
        if not names:
            raise ValueError("names must name at least one submodule")
        if len(set(names)) != len(names):
            raise ValueError(f"names must be distinct, got {list(names)}")
        self.model = model
        self.names = tuple(names)
        self.detach = check_bool(detach, "detach")
        self._modules_by_name()

    def _modules_by_name(self) -> dict[str, nn.Module]:
        modules = {name: module for name, module in self.model.named_modules() if name}
        unknown = [name for name in self.names if name not in modules]
        if unknown:
            raise ValueError(f"unknown module name(s) {unknown} for {type(self.model).__name__}; valid names: "
                             f"{list(modules)}")
        return modules

    def forward(self, *args, **kwargs) -> tuple[object, dict[str, torch.Tensor]]:
        """Run ``model`` once and collect the outputs of the named submodules.

        Parameters
        ----------
        *args, **kwargs
            The inputs of ``model``'s forward, e.g. a batch ``x``.

        Returns
        -------
        output : object
            What ``model(*args, **kwargs)`` returns (e.g. (N, C) logits).
        features : dict of str to torch.Tensor
            The output of each named submodule, keyed and ordered as ``names``.

        Raises
        ------
        RuntimeError
            If a named submodule does not run in the forward pass, or runs more than once (its output would be
            ambiguous).
        """
        modules = self._modules_by_name()
        features: dict[str, torch.Tensor] = {}
        detach = self.detach

        def make_hook(name):
            def hook(module, inputs, output):
                if name in features:
                    raise RuntimeError(f"module {name!r} ran more than once in one forward pass, so its output is "
                                       "ambiguous; tap a module that runs once")
                features[name] = output.detach() if detach and isinstance(output, torch.Tensor) else output
            return hook

        handles = []
        try:
            for name in self.names:
                handles.append(modules[name].register_forward_hook(make_hook(name)))
            output = self.model(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in self.names if name not in features]
        if missing:
            raise RuntimeError(f"module(s) {missing} did not run in the forward pass of {type(self.model).__name__}")
        return output, {name: features[name] for name in self.names}

    def extra_repr(self) -> str:
        """The tapped names, for ``repr``.

        Returns
        -------
        str
            ``"names=(...), detach=..."``.
        """
        return f"names={self.names}, detach={self.detach}"
