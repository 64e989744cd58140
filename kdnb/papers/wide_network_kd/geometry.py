r"""Geometry and risk of a wide student (Ji & Zhu 2020): transfer risk, the accumulative angle distribution
(Theorem 1) and data inefficiency (Definition 1)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ...core.validation import check_finite_tensor, check_positive, check_positive_int

__all__ = ["accumulative_angle_distribution", "boundary_angles", "data_inefficiency", "transfer_risk"]


def transfer_risk(student_logits: torch.Tensor, oracle_logits: torch.Tensor) -> torch.Tensor:
    r"""Transfer risk :math:`R = P_x[\mathrm{sign}\, f_s(x) \ne \mathrm{sign}\, z_*(x)]`, estimated on test points.

    The fraction of test points (rows) where the student's and the oracle's logits have different signs (a logit
    counts as positive when > 0).

    Parameters
    ----------
    student_logits : torch.Tensor
        :math:`f_s(x)` at M >= 1 test points, (M,) or (M, k) (k students, e.g. one per soft ratio), finite.
    oracle_logits : torch.Tensor
        :math:`z_*(x)` at the same points, the shape of ``student_logits``, finite.

    Returns
    -------
    torch.Tensor
        Float64 in [0, 1]: a scalar for (M,) inputs, one risk per column, (k,), for (M, k) inputs.

    Raises
    ------
    TypeError
        If an argument is not a floating-point tensor.
    ValueError
        If the logits are not finite, or not of the same shape (M,) or (M, k) with M >= 1.

    References
    ----------
    Ji & Zhu 2020, Theorem 1 (the transfer risk it bounds).
    """
    s = check_finite_tensor(student_logits, "student_logits")
    o = check_finite_tensor(oracle_logits, "oracle_logits").to(s.device)
    if s.shape != o.shape or s.ndim not in (1, 2) or s.shape[0] == 0:
        raise ValueError(f"student_logits and oracle_logits must have the same shape (M,) or (M, k), got "
                         f"{tuple(s.shape)} and {tuple(o.shape)}")
    return ((s > 0) != (o > 0)).to(torch.float64).mean(0)


def boundary_angles(oracle_logits: torch.Tensor, kernel_diagonal: torch.Tensor,
                    oracle_norm: torch.Tensor | float) -> torch.Tensor:
    r"""Angular distance from each feature vector :math:`\phi(x)` to the oracle's decision hyperplane :math:`v^\perp`.

    :math:`|\pi/2 - \angle(\phi(x), v)| = \arcsin\big(|z_*(x)| / (\sqrt{\Theta(x,x)}\,\|v\|)\big)`, using
    :math:`\langle\phi(x), v\rangle = z_*(x)` and :math:`\|\phi(x)\|^2 = \Theta(x, x)`. By Cauchy-Schwarz the sine
    is at most 1 when :math:`z_*` is the oracle's own prediction; a larger value means the logits and the norm do not
    belong to one weight vector, and raises.

    Parameters
    ----------
    oracle_logits : torch.Tensor
        :math:`z_*(x)` at M points, (M,) or (M, k), finite: the oracle (proxy)'s own predictions.
    kernel_diagonal : torch.Tensor
        :math:`\Theta(x, x)` at the same points, (M,), finite and > 0.
    oracle_norm : torch.Tensor or float
        :math:`\|v\|`, finite and > 0: a number, or (k,) (one per column) for (M, k) logits.

    Returns
    -------
    torch.Tensor
        The angles in radians, in :math:`[0, \pi/2]`, float64, the shape of ``oracle_logits``.

    Raises
    ------
    TypeError
        If ``oracle_logits`` or ``kernel_diagonal`` is not a floating-point tensor.
    ValueError
        If an input is not finite, ``kernel_diagonal`` is not (M,) with positive entries, ``oracle_norm`` has
        another shape or is not positive, or :math:`|z_*(x)| / (\sqrt{\Theta(x,x)}\,\|v\|)` exceeds 1 (by more
        than 1e-9).

    References
    ----------
    Ji & Zhu 2020, Theorem 1 (the angle distribution of the features about the oracle's hyperplane).
    """
    z = check_finite_tensor(oracle_logits, "oracle_logits").to(torch.float64)
    diag = check_finite_tensor(kernel_diagonal, "kernel_diagonal").to(z.device, torch.float64)
    norm = torch.as_tensor(oracle_norm, dtype=torch.float64, device=z.device)
    if diag.shape != z.shape[:1] or bool((diag <= 0).any()):
        raise ValueError(f"kernel_diagonal must be ({z.shape[0]},) with positive entries Θ(x, x)")
    allowed = [()] if z.ndim == 1 else [(), (z.shape[1],)]
    if tuple(norm.shape) not in allowed:
        per_column = "" if z.ndim == 1 else f" or ({z.shape[1]},), one per column"
        raise ValueError(f"oracle_norm must be a number{per_column}, got shape {tuple(norm.shape)}")
    if not bool(torch.isfinite(norm).all()) or bool((norm <= 0).any()):
        raise ValueError("oracle_norm must be positive and finite")
    sine = z.abs() / (diag.sqrt()[:, None] if z.ndim == 2 else diag.sqrt()) / norm
    if float(sine.max()) > 1 + 1e-9:
        raise ValueError(f"|oracle_logits| / (sqrt(Θ(x,x)) ||v||) reaches {float(sine.max()):.3g} > 1: the logits are "
                         f"not those of a weight vector with norm oracle_norm (use the oracle proxy's own predictions)")
    return torch.arcsin(sine.clamp(max=1.0))


def accumulative_angle_distribution(angles: torch.Tensor, beta) -> torch.Tensor:
    r"""The accumulative angle distribution :math:`p(\beta) = P_x[\,|\pi/2 - \angle(\phi(x), v)| \le \beta\,]`.

    The empirical CDF of :func:`boundary_angles` at ``beta`` (Ji & Zhu 2020, Theorem 1).

    Parameters
    ----------
    angles : torch.Tensor
        Angles from :func:`boundary_angles`, (M,) or (M, k), floating point and finite.
    beta : float or torch.Tensor
        A number or a tensor of angles in radians, finite. A (k,) ``beta`` with (M, k) angles is read as one angle
        per column.

    Returns
    -------
    torch.Tensor
        Float64 in [0, 1]: ``beta``'s shape, with a trailing k axis for (M, k) angles; (k,) for a (k,) ``beta``
        read per column.

    Raises
    ------
    TypeError
        If ``angles`` is not a floating-point tensor.
    ValueError
        If ``angles`` or ``beta`` is not finite.

    References
    ----------
    Ji & Zhu 2020, Theorem 1.
    """
    angles = check_finite_tensor(angles, "angles").to(torch.float64)
    beta = torch.as_tensor(beta, dtype=torch.float64, device=angles.device)
    if not bool(torch.isfinite(beta).all()):
        raise ValueError("beta must be finite")
    if angles.ndim == 2 and beta.ndim == 1 and beta.shape[0] == angles.shape[1]:
        return (angles <= beta[None, :]).to(torch.float64).mean(0)
    flat = beta.reshape(-1)
    if angles.ndim == 1:
        return (angles[None, :] <= flat[:, None]).to(torch.float64).mean(1).reshape(beta.shape)
    cdf = (angles[None, :, :] <= flat[:, None, None]).to(torch.float64).mean(1)
    return cdf.reshape(*beta.shape, angles.shape[1])


# ---------------------------------------------------------------------------------------------------------------------
# Data inefficiency
# ---------------------------------------------------------------------------------------------------------------------


def data_inefficiency(norms: torch.Tensor, n, *, window: float | None = math.sqrt(2)) -> torch.Tensor:
    r"""Data inefficiency :math:`I(n) = n\, \mathbb E[\ln\|\Delta\hat w_{n+1}\| - \ln\|\Delta\hat w_n\|]`.

    Ji & Zhu 2020, Definition 1: the local slope of :math:`\mathbb E \ln\|\Delta\hat w_n\|` against
    :math:`\ln n`.

    ``norms`` are prefix norms (from :meth:`NestedKernelRegression.norms`) stacked over independent repeats:
    (R, N) or (R, N, k), entry ``[r, n - 1]`` for n points. The expectation is the mean of the logarithms over the R
    repeats. With ``window`` = c > 1 (default √2) the estimator is the slope between :math:`n_- = \mathrm{round}(n/c)`
    and :math:`n_+ = \mathrm{round}(cn)`,

    .. math:: \hat I(n) = \frac{\mathbb E \ln\|\Delta\hat w_{n_+}\| - \mathbb E \ln\|\Delta\hat w_{n_-}\|}
                              {\ln(n_+/n_-)},

    which is exact for a power law and far less noisy than ``window=None``, the one-step definition.

    Parameters
    ----------
    norms : torch.Tensor
        Prefix norms, (R, N) or (R, N, k) with R >= 1 repeats and N >= 2, positive and finite.
    n : int or sequence of int
        The sample size(s) n >= 1 at which I is estimated; each needs prefix norms up to :math:`n_+` (n + 1 for
        ``window=None``) <= N points.
    window : float or None, default sqrt(2)
        The factor c > 1 of the windowed estimator; ``None``: the one-step definition.

    Returns
    -------
    torch.Tensor
        Float64: (len(n),) or (len(n), k); for an int ``n``, a scalar for (R, N) norms and (k,) for (R, N, k).

    Raises
    ------
    TypeError
        If ``norms`` is not a floating-point tensor, an ``n`` is not an int, or ``window`` is not a real number.
    ValueError
        If ``norms`` is not (R, N) or (R, N, k) with N >= 2 and positive finite entries, ``n`` is empty or < 1,
        ``window`` <= 1, or an n needs more than N points.

    References
    ----------
    Ji & Zhu 2020, Definition 1.
    """
    norms = check_finite_tensor(norms, "norms").to(torch.float64)
    if norms.ndim not in (2, 3) or norms.shape[0] == 0 or norms.shape[1] < 2:
        raise ValueError(f"norms must be (R, N) or (R, N, k) prefix norms with N >= 2, got {tuple(norms.shape)}")
    if bool((norms <= 0).any()):
        raise ValueError("norms must be positive (their logarithms are taken)")
    scalar = not isinstance(n, (Sequence, torch.Tensor))
    sizes = [n] if scalar else (n.tolist() if isinstance(n, torch.Tensor) else list(n))
    sizes = [check_positive_int(m, "n") for m in sizes]
    if not sizes:
        raise ValueError("n must be an int or a non-empty sequence of ints")
    mean_log = norms.log().mean(0)  # (N,) or (N, k), entry n - 1 for n points
    big_n = norms.shape[1]
    values = []
    for m in sizes:
        if window is None:
            lo, hi = m, m + 1
        else:
            window = check_positive(window, "window")
            if window <= 1:
                raise ValueError(f"window must be > 1 (or None for the one-step estimator), got {window}")
            lo, hi = max(1, round(m / window)), round(m * window)
            if hi == lo:
                hi = lo + 1
        if hi > big_n:
            raise ValueError(f"n = {m} needs prefix norms up to {hi} points, but norms have only N = {big_n}")
        if window is None:  # Definition 1 as written: n times the one-step increment
            values.append(m * (mean_log[hi - 1] - mean_log[lo - 1]))
        else:
            values.append((mean_log[hi - 1] - mean_log[lo - 1]) / math.log(hi / lo))
    out = torch.stack(values)
    return out[0] if scalar else out

