r"""Datasets: scikit-learn's digits (real, offline) and synthetic functions on the sphere.

Nothing here downloads anything. ``load_digits`` ships 1797 8x8 grey images of the digits 0-9 inside scikit-learn.

Randomness is always drawn from an explicit ``torch.Generator`` or integer ``seed``, never from global state, so a
chapter's data do not depend on what ran before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .validation import check_choice, check_finite_tensor, check_in_unit_interval, check_positive, check_positive_int

__all__ = [
    "BinaryDigits",
    "Digits",
    "GaussianMixtureOnSphere",
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
    """A stratified split of scikit-learn's digits. ``x_*`` are (N, 64) features, ``y_*`` (N,) int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int = 10
    image_shape: tuple[int, int] = (8, 8)

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Reshape (N, 64) features to (N, 1, 8, 8) images for a CNN."""
        return x.reshape(-1, 1, *self.image_shape)

    def to(self, device: torch.device | str) -> "Digits":
        return Digits(*(t.to(device) for t in (self.x_train, self.y_train, self.x_test, self.y_test)),
                      n_classes=self.n_classes, image_shape=self.image_shape)


def load_digits(
    test_size: float = 0.3,
    seed: int = 0,
    normalization: str = "standard",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Digits:
    """Load scikit-learn's digits and split them, stratified by class, into train and test sets.

    Parameters
    ----------
    test_size : fraction of the 1797 images held out, in (0, 1).
    seed : seed of the split (the same seed gives the same split).
    normalization : ``"standard"`` (zero mean and unit variance per pixel, statistics from the training split only;
        pixels that are constant in training are only centred), ``"unit"`` (pixel values / 16, in [0, 1]) or ``"none"``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    test_size = check_positive(test_size, "test_size")
    if not test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    check_choice(normalization, "normalization", NORMALIZATIONS)
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch dtype, got {dtype}")

    bunch = _sk_load_digits()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)
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
    """A binary task on scikit-learn's digits: ``y = 1`` for digits below ``threshold``. ``x_*`` are (N, 64) features,
    ``y_*`` (N,) float labels in {0, 1} (the convention of :func:`kdnb.core.losses.binary_kd_loss`), ``digit_*`` the
    original classes."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    digit_train: torch.Tensor
    digit_test: torch.Tensor
    threshold: int = 5


def load_binary_digits(
    threshold: int = 5,
    test_size: float = 0.3,
    seed: int = 0,
    normalization: str = "standard",
    sphere: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> BinaryDigits:
    """Digits as a binary task, "is the digit below ``threshold``?" (default 5: 0-4 against 5-9, 901 against 896).

    The split is :func:`load_digits`'s, stratified by the ten digits (so both classes, and every digit within them,
    keep their proportions) and deterministic in ``seed``. With ``sphere=True`` every normalised image is scaled to
    unit length, the input convention of the analytic kernels of :mod:`kdnb.papers.wide_network_kd`.
    """
    threshold = check_positive_int(threshold, "threshold")
    if not 1 <= threshold <= 9:
        raise ValueError(f"threshold must be in [1, 9] (both classes need digits), got {threshold}")
    digits = load_digits(test_size=test_size, seed=seed, normalization=normalization, device=device, dtype=dtype)

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
    """``n`` points drawn uniformly on the unit sphere :math:`S^{d-1} \\subset \\mathbb{R}^d` (normalised Gaussians)."""
    n = check_positive_int(n, "n")
    dim = check_positive_int(dim, "dim", minimum=2)
    g = torch.randn(n, dim, generator=generator, dtype=dtype)
    return g / g.norm(dim=1, keepdim=True)


def points_at_angles(angles, dim: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""Unit vectors in R^dim at the given angles (radians) in the plane of the first two basis vectors: rows
    :math:`(\cos\theta, \sin\theta, 0, \dots)`. For θ in [0, π] that is the angle to :math:`e_1`, so with
    :math:`x = e_1` they trace a dot-product kernel's profile :math:`\kappa(\cos\theta)`."""
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
    0 and standard deviation ``A`` on the sphere. The default width :math:`s = 1/\sqrt{K}` makes more modes mean a
    harder (less smooth) function (see ``shared/papers/ji-zhu-2020-kd-wide-networks.md``).
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
        """Evaluate f at the rows of ``x`` (shape (N, dim)); returns (N,) float64."""
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be a tensor of shape (N, {self.dim})")
        return self.amplitude * (self._raw(x) - self.mean) / self.std

    def __repr__(self) -> str:
        return (f"GaussianMixtureOnSphere(dim={self.dim}, n_modes={self.n_modes}, width={self.width:.3g}, "
                f"amplitude={self.amplitude})")


def flip_signs(values: torch.Tensor, p_flip: float, generator: torch.Generator) -> torch.Tensor:
    """``values`` with each sign flipped independently with probability ``p_flip`` in [0, 1] (binary label noise on
    logits or ±1 labels; ``p_flip = 0.5`` makes the signs random)."""
    values = check_finite_tensor(values, "values")
    p_flip = check_in_unit_interval(p_flip, "p_flip")
    flips = torch.rand(values.shape, generator=generator, dtype=torch.float64).to(values.device) < p_flip
    return torch.where(flips, -values, values)
