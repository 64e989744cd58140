"""Şimşek, Bendjeddou, Gerstner and Brea (2023), Should Under-parameterized Student Networks Copy or Average Teacher
Weights?, Advances in Neural Information Processing Systems 36 (NeurIPS 2023); chapter 11 (``11_copy_or_average``).

A student of ``n`` neurons, ``f(x) = Σ_i a_i σ(w_i·x)``, fits a teacher of ``k > n`` neurons,
``f*(x) = Σ_j b_j σ(v_j·x)``, under standard Gaussian inputs ``x ~ N(0, I_d)``, without biases. The population loss
``L = E[(f − f*)²]`` has a closed form through the interaction function ``g(w, v) = E[σ(w·x) σ(v·x)]``, so the whole
landscape is studied exactly, in float64, with numpy and scipy: the loss, its gradient and (for erf) its Hessian are
analytic; torch differentiates the closed form only for the ReLU Hessian.

Conventions
-----------
* **Activation.** ``"erf"`` is ``σ(x) = erf(c·x)`` with ``c = erf_scale``; the default ``c = 1/√2`` is the
  convention of the authors' group's library MLPGradientFlow.jl (its ``sigmoid2``), ``c = 1`` is plain erf. For
  ``σ(x) = erf(c x)``, ``g(w, v) = (2/π) arcsin(2c² w·v / √((1 + 2c²‖w‖²)(1 + 2c²‖v‖²)))``. ``"relu"`` is
  ``max(0, x)``, with the arc-cosine form ``g = ‖w‖‖v‖ (√(1 − u²) + (π − arccos u) u) / (2π)``, ``u = cos∠(w, v)``.
* **Loss.** ``E[(f − f*)²]`` by default (the library's ``:mse``); ``half=True`` gives ``½ E[(f − f*)²]``. The paper's
  own scaling and normalisation are not known to the book: both are switches.
* **Shapes.** Student ``W`` is ``(n, d)``, ``a`` is ``(n,)``; teacher ``V`` is ``(k, d)``, ``b`` is ``(k,)``. A
  parameter vector ``theta`` is ``W.ravel()`` followed by ``a``.
* **Copy-average (CA) points** (the paper's main construction): the teacher neurons are split into groups; a student
  attached to a group ``G`` of ``m`` orthonormal teacher neurons with unit outgoing weights has
  ``w = Σ_{j∈G} v_j / √(m(2m − 1))`` and ``a = m`` (``m = 1`` copies, ``m > 1`` averages). With the default scale the
  one-neuron optimum along an average is ``r*² = 1/(2m − 1)`` and ``L*(m) = m/3 − (2m²/π) arcsin(1/(2m))``; these
  closed forms are derived in the book (chapter 11) and checked there against numerical optimisation.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kdnb.core.validation import check_choice, check_positive, check_positive_int

__all__ = [
    "DEFAULT_ERF_SCALE",
    "FitResult",
    "SolutionClass",
    "average_loss_remainder",
    "ca_loss",
    "classify_solution",
    "copy_average_config",
    "fit_student",
    "interaction",
    "monte_carlo_loss",
    "optimal_average_loss",
    "optimal_average_norm",
    "optimal_partition",
    "orthonormal_teacher",
    "partitions",
    "population_gradient",
    "population_hessian",
    "population_loss",
    "relu_single_neuron_loss",
]

DEFAULT_ERF_SCALE = 1 / math.sqrt(2)
"""The default ``c`` of ``σ(x) = erf(c x)``: ``erf(x/√2)``, MLPGradientFlow.jl's ``sigmoid2``."""

ACTIVATIONS = ("erf", "relu")
METHODS = ("lbfgs", "bfgs", "gd", "flow")
# Rounding can push a cosine or an arcsin argument a few ulps past ±1; only that much is clipped.
_ROUNDING = 1e-12


# --------------------------------------------------------------------------------------------------------------------
# validation


def _matrix(value, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (neurons, input dimension), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite; it has {int((~np.isfinite(array)).sum())} non-finite entries")
    return array


def _vector(value, name: str, length: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 1 or array.size != length:
        raise ValueError(f"{name} must be a 1-D array of length {length} (one outgoing weight per neuron), got shape "
                         f"{array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite; it has {int((~np.isfinite(array)).sum())} non-finite entries")
    return array


def _network(W, a, V, b):
    W, V = _matrix(W, "W"), _matrix(V, "V")
    if W.shape[1] != V.shape[1]:
        raise ValueError(f"W and V must have the same input dimension, got W {W.shape} and V {V.shape}")
    return W, _vector(a, "a", W.shape[0]), V, _vector(b, "b", V.shape[0])


def _activation(activation: str, erf_scale) -> tuple[str, float]:
    activation = check_choice(activation, "activation", ACTIVATIONS)
    return activation, check_positive(erf_scale, "erf_scale")


def _check_default_scale(erf_scale) -> None:
    scale = check_positive(erf_scale, "erf_scale")
    if not math.isclose(scale, DEFAULT_ERF_SCALE, rel_tol=1e-15):
        raise ValueError(f"erf_scale must be 1/√2 (σ(x) = erf(x/√2)) for this closed form, got {scale!r}; the closed "
                         "forms of the other scales are not derived here")


# --------------------------------------------------------------------------------------------------------------------
# the interaction function and the exact loss


def interaction(W1, W2, activation: str = "erf", erf_scale: float = DEFAULT_ERF_SCALE) -> np.ndarray:
    r"""The Gaussian-input interaction ``g(w, v) = E_x[σ(w·x) σ(v·x)]`` for every pair of rows, in closed form.

    For ``σ(x) = erf(c x)`` (Williams 1997):

    .. math:: g(w, v) = \frac{2}{\pi} \arcsin \frac{2c^2\, w\cdot v}{\sqrt{(1 + 2c^2\|w\|^2)(1 + 2c^2\|v\|^2)}},

    and for ReLU the arc-cosine form (Cho & Saul 2009)
    :math:`g = \|w\|\|v\| (\sqrt{1 - u^2} + (\pi - \arccos u)\,u) / (2\pi)`, :math:`u = \cos\angle(w, v)` (0 when
    either vector is 0). Only rounding error (``1e-12``) is clipped before the arcsin or arccos.

    Parameters
    ----------
    W1 : array_like, shape (n1, d)
        Incoming weight vectors, one per row, finite.
    W2 : array_like, shape (n2, d)
        Incoming weight vectors, one per row, finite, of the same dimension ``d``.
    activation : {"erf", "relu"}, default "erf"
        The activation σ.
    erf_scale : float, default 1/√2
        ``c`` in ``σ(x) = erf(c x)``, > 0; ignored for ReLU. ``1/√2`` is MLPGradientFlow.jl's ``sigmoid2``.

    Returns
    -------
    numpy.ndarray, shape (n1, n2)
        ``g(W1[i], W2[j])`` in float64.

    Raises
    ------
    ValueError
        If an array is not 2-D or not finite, the dimensions differ, ``activation`` is unknown, ``erf_scale`` <= 0, or
        an argument leaves [−1, 1] by more than rounding.
    """
    W1, W2 = _matrix(W1, "W1"), _matrix(W2, "W2")
    if W1.shape[1] != W2.shape[1]:
        raise ValueError(f"W1 and W2 must have the same input dimension, got {W1.shape} and {W2.shape}")
    activation, scale = _activation(activation, erf_scale)
    dots = W1 @ W2.T
    q1, q2 = (W1**2).sum(1), (W2**2).sum(1)
    if activation == "erf":
        alpha = 2 * scale**2
        z = alpha * dots / np.sqrt(np.outer(1 + alpha * q1, 1 + alpha * q2))
        return 2 / np.pi * np.arcsin(_clip(z, "the arcsin argument"))
    norms = np.outer(np.sqrt(q1), np.sqrt(q2))
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    u = _clip(u, "the cosine")
    return norms * (np.sqrt(1 - u**2) + (np.pi - np.arccos(u)) * u) / (2 * np.pi)


def _clip(z: np.ndarray, what: str) -> np.ndarray:
    if np.any(np.abs(z) > 1 + _ROUNDING):
        raise ValueError(f"{what} left [−1, 1] by more than rounding (max |z| = {np.abs(z).max()!r})")
    return np.clip(z, -1.0, 1.0)


def population_loss(W, a, V, b, activation: str = "erf", erf_scale: float = DEFAULT_ERF_SCALE, *,
                    half: bool = False) -> float:
    r"""The exact population loss :math:`L = E_x[(f(x) - f^*(x))^2]`, :math:`x \sim N(0, I_d)`.

    :math:`L = a^\top G_{ss} a - 2 a^\top G_{st} b + b^\top G_{tt} b` with the interaction matrices ``G`` of
    :func:`interaction`.

    Parameters
    ----------
    W : array_like, shape (n, d)
        The student's incoming weights.
    a : array_like, shape (n,)
        The student's outgoing weights.
    V : array_like, shape (k, d)
        The teacher's incoming weights.
    b : array_like, shape (k,)
        The teacher's outgoing weights.
    activation : {"erf", "relu"}, default "erf"
        The activation of both networks.
    erf_scale : float, default 1/√2
        ``c`` in ``σ(x) = erf(c x)``, > 0.
    half : bool, default False
        Return ``½ E[(f − f*)²]`` instead (the other common normalisation); keyword-only.

    Returns
    -------
    float
        The loss, >= 0 up to rounding.

    Raises
    ------
    ValueError
        If a shape does not match, a weight is not finite, or the activation or scale is invalid.
    """
    W, a, V, b = _network(W, a, V, b)
    loss = (a @ interaction(W, W, activation, erf_scale) @ a - 2 * a @ interaction(W, V, activation, erf_scale) @ b
            + b @ interaction(V, V, activation, erf_scale) @ b)
    return float(loss) * (0.5 if _bool(half, "half") else 1.0)


def _bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _pair_gradient(W, U, activation: str, scale: float) -> np.ndarray:
    """``∂g(w_i, u_β)/∂w_i`` for every student row ``i`` and every row ``β`` of ``U``, with ``u_β`` held fixed:
    shape (n, m, d). The diagonal ``g(w, w)`` is not of this form (both arguments move); the caller handles it."""
    dots = W @ U.T
    qw, qu = (W**2).sum(1), (U**2).sum(1)
    if activation == "erf":
        alpha = 2 * scale**2
        sw, su = 1 + alpha * qw, 1 + alpha * qu
        root = np.sqrt(np.outer(sw, su))
        z = np.clip(alpha * dots / root, -1.0, 1.0)
        factor = 2 / np.pi / np.sqrt(np.maximum(1 - z**2, 1e-300))
        dz = alpha * U[None, :, :] / root[:, :, None] - (z * alpha / sw[:, None])[:, :, None] * W[:, None, :]
        return factor[:, :, None] * dz
    # ReLU: ∇_w g = ((π − θ) u + ‖u‖ sin θ ŵ) / (2π), θ = ∠(w, u) (Cho & Saul 2009; Brutzkus & Globerson 2017).
    nw, nu = np.sqrt(qw), np.sqrt(qu)
    norms = np.outer(nw, nu)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.clip(np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0), -1.0, 1.0)
        w_hat = np.where(nw[:, None] > 0, W / np.where(nw > 0, nw, 1.0)[:, None], 0.0)
    theta = np.arccos(cos)
    return ((np.pi - theta)[:, :, None] * U[None, :, :]
            + (nu[None, :] * np.sin(theta))[:, :, None] * w_hat[:, None, :]) / (2 * np.pi)


def _self_gradient(W, activation: str, scale: float) -> np.ndarray:
    """``d g(w, w)/dw`` for every row: shape (n, d)."""
    q = (W**2).sum(1)
    if activation == "erf":
        alpha = 2 * scale**2
        return (2 / np.pi * 2 * alpha / ((1 + alpha * q) * np.sqrt(1 + 2 * alpha * q)))[:, None] * W
    return W  # g(w, w) = ‖w‖²/2 for ReLU


def population_gradient(W, a, V, b, activation: str = "erf", erf_scale: float = DEFAULT_ERF_SCALE, *,
                        half: bool = False) -> tuple[np.ndarray, np.ndarray]:
    r"""The analytic gradient of :func:`population_loss` with respect to the student's ``W`` and ``a``.

    :math:`\partial L/\partial a = 2 G_{ss} a - 2 G_{st} b`, and
    :math:`\partial L/\partial w_i = a_i^2 \nabla g(w_i, w_i) + 2 a_i \sum_{i' \ne i} a_{i'} \partial_1 g(w_i, w_{i'})
    - 2 a_i \sum_j b_j \partial_1 g(w_i, v_j)`, with the derivatives of the closed forms of :func:`interaction`.

    Parameters
    ----------
    W : array_like, shape (n, d)
        The student's incoming weights.
    a : array_like, shape (n,)
        The student's outgoing weights.
    V : array_like, shape (k, d)
        The teacher's incoming weights.
    b : array_like, shape (k,)
        The teacher's outgoing weights.
    activation : {"erf", "relu"}, default "erf"
        The activation of both networks.
    erf_scale : float, default 1/√2
        ``c`` in ``σ(x) = erf(c x)``, > 0.
    half : bool, default False
        Differentiate ``½ E[(f − f*)²]`` instead; keyword-only.

    Returns
    -------
    grad_W : numpy.ndarray, shape (n, d)
        ``∂L/∂W``.
    grad_a : numpy.ndarray, shape (n,)
        ``∂L/∂a``.

    Raises
    ------
    ValueError
        As for :func:`population_loss`.
    """
    W, a, V, b = _network(W, a, V, b)
    activation, scale = _activation(activation, erf_scale)
    g_ss, g_st = interaction(W, W, activation, scale), interaction(W, V, activation, scale)
    grad_a = 2 * g_ss @ a - 2 * g_st @ b
    cross = _pair_gradient(W, W, activation, scale)  # (n, n, d); its diagonal is replaced below
    n = W.shape[0]
    off = a[None, :] * (1 - np.eye(n))
    grad_W = (a**2)[:, None] * _self_gradient(W, activation, scale)
    grad_W += 2 * a[:, None] * np.einsum("ij,ijd->id", off, cross)
    grad_W -= 2 * a[:, None] * np.einsum("j,ijd->id", b, _pair_gradient(W, V, activation, scale))
    factor = 0.5 if _bool(half, "half") else 1.0
    return grad_W * factor, grad_a * factor


def _torch_loss(theta, n: int, d: int, V, b, activation: str, scale: float):
    """The closed-form loss as a torch function of ``theta = (W.ravel(), a)``, for automatic differentiation."""
    import torch

    W, a = theta[: n * d].reshape(n, d), theta[n * d:]
    U = torch.cat([W, V])
    c = torch.cat([a, -b])
    q = (U**2).sum(1)
    dots = U @ U.T
    if activation == "erf":
        alpha = 2 * scale**2
        off = alpha * dots / torch.sqrt((1 + alpha * q)[:, None] * (1 + alpha * q)[None, :])
        eye = torch.eye(len(c), dtype=U.dtype)
        # The diagonal is written as its own function of ‖u‖², so that the arcsin is never evaluated at 1 in a
        # direction where it is not differentiable.
        diag = alpha * q / (1 + alpha * q)
        z = off * (1 - eye) + torch.diag(diag)
        G = 2 / math.pi * torch.asin(z)
    else:
        norms = torch.sqrt(q)
        outer = norms[:, None] * norms[None, :]
        eye = torch.eye(len(c), dtype=U.dtype)
        u = (dots / (outer + eye)) * (1 - eye)  # the diagonal, ‖u‖²/2, is set below
        G = outer * (torch.sqrt(1 - u**2) + (math.pi - torch.acos(u)) * u) / (2 * math.pi)
        G = G * (1 - eye) + torch.diag(q / 2)
    return c @ G @ c


def _erf_hessian(W, a, V, b, scale: float) -> np.ndarray:
    """The analytic Hessian of the erf loss in ``theta = (W.ravel(), a)``.

    With ``z = α w·u/√(AB)``, ``A = 1 + α‖w‖²``, ``B = 1 + α‖u‖²`` and ``g = (2/π) arcsin z``, the blocks need
    ``∂²g/∂w²`` and ``∂²g/∂w∂u`` of a pair and ``∇²g(w, w)`` of a neuron with itself; they follow from
    ``∂z/∂w = α u/√(AB) − α z w/A`` by the chain rule (derived for this module; checked in the tests against automatic
    differentiation and against differences of the gradient)."""
    n, d = W.shape
    alpha = 2 * scale**2
    U = np.concatenate([W, V])  # every neuron, students first
    c = np.concatenate([a, -b])
    qw, qu = (W**2).sum(1), (U**2).sum(1)
    A, B = 1 + alpha * qw, 1 + alpha * qu
    root = np.sqrt(np.outer(A, B))  # (n, N)
    z = np.clip(alpha * (W @ U.T) / root, -1.0, 1.0)
    one_minus = np.maximum(1 - z**2, 1e-300)
    g1 = 2 / np.pi / np.sqrt(one_minus)  # g'(z)
    g2 = 2 / np.pi * z / one_minus**1.5  # g''(z)
    Wi, Uj = W[:, None, :], U[None, :, :]
    dz_w = alpha * Uj / root[:, :, None] - (alpha * z / A[:, None])[:, :, None] * Wi  # (n, N, d)
    dz_u = alpha * Wi / root[:, :, None] - (alpha * z / B[None, :])[:, :, None] * Uj
    eye = np.eye(d)
    outer = lambda x, y: x[..., :, None] * y[..., None, :]  # batched outer product
    s = (alpha**2 / (A[:, None] * root))[:, :, None, None]
    zww = (-s * (outer(Uj, Wi) + outer(Wi, Uj)) - (alpha * z / A[:, None])[:, :, None, None] * eye
           + (3 * alpha**2 * z / A[:, None] ** 2)[:, :, None, None] * outer(Wi, Wi))
    zwu = ((alpha / root)[:, :, None, None] * eye
           - (alpha**2 / (B[None, :] * root))[:, :, None, None] * outer(Uj, Uj)
           - s * outer(Wi, Wi)
           + (alpha**2 * z / np.outer(A, B))[:, :, None, None] * outer(Wi, Uj))
    d11 = g2[:, :, None, None] * outer(dz_w, dz_w) + g1[:, :, None, None] * zww  # (n, N, d, d)
    d12 = g2[:, :, None, None] * outer(dz_w, dz_u) + g1[:, :, None, None] * zwu
    d1 = g1[:, :, None] * dz_w  # (n, N, d)
    kappa = 4 * alpha / np.pi / (A * np.sqrt(1 + 2 * alpha * qw))  # ∇g(w, w) = κ w
    dkappa = -4 * alpha**2 / np.pi * (1 / (A**2 * np.sqrt(1 + 2 * alpha * qw)) + 1 / (A * (1 + 2 * alpha * qw) ** 1.5))
    self_hess = kappa[:, None, None] * eye + 2 * dkappa[:, None, None] * outer(W, W)
    mask = np.ones((n, len(c)))
    mask[np.arange(n), np.arange(n)] = 0.0  # a neuron's pair with itself is the self term
    weights = c[None, :] * mask
    H = np.zeros((n * d + n, n * d + n))
    for i in range(n):
        rows = slice(i * d, (i + 1) * d)
        H[rows, rows] = a[i] ** 2 * self_hess[i] + 2 * a[i] * np.einsum("j,jab->ab", weights[i], d11[i])
        H[rows, n * d + i] = 2 * np.einsum("j,ja->a", weights[i], d1[i]) + 2 * a[i] * kappa[i] * W[i]
        for j in range(n):
            if j != i:
                H[rows, j * d:(j + 1) * d] = 2 * a[i] * a[j] * d12[i, j]
                H[rows, n * d + j] = 2 * a[i] * d1[i, j]
    H[n * d:, :n * d] = H[:n * d, n * d:].T
    H[n * d:, n * d:] = 2 * interaction(W, W, "erf", scale)
    return H


def population_hessian(W, a, V, b, activation: str = "erf", erf_scale: float = DEFAULT_ERF_SCALE, *,
                       half: bool = False) -> np.ndarray:
    r"""The Hessian of :func:`population_loss` in ``theta = (W.ravel(), a)``, exact to rounding.

    For erf it is analytic (the second derivatives of the arcsin form, by the chain rule); for ReLU it is computed by
    automatic differentiation (torch, float64, on the CPU) of the same closed form, and exists where no two neurons
    are parallel. Neither carries a finite-difference error; the tests hold both against central differences of
    :func:`population_gradient` and the erf form against automatic differentiation.

    Parameters
    ----------
    W : array_like, shape (n, d)
        The student's incoming weights.
    a : array_like, shape (n,)
        The student's outgoing weights.
    V : array_like, shape (k, d)
        The teacher's incoming weights.
    b : array_like, shape (k,)
        The teacher's outgoing weights.
    activation : {"erf", "relu"}, default "erf"
        The activation of both networks.
    erf_scale : float, default 1/√2
        ``c`` in ``σ(x) = erf(c x)``, > 0.
    half : bool, default False
        For ``½ E[(f − f*)²]``; keyword-only.

    Returns
    -------
    numpy.ndarray, shape (n(d + 1), n(d + 1))
        The symmetric Hessian, rows and columns ordered as ``theta``.

    Raises
    ------
    ValueError
        As for :func:`population_loss`.
    """
    W, a, V, b = _network(W, a, V, b)
    activation, scale = _activation(activation, erf_scale)
    factor = 0.5 if _bool(half, "half") else 1.0
    if activation == "erf":
        H = _erf_hessian(W, a, V, b, scale)
    else:
        import torch

        n, d = W.shape
        theta = torch.from_numpy(np.concatenate([W.ravel(), a]))
        Vt, bt = torch.from_numpy(V), torch.from_numpy(b)
        H = torch.autograd.functional.hessian(lambda t: _torch_loss(t, n, d, Vt, bt, activation, scale),
                                              theta).numpy()
    return 0.5 * (H + H.T) * factor


def monte_carlo_loss(W, a, V, b, activation: str = "erf", erf_scale: float = DEFAULT_ERF_SCALE, *,
                     n_samples: int, seed, half: bool = False, chunk: int = 200_000) -> tuple[float, float]:
    """A Monte Carlo estimate of the loss, ``mean((f − f*)²)`` over ``n_samples`` Gaussian inputs, with its standard
    error.

    Parameters
    ----------
    W : array_like, shape (n, d)
        The student's incoming weights.
    a : array_like, shape (n,)
        The student's outgoing weights.
    V : array_like, shape (k, d)
        The teacher's incoming weights.
    b : array_like, shape (k,)
        The teacher's outgoing weights.
    activation : {"erf", "relu"}, default "erf"
        The activation of both networks.
    erf_scale : float, default 1/√2
        ``c`` in ``σ(x) = erf(c x)``, > 0.
    n_samples : int
        The number of inputs, >= 2; keyword-only.
    seed : int or sequence of int or numpy.random.Generator
        Seeds ``numpy.random.default_rng``; keyword-only.
    half : bool, default False
        Estimate ``½ E[(f − f*)²]``; keyword-only.
    chunk : int, default 200000
        Inputs drawn at a time (memory only; the estimate does not depend on it beyond rounding); keyword-only.

    Returns
    -------
    estimate : float
        The sample mean of the squared error.
    standard_error : float
        Its standard error, the sample standard deviation over ``√n_samples``.

    Raises
    ------
    ValueError
        As for :func:`population_loss`, or if ``n_samples`` < 2 or ``chunk`` < 1.
    """
    from scipy.special import erf

    W, a, V, b = _network(W, a, V, b)
    activation, scale = _activation(activation, erf_scale)
    n_samples, chunk = check_positive_int(n_samples, "n_samples", 2), check_positive_int(chunk, "chunk")
    rng = np.random.default_rng(seed)
    sigma = (lambda z: erf(scale * z)) if activation == "erf" else (lambda z: np.maximum(z, 0.0))
    total = total_sq = 0.0
    done = 0
    while done < n_samples:
        m = min(chunk, n_samples - done)
        x = rng.standard_normal((m, W.shape[1]))
        err = (sigma(x @ W.T) @ a - sigma(x @ V.T) @ b) ** 2
        total, total_sq, done = total + err.sum(), total_sq + (err**2).sum(), done + m
    mean = total / n_samples
    variance = max(total_sq / n_samples - mean**2, 0.0) * n_samples / (n_samples - 1)
    factor = 0.5 if _bool(half, "half") else 1.0
    return float(mean * factor), float(math.sqrt(variance / n_samples) * factor)


# --------------------------------------------------------------------------------------------------------------------
# teachers, copy-average points and closed forms


def orthonormal_teacher(k: int, d: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The paper's teacher: ``k`` orthonormal incoming vectors ``v_j = e_j`` and unit outgoing weights ``b_j = 1``.

    Parameters
    ----------
    k : int
        The number of teacher neurons, >= 1.
    d : int, optional
        The input dimension, >= ``k``; ``k`` by default.

    Returns
    -------
    V : numpy.ndarray, shape (k, d)
        The first ``k`` standard basis vectors.
    b : numpy.ndarray, shape (k,)
        Ones.

    Raises
    ------
    ValueError
        If ``k`` < 1 or ``d`` < ``k``.
    TypeError
        If ``k`` or ``d`` is not an int.
    """
    k = check_positive_int(k, "k")
    d = k if d is None else check_positive_int(d, "d")
    if d < k:
        raise ValueError(f"d must be >= k = {k} for {k} orthonormal teacher neurons, got {d}")
    return np.eye(k, d), np.ones(k)


def _group_sizes(group_sizes, name: str = "group_sizes") -> list[int]:
    if isinstance(group_sizes, (str, bytes)) or not isinstance(group_sizes, Sequence) or not group_sizes:
        raise TypeError(f"{name} must be a non-empty sequence of positive ints, got {group_sizes!r}")
    return [check_positive_int(m, f"{name}[{i}]") for i, m in enumerate(group_sizes)]


def copy_average_config(group_sizes, k: int | None = None, d: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The copy-average point of a partition of the orthonormal teacher (:func:`orthonormal_teacher`).

    Student ``i`` takes the next ``m_i`` teacher neurons ``G_i`` (in order) and sets
    ``w_i = Σ_{j∈G_i} v_j / √(m_i(2m_i − 1))``, ``a_i = m_i``: a copy for ``m_i = 1``, an average otherwise.

    Parameters
    ----------
    group_sizes : sequence of int
        The group sizes ``m_1, ..., m_n``, each >= 1; one student per group.
    k : int, optional
        The number of teacher neurons, which the sizes must sum to; their sum by default.
    d : int, optional
        The input dimension, >= ``k``; ``k`` by default.

    Returns
    -------
    W : numpy.ndarray, shape (n, d)
        The student's incoming weights.
    a : numpy.ndarray, shape (n,)
        The student's outgoing weights, ``a_i = m_i``.

    Raises
    ------
    ValueError
        If a size is < 1, the sizes do not sum to ``k``, there are ``n >= k`` groups (a CA point of an
        under-parameterised student needs ``n < k``; only the single copy ``k = n = 1``, the ``m = 1`` case of
        :func:`optimal_average_loss`, is allowed), or ``d`` < ``k``.
    TypeError
        If ``group_sizes`` is not a sequence of ints.
    """
    sizes = _group_sizes(group_sizes)
    total = sum(sizes)
    k = total if k is None else check_positive_int(k, "k")
    if total != k:
        raise ValueError(f"group_sizes must sum to k = {k}, got {sizes} (sum {total})")
    if len(sizes) >= k > 1:
        raise ValueError(f"group_sizes: a copy-average point of an under-parameterised student needs n < k, got "
                         f"n = {len(sizes)} groups for k = {k} teacher neurons")
    d = k if d is None else check_positive_int(d, "d")
    if d < k:
        raise ValueError(f"d must be >= k = {k}, got {d}")
    W, start = np.zeros((len(sizes), d)), 0
    for i, m in enumerate(sizes):
        W[i, start:start + m] = 1 / math.sqrt(m * (2 * m - 1))
        start += m
    return W, np.array(sizes, dtype=np.float64)


def optimal_partition(k: int, n: int) -> tuple[int, ...]:
    """The partition of the optimal copy-average point: ``n − 1`` copies and one average of ``k − n + 1`` neurons.

    Parameters
    ----------
    k : int
        The number of teacher neurons, >= 2.
    n : int
        The number of student neurons, 1 <= ``n`` < ``k``.

    Returns
    -------
    tuple of int
        ``(1, ..., 1, k − n + 1)``.

    Raises
    ------
    ValueError
        If ``n`` >= ``k`` or ``n`` < 1.
    TypeError
        If ``k`` or ``n`` is not an int.
    """
    k, n = check_positive_int(k, "k"), check_positive_int(n, "n")
    if n >= k:
        raise ValueError(f"n must be < k = {k} (an under-parameterised student), got {n}")
    return (1,) * (n - 1) + (k - n + 1,)


def partitions(k: int, n: int) -> list[tuple[int, ...]]:
    """Every partition of ``k`` into ``n`` positive parts, as non-decreasing tuples.

    Parameters
    ----------
    k : int
        The integer to split, >= 1.
    n : int
        The number of parts, 1 <= ``n`` <= ``k``.

    Returns
    -------
    list of tuple of int
        The partitions, in lexicographic order.

    Raises
    ------
    ValueError
        If ``n`` > ``k`` or an argument is < 1.
    TypeError
        If ``k`` or ``n`` is not an int.
    """
    k, n = check_positive_int(k, "k"), check_positive_int(n, "n")
    if n > k:
        raise ValueError(f"n must be <= k = {k}, got {n}")

    def parts(total, count, least):
        if count == 1:
            if total >= least:
                yield (total,)
            return
        for first in range(least, total // count + 1):
            for rest in parts(total - first, count - 1, first):
                yield (first, *rest)

    return list(parts(k, n, 1))


def _group_size(m, name: str = "m") -> int:
    if isinstance(m, bool) or not isinstance(m, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 1 (a group size), got {type(m).__name__}")
    if m < 1:
        raise ValueError(f"{name} must be >= 1 (a group size), got {m}")
    return int(m)


def optimal_average_loss(m, erf_scale: float = DEFAULT_ERF_SCALE):
    """``L*(m) = m/3 − (2m²/π) arcsin(1/(2m))``: the loss of one erf neuron averaging ``m`` orthonormal unit teacher
    neurons at its optimum (``L*(1) = 0``), for ``σ(x) = erf(x/√2)`` and the loss ``E[(f − f*)²]``.

    Derived in the book: along ``w = r Σ_j v_j/√m`` with the optimal ``a``, stationarity is solved by
    ``r² = 1/(2m − 1)``, ``a = m``.

    Parameters
    ----------
    m : int or array_like of int
        Group size(s), >= 1.
    erf_scale : float, default 1/√2
        Must be ``1/√2``: the closed form holds for that scale only.

    Returns
    -------
    float or numpy.ndarray
        ``L*(m)``, of the shape of ``m``.

    Raises
    ------
    ValueError
        If a size is < 1, or ``erf_scale`` is not 1/√2.
    TypeError
        If a size is not an int.
    """
    _check_default_scale(erf_scale)
    sizes = np.asarray(m)
    if sizes.ndim == 0:
        m = _group_size(m)
        return m / 3 - 2 * m * m / math.pi * math.asin(1 / (2 * m))
    if sizes.dtype.kind not in "iu":
        raise TypeError(f"m must hold ints (group sizes), got dtype {sizes.dtype}")
    if np.any(sizes < 1):
        raise ValueError(f"m must be >= 1 (group sizes), got min {sizes.min()}")
    sizes = sizes.astype(np.float64)
    return sizes / 3 - 2 * sizes**2 / np.pi * np.arcsin(1 / (2 * sizes))


def optimal_average_norm(m, erf_scale: float = DEFAULT_ERF_SCALE) -> float:
    """``r*(m) = 1/√(2m − 1)``: the norm of the optimal averaging neuron of ``m`` orthonormal teacher neurons.

    Parameters
    ----------
    m : int
        The group size, >= 1.
    erf_scale : float, default 1/√2
        Must be ``1/√2``: the closed form holds for that scale only.

    Returns
    -------
    float
        ``1/√(2m − 1)``; the optimal outgoing weight is ``a* = m``.

    Raises
    ------
    ValueError
        If ``m`` < 1 or ``erf_scale`` is not 1/√2.
    TypeError
        If ``m`` is not an int.
    """
    _check_default_scale(erf_scale)
    return 1 / math.sqrt(2 * _group_size(m) - 1)


def ca_loss(group_sizes, erf_scale: float = DEFAULT_ERF_SCALE) -> float:
    """``Σ_g L*(m_g)``: the loss of a copy-average point, since different groups do not interact.

    Parameters
    ----------
    group_sizes : sequence of int
        The group sizes, each >= 1.
    erf_scale : float, default 1/√2
        Must be ``1/√2``.

    Returns
    -------
    float
        The sum of :func:`optimal_average_loss` over the groups.

    Raises
    ------
    ValueError, TypeError
        As for :func:`optimal_average_loss`.
    """
    return float(sum(optimal_average_loss(m, erf_scale) for m in _group_sizes(group_sizes)))


def average_loss_remainder(m, digits: int = 40) -> float:
    """``L*(m) − m(1/3 − 1/π) + 1/(24πm)``, the remainder after the first two terms of the large-``m`` expansion,
    evaluated with ``digits`` significant digits (mpmath), since in float64 it cancels to rounding noise for large
    ``m``. The expansion predicts ``−3/(640π m³) + O(m⁻⁵)``.

    Parameters
    ----------
    m : int
        The group size, >= 1.
    digits : int, default 40
        The working precision in decimal digits, >= 16.

    Returns
    -------
    float
        The remainder, rounded to float64.

    Raises
    ------
    ValueError
        If ``m`` < 1 or ``digits`` < 16.
    TypeError
        If ``m`` or ``digits`` is not an int.
    """
    import mpmath

    m = _group_size(m)
    digits = check_positive_int(digits, "digits", 16)
    with mpmath.workdps(digits):
        mm = mpmath.mpf(m)
        value = (mm / 3 - 2 * mm**2 / mpmath.pi * mpmath.asin(1 / (2 * mm)) - mm * (mpmath.mpf(1) / 3 - 1 / mpmath.pi)
                 + 1 / (24 * mpmath.pi * mm))
        return float(value)


def relu_single_neuron_loss(k: int) -> float:
    """The optimal loss of one ReLU neuron fitting ``k`` orthonormal unit ReLU teacher neurons.

    ``L*_relu(k) = k/2 + k(k − 1)/(2π) − 2k² h(1/√k)²`` with ``h(u) = (√(1 − u²) + (π − arccos u) u)/(2π)``: the
    student points along the teacher average and ``a‖w‖ = 2k h(1/√k)`` (derived in the book; ReLU is positively
    homogeneous, so only the product ``a‖w‖`` matters).

    Parameters
    ----------
    k : int
        The number of teacher neurons, >= 1.

    Returns
    -------
    float
        The loss ``E[(f − f*)²]`` at the optimum (0 for ``k = 1``).

    Raises
    ------
    ValueError
        If ``k`` < 1.
    TypeError
        If ``k`` is not an int.
    """
    k = check_positive_int(k, "k")
    u = 1 / math.sqrt(k)
    h = (math.sqrt(max(1 - u * u, 0.0)) + (math.pi - math.acos(min(u, 1.0))) * u) / (2 * math.pi)
    return k / 2 + k * (k - 1) / (2 * math.pi) - 2 * k * k * h * h


# --------------------------------------------------------------------------------------------------------------------
# fitting a student


@dataclass(frozen=True)
class FitResult:
    """A student fitted by :func:`fit_student`.

    Parameters
    ----------
    W : numpy.ndarray, shape (n, d)
        The fitted incoming weights.
    a : numpy.ndarray, shape (n,)
        The fitted outgoing weights.
    loss : float
        The population loss ``E[(f − f*)²]`` at the end.
    gradient_norm : float
        ``‖∇L‖∞`` at the end, over ``W`` and ``a``.
    iterations : int
        Optimiser iterations (gradient steps for ``"gd"``, right-hand-side evaluations for ``"flow"``), before the
        polish.
    method : str
        The method used.
    newton_steps : int
        Newton steps taken by the polish (0 without it).
    """

    W: np.ndarray
    a: np.ndarray
    loss: float
    gradient_norm: float
    iterations: int
    method: str
    newton_steps: int = 0


def _objective(n: int, d: int, V, b, activation: str, scale: float):
    def value_and_grad(theta):
        W, a = theta[: n * d].reshape(n, d), theta[n * d:]
        gW, ga = population_gradient(W, a, V, b, activation, scale)
        return population_loss(W, a, V, b, activation, scale), np.concatenate([gW.ravel(), ga])

    return value_and_grad


def _newton_polish(theta, n, d, V, b, activation, scale, steps: int):
    """Newton steps on ∇L = 0 from ``theta``, each kept only if it lowers ``‖∇L‖∞``; converges quadratically to the
    critical point that a first-order method ended near. The least-squares solve copes with a nearly singular
    Hessian."""
    f = _objective(n, d, V, b, activation, scale)
    taken = 0
    _, grad = f(theta)
    for _ in range(steps):
        if np.abs(grad).max() < 1e-15:
            break
        H = population_hessian(theta[: n * d].reshape(n, d), theta[n * d:], V, b, activation, scale)
        step = np.linalg.lstsq(H, grad, rcond=1e-13)[0]
        candidate = theta - step
        _, new_grad = f(candidate)
        if not np.abs(new_grad).max() < np.abs(grad).max():
            break
        theta, grad, taken = candidate, new_grad, taken + 1
    return theta, taken


def fit_student(k: int, n: int, seed, method: str = "lbfgs", *, activation: str = "erf",
                erf_scale: float = DEFAULT_ERF_SCALE, teacher=None, polish: bool = True, max_iterations: int = 20_000,
                lr: float = 0.05, time_span: float = 1e5, init=None) -> FitResult:
    """Fit an ``n``-neuron student to a ``k``-neuron teacher on the exact Gaussian-input loss, from a random init.

    The init is ``W ~ N(0, 1/k)`` entrywise and ``a ~ N(0, 1/n)`` (the variances), drawn from
    ``numpy.random.default_rng(seed)``; the teacher is :func:`orthonormal_teacher` ``(k)`` unless given.

    * ``"lbfgs"``: :func:`scipy.optimize.minimize` with L-BFGS-B, ``gtol = 1e-12``, ``ftol = 0``.
    * ``"bfgs"``: scipy's BFGS, ``gtol = 1e-12``.
    * ``"gd"``: plain gradient descent with step ``lr`` for ``max_iterations`` steps, for illustration (it stalls
      along the flat averaging directions).
    * ``"flow"``: gradient flow ``dθ/dt = −∇L(θ)`` integrated to ``time_span`` by :func:`scipy.integrate.solve_ivp`
      with the stiff BDF method and the exact Hessian as Jacobian.

    ``polish`` then takes up to 8 Newton steps (:func:`population_hessian`) to reach the critical point to machine
    precision; it is skipped for ``"gd"``.

    Parameters
    ----------
    k : int
        Teacher neurons, >= 1.
    n : int
        Student neurons, >= 1.
    seed : int or sequence of int
        Seeds ``numpy.random.default_rng``; a chapter passes e.g. ``[run.seed, k, n, i]``.
    method : {"lbfgs", "bfgs", "gd", "flow"}, default "lbfgs"
        The optimiser.
    activation : {"erf", "relu"}, default "erf"
        The activation of both networks; keyword-only.
    erf_scale : float, default 1/√2
        ``c`` in ``σ(x) = erf(c x)``, > 0; keyword-only.
    teacher : tuple of (V, b), optional
        Another teacher, ``V`` of shape ``(k, d)`` and ``b`` of shape ``(k,)``; keyword-only.
    polish : bool, default True
        Newton polish after the optimiser; keyword-only.
    max_iterations : int, default 20000
        Iteration cap of the optimiser (steps for ``"gd"``), >= 1; keyword-only.
    lr : float, default 0.05
        Step size of ``"gd"``, > 0; keyword-only.
    time_span : float, default 1e5
        Integration time of ``"flow"``, > 0; keyword-only.
    init : tuple of (W, a), optional
        Start here instead of the random init; keyword-only.

    Returns
    -------
    FitResult
        The fitted student, its loss and gradient norm.

    Raises
    ------
    ValueError
        If an argument is out of range, the method or activation is unknown, or the teacher's or init's shapes do not
        match ``k``, ``n``.
    TypeError
        If ``k``, ``n`` or ``max_iterations`` is not an int, or ``polish`` is not a bool.
    """
    from scipy.optimize import minimize

    k, n = check_positive_int(k, "k"), check_positive_int(n, "n")
    method = check_choice(method, "method", METHODS)
    activation, scale = _activation(activation, erf_scale)
    max_iterations = check_positive_int(max_iterations, "max_iterations")
    polish = _bool(polish, "polish")
    V, b = orthonormal_teacher(k) if teacher is None else teacher
    V, b = _matrix(V, "V"), _vector(b, "b", np.asarray(V).shape[0] if np.ndim(V) == 2 else -1)
    if V.shape[0] != k:
        raise ValueError(f"teacher must have k = {k} neurons, got V of shape {V.shape}")
    d = V.shape[1]
    if init is None:
        rng = np.random.default_rng(seed)
        W0 = rng.normal(0.0, 1 / math.sqrt(k), (n, d))
        a0 = rng.normal(0.0, 1 / math.sqrt(n), n)
    else:
        W0, a0 = init
        W0, a0 = _matrix(W0, "init W"), _vector(a0, "init a", n)
        if W0.shape != (n, d):
            raise ValueError(f"init W must have shape {(n, d)}, got {W0.shape}")
    theta = np.concatenate([W0.ravel(), a0])
    f = _objective(n, d, V, b, activation, scale)
    if method in ("lbfgs", "bfgs"):
        options = {"gtol": 1e-12, "maxiter": max_iterations}
        if method == "lbfgs":
            options.update(ftol=0.0, maxfun=4 * max_iterations, maxcor=30)
        result = minimize(f, theta, jac=True, method="L-BFGS-B" if method == "lbfgs" else "BFGS", options=options)
        theta, iterations = result.x, int(result.nit)
    elif method == "gd":
        lr = check_positive(lr, "lr")
        for _ in range(max_iterations):
            theta = theta - lr * f(theta)[1]
        iterations, polish = max_iterations, False
    else:
        from scipy.integrate import solve_ivp

        time_span = check_positive(time_span, "time_span")

        def jacobian(_t, th):
            return -population_hessian(th[: n * d].reshape(n, d), th[n * d:], V, b, activation, scale)

        solution = solve_ivp(lambda _t, th: -f(th)[1], (0.0, time_span), theta, method="BDF", jac=jacobian,
                             rtol=1e-10, atol=1e-12)
        theta, iterations = solution.y[:, -1], int(solution.nfev)
    steps = 0
    if polish:
        theta, steps = _newton_polish(theta, n, d, V, b, activation, scale, 8)
    loss, grad = f(theta)
    return FitResult(theta[: n * d].reshape(n, d).copy(), theta[n * d:].copy(), float(loss),
                     float(np.abs(grad).max()), iterations, method, steps)


# --------------------------------------------------------------------------------------------------------------------
# classifying solutions


@dataclass(frozen=True)
class SolutionClass:
    """What a fitted student does with the teacher's neurons, by :func:`classify_solution`.

    Parameters
    ----------
    label : str
        ``"copy-average"`` (every student copies or averages, with disjoint groups), ``"perturbed copy"`` (at
        least one student is a perturbed copy and the others copies or perturbed copies) or ``"other"``.
    neurons : tuple of str
        Per student: ``"copy"``, ``"average"``, ``"perturbed copy"`` or ``"other"``.
    cosines : numpy.ndarray, shape (n, k)
        The cosines ``ŵ_i·v̂_j``, signed by ``a_i`` if given (so that a flipped ``(−w, −a)`` reads as ``(w, a)``).
    """

    label: str
    neurons: tuple[str, ...]
    cosines: np.ndarray


def classify_solution(W, V, a=None, *, copy: float = 0.999, perturbed: float = 0.8,
                      tolerance: float = 0.02) -> SolutionClass:
    """Classify a student by the cosines between its incoming vectors and the teacher's.

    A student neuron is a **copy** if its largest ``|cos|`` exceeds ``copy``; an **average** of ``m >= 2`` teacher
    neurons if its ``m`` largest ``|cos|`` are within ``tolerance`` of ``1/√m`` and the others below ``tolerance``; a
    **perturbed copy** if its largest ``|cos|`` is in ``[perturbed, copy)``; otherwise **other**. The student is
    copy-average if every neuron copies or averages and no teacher neuron is claimed twice.

    Parameters
    ----------
    W : array_like, shape (n, d)
        The student's incoming weights; a zero row is "other".
    V : array_like, shape (k, d)
        The teacher's incoming weights, nonzero rows.
    a : array_like, shape (n,), optional
        The student's outgoing weights: the cosines are signed by ``sign(a_i)``.
    copy : float, default 0.999
        The cosine above which a neuron is a copy, in (0, 1].
    perturbed : float, default 0.8
        The cosine from which a neuron is a perturbed copy, in (0, ``copy``].
    tolerance : float, default 0.02
        The tolerance on the cosines of an average, > 0.

    Returns
    -------
    SolutionClass
        The label of the whole student, of each neuron, and the cosines.

    Raises
    ------
    ValueError
        If a shape does not match, a weight is not finite, a teacher row is zero, or a threshold is out of range.
    """
    W, V = _matrix(W, "W"), _matrix(V, "V")
    if W.shape[1] != V.shape[1]:
        raise ValueError(f"W and V must have the same input dimension, got {W.shape} and {V.shape}")
    copy, perturbed, tolerance = (check_positive(x, name) for x, name in ((copy, "copy"), (perturbed, "perturbed"),
                                                                          (tolerance, "tolerance")))
    if not perturbed <= copy <= 1:
        raise ValueError(f"the thresholds must satisfy 0 < perturbed <= copy <= 1, got perturbed={perturbed}, "
                         f"copy={copy}")
    nv = np.linalg.norm(V, axis=1)
    if np.any(nv == 0):
        raise ValueError("V must have nonzero rows (teacher neurons)")
    nw = np.linalg.norm(W, axis=1)
    cos = (W @ V.T) / np.where(nw > 0, nw, 1.0)[:, None] / nv[None, :]
    if a is not None:
        cos = cos * np.where(_vector(a, "a", W.shape[0]) < 0, -1.0, 1.0)[:, None]
    labels, claimed, disjoint = [], [], True
    for i in range(W.shape[0]):
        c = np.abs(cos[i])
        order = np.argsort(-c)
        top = c[order[0]] if nw[i] > 0 else 0.0
        label = "other"
        if top > copy:
            label, group = "copy", [order[0]]
        else:
            for m in range(2, len(c) + 1):
                if (np.all(np.abs(c[order[:m]] - 1 / math.sqrt(m)) < tolerance)
                        and np.all(c[order[m:]] < tolerance)):
                    label, group = "average", list(order[:m])
                    break
            else:
                group = []
                if top >= perturbed:
                    label = "perturbed copy"
        if label in ("copy", "average"):
            disjoint &= not set(group) & set(claimed)
            claimed += group
        labels.append(label)
    if all(x in ("copy", "average") for x in labels) and disjoint:
        overall = "copy-average"
    elif "perturbed copy" in labels and all(x in ("copy", "perturbed copy") for x in labels):
        overall = "perturbed copy"
    else:
        overall = "other"
    return SolutionClass(overall, tuple(labels), cos)

