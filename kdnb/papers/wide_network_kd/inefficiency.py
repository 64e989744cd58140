r"""Data inefficiency (Ji & Zhu 2020, Definition 1): per-repeat estimates, the angle identity, and reference levels.

:func:`~kdnb.papers.wide_network_kd.geometry.data_inefficiency` estimates :math:`I(n)` from the mean over repeats.
This module adds what a chapter needs to judge those estimates:

* :func:`per_repeat_inefficiency`: the same estimator on each repeat alone, for bootstrap intervals over repeats
  (the estimator is linear in the mean of the logarithms, so the mean of these is the pooled estimate);
* :func:`log_cosine_sum`: :math:`\sum_{k=n}^{N-1} I(k)/k` with the one-step definition, which telescopes to
  :math:`-\mathbb E \ln\cos\bar\alpha_n` when the oracle is the student on all N nested points;
* :func:`random_label_level`: the book's spectral prediction :math:`d/(2(d-1))` for random labels on
  :math:`S^{d-1}`;
* :func:`label_smoothing_spread`: how far an effective target is from a constant-magnitude (label-smoothed) one;
* :func:`least_favourable`: among several per-repeat statistics, the one whose bootstrap interval is worst for a
  bound, so that a "for every cell" statement is decided on an interval.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...core.claims import bootstrap_interval
from ...core.validation import check_finite_tensor, check_positive_int
from .geometry import data_inefficiency

__all__ = ["label_smoothing_spread", "least_favourable", "log_cosine_sum", "per_repeat_inefficiency",
           "random_label_level"]


def per_repeat_inefficiency(norms: torch.Tensor, n, *, window: float | None = math.sqrt(2)) -> torch.Tensor:
    r"""The data-inefficiency estimate of each repeat alone.

    Parameters
    ----------
    norms : torch.Tensor
        Prefix norms, (R, N) or (R, N, k), as for :func:`~kdnb.papers.wide_network_kd.geometry.data_inefficiency`.
    n : int or sequence of int
        The sample sizes n >= 1 (as there).
    window : float or None, default sqrt(2)
        The window factor c > 1, or ``None`` for the one-step definition (as there).

    Returns
    -------
    torch.Tensor
        Float64, (R,) + the shape :func:`data_inefficiency` returns for one repeat: entry r is the estimate from
        repeat r only. Their mean over r equals the pooled estimate from all repeats (to rounding).

    Raises
    ------
    TypeError, ValueError
        As :func:`~kdnb.papers.wide_network_kd.geometry.data_inefficiency`.

    References
    ----------
    Ji & Zhu 2020, Definition 1.
    """
    norms = check_finite_tensor(norms, "norms")
    if norms.ndim not in (2, 3) or norms.shape[0] == 0:
        raise ValueError(f"norms must be (R, N) or (R, N, k) prefix norms, got {tuple(norms.shape)}")
    return torch.stack([data_inefficiency(norms[r:r + 1], n, window=window) for r in range(norms.shape[0])])


def log_cosine_sum(norms: torch.Tensor, n) -> torch.Tensor:
    r"""The right side :math:`\sum_{k=n}^{N-1} I(k)/k` of the angle identity, with the one-step :math:`I(k)`.

    With nested samples the student on all N points plays the oracle, :math:`\cos\bar\alpha_n =
    \|\Delta\hat w_n\| / \|\Delta\hat w_N\|` (projection), and Definition 1's one-step
    :math:`I(k) = k\,\mathbb E[\ln\|\Delta\hat w_{k+1}\| - \ln\|\Delta\hat w_k\|]` telescopes:

    .. math:: \sum_{k=n}^{N-1} \frac{I(k)}{k} = \mathbb E\ln\|\Delta\hat w_N\| - \mathbb E\ln\|\Delta\hat w_n\|
              = -\mathbb E \ln\cos\bar\alpha_n ,

    the discrete form of :math:`-\mathbb E\ln\cos\bar\alpha_n = \sum_{k \ge n} I(k)/k`. The sum is computed from
    :func:`~kdnb.papers.wide_network_kd.geometry.data_inefficiency` term by term (not by cancelling), so comparing
    it with angles computed from inner products checks the prefix norms and the definition together.

    Parameters
    ----------
    norms : torch.Tensor
        Prefix norms (R, N) or (R, N, k), positive and finite.
    n : int or sequence of int
        The sample sizes, each in [1, N - 1].

    Returns
    -------
    torch.Tensor
        Float64, (len(n),) or (len(n), k); for an int ``n``, a scalar or (k,).

    Raises
    ------
    TypeError, ValueError
        If an n is not an int in [1, N - 1], or as :func:`data_inefficiency` for ``norms``.

    References
    ----------
    Ji & Zhu 2020, Definition 1; the identity is the book's derivation.
    """
    norms = check_finite_tensor(norms, "norms")
    if norms.ndim not in (2, 3) or norms.shape[1] < 2:
        raise ValueError(f"norms must be (R, N) or (R, N, k) prefix norms with N >= 2, got {tuple(norms.shape)}")
    big_n = norms.shape[1]
    scalar = not isinstance(n, (list, tuple, range, torch.Tensor, np.ndarray))
    sizes = [n] if scalar else (n.tolist() if isinstance(n, (torch.Tensor, np.ndarray)) else list(n))
    sizes = [check_positive_int(m, "n") for m in sizes]
    if not sizes:
        raise ValueError("n must be an int or a non-empty sequence of ints")
    if max(sizes) > big_n - 1:
        raise ValueError(f"every n must be <= N - 1 = {big_n - 1} (the oracle is the student on all N points), "
                         f"got {max(sizes)}")
    ks = list(range(min(sizes), big_n))
    terms = data_inefficiency(norms, ks, window=None)  # (len(ks),) or (len(ks), k): one-step I(k)
    terms = terms / torch.tensor(ks, dtype=torch.float64).reshape((-1,) + (1,) * (terms.ndim - 1))
    tail = terms.flip(0).cumsum(0).flip(0)  # tail[i] = sum over k >= ks[i]
    out = torch.stack([tail[m - ks[0]] for m in sizes])
    return out[0] if scalar else out


def random_label_level(dim: int) -> float:
    r"""The book's prediction :math:`d/(2(d-1))` of :math:`I(n)` for random labels on :math:`S^{d-1}`.

    For independent labels of variance :math:`\sigma^2`, :math:`\mathbb E\|\Delta\hat w_n\|^2 = \sigma^2
    \operatorname{tr} K_n^{-1}`. The ReLU NTK's Mercer eigenvalues on :math:`S^{d-1}` decay like
    :math:`j^{-d/(d-1)}` in their index j (Bietti & Mairal 2019), so :math:`\operatorname{tr} K_n^{-1}` grows like
    :math:`n^{d/(d-1)}` and the norm's log-slope tends to :math:`d/(2(d-1))`: 0.75 on :math:`S^2`. A heuristic for
    large n, not an identity: finite n and the step from :math:`\ln\mathbb E` to :math:`\mathbb E\ln` move it.

    Parameters
    ----------
    dim : int
        d >= 2, the ambient dimension.

    Returns
    -------
    float
        :math:`d/(2(d-1))`.

    Raises
    ------
    TypeError, ValueError
        If ``dim`` is not an int >= 2.
    """
    dim = check_positive_int(dim, "dim", minimum=2)
    return dim / (2 * (dim - 1))


def label_smoothing_spread(effective_logits: torch.Tensor) -> torch.Tensor:
    r"""Coefficient of variation of :math:`|z_\mathrm{eff}|` over points: 0 for a label-smoothed target.

    Label smoothing gives every point of a class the same logit, :math:`\pm c`, so :math:`|z|` is constant. The
    spread :math:`\mathrm{std}(|z|)/\mathrm{mean}(|z|)` (population standard deviation) measures how far a target is
    from that.

    Parameters
    ----------
    effective_logits : torch.Tensor
        (G,) or (G, k) logits over G >= 2 points, finite, not all zero in a column.

    Returns
    -------
    torch.Tensor
        Float64, a scalar or (k,).

    Raises
    ------
    TypeError, ValueError
        If the tensor is not floating point, not 1-D or 2-D with G >= 2, not finite, or a column is all zero.

    References
    ----------
    Ji & Zhu 2020, Fig. 4 (left) caption: small ρ looks like label smoothing.
    """
    z = check_finite_tensor(effective_logits, "effective_logits").to(torch.float64)
    if z.ndim not in (1, 2) or z.shape[0] < 2:
        raise ValueError(f"effective_logits must be (G,) or (G, k) with G >= 2, got {tuple(z.shape)}")
    magnitude = z.abs()
    mean = magnitude.mean(0)
    if bool((mean == 0).any()):
        raise ValueError("effective_logits has a column that is all zero (no spread relative to nothing)")
    return magnitude.std(0, correction=0) / mean


def least_favourable(samples, *, low: float | None = None, high: float | None = None) -> int:
    r"""The column of per-repeat samples whose 95% bootstrap interval is worst for a bound.

    For a statement "for every cell, the mean is >= ``low``" (or <= ``high``) decided on intervals, the cell to
    report is the one whose interval reaches lowest (highest): if it satisfies the bound, every cell does.

    Parameters
    ----------
    samples : array-like
        (R, m) per-repeat values of m cells, R >= 2, finite.
    low, high : float, optional
        Exactly one: the lower or the upper bound of the statement.

    Returns
    -------
    int
        The column index: the smallest interval lower end for ``low``, the largest upper end for ``high``.

    Raises
    ------
    TypeError, ValueError
        If ``samples`` is not (R, m) with R >= 2, m >= 1 and finite values, or not exactly one bound is given.
    """
    if (low is None) == (high is None):
        raise ValueError("give exactly one of low and high")
    array = np.asarray(samples.numpy() if isinstance(samples, torch.Tensor) else samples, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1:
        raise ValueError(f"samples must be (R, m) with R >= 2 repeats and m >= 1 cells, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("samples must be finite")
    intervals = [bootstrap_interval(array[:, j]) for j in range(array.shape[1])]
    if low is not None:
        return int(np.argmin([lo for lo, _ in intervals]))
    return int(np.argmax([hi for _, hi in intervals]))
