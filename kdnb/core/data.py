r"""Datasets: scikit-learn's digits (real, offline) and synthetic functions on the sphere.

Nothing here downloads anything. ``load_digits`` ships 1797 8x8 grey images of the digits 0-9 inside scikit-learn.

Randomness is always drawn from an explicit ``torch.Generator`` or integer ``seed``, never from global state, so a
chapter's data do not depend on what ran before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch

from .validation import (
    check_bool,
    check_choice,
    check_finite_tensor,
    check_in_unit_interval,
    check_positive,
    check_positive_int,
)

__all__ = [
    "BinaryDigits",
    "Digits",
    "GaussianMixtureOnSphere",
    "corrupt_labels",
    "flip_signs",
    "load_binary_digits",
    "load_digits",
    "points_at_angles",
    "sample_sphere",
    "stratified_subset",
]

NORMALIZATIONS = ("standard", "unit", "none")


@dataclass
class Digits:
    """A stratified train/test split of scikit-learn's digits, as returned by :func:`load_digits`.

    Parameters
    ----------
    x_train, x_test : torch.Tensor
        (N_train, 64) and (N_test, 64) floating-point features, one row per 8x8 image (pixels in row-major order),
        normalised as requested from :func:`load_digits`.
    y_train, y_test : torch.Tensor
        (N_train,) and (N_test,) int64 class labels in [0, 9].
    n_classes : int, default 10
        Number of classes.
    image_shape : tuple of int, default (8, 8)
        Height and width of one image, in pixels.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int = 10
    image_shape: tuple[int, int] = (8, 8)

    @property
    def n_features(self) -> int:
        """Number of features per example (64 for 8x8 images)."""
        return self.x_train.shape[1]

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Reshape flat features to single-channel images for a CNN.

        Parameters
        ----------
        x : torch.Tensor
            (N, 64) features, e.g. ``x_train``.

        Returns
        -------
        torch.Tensor
            A (N, 1, 8, 8) view of ``x``.
        """
        return x.reshape(-1, 1, *self.image_shape)

    def to(self, device: torch.device | str) -> "Digits":
        """Copy the split to a device.

        Parameters
        ----------
        device : torch.device or str
            Target device, e.g. ``"cuda"``.

        Returns
        -------
        Digits
            The same split with every tensor on ``device``.
        """
        return Digits(*(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)),
                      n_classes=self.n_classes, image_shape=self.image_shape)


N_DIGITS_IMAGES = 1797  # images in scikit-learn's digits
N_DIGITS_CLASSES = 10


def _split_sizes(test_size, train_size) -> tuple[str, float | int]:
    """The one split argument given to :func:`load_digits`, validated: ``("test_size", f)`` or ``("train_size", v)``.

    Both parts of a stratified split need at least one image of each class, so each must hold between 10 and
    1787 of the 1797 images (scikit-learn's rounding: the test part of a fraction ``f`` is ``ceil(f * 1797)``
    images, the training part of a fraction ``f`` is ``floor(f * 1797)``).
    """
    n, low, high = N_DIGITS_IMAGES, N_DIGITS_CLASSES, N_DIGITS_IMAGES - N_DIGITS_CLASSES
    if test_size is not None and train_size is not None:
        raise ValueError("give test_size or train_size, not both (the other part is the rest of the 1797 images)")
    if train_size is None:
        test_size = 0.3 if test_size is None else check_positive(test_size, "test_size")
        if not test_size < 1:
            raise ValueError(f"test_size must be in (0, 1), got {test_size}")
        if not low <= math.ceil(test_size * n) <= high:
            raise ValueError(f"test_size must leave between {low} and {high} of the {n} images in each part "
                             f"(one of each class), got {test_size} ({math.ceil(test_size * n)} test images)")
        return "test_size", test_size
    if isinstance(train_size, bool) or not isinstance(train_size, Real):
        raise TypeError(f"train_size must be an int (a count) or a float in (0, 1) (a fraction), "
                        f"got {type(train_size).__name__}")
    if isinstance(train_size, Integral):
        train_size = int(train_size)
        if not low <= train_size <= high:
            raise ValueError(f"train_size must be a count in [{low}, {high}] (each part needs one image of each "
                             f"class), got {train_size}")
        return "train_size", train_size
    train_size = float(train_size)
    if not 0 < train_size < 1:
        raise ValueError(f"train_size must be in (0, 1) as a fraction (or an int count), got {train_size}")
    if not low <= math.floor(train_size * n) <= high:
        raise ValueError(f"train_size must leave between {low} and {high} of the {n} images in each part "
                         f"(one of each class), got {train_size} ({math.floor(train_size * n)} training images)")
    return "train_size", train_size


def load_digits(
    test_size: float | None = None,
    seed: int = 0,
    normalization: str = "standard",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    train_size: int | float | None = None,
) -> Digits:
    """Load scikit-learn's digits and split them, stratified by class, into train and test sets.

    The 1797 images (174 to 183 of each digit) are 8x8 grey levels, integers from 0 to 16 (each pixel counts the
    set pixels of a 4x4 block of a 32x32 bitmap). The split is scikit-learn's ``train_test_split`` with
    ``stratify`` on the labels, so both parts keep the class proportions, and it is a function of ``seed`` and the
    size only. Give the size as ``test_size`` or as ``train_size``, not both; with neither, 30% is held out
    (1257 training and 540 test images).

    Parameters
    ----------
    test_size : float, optional
        Fraction of the images held out for testing, in (0, 1); the test set has ``ceil(test_size * 1797)``
        images. Default 0.3 when ``train_size`` is not given.
    seed : int, default 0
        Seed of the split, in [0, 2**32) (the same seed and size give the same split); a bool is refused.
    normalization : {"standard", "unit", "none"}, default "standard"
        ``"standard"``: zero mean and unit variance per pixel, with statistics from the training split only (pixels
        constant in training are only centred); ``"unit"``: pixel values divided by 16, so in [0, 1] with both ends
        attained (the range of a sigmoid output, e.g. for a generator); ``"none"``: the raw values 0 to 16.
    device : torch.device or str, default "cpu"
        Device of the returned tensors.
    dtype : torch.dtype, default torch.float32
        Floating-point dtype of the features (the labels are int64).
    train_size : int or float, optional
        Size of the training set instead of ``test_size``: an int is a count of images, in [10, 1787]; a float is
        a fraction in (0, 1), rounded down to ``floor(train_size * 1797)`` images. The rest is the test set.

    Returns
    -------
    Digits
        The split: (N, 64) features and (N,) labels for each part.

    Raises
    ------
    ValueError
        If both ``test_size`` and ``train_size`` are given, if a size is out of range (each part must hold at least
        one image of each class), if ``seed`` is outside [0, 2**32), or if ``normalization`` is not one of the three
        choices.
    TypeError
        If ``train_size`` is neither an int nor a float, ``seed`` is not an int (a bool is refused), or ``dtype`` is
        not a floating-point torch dtype (a numpy dtype such as ``np.float32`` is refused).
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    size_name, size = _split_sizes(test_size, train_size)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    check_choice(normalization, "normalization", NORMALIZATIONS)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch dtype (e.g. torch.float32), got {dtype!r}")

    bunch = _sk_load_digits()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, **{size_name: size}, stratify=y, random_state=seed)
    if normalization == "standard":
        mean, std = x_tr.mean(0), x_tr.std(0)
        std[std == 0] = 1.0  # border pixels that are always 0 in training: centring is all that is meaningful
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    elif normalization == "unit":
        x_tr, x_te = x_tr / 16.0, x_te / 16.0

    def t(a, dt):
        return torch.as_tensor(a, dtype=dt, device=device)

    return Digits(t(x_tr, dtype), t(y_tr, torch.int64), t(x_te, dtype), t(y_te, torch.int64))


@dataclass
class BinaryDigits:
    """A binary task on scikit-learn's digits, "is the digit below ``threshold``?", as returned by
    :func:`load_binary_digits`.

    Parameters
    ----------
    x_train, x_test : torch.Tensor
        (N_train, 64) and (N_test, 64) floating-point features.
    y_train, y_test : torch.Tensor
        (N_train,) and (N_test,) labels in {0., 1.} of the features' dtype, 1 for a digit below ``threshold`` (the
        convention of :func:`kdnb.core.losses.binary_kd_loss`).
    digit_train, digit_test : torch.Tensor
        (N_train,) and (N_test,) int64 original digits in [0, 9].
    threshold : int, default 5
        The digits below it form the positive class, in [1, 9].
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    digit_train: torch.Tensor
    digit_test: torch.Tensor
    threshold: int = 5


def load_binary_digits(
    threshold: int = 5,
    test_size: float | None = None,
    seed: int = 0,
    normalization: str = "standard",
    sphere: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    train_size: int | float | None = None,
) -> BinaryDigits:
    """Digits as a binary task, "is the digit below ``threshold``?" (default 5: 0-4 against 5-9, 901 against 896).

    The split is :func:`load_digits`'s, stratified by the ten digits (so both classes, and every digit within them,
    keep their proportions) and deterministic in ``seed``.

    Parameters
    ----------
    threshold : int, default 5
        Digits below it are the positive class (label 1), in [1, 9].
    test_size : float, optional
        Fraction held out for testing, in (0, 1); default 0.3 when ``train_size`` is not given (see
        :func:`load_digits`).
    seed : int, default 0
        Seed of the split.
    normalization : {"standard", "unit", "none"}, default "standard"
        Pixel normalisation, as in :func:`load_digits` (``"unit"``: values / 16, in [0, 1]).
    sphere : bool, default False
        Scale every normalised image to unit Euclidean length, the input convention of the analytic kernels of
        :mod:`kdnb.papers.wide_network_kd`.
    device : torch.device or str, default "cpu"
        Device of the returned tensors.
    dtype : torch.dtype, default torch.float32
        Floating-point dtype of the features and of the 0/1 labels.
    train_size : int or float, optional
        Training-set size instead of ``test_size``: a count in [10, 1787] or a fraction in (0, 1) (see
        :func:`load_digits`).

    Returns
    -------
    BinaryDigits
        Features, 0/1 labels and original digits of both parts.

    Raises
    ------
    ValueError
        If ``threshold`` is outside [1, 9], if an image has zero norm with ``sphere=True``, or for the bad
        arguments of :func:`load_digits`.
    TypeError
        If ``sphere`` is not a bool, or for the bad argument types of :func:`load_digits`.
    """
    threshold = check_positive_int(threshold, "threshold")
    if not 1 <= threshold <= 9:
        raise ValueError(f"threshold must be in [1, 9] (both classes need digits), got {threshold}")
    sphere = check_bool(sphere, "sphere")
    digits = load_digits(test_size=test_size, seed=seed, normalization=normalization, device=device, dtype=dtype,
                         train_size=train_size)

    def prepare(x):
        if not sphere:
            return x
        norm = x.norm(dim=1, keepdim=True)
        if bool((norm == 0).any()):
            raise ValueError("an image has zero norm after normalization and cannot be put on the sphere")
        return x / norm

    return BinaryDigits(prepare(digits.x_train), (digits.y_train < threshold).to(dtype), prepare(digits.x_test),
                        (digits.y_test < threshold).to(dtype), digits.y_train, digits.y_test, threshold)


def stratified_subset(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``n`` distinct examples with the classes as balanced as possible.

    Each class gets ⌊n/C⌋ or ⌈n/C⌉ examples when it has that many; a class with fewer gives all it has and the rest is
    shared among the others ("water-filling"), so ``n`` equal to the number of examples returns all of them.
    Which classes receive the remainder, and which of their examples are picked, is drawn from ``generator``.

    Parameters
    ----------
    labels : torch.Tensor
        (N,) class labels (any values; each distinct value is a class), on any device.
    n : int
        Number of examples to pick, in [1, N].
    generator : torch.Generator
        CPU generator of the random choices.

    Returns
    -------
    torch.Tensor
        (n,) int64 indices into ``labels``, distinct, in random order, on ``labels``' device.

    Raises
    ------
    TypeError
        If ``labels`` is not a 1-D tensor or ``n`` is not an int.
    ValueError
        If ``n`` is outside [1, N].
    """
    n = check_positive_int(n, "n")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        raise TypeError("labels must be a 1-D torch.Tensor of class indices")
    if n > labels.numel():
        raise ValueError(f"n must be <= the number of examples ({labels.numel()}), got {n}")
    labels_cpu = labels.cpu()
    classes, sizes = torch.unique(labels_cpu, return_counts=True)
    # Water level: the largest L with sum_c min(size_c, L) <= n; every class gets min(size_c, L), and the remainder
    # (fewer than the number of classes larger than L) goes one each to randomly chosen classes larger than L.
    level = 0
    while level < int(sizes.max()) and int(torch.clamp(sizes, max=level + 1).sum()) <= n:
        level += 1
    quota = torch.clamp(sizes, max=level)
    remainder = n - int(quota.sum())
    larger = torch.nonzero(sizes > level).flatten()
    quota[larger[torch.randperm(len(larger), generator=generator)[:remainder]]] += 1
    chosen = []
    for c, k in zip(classes, quota.tolist()):
        members = torch.nonzero(labels_cpu == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:k]])
    picked = torch.cat(chosen)
    return picked[torch.randperm(len(picked), generator=generator)].to(labels.device)


def sample_sphere(n: int, dim: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""Points drawn uniformly on the unit sphere :math:`S^{d-1} \subset \mathbb{R}^d` (normalised Gaussians).

    Parameters
    ----------
    n : int
        Number of points, >= 1.
    dim : int
        Ambient dimension d, >= 2.
    generator : torch.Generator
        CPU generator of the Gaussian draws.
    dtype : torch.dtype, default torch.float64
        Floating-point dtype of the points.

    Returns
    -------
    torch.Tensor
        (n, dim) points of unit Euclidean norm, on the CPU.

    Raises
    ------
    ValueError
        If ``n < 1`` or ``dim < 2``.
    """
    n = check_positive_int(n, "n")
    dim = check_positive_int(dim, "dim", minimum=2)
    g = torch.randn(n, dim, generator=generator, dtype=dtype)
    return g / g.norm(dim=1, keepdim=True)


def points_at_angles(angles, dim: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""Unit vectors at given angles in the plane of the first two basis vectors.

    Row i is :math:`(\cos\theta_i, \sin\theta_i, 0, \dots, 0)`. For θ in [0, π] that is the angle to
    :math:`e_1`, so with :math:`x = e_1` the points trace a dot-product kernel's profile :math:`\kappa(\cos\theta)`.

    Parameters
    ----------
    angles : float, sequence of float or torch.Tensor
        Angles θ in radians (any finite values), flattened to a vector of length K.
    dim : int
        Ambient dimension, >= 2.
    dtype : torch.dtype, default torch.float64
        Floating-point dtype of the result.

    Returns
    -------
    torch.Tensor
        (K, dim) unit vectors.

    Raises
    ------
    ValueError
        If ``dim < 2`` or an angle is not finite.
    """
    dim = check_positive_int(dim, "dim", minimum=2)
    angles = torch.as_tensor(angles, dtype=dtype).reshape(-1)
    if not bool(torch.isfinite(angles).all()):
        raise ValueError("angles must be finite")
    points = torch.zeros(len(angles), dim, dtype=dtype)
    points[:, 0], points[:, 1] = torch.cos(angles), torch.sin(angles)
    return points


class GaussianMixtureOnSphere:
    r"""A smooth random function on the sphere: a standardised sum of Gaussian bumps (Ji & Zhu 2020, Fig. 3).

    .. math:: f(x) = A \cdot \frac{g(x) - m}{s_g}, \qquad
              g(x) = \sum_{k=1}^{K} c_k \exp\!\left(-\frac{\|x - \mu_k\|^2}{2 s^2}\right)

    with centres :math:`\mu_k` uniform on the sphere, signed weights :math:`c_k = \pm(0.5 + U[0,1])`, and ``m``,
    :math:`s_g` the mean and standard deviation of ``g`` over ``n_standardize`` uniform points, so that ``f`` has mean
    0 and standard deviation ``A`` on the sphere. The default width :math:`s = 1/\sqrt{K}` is the book's choice: more
    modes make a harder (less smooth) function.

    Parameters
    ----------
    dim : int
        Dimension d of the ambient space (the sphere is :math:`S^{d-1}`), >= 2.
    n_modes : int
        Number K of Gaussian bumps, >= 1.
    generator : torch.Generator
        CPU generator of the centres, signs, weights and standardisation points, drawn in that order.
    width : float, optional
        Bump width s > 0 (Euclidean distance on the sphere); default :math:`1/\sqrt{K}`.
    amplitude : float, default 3.0
        Standard deviation A > 0 of f over the sphere.
    n_standardize : int, default 20000
        Number of uniform points (>= 2) on which the mean and standard deviation of g are estimated.

    Raises
    ------
    ValueError
        If an argument is out of its range.

    References
    ----------
    Ji, G. and Zhu, Z. (2020). Knowledge distillation in wide neural networks: risk bound, data efficiency and
    imperfect teacher. NeurIPS 2020, Fig. 3.
    """

    def __init__(
        self,
        dim: int,
        n_modes: int,
        generator: torch.Generator,
        width: float | None = None,
        amplitude: float = 3.0,
        n_standardize: int = 20_000,
    ):
        self.dim = check_positive_int(dim, "dim", minimum=2)
        self.n_modes = check_positive_int(n_modes, "n_modes")
        self.width = 1.0 / math.sqrt(self.n_modes) if width is None else check_positive(width, "width")
        self.amplitude = check_positive(amplitude, "amplitude")
        n_standardize = check_positive_int(n_standardize, "n_standardize", minimum=2)
        self.centres = sample_sphere(self.n_modes, self.dim, generator)
        signs = torch.randint(0, 2, (self.n_modes,), generator=generator, dtype=torch.float64) * 2 - 1
        self.weights = signs * (0.5 + torch.rand(self.n_modes, generator=generator, dtype=torch.float64))
        raw = self._raw(sample_sphere(n_standardize, self.dim, generator))
        self.mean, self.std = float(raw.mean()), float(raw.std())

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        sq_dist = torch.cdist(x.to(torch.float64), self.centres).square()
        return torch.exp(-sq_dist / (2 * self.width**2)) @ self.weights

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate f at the rows of ``x``.

        Parameters
        ----------
        x : torch.Tensor
            (N, dim) points, normally on the unit sphere (any floating dtype; computed in float64).

        Returns
        -------
        torch.Tensor
            (N,) float64 values of f.

        Raises
        ------
        ValueError
            If ``x`` is not a tensor of shape (N, dim).
        """
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be a tensor of shape (N, {self.dim})")
        return self.amplitude * (self._raw(x) - self.mean) / self.std

    def __repr__(self) -> str:
        return (f"GaussianMixtureOnSphere(dim={self.dim}, n_modes={self.n_modes}, width={self.width:.3g}, "
                f"amplitude={self.amplitude})")


def flip_signs(values: torch.Tensor, p_flip: float, generator: torch.Generator) -> torch.Tensor:
    """Flip each sign independently with probability ``p_flip``: binary label noise on logits or ±1 labels.

    For multi-class labels use :func:`corrupt_labels`.

    Parameters
    ----------
    values : torch.Tensor
        Floating-point tensor of any shape, finite (logits, or labels in {-1, +1}).
    p_flip : float
        Probability in [0, 1] that an entry's sign is flipped; 0.5 makes the signs random, 1 flips all.
    generator : torch.Generator
        CPU generator; one uniform number is drawn per entry of ``values``.

    Returns
    -------
    torch.Tensor
        ``values`` with the drawn entries negated, same shape, dtype and device.

    Raises
    ------
    TypeError
        If ``values`` is not a floating-point tensor.
    ValueError
        If ``values`` has a non-finite entry or ``p_flip`` is outside [0, 1].
    """
    values = check_finite_tensor(values, "values")
    p_flip = check_in_unit_interval(p_flip, "p_flip")
    flips = torch.rand(values.shape, generator=generator, dtype=torch.float64).to(values.device) < p_flip
    return torch.where(flips, -values, values)


NOISE_MODES = ("symmetric", "pair")


def corrupt_labels(
    labels: torch.Tensor, p: float, n_classes: int, generator: torch.Generator, mode: str = "symmetric"
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Multi-class label noise: each label is changed, with probability ``p``, to a *different* class.

    ``p`` is the flip probability, the probability that a label changes, so the expected fraction of wrong labels is
    ``p``. (Another common convention, "replace the label with a class drawn uniformly from all C", changes a label
    only with probability :math:`p' (C-1)/C`; its :math:`p'` is :math:`p = p' (C-1)/C` here.)

    * ``mode="symmetric"``: a changed label becomes one of the other :math:`C-1` classes uniformly at random, so the
      noisy label equals the true one with probability :math:`1-p` and each other class with :math:`p/(C-1)`;
    * ``mode="pair"``: a changed label becomes the next class, :math:`(y + 1) \bmod C` (pair-flip noise).

    Two draws are made per label, in this order whatever the mode or ``p``: a uniform number in [0, 1) that flips the
    label when it is below ``p``, then an offset in [1, C-1] (used by ``"symmetric"``: the new label is
    :math:`(y + \mathrm{offset}) \bmod C`). So one generator state gives the same flip mask in both modes, and the
    flips at a smaller ``p`` are a subset of those at a larger one.

    Parameters
    ----------
    labels : torch.Tensor
        (N,) integer class labels in [0, n_classes), on any device.
    p : float
        Flip probability, in [0, 1].
    n_classes : int
        Number of classes C, >= 2.
    generator : torch.Generator
        CPU generator of the draws.
    mode : {"symmetric", "pair"}, default "symmetric"
        Where a changed label goes.

    Returns
    -------
    noisy : torch.Tensor
        (N,) labels of ``labels``' dtype and device, different from ``labels`` exactly where ``flipped`` is True.
    flipped : torch.Tensor
        (N,) bool mask of the changed entries, on ``labels``' device.

    Raises
    ------
    TypeError
        If ``labels`` is not a 1-D integer tensor, ``n_classes`` not an int or ``generator`` not a torch.Generator.
    ValueError
        If ``p`` is outside [0, 1], ``n_classes < 2``, ``n_classes - 1`` exceeds the largest value of ``labels``'
        dtype (a noisy label could not be stored in it), a label lies outside [0, n_classes), or ``mode`` is unknown.
    """
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        raise TypeError("labels must be a 1-D torch.Tensor of class indices")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class indices, got dtype {labels.dtype}")
    p = check_in_unit_interval(p, "p")
    n_classes = check_positive_int(n_classes, "n_classes", minimum=2)
    if n_classes - 1 > torch.iinfo(labels.dtype).max:
        raise ValueError(f"n_classes must be <= {torch.iinfo(labels.dtype).max + 1} for labels of dtype {labels.dtype} "
                         f"(the noisy labels keep that dtype), got {n_classes}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    check_choice(mode, "mode", NOISE_MODES)
    labels_cpu = labels.cpu().long()
    if labels_cpu.numel() and (int(labels_cpu.min()) < 0 or int(labels_cpu.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got values in "
                         f"[{int(labels_cpu.min())}, {int(labels_cpu.max())}]")
    n = labels_cpu.numel()
    flipped = torch.rand(n, generator=generator, dtype=torch.float64) < p
    offsets = torch.randint(1, n_classes, (n,), generator=generator)
    if mode == "pair":
        offsets = torch.ones_like(offsets)
    noisy = torch.where(flipped, (labels_cpu + offsets) % n_classes, labels_cpu)
    return noisy.to(device=labels.device, dtype=labels.dtype), flipped.to(labels.device)
