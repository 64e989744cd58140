r"""Jangho Kim, SeongUk Park and Nojun Kwak. *Paraphrasing Complex Network: Network Compression via Factor
Transfer.* Advances in Neural Information Processing Systems 31, 2018. Reproduced in chapter 6
(``06_factor_transfer``).

Factor transfer (FT) moves a teacher's last feature map into a student in two stages. Stage 1 trains a
convolutional auto-encoder, the *paraphraser* :math:`P = \mathrm{Dec} \circ \mathrm{Enc}`, to reconstruct the frozen
teacher's feature map :math:`x_T \in \mathbb{R}^{m \times H \times W}` without labels; its code
:math:`F_T = \mathrm{Enc}(x_T)`, with :math:`k m` channels for the *paraphrase rate* :math:`k`, is the teacher
*factor*. Stage 2 trains the student together with a *translator* :math:`T_S`, an encoder of the same layout on the
student's feature map, so that :math:`F_S = T_S(x_S)` matches :math:`F_T`:

.. math:: L = \mathrm{CE}(y, z_S) + \beta\, L_{FT}, \qquad
          L_{FT} = \frac{1}{N D} \sum_{n=1}^{N} \Big\| \frac{F_{S,n}}{\|F_{S,n}\|_2} - \frac{F_{T,n}}{\|F_{T,n}\|_2}
          \Big\|_1 ,

with each factor flattened to :math:`D = k m H W` numbers. This element-mean form, and every layer below, follow the
authors' released code (``utils.FT`` with ``nn.L1Loss``, ``Models/FeatureProjection.py``): the paper's own formulas
are not reproduced here, so its reduction, :math:`p`, reconstruction loss and :math:`\beta` are switches, and no
value of a switch is "the paper's". Reading the loss as the per-sample norm :math:`\frac1N \sum_n \|u_n - v_n\|_1`
makes it :math:`D` times larger, so a :math:`\beta` copied across the two conventions is off by a factor
:math:`D` (:func:`convert_beta`).

Conventions: feature maps and factors are (N, C, H, W) tensors; a flattened factor is (N, D). The paraphraser and
the translator use LeakyReLU(0.1) after every layer, 3×3 kernels with stride 1 and padding 1 (the spatial size is
kept), and no batch normalisation unless asked (the released code has it commented out). RepDistiller's "FT" is
another loss, an attention-map hybrid (:func:`attention_factor_loss`), kept only for the contrast.
"""

from __future__ import annotations

import contextlib
import math
from numbers import Real
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..core.models import FeatureTaps, initialize_from
from ..core.losses import kd_loss
from ..core.training import History, accuracy, fit, predict_logits
from ..core.validation import (
    check_bool,
    check_choice,
    check_eval_mode,
    check_finite_tensor,
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_soft_ratio,
    check_temperature,
)

__all__ = [
    "FTStudent",
    "Paraphraser",
    "RECONSTRUCTIONS",
    "REDUCTIONS",
    "Translator",
    "attention_factor_loss",
    "convert_beta",
    "factor_channels",
    "factor_cosine",
    "feature_map",
    "ft_loss",
    "ft_loss_upper_bound",
    "ft_metrics",
    "ft_objective",
    "normalized_factor",
    "reconstruction_error",
    "teacher_factors",
    "train_ft_student",
    "train_paraphraser",
]

REDUCTIONS = ("element_mean", "per_sample")
RECONSTRUCTIONS = ("l1", "mse")
NEGATIVE_SLOPE = 0.1  # LeakyReLU of the released code's paraphraser and translator
# A flattened factor whose L2 norm is at most this is refused: its direction, which the loss compares, is undefined.
ZERO_NORM = 1e-12


# --- the modules ----------------------------------------------------------------------------------------------------


def factor_channels(in_channels: int, rate: float = 0.5) -> int:
    """Channels of the factor of a feature map with ``in_channels`` channels: ``round(rate * in_channels)``.

    The released code builds its paraphraser with ``int(round(64 * rate))`` factor channels for the 64-channel map
    of a CIFAR ResNet; the rate :math:`k` is the paper's "paraphrase rate".

    Parameters
    ----------
    in_channels : int
        Channels m of the teacher's feature map, >= 1.
    rate : float, default 0.5
        Paraphrase rate k > 0 (k < 1 compresses, k > 1 expands).

    Returns
    -------
    int
        The factor's channel count k·m, rounded to the nearest integer (Python's ``round``, ties to even).

    Raises
    ------
    TypeError
        If ``in_channels`` is not an int or ``rate`` not a real number.
    ValueError
        If ``in_channels < 1``, ``rate <= 0``, or the rounded count is 0 (the message gives the smallest rate).
    """
    in_channels = check_positive_int(in_channels, "in_channels")
    rate = check_positive(rate, "rate")
    channels = int(round(rate * in_channels))
    if channels < 1:
        raise ValueError(f"rate={rate:g} gives round({rate:g} * {in_channels}) = 0 factor channels; use rate > "
                         f"{0.5 / in_channels:g} for in_channels={in_channels}")
    return channels


def _conv_stack(widths: list[int], *, transpose: bool, batch_norm: bool) -> nn.Sequential:
    """3x3 (transposed) convolutions widths[0] -> widths[1] -> ..., each with optional BN and LeakyReLU(0.1)."""
    layers: list[nn.Module] = []
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        layers.append(conv(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=True))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(NEGATIVE_SLOPE))
    return nn.Sequential(*layers)


def _check_feature_map(x, name: str, channels: int | None = None) -> torch.Tensor:
    check_finite_tensor(x, name)
    if x.ndim != 4:
        raise ValueError(f"{name} must be a 4-D (N, C, H, W) feature map, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got shape {tuple(x.shape)}")
    return x


def _without_global_draws(generator: torch.Generator | None):
    """Build layers without moving the global CPU random state when they are then re-drawn from ``generator``.

    PyTorch's layer constructors draw their default initialisation from the global generator; with a generator of
    its own, a module must leave that state as it found it, or every later global draw would shift.
    """
    return torch.random.fork_rng(devices=[]) if generator is not None else contextlib.nullcontext()


def _seed(module: nn.Module, generator: torch.Generator | None) -> None:
    if generator is not None:
        initialize_from(module, generator)


class Paraphraser(nn.Module):
    r"""FT's paraphraser: a convolutional auto-encoder of a teacher's feature map (stage 1).

    The encoder is Conv(m → m), Conv(m → km), Conv(km → km) and the decoder ConvTranspose(km → km),
    ConvTranspose(km → m), ConvTranspose(m → m), all 3×3 with stride 1 and padding 1, each followed by
    LeakyReLU(0.1) (and by batch normalisation before it when ``batch_norm``), as in the released code's
    ``Paraphraser``. The spatial size is kept; only the channels are compressed. The decoder ends with a LeakyReLU,
    so a reconstruction can reach the non-negative values of a ReLU feature map.

    Parameters
    ----------
    in_channels : int
        Channels m of the teacher's feature map, >= 1.
    rate : float, default 0.5
        Paraphrase rate k > 0; the factor has :func:`factor_channels` ``(m, k)`` channels.
    batch_norm : bool, default False
        Batch normalisation after every convolution (off in the released code, on by default in torchdistill).
    generator : torch.Generator, optional
        Generator of the initial weights (:func:`kdnb.core.models.initialize_from`); the global random state is
        then left as it was. ``None`` keeps PyTorch's draw from the global random state.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If ``in_channels < 1``, ``rate <= 0`` or the factor would have no channel.

    References
    ----------
    Kim, Park and Kwak (2018), the paraphraser (Fig. 1); layer layout from the authors' released code.
    """

    def __init__(self, in_channels: int, rate: float = 0.5, batch_norm: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.rate = check_positive(rate, "rate")
        self.factor_channels = factor_channels(in_channels, rate)
        self.batch_norm = check_bool(batch_norm, "batch_norm")
        m, km = self.in_channels, self.factor_channels
        with _without_global_draws(generator):
            self.encoder = _conv_stack([m, m, km, km], transpose=False, batch_norm=self.batch_norm)
            self.decoder = _conv_stack([km, km, m, m], transpose=True, batch_norm=self.batch_norm)
        _seed(self, generator)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The factor of a teacher feature map.

        Parameters
        ----------
        x : torch.Tensor
            (N, m, H, W) teacher feature map.

        Returns
        -------
        torch.Tensor
            (N, km, H, W) factor.

        Raises
        ------
        ValueError
            If ``x`` is not 4-D with ``in_channels`` channels, or holds non-finite values.
        """
        return self.encoder(_check_feature_map(x, "x", self.in_channels))

    def decode(self, factor: torch.Tensor) -> torch.Tensor:
        """The feature map reconstructed from a factor.

        Parameters
        ----------
        factor : torch.Tensor
            (N, km, H, W) factor.

        Returns
        -------
        torch.Tensor
            (N, m, H, W) reconstruction.

        Raises
        ------
        ValueError
            If ``factor`` is not 4-D with ``factor_channels`` channels, or holds non-finite values.
        """
        return self.decoder(_check_feature_map(factor, "factor", self.factor_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction :math:`P(x) = \\mathrm{Dec}(\\mathrm{Enc}(x))`.

        Parameters
        ----------
        x : torch.Tensor
            (N, m, H, W) teacher feature map.

        Returns
        -------
        torch.Tensor
            (N, m, H, W) reconstruction.
        """
        return self.decode(self.encode(x))

    def extra_repr(self) -> str:
        """The paraphraser's sizes, for ``repr``.

        Returns
        -------
        str
            ``"in_channels=..., rate=..., factor_channels=..., batch_norm=..."``.
        """
        return (f"in_channels={self.in_channels}, rate={self.rate:g}, factor_channels={self.factor_channels}, "
                f"batch_norm={self.batch_norm}")


class Translator(nn.Module):
    """FT's translator: the paraphraser's encoder layout on the student's feature map (stage 2).

    Conv(n → n), Conv(n → c), Conv(c → c), 3×3 with stride 1 and padding 1, each followed by LeakyReLU(0.1) (and
    batch normalisation before it when ``batch_norm``), as the released code's ``Translator``. Give it its own
    ``generator``: drawn from the global random state, its initialisation would shift every later draw, and a run
    with β = 0 would no longer be the plain cross-entropy run.

    Parameters
    ----------
    in_channels : int
        Channels n of the student's feature map, >= 1.
    factor_channels : int
        Channels c of the teacher's factor (``Paraphraser.factor_channels``), >= 1.
    batch_norm : bool, default False
        Batch normalisation after every convolution.
    generator : torch.Generator, optional
        Generator of the initial weights; the global random state is then left as it was. ``None`` keeps PyTorch's
        draw from the global random state.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If a channel count is < 1.
    """

    def __init__(self, in_channels: int, factor_channels: int, batch_norm: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.factor_channels = check_positive_int(factor_channels, "factor_channels")
        self.batch_norm = check_bool(batch_norm, "batch_norm")
        n, c = self.in_channels, self.factor_channels
        with _without_global_draws(generator):
            self.encoder = _conv_stack([n, n, c, c], transpose=False, batch_norm=self.batch_norm)
        _seed(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The student factor of a student feature map.

        Parameters
        ----------
        x : torch.Tensor
            (N, n, H, W) student feature map.

        Returns
        -------
        torch.Tensor
            (N, c, H, W) student factor.

        Raises
        ------
        ValueError
            If ``x`` is not 4-D with ``in_channels`` channels, or holds non-finite values.
        """
        return self.encoder(_check_feature_map(x, "x", self.in_channels))

    def extra_repr(self) -> str:
        """The translator's sizes, for ``repr``.

        Returns
        -------
        str
            ``"in_channels=..., factor_channels=..., batch_norm=..."``.
        """
        return f"in_channels={self.in_channels}, factor_channels={self.factor_channels}, batch_norm={self.batch_norm}"


# --- the losses -----------------------------------------------------------------------------------------------------


def normalized_factor(factor: torch.Tensor, name: str = "factor") -> torch.Tensor:
    r"""A factor flattened per example and scaled to unit L2 norm: :math:`u_n = \mathrm{vec}\,F_n / \|\mathrm{vec}\,F_n\|_2`.

    This is the released code's ``utils.FT``, except that a zero (or near-zero) factor is refused instead of being
    divided by a small constant: its direction, which the FT loss compares, does not exist.

    Parameters
    ----------
    factor : torch.Tensor
        (N, ...) factor, at least 2-D, finite floating point.
    name : str, default "factor"
        The argument's name, used in the error messages.

    Returns
    -------
    torch.Tensor
        (N, D) rows of unit L2 norm, D the product of the other dimensions.

    Raises
    ------
    TypeError
        If ``factor`` is not a floating-point tensor.
    ValueError
        If ``factor`` has fewer than 2 dimensions, no example, non-finite values, or an example whose L2 norm is at
        most 1e-12 (the message names the first such example).
    """
    check_finite_tensor(factor, name)
    if factor.ndim < 2 or factor.shape[0] == 0:
        raise ValueError(f"{name} must be an (N, ...) tensor with N >= 1 and at least 2 dimensions, got shape "
                         f"{tuple(factor.shape)}")
    flat = factor.reshape(factor.shape[0], -1)
    norms = flat.norm(dim=1, keepdim=True)
    small = (norms.squeeze(1) <= ZERO_NORM).nonzero()
    if len(small):
        raise ValueError(f"{name} has an example of zero L2 norm (example {int(small[0])}): its direction is "
                         "undefined, so the FT loss cannot compare it")
    return flat / norms


def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, Real):
        raise TypeError(f"p must be a real number > 0, got {type(p).__name__}")
    return check_positive(p, "p")


def ft_loss(factor_s: torch.Tensor, factor_t: torch.Tensor, reduction: str = "element_mean",
            p: float = 1) -> torch.Tensor:
    r"""The factor-transfer loss between student and teacher factors, on row-L2-normalised flattened factors.

    With :math:`u_n, v_n \in \mathbb{R}^D` the normalised student and teacher factors (:func:`normalized_factor`),

    - ``"element_mean"`` (default, the released code's ``nn.L1Loss()`` on ``utils.FT``):
      :math:`\frac{1}{N D} \sum_n \sum_i |u_{n,i} - v_{n,i}|^p`; for :math:`p = 1` it lies in
      :math:`[0, 2/\sqrt{D}]` (:func:`ft_loss_upper_bound`), and for :math:`p = 2` it is the mean squared error of
      the normalised factors;
    - ``"per_sample"`` (the per-sample norm reading of the paper's formula):
      :math:`\frac{1}{N} \sum_n \|u_n - v_n\|_p`, which is :math:`D` times the element mean for :math:`p = 1` and
      the mean Euclidean distance for :math:`p = 2` (torchdistill's ``FTLoss`` with ``p != 1``).

    Both are invariant to a positive rescaling of either factor, zero when the factors are positively proportional,
    and changed by a permutation of one factor's channels (unlike :func:`attention_factor_loss`). The teacher
    factor is used as given: detach it when it must not be trained.

    Parameters
    ----------
    factor_s : torch.Tensor
        (N, ...) student factor (the translator's output), floating point.
    factor_t : torch.Tensor
        Teacher factor of the same shape.
    reduction : {"element_mean", "per_sample"}, default "element_mean"
        How the differences are averaged, as above.
    p : float, default 1
        Exponent p > 0 of the distance.

    Returns
    -------
    torch.Tensor
        Scalar loss, differentiable in both factors.

    Raises
    ------
    TypeError
        If a factor is not a floating-point tensor or ``p`` is not a real number.
    ValueError
        If the shapes differ, a factor has fewer than 2 dimensions or a non-finite value or an example of zero
        norm, ``p <= 0``, or ``reduction`` is unknown.

    References
    ----------
    Kim, Park and Kwak (2018), the factor loss; element-mean L1 of the authors' released code (``utils.FT``,
    ``nn.L1Loss``).
    """
    check_choice(reduction, "reduction", REDUCTIONS)
    p = _check_p(p)
    check_finite_tensor(factor_s, "factor_s")
    check_finite_tensor(factor_t, "factor_t")
    if factor_s.shape != factor_t.shape:
        raise ValueError(f"factor_s and factor_t must have the same shape, got {tuple(factor_s.shape)} and "
                         f"{tuple(factor_t.shape)}")
    diff = normalized_factor(factor_s, "factor_s") - normalized_factor(factor_t, "factor_t")
    if reduction == "element_mean":
        return diff.abs().mean() if p == 1 else diff.abs().pow(p).mean()
    return diff.norm(p=p, dim=1).mean()


def ft_loss_upper_bound(factor_size: int) -> float:
    r"""The largest value of the element-mean L1 FT loss for factors of :math:`D` numbers: :math:`2/\sqrt{D}`.

    For unit vectors, :math:`\|u - v\|_1 \le \sqrt{D}\, \|u - v\|_2 \le 2\sqrt{D}` (Cauchy–Schwarz, then the
    triangle inequality), so the mean over the :math:`D` entries is at most :math:`2/\sqrt{D}`.

    Parameters
    ----------
    factor_size : int
        D, the numbers in one flattened factor (channels × height × width), >= 1.

    Returns
    -------
    float
        :math:`2/\sqrt{D}`.

    Raises
    ------
    TypeError
        If ``factor_size`` is not an int.
    ValueError
        If ``factor_size < 1``.
    """
    return 2.0 / math.sqrt(check_positive_int(factor_size, "factor_size"))


def convert_beta(beta: float, factor_size: int, source: str = "element_mean", target: str = "per_sample",
                 p: float = 1) -> float:
    r"""The β that gives the same training objective under another reduction of the L1 FT loss.

    With :math:`p = 1`, the per-sample loss is :math:`D` times the element-mean loss, so
    :math:`\beta_{\text{per-sample}} = \beta_{\text{element-mean}} / D`. The released code's β = 500 on its
    CIFAR factors (D = 32·8·8 = 2048) is a per-sample β of about 0.24; copied unchanged, it is a 2048-fold error.

    Parameters
    ----------
    beta : float
        β >= 0 under ``source``.
    factor_size : int
        D, the numbers in one flattened factor, >= 1.
    source, target : {"element_mean", "per_sample"}
        The reduction β is given for, and the one it is wanted for.
    p : float, default 1
        Exponent of the loss. Only for p = 1 are the two reductions proportional; for another p a conversion
        between different reductions is refused (the same reduction returns ``beta``).

    Returns
    -------
    float
        β under ``target`` (``beta`` itself when the two are the same).

    Raises
    ------
    TypeError
        If ``beta`` is not a real number or ``factor_size`` not an int.
    ValueError
        If ``beta < 0``, ``factor_size < 1``, a reduction is unknown, ``p <= 0``, or ``p != 1`` with two different
        reductions.
    """
    beta = check_nonnegative(beta, "beta")
    d = check_positive_int(factor_size, "factor_size")
    check_choice(source, "source", REDUCTIONS)
    check_choice(target, "target", REDUCTIONS)
    p = _check_p(p)
    if source == target:
        return beta
    if p != 1:
        raise ValueError(f"convert_beta is exact for p = 1 only (the per-sample loss is then D times the element "
                         f"mean); with p={p:g} the two reductions are not proportional")
    scale = {"element_mean": 1.0, "per_sample": float(d)}  # loss under each reduction, per unit element-mean loss
    return beta * scale[source] / scale[target]


def attention_factor_loss(f_s: torch.Tensor, f_t: torch.Tensor, power: int = 2) -> torch.Tensor:
    r"""RepDistiller's "FT": an attention-map hybrid, not the factor-transfer loss (kept for the contrast only).

    Each map is reduced to a spatial attention map :math:`a = \mathrm{mean}_c(f^{\,p})`, flattened to :math:`H W`
    numbers and L2-normalised; the loss is the mean absolute difference of the two. Averaging over channels makes it
    blind to any permutation of the channels, and it takes a different value from :func:`ft_loss` on the same
    tensors. Benchmarks labelled "FT" that use RepDistiller report this loss.

    Parameters
    ----------
    f_s : torch.Tensor
        (N, C_s, H, W) student map (a factor in RepDistiller's use).
    f_t : torch.Tensor
        (N, C_t, H, W) teacher map, the same N, H and W (the channels may differ).
    power : int, default 2
        Exponent p >= 1 of the attention map (RepDistiller's ``p1``).

    Returns
    -------
    torch.Tensor
        Scalar loss.

    Raises
    ------
    TypeError
        If a map is not a floating-point tensor or ``power`` is not an int.
    ValueError
        If a map is not 4-D or not finite, N, H or W differ (RepDistiller would pool the larger map; here that is
        the caller's choice), ``power < 1``, or an attention map is zero.

    References
    ----------
    Tian, Krishnan and Isola (2020), Contrastive representation distillation, ICLR 2020: RepDistiller's
    ``FactorTransfer(p1=2, p2=1)``.
    """
    _check_feature_map(f_s, "f_s")
    _check_feature_map(f_t, "f_t")
    power = check_positive_int(power, "power")
    if (f_s.shape[0], *f_s.shape[2:]) != (f_t.shape[0], *f_t.shape[2:]):
        raise ValueError(f"f_s and f_t must have the same N, H and W, got {tuple(f_s.shape)} and {tuple(f_t.shape)}")
    a_s = normalized_factor(f_s.pow(power).mean(1), "f_s's attention map")
    a_t = normalized_factor(f_t.pow(power).mean(1), "f_t's attention map")
    return (a_s - a_t).abs().mean()


def factor_cosine(factor_s: torch.Tensor, factor_t: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each example's flattened student and teacher factors.

    Parameters
    ----------
    factor_s : torch.Tensor
        (N, ...) student factor.
    factor_t : torch.Tensor
        Teacher factor of the same shape.

    Returns
    -------
    torch.Tensor
        (N,) cosines in [-1, 1].

    Raises
    ------
    TypeError
        If a factor is not a floating-point tensor.
    ValueError
        If the shapes differ, or for the reasons of :func:`normalized_factor`.
    """
    check_finite_tensor(factor_s, "factor_s")
    check_finite_tensor(factor_t, "factor_t")
    if factor_s.shape != factor_t.shape:
        raise ValueError(f"factor_s and factor_t must have the same shape, got {tuple(factor_s.shape)} and "
                         f"{tuple(factor_t.shape)}")
    return (normalized_factor(factor_s, "factor_s") * normalized_factor(factor_t, "factor_t")).sum(1)


# --- stage 1: the paraphraser ---------------------------------------------------------------------------------------


def feature_map(model: nn.Module, inputs: torch.Tensor, layer: str = "features",
                batch_size: int = 4096) -> torch.Tensor:
    """The output of ``model``'s submodule ``layer`` on ``inputs``, without gradients.

    Parameters
    ----------
    model : torch.nn.Module
        A network in eval mode (its batch normalisation and dropout must not depend on the batch), e.g. a
        :class:`kdnb.core.models.DigitsCNN`, whose ``"features"`` output is its (N, C, 4, 4) map.
    inputs : torch.Tensor
        (N, ...) inputs of ``model``.
    layer : str, default "features"
        Name of the submodule, as in ``model.named_modules()``.
    batch_size : int, default 4096
        Examples per forward pass, >= 1.

    Returns
    -------
    torch.Tensor
        The submodule's outputs, concatenated over the batches.

    Raises
    ------
    ValueError
        If ``model`` has layers in train mode, ``layer`` names no submodule, or ``batch_size < 1``.
    """
    check_eval_mode(model, "model")
    batch_size = check_positive_int(batch_size, "batch_size")
    taps = FeatureTaps(model, [layer], detach=True)
    with torch.no_grad():
        return torch.cat([taps(inputs[i:i + batch_size])[1][layer] for i in range(0, len(inputs), batch_size)])


def reconstruction_error(paraphraser: Paraphraser, features: torch.Tensor) -> float:
    r"""Relative reconstruction error :math:`\mathrm{mean}|x - P(x)| / \mathrm{mean}|x|` of a paraphraser.

    About 1 for an untrained paraphraser, whose output is small next to the feature map; 0 for a perfect one.

    Parameters
    ----------
    paraphraser : Paraphraser
        The auto-encoder, evaluated without gradients in its current mode.
    features : torch.Tensor
        (N, m, H, W) teacher feature maps, not all zero.

    Returns
    -------
    float
        The ratio, >= 0.

    Raises
    ------
    TypeError
        If ``paraphraser`` is not a :class:`Paraphraser`.
    ValueError
        If ``features`` has the wrong shape, non-finite values, or is all zero.
    """
    if not isinstance(paraphraser, Paraphraser):
        raise TypeError(f"paraphraser must be a Paraphraser, got {type(paraphraser).__name__}")
    _check_feature_map(features, "features", paraphraser.in_channels)
    scale = float(features.abs().mean())
    if scale == 0.0:
        raise ValueError("features are all zero: the relative reconstruction error is undefined")
    with torch.no_grad():
        return float((features - paraphraser(features)).abs().mean()) / scale


def train_paraphraser(
    paraphraser: Paraphraser,
    features: torch.Tensor,
    *,
    epochs: int,
    generator: torch.Generator,
    reconstruction: str = "l1",
    lr: float = 3e-3,
    batch_size: int | None = 64,
    eval_features: torch.Tensor | None = None,
    eval_every: int = 1,
    progress: bool | None = None,
    desc: str = "paraphraser",
) -> History:
    """Stage 1: train the paraphraser to reconstruct the frozen teacher's feature maps (no labels), with Adam.

    One :func:`kdnb.core.training.fit` call on ``features``, which the caller computes once from the frozen
    teacher (:func:`feature_map`); the teacher is not touched.

    Parameters
    ----------
    paraphraser : Paraphraser
        Trained in place, left in eval mode.
    features : torch.Tensor
        (N, m, H, W) teacher feature maps of the training images.
    epochs : int
        Passes over the maps, >= 1.
    generator : torch.Generator
        CPU generator of the mini-batch order.
    reconstruction : {"l1", "mse"}, default "l1"
        Reconstruction loss: the mean absolute error (the released code's ``nn.L1Loss``) or the mean squared error
        (RepDistiller, torchdistill and other re-implementations).
    lr : float, default 3e-3
        Adam's learning rate, > 0.
    batch_size : int or None, default 64
        Mini-batch size; ``None`` for full batch.
    eval_features : torch.Tensor, optional
        Held-out (N', m, H, W) maps; when given, their relative reconstruction error is recorded as
        ``"test_reconstruction_error"``, beside the training maps' ``"reconstruction_error"``.
    eval_every : int, default 1
        Period in epochs of these evaluations (and after the last epoch), >= 1.
    progress : bool or None, default None
        Progress bar, as in :func:`kdnb.core.training.fit`.
    desc : str, default "paraphraser"
        Label of the progress bar.

    Returns
    -------
    History
        The training loss per epoch and the relative reconstruction errors (:func:`reconstruction_error`).

    Raises
    ------
    TypeError
        If ``paraphraser`` is not a :class:`Paraphraser`.
    ValueError
        If ``reconstruction`` is unknown, a feature map has the wrong shape or is not finite, or for the bad
        arguments of :func:`kdnb.core.training.fit`.
    """
    if not isinstance(paraphraser, Paraphraser):
        raise TypeError(f"paraphraser must be a Paraphraser, got {type(paraphraser).__name__}")
    check_choice(reconstruction, "reconstruction", RECONSTRUCTIONS)
    _check_feature_map(features, "features", paraphraser.in_channels)
    if eval_features is not None:
        _check_feature_map(eval_features, "eval_features", paraphraser.in_channels)
    criterion = F.l1_loss if reconstruction == "l1" else F.mse_loss

    def objective(reconstructed, target):
        return criterion(reconstructed, target)

    def evaluate(model):
        metrics = {"reconstruction_error": reconstruction_error(model, features)}
        if eval_features is not None:
            metrics["test_reconstruction_error"] = reconstruction_error(model, eval_features)
        return metrics

    return fit(paraphraser, objective, features, [features], epochs=epochs, generator=generator, lr=lr,
               batch_size=batch_size, evaluate=evaluate, eval_every=eval_every, progress=progress, desc=desc)


# --- stage 2: the student and its translator ------------------------------------------------------------------------


def teacher_factors(teacher: nn.Module, paraphraser: Paraphraser, inputs: torch.Tensor,
                    layer: str = "features") -> torch.Tensor:
    """The teacher factors :math:`F_T = \\mathrm{Enc}(x_T)` of ``inputs``, computed once, without gradients.

    Parameters
    ----------
    teacher : torch.nn.Module
        The trained teacher, in eval mode.
    paraphraser : Paraphraser
        The trained paraphraser, in eval mode (with batch normalisation its running statistics are used).
    inputs : torch.Tensor
        (N, ...) inputs of the teacher.
    layer : str, default "features"
        The teacher's submodule whose output the paraphraser encodes.

    Returns
    -------
    torch.Tensor
        (N, km, H, W) factors, detached.

    Raises
    ------
    TypeError
        If ``paraphraser`` is not a :class:`Paraphraser`.
    ValueError
        If the teacher or the paraphraser has layers in train mode, or the map does not fit the paraphraser.
    """
    if not isinstance(paraphraser, Paraphraser):
        raise TypeError(f"paraphraser must be a Paraphraser, got {type(paraphraser).__name__}")
    check_eval_mode(paraphraser, "paraphraser")
    maps = feature_map(teacher, inputs, layer)
    with torch.no_grad():
        return paraphraser.encode(maps)


class FTStudent(nn.Module):
    """A student and its translator as one module: ``FTStudent(student, translator)(x)`` is
    ``(student(x), translator(feature map of x))``.

    The student runs once per call (through :class:`kdnb.core.models.FeatureTaps`), so its logits are exactly
    those of ``student(x)``. Its parameters are the student's, then the translator's, so
    :func:`kdnb.core.training.fit` trains both.

    Parameters
    ----------
    student : torch.nn.Module
        The student network.
    translator : Translator
        Its translator, whose ``in_channels`` match the student's feature map.
    layer : str, default "features"
        The student's submodule whose output is translated.

    Raises
    ------
    TypeError
        If ``student`` is not a module or ``translator`` not a :class:`Translator`.
    ValueError
        If ``layer`` names no submodule of ``student``.
    """

    def __init__(self, student: nn.Module, translator: Translator, layer: str = "features"):
        super().__init__()
        if not isinstance(translator, Translator):
            raise TypeError(f"translator must be a Translator, got {type(translator).__name__}")
        self.student = student
        self.translator = translator
        self.layer = layer
        self.taps = FeatureTaps(student, [layer])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's logits and its factor.

        Parameters
        ----------
        x : torch.Tensor
            (N, ...) inputs of the student.

        Returns
        -------
        logits : torch.Tensor
            (N, C) student logits.
        factor : torch.Tensor
            (N, c, H, W) student factor :math:`F_S`.
        """
        logits, maps = self.taps(x)
        return logits, self.translator(maps[self.layer])


def ft_objective(beta: float, reduction: str = "element_mean", p: float = 1, *, rho: float = 0.0,
                 temperature: float = 4.0) -> Callable[..., torch.Tensor]:
    r"""The stage-2 objective for :func:`kdnb.core.training.fit`: a task term plus ``beta * ft_loss(F_S, F_T)``.

    The task term is the cross-entropy on the labels (``rho=0``, FT as published), or Hinton's KD loss
    :func:`kdnb.core.losses.kd_loss` with soft ratio ``rho`` and temperature ``temperature`` (``rho > 0``: FT+KD,
    :math:`\rho T^2 \mathrm{KL} + (1 - \rho)\mathrm{CE}`). With a ``labelled`` mask the cross-entropy averages over
    the labelled examples of the batch only (zero when there is none), while the FT term, which needs no label, uses
    every example: a transfer set with few labels.

    Parameters
    ----------
    beta : float
        Weight β >= 0 of the FT loss (its scale depends on ``reduction``: :func:`convert_beta`).
    reduction : {"element_mean", "per_sample"}, default "element_mean"
        Reduction of :func:`ft_loss`.
    p : float, default 1
        Exponent of :func:`ft_loss`.
    rho : float, default 0.0
        Soft ratio of the KD term in [0, 1]; 0 is plain cross-entropy.
    temperature : float, default 4.0
        KD temperature T > 0 (used only when ``rho > 0``).

    Returns
    -------
    callable
        ``loss((logits, factor_s), labels, factor_t, teacher_logits=None, labelled=None) -> scalar``;
        ``teacher_logits`` are needed when ``rho > 0``.

    Raises
    ------
    TypeError
        If ``beta`` or ``p`` is not a real number.
    ValueError
        If ``beta < 0``, ``p <= 0``, ``rho`` is outside [0, 1], ``temperature <= 0`` or ``reduction`` is unknown;
        at call time, if ``rho > 0`` and no teacher logits are given.
    """
    beta = check_nonnegative(beta, "beta")
    check_choice(reduction, "reduction", REDUCTIONS)
    p = _check_p(p)
    rho = check_soft_ratio(rho)
    temperature = check_temperature(temperature)

    def loss(outputs, labels, factor_t, teacher_logits=None, labelled=None):
        logits, factor_s = outputs
        if rho > 0:
            if teacher_logits is None:
                raise ValueError("rho > 0 (FT+KD) needs the teacher's logits as the fourth target")
            task = kd_loss(logits, teacher_logits, labels, rho=rho, temperature=temperature, labelled=labelled)
        elif labelled is None:
            task = F.cross_entropy(logits, labels)
        else:
            per_example = F.cross_entropy(logits, labels, reduction="none")
            count = int(labelled.sum())
            task = (per_example * labelled).sum() / count if count else per_example.sum() * 0.0
        return task + beta * ft_loss(factor_s, factor_t, reduction=reduction, p=p)

    return loss


def ft_metrics(model: FTStudent, inputs: torch.Tensor, labels: torch.Tensor, factors_t: torch.Tensor, *,
               reduction: str = "element_mean", p: float = 1) -> dict[str, float]:
    """Accuracy, FT loss and mean factor cosine of a student and its translator on a held-out set.

    Parameters
    ----------
    model : FTStudent
        The student with its translator; evaluated without gradients in its current mode.
    inputs : torch.Tensor
        (N, ...) held-out inputs.
    labels : torch.Tensor
        (N,) their class labels.
    factors_t : torch.Tensor
        (N, c, H, W) teacher factors of ``inputs`` (:func:`teacher_factors`).
    reduction : {"element_mean", "per_sample"}, default "element_mean"
        Reduction of :func:`ft_loss`.
    p : float, default 1
        Exponent of :func:`ft_loss`.

    Returns
    -------
    dict of str to float
        ``"accuracy"`` in [0, 1], ``"ft_loss"`` and ``"factor_cosine"`` (mean over examples, in [-1, 1]).

    Raises
    ------
    TypeError
        If ``model`` is not an :class:`FTStudent`.
    ValueError
        For the reasons of :func:`ft_loss`.
    """
    if not isinstance(model, FTStudent):
        raise TypeError(f"model must be an FTStudent, got {type(model).__name__}")
    with torch.no_grad():
        logits, factor_s = model(inputs)
        return {"accuracy": accuracy(logits, labels),
                "ft_loss": float(ft_loss(factor_s, factors_t, reduction=reduction, p=p)),
                "factor_cosine": float(factor_cosine(factor_s, factors_t).mean())}


def train_ft_student(
    student: nn.Module,
    translator: Translator,
    teacher: nn.Module,
    paraphraser: Paraphraser,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta: float,
    epochs: int,
    generator: torch.Generator,
    layer: str = "features",
    reduction: str = "element_mean",
    p: float = 1,
    rho: float = 0.0,
    temperature: float = 4.0,
    labelled: torch.Tensor | None = None,
    lr: float = 0.05,
    batch_size: int | None = 64,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    schedule: str = "cosine",
    weight_decay: float = 5e-4,
    eval_inputs: torch.Tensor | None = None,
    eval_labels: torch.Tensor | None = None,
    eval_every: int = 1,
    progress: bool | None = None,
    desc: str = "FT student",
) -> History:
    """Stage 2: train a student and its translator on cross-entropy (or KD) plus β times the FT loss.

    The teacher factors are computed once, before training, by the frozen teacher and paraphraser in eval mode
    (:func:`teacher_factors`), so they are constants: neither the teacher nor the paraphraser receives a gradient
    or changes. Student and translator are trained together by one :func:`kdnb.core.training.fit` call on
    :class:`FTStudent` with :func:`ft_objective`. With ``beta=0`` the student's run is, bit for bit, ``fit`` of
    the student alone on cross-entropy with the same options and generator, provided the translator was
    initialised from its own generator.

    Parameters
    ----------
    student : torch.nn.Module
        The student, trained in place.
    translator : Translator
        Its translator, trained in place.
    teacher : torch.nn.Module
        The trained teacher, in eval mode; unchanged.
    paraphraser : Paraphraser
        The trained paraphraser (stage 1), in eval mode; unchanged.
    inputs : torch.Tensor
        (N, ...) training inputs.
    labels : torch.Tensor
        (N,) int64 class labels.
    beta : float
        Weight β >= 0 of the FT loss.
    epochs : int
        Passes over the training set, >= 1.
    generator : torch.Generator
        CPU generator of the mini-batch order.
    layer : str, default "features"
        The submodule of both teacher and student whose feature map is used (their last group).
    reduction : {"element_mean", "per_sample"}, default "element_mean"
        Reduction of :func:`ft_loss`.
    p : float, default 1
        Exponent of :func:`ft_loss`.
    rho : float, default 0.0
        Soft ratio of a KD term on the teacher's logits (FT+KD, :func:`ft_objective`); 0 is FT as published.
    temperature : float, default 4.0
        KD temperature T > 0, used when ``rho > 0``.
    labelled : torch.Tensor, optional
        (N,) bool mask of the examples whose label is used (a transfer set); the FT term uses every example.
    lr : float, default 0.05
        Peak learning rate, > 0.
    batch_size : int or None, default 64
        Mini-batch size; ``None`` for full batch.
    optimizer : {"adam", "sgd"}, default "sgd"
        Optimiser of :func:`kdnb.core.training.fit`.
    momentum : float, default 0.9
        SGD momentum in [0, 1).
    schedule : {"constant", "cosine"}, default "cosine"
        Learning-rate schedule.
    weight_decay : float, default 5e-4
        L2 penalty, >= 0, on student and translator.
    eval_inputs, eval_labels : torch.Tensor, optional
        A held-out set; when given, every ``eval_every`` epochs its ``"accuracy"``, FT loss ``"ft_loss"`` (with
        ``reduction`` and ``p``) and mean factor cosine ``"factor_cosine"`` are recorded in ``History.metrics``.
    eval_every : int, default 1
        Evaluation period in epochs, >= 1.
    progress : bool or None, default None
        Progress bar, as in :func:`kdnb.core.training.fit`.
    desc : str, default "FT student"
        Label of the progress bar.

    Returns
    -------
    History
        Per-epoch training loss and, with a held-out set, the metrics above.

    Raises
    ------
    TypeError
        If ``translator`` or ``paraphraser`` has the wrong type.
    ValueError
        If teacher or paraphraser is in train mode, only one of ``eval_inputs`` and ``eval_labels`` is given, the
        translator does not produce the paraphraser's factor channels, or for the bad arguments of
        :func:`ft_objective` and :func:`kdnb.core.training.fit`.

    References
    ----------
    Kim, Park and Kwak (2018), stage 2 of factor transfer; optimiser defaults are the book's toy-scale choice
    (the released code uses SGD with momentum 0.9 and a step schedule).
    """
    objective = ft_objective(beta, reduction, p, rho=rho, temperature=temperature)
    if not isinstance(translator, Translator):
        raise TypeError(f"translator must be a Translator, got {type(translator).__name__}")
    if translator.factor_channels != getattr(paraphraser, "factor_channels", None):
        raise ValueError(f"the translator produces {translator.factor_channels} factor channels, the paraphraser "
                         f"{getattr(paraphraser, 'factor_channels', None)}: they must match")
    if (eval_inputs is None) != (eval_labels is None):
        raise ValueError("give both eval_inputs and eval_labels, or neither")
    if labelled is not None and (not isinstance(labelled, torch.Tensor) or labelled.dtype != torch.bool
                                 or labelled.shape != (len(inputs),)):
        raise ValueError(f"labelled must be a bool tensor of shape ({len(inputs)},), one entry per input")
    factors = teacher_factors(teacher, paraphraser, inputs, layer)
    teacher_logits = predict_logits(teacher, inputs) if rho > 0 else None
    model = FTStudent(student, translator, layer)
    evaluate = None
    if eval_inputs is not None:
        eval_factors = teacher_factors(teacher, paraphraser, eval_inputs, layer)

        def evaluate(module):
            return ft_metrics(module, eval_inputs, eval_labels, eval_factors, reduction=reduction, p=p)

    targets = [labels, factors, teacher_logits, labelled]
    return fit(model, objective, inputs, targets, epochs=epochs, generator=generator, lr=lr,
               batch_size=batch_size, optimizer=optimizer, momentum=momentum, schedule=schedule,
               weight_decay=weight_decay, evaluate=evaluate, eval_every=eval_every, progress=progress, desc=desc)
