r"""Kernel regression: the min-norm interpolant, its weight change, nested prefixes and gradient flow.

A wide network trained to convergence from :math:`w_0` is kernel regression with its NTK (:mod:`kdnb.kernels`):
with :math:`r = z - f_0(X)` the coefficients are :math:`a = K^{-1} r`, predictions :math:`f_0(x) + \Theta(x, X) a`,
and the weight change :math:`\Delta\hat w = \Phi a` has norm :math:`\sqrt{r^\top K^{-1} r}`.

* :func:`cholesky_with_jitter`, :func:`kernel_regression`, :func:`weight_change_norm`;
* :class:`NestedKernelRegression`: every prefix of one sample from one factorisation, with the norms, coefficients
  and angles of the nested solutions; :func:`weight_change_cosine`, the angle between two of them;
* :class:`KernelGradientFlow`: gradient flow on the squared loss stopped at time :math:`\tau`, in closed form (an
  early-stopped teacher).

**Linear algebra.** Kernels for solves are float64. A kernel must be symmetric to the precision of its dtype
(:func:`kdnb.core.validation.check_gram` with ``symmetric=True``: a float32 NTK is symmetric only to float32
rounding) and is used symmetrised, :math:`(K + K^\top)/2`; an exactly symmetric kernel is used as it is. Cholesky
factorisations add a jitter of ``jitter * mean(diag K)`` (default ``1e-10``) to the diagonal and raise
``ValueError`` if the matrix is still not positive definite; nothing is clipped silently.

**Degenerate systems.** A jitter lets the factorisation of a singular kernel succeed (e.g. an input repeated), but
then the solution of :math:`(K + \delta I) a = r` is not an interpolant when the targets are inconsistent on the
kernel's degenerate directions (the repeated input with two different targets): the coefficients grow like
:math:`1/\delta` and the fit misses the targets. The solvers therefore measure the fit against the *unjittered*
kernel, the relative training residual :math:`\|K a - r\| / \|r\|` of each target column, and raise
``ValueError`` when it exceeds :data:`FIT_TOLERANCE_FACTOR` :math:`\times \max(\epsilon_\mathrm{jitter},
\epsilon_\mathrm{dtype})`, i.e. ``1e4 * max(jitter, torch.finfo(kernel.dtype).eps)``: 1e-6 for the default jitter
and a float64 kernel, 1.2e-3 for a float32 kernel. Consistent targets pass (a repeat with the same target gives the
fit without the repeat); a jitter of 1e-4 or more makes the tolerance 1 or more, so that a ridge-like jitter is not
refused. :class:`KernelGradientFlow` handles singular kernels by design and has no such check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..core.validation import (
    check_finite_tensor,
    check_gram,
    check_kernel_targets,
    check_positive,
    check_positive_int,
    check_sequence,
)

__all__ = ["DEFAULT_JITTER", "FIT_TOLERANCE_FACTOR", "KernelGradientFlow", "KernelRegression", "NestedKernelRegression",
           "cholesky_with_jitter", "kernel_regression", "weight_change_cosine", "weight_change_norm"]

DEFAULT_JITTER = 1e-10
"""The default relative diagonal jitter of the Cholesky factorisations (times the mean diagonal of K)."""
FIT_TOLERANCE_FACTOR = 1e4
"""The largest relative training residual of a solve is this times ``max(jitter, eps of the kernel's dtype)``."""


def _initial_outputs(f0, like: torch.Tensor, name: str) -> torch.Tensor:
    """``f0`` checked against outputs ``like``, (N,) or (N, k): same shape, or (N,) shared by the k columns."""
    f = check_kernel_targets(f0, like.shape[0], name, like.device)
    if f.shape == like.shape:
        return f
    if like.ndim == 2 and f.ndim == 1:
        return f[:, None]
    raise ValueError(f"{name} must have shape {tuple(like.shape)} (or ({like.shape[0]},) for several target columns), "
                     f"got {tuple(f.shape)}")


def _residual_targets(targets, f0, n: int, device) -> torch.Tensor:
    """:math:`r = z - f_0` in float64."""
    z = check_kernel_targets(targets, n, "targets", device)
    return z if f0 is None else z - _initial_outputs(f0, z, "f0")


@dataclass(frozen=True)
class _Factorisation:
    kernel: torch.Tensor  # the checked, symmetrised float64 kernel, without the jitter
    factor: torch.Tensor  # the lower Cholesky factor of the jittered kernel
    tolerance: float  # the largest accepted relative training residual (FIT_TOLERANCE_FACTOR x max(jitter, eps))


def _factorise(kernel, jitter) -> _Factorisation:
    """Check, symmetrise and factorise ``kernel`` with ``jitter`` (see :func:`cholesky_with_jitter`)."""
    k = check_gram(kernel, symmetric=True)
    jitter = float(jitter)
    if not (jitter >= 0 and math.isfinite(jitter)):
        raise ValueError(f"jitter must be a finite number >= 0, got {jitter!r}")
    scale = float(k.diagonal().abs().mean())
    shifted = k + (jitter * scale) * torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
    factor, info = torch.linalg.cholesky_ex(shifted)
    if int(info) != 0:
        raise ValueError(f"kernel is not positive definite even with jitter {jitter:g} x mean diagonal; are some "
                         f"inputs repeated? (Cholesky failed at column {int(info)})")
    return _Factorisation(k, factor, FIT_TOLERANCE_FACTOR * max(jitter, torch.finfo(kernel.dtype).eps))


def _check_fit(f: _Factorisation, coefficients: torch.Tensor, targets: torch.Tensor, what: str = "") -> None:
    """Raise if the jittered solution ``coefficients`` (n, k) misses ``targets`` (n, k) on the unjittered kernel.

    ``n`` may be a prefix of the kernel's points. The relative residual of a zero target column is 0.
    """
    n = coefficients.shape[0]
    residual = torch.linalg.vector_norm(f.kernel[:n, :n] @ coefficients - targets, dim=0)
    size = torch.linalg.vector_norm(targets, dim=0)
    relative = torch.where(size > 0, residual / torch.where(size > 0, size, torch.ones_like(size)),
                           torch.zeros_like(size))
    worst = int(relative.argmax())
    value = float(relative[worst])
    if not value <= f.tolerance:
        column = f" (target column {worst})" if relative.numel() > 1 else ""
        raise ValueError(
            f"kernel is (numerically) singular and the targets are inconsistent on its degenerate directions (e.g. "
            f"a repeated input with different targets){what}: the jittered solution fits them only to a relative "
            f"training residual ||K a - r|| / ||r|| = {value:.3g}{column}, above the tolerance {f.tolerance:.3g} "
            f"({FIT_TOLERANCE_FACTOR:g} x max(jitter, eps of the kernel's dtype)); no interpolant exists. Remove or "
            f"merge repeated inputs, or give them the same target")


def cholesky_with_jitter(kernel: torch.Tensor, jitter: float = DEFAULT_JITTER) -> torch.Tensor:
    r"""Lower Cholesky factor of a Gram matrix with a stated jitter on its diagonal, in float64.

    The factor L of :math:`K + \epsilon\, \overline{\mathrm{diag} K}\, I`, with :math:`\epsilon` = ``jitter`` and
    :math:`\overline{\mathrm{diag} K}` the mean of the diagonal. Nothing is clipped: a matrix that is still not
    positive definite raises. A kernel symmetric only to the precision of its dtype (a float32 NTK) is symmetrised
    first, :math:`(K + K^\top)/2` in float64; an exactly symmetric one is used as it is
    (:func:`kdnb.core.validation.check_gram` with ``symmetric=True``).

    This only factorises: it cannot tell whether the targets of a later solve are consistent with a singular K (the
    solvers of this module check that, see the module's notes on degenerate systems).

    Parameters
    ----------
    kernel : torch.Tensor
        K, a symmetric (N, N) Gram matrix with finite entries (any floating dtype; used in float64). Symmetric to
        its dtype's precision: :math:`\max|K_{ij} - K_{ji}| \le 16\, \epsilon_\mathrm{dtype} \max|K|`.
    jitter : float, default 1e-10
        :math:`\epsilon \ge 0`, relative to the mean diagonal.

    Returns
    -------
    torch.Tensor
        L, lower triangular, (N, N) float64, with :math:`L L^\top = K + \epsilon\, \overline{\mathrm{diag} K}\, I`.

    Raises
    ------
    TypeError
        If ``kernel`` is not a tensor.
    ValueError
        If ``kernel`` is not a square finite floating-point matrix, ``jitter`` is negative or not finite, ``kernel``
        is asymmetric beyond its dtype's precision (above), or not positive definite even with the jitter (duplicate
        inputs with ``jitter=0``, or a matrix that is not a kernel).
    """
    return _factorise(kernel, jitter).factor


@dataclass(frozen=True)
class KernelRegression:
    r"""The min-norm interpolant of kernel regression (the endpoint of gradient flow on the linearized model).

    With :math:`r = z - f_0(X)`: coefficients :math:`a = K^{-1} r`, predictions
    :math:`f(x) = f_0(x) + \Theta(x, X)\, a`, and weight change :math:`\Delta \hat w = \Phi a` with
    :math:`\|\Delta \hat w\|^2 = r^\top K^{-1} r` (computed without forming the features :math:`\Phi`). Built by
    :func:`kernel_regression`, which checks that it interpolates (a singular K with inconsistent targets has no
    interpolant and raises there).

    Parameters
    ----------
    coefficients : torch.Tensor
        :math:`a = K^{-1} r`, shape (N,) or (N, k), float64.
    factor : torch.Tensor
        The lower Cholesky factor of the jittered K (:func:`cholesky_with_jitter`), (N, N) float64.
    residual_targets : torch.Tensor
        :math:`r = z - f_0(X)`, the shape of ``coefficients``, float64.

    References
    ----------
    Jacot, Gabriel & Hongler 2018; Lee et al. 2019 (a wide network trained to convergence is this kernel regression
    with its NTK).
    """

    coefficients: torch.Tensor
    factor: torch.Tensor
    residual_targets: torch.Tensor

    @property
    def weight_change_norm(self) -> torch.Tensor:
        """:math:`\\|\\Delta \\hat w\\| = \\sqrt{r^\\top K^{-1} r}` (one value per target column)."""
        return (self.residual_targets * self.coefficients).sum(0).clamp_min(0).sqrt()

    def predict(self, kernel_test_train: torch.Tensor, f0_test: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions :math:`f_0(x) + \\Theta(x, X) a` at test points.

        Parameters
        ----------
        kernel_test_train : torch.Tensor
            :math:`\\Theta(X_\\mathrm{test}, X)`, shape (M, N).
        f0_test : torch.Tensor or None, default None
            Initial outputs at the test points, (M,) or (M, k) (an (M,) vector is shared by the k columns);
            ``None``: zero.

        Returns
        -------
        torch.Tensor
            Shape (M,) or (M, k), float64.

        Raises
        ------
        TypeError
            If ``f0_test`` is not a tensor.
        ValueError
            If ``kernel_test_train`` is not an (M, N) matrix, or ``f0_test`` has another shape or non-finite entries.
        """
        if not isinstance(kernel_test_train, torch.Tensor) or kernel_test_train.ndim != 2:
            raise ValueError("kernel_test_train must be an (M, N) matrix Θ(X_test, X_train)")
        n = self.coefficients.shape[0]
        if kernel_test_train.shape[1] != n:
            raise ValueError(f"kernel_test_train must have {n} columns (the training points), got "
                             f"{kernel_test_train.shape[1]}")
        out = kernel_test_train.to(self.coefficients.device, torch.float64) @ self.coefficients
        return out if f0_test is None else out + _initial_outputs(f0_test, out, "f0_test")


def kernel_regression(
    kernel: torch.Tensor,
    targets: torch.Tensor,
    *,
    f0: torch.Tensor | None = None,
    jitter: float = DEFAULT_JITTER,
) -> KernelRegression:
    r"""Solve kernel regression, :math:`a = K^{-1}(z - f_0)`, by one Cholesky factorisation.

    Float64, jitter and symmetrisation as in :func:`cholesky_with_jitter`. Any loss convex in the logits whose
    per-example minimiser is z leads gradient flow from :math:`w_0` to this solution.

    The solution of the jittered system is checked against the unjittered K: with :math:`r = z - f_0`, the relative
    training residual :math:`\|K a - r\| / \|r\|` of every target column must be at most
    ``1e4 * max(jitter, torch.finfo(kernel.dtype).eps)`` (1e-6 for the default jitter and float64, 1.2e-3 for
    float32; :data:`FIT_TOLERANCE_FACTOR`). A singular K (e.g. a repeated input) with consistent targets passes, and
    gives the fit without the repeat; with inconsistent targets (the repeat with another target) no interpolant
    exists, and it raises.

    Parameters
    ----------
    kernel : torch.Tensor
        K = :math:`\Theta(X, X)`, a symmetric positive (semi-)definite (N, N) Gram matrix, symmetric to its dtype's
        precision (:func:`cholesky_with_jitter`).
    targets : torch.Tensor
        z, (N,) or (N, k): k right-hand sides at once (e.g. one per soft ratio), finite.
    f0 : torch.Tensor or None, default None
        The initial outputs :math:`f_0(X)` on the training points, the shape of ``targets`` or (N,) shared by its k
        columns; ``None``: zero, as with :class:`kdnb.core.models.AntisymmetricPair`.
    jitter : float, default 1e-10
        Relative diagonal jitter of the factorisation (:func:`cholesky_with_jitter`), >= 0.

    Returns
    -------
    KernelRegression
        The coefficients, the factor and the residual targets :math:`z - f_0`.

    Raises
    ------
    TypeError
        If ``kernel``, ``targets`` or ``f0`` is not a tensor.
    ValueError
        As :func:`cholesky_with_jitter`, or if ``targets`` is not (N,) or (N, k) with finite floating entries, or
        ``f0`` does not match it, or the jittered solution misses the targets (relative training residual above the
        tolerance: K is numerically singular and the targets are inconsistent on its degenerate directions).
    """
    f = _factorise(kernel, jitter)
    factor = f.factor
    z = _residual_targets(targets, f0, factor.shape[0], factor.device)
    rhs = z if z.ndim == 2 else z[:, None]
    coefficients = torch.cholesky_solve(rhs, factor)
    _check_fit(f, coefficients, rhs)
    if z.ndim == 1:
        coefficients = coefficients[:, 0]
    return KernelRegression(coefficients=coefficients, factor=factor, residual_targets=z)


def weight_change_norm(
    kernel: torch.Tensor,
    targets: torch.Tensor,
    *,
    f0: torch.Tensor | None = None,
    prefixes: bool = False,
    jitter: float = DEFAULT_JITTER,
) -> torch.Tensor:
    r"""Norm of the min-norm weight change that fits ``targets``: :math:`\|\Delta \hat w\| = \sqrt{r^\top K^{-1} r}`.

    With ``prefixes=True`` it returns :math:`\|\Delta \hat w_n\|` for *every* prefix n = 1..N of the training points
    at once, from one factorisation :math:`K = L L^\top`: with :math:`v = L^{-1} r`, the leading n x n block of K has
    Cholesky factor :math:`L_{:n,:n}`, so :math:`\|\Delta \hat w_n\|^2 = \sum_{i \le n} v_i^2`.

    The fit is checked as in :func:`kernel_regression`, on the whole system (all N points): the relative training
    residual :math:`\|K a - r\| / \|r\|` of :math:`a = L^{-\top} v` must be at most
    ``1e4 * max(jitter, eps of the kernel's dtype)``. With ``prefixes=True`` the prefixes are not checked one by one;
    this is enough because K is positive semi-definite: a direction u of the first n points with
    :math:`K_n u = 0` also has :math:`K u = 0`, and :math:`u^\top r = u^\top r_{:n}`, so targets inconsistent on
    a prefix are inconsistent on the whole system (with a residual smaller by at most :math:`\|r_{:n}\|/\|r\|`).

    Parameters
    ----------
    kernel : torch.Tensor
        K, a symmetric positive (semi-)definite (N, N) Gram matrix, symmetric to its dtype's precision
        (:func:`cholesky_with_jitter`).
    targets : torch.Tensor
        z, (N,) or (N, k), finite.
    f0 : torch.Tensor or None, default None
        Initial outputs on the training points, as in :func:`kernel_regression`; ``None``: zero.
    prefixes : bool, default False
        Return the norm for every prefix n = 1..N instead of only for all N points.
    jitter : float, default 1e-10
        Relative diagonal jitter of the factorisation (:func:`cholesky_with_jitter`), >= 0.

    Returns
    -------
    torch.Tensor
        Float64. Without ``prefixes``: a scalar for (N,) targets, (k,) for (N, k). With ``prefixes``: (N,) or
        (N, k), entry n - 1 for the first n points.

    Raises
    ------
    TypeError, ValueError
        As :func:`kernel_regression`.
    """
    f = _factorise(kernel, jitter)
    factor = f.factor
    r = _residual_targets(targets, f0, factor.shape[0], factor.device)
    rhs = r if r.ndim == 2 else r[:, None]
    v = torch.linalg.solve_triangular(factor, rhs, upper=False)
    _check_fit(f, torch.linalg.solve_triangular(factor.T, v, upper=True), rhs)
    squares = v.square().cumsum(0) if prefixes else v.square().sum(0, keepdim=True)
    norms = squares.sqrt()
    if not prefixes:
        norms = norms[0]
    return norms if r.ndim == 2 else norms[..., 0]



class NestedKernelRegression:
    r"""Kernel regression on every prefix :math:`X_{:n}` of one sample, n = 1..N, from one factorisation.

    With :math:`K = L L^\top` (float64, jitter as in :func:`cholesky_with_jitter`) the leading n x n block
    :math:`K_n` has Cholesky factor :math:`L_{:n,:n}`, and :math:`v = L^{-1} r` restricted to its first n entries is
    :math:`L_n^{-1} r_n`. Hence, with :math:`r = z - f_0(X)`:

    * :math:`\|\Delta\hat w_n\|^2 = r_n^\top K_n^{-1} r_n = \sum_{i \le n} v_i^2` for all n at once
      (:meth:`norms`), and each increment is :math:`v_{n+1}^2 = (r_{n+1} - \mu_n(x_{n+1}))^2 / s_n^2(x_{n+1})`, the
      squared standardised error of the kernel-regression prediction :math:`\mu_n` with posterior variance
      :math:`s_n^2`;
    * the coefficients :math:`a_n = K_n^{-1} r_n = L_n^{-\top} v_{:n}` cost O(n²) each (:meth:`coefficients`).

    **Fit checks** (see :func:`kernel_regression`). The whole sample is checked at construction: the relative
    training residual :math:`\|K a_N - r\| / \|r\|` of every target column, against the unjittered K, must be at
    most ``1e4 * max(jitter, eps of the kernel's dtype)``. This covers :meth:`norms` and :meth:`oracle_angles` for
    every prefix, because K is positive semi-definite: a degenerate direction u of a prefix (:math:`K_n u = 0`) is
    one of the whole sample (:math:`K u = 0`, :math:`u^\top r = u^\top r_{:n}`), so targets inconsistent on a
    prefix are inconsistent on the whole sample (their residual is smaller by at most
    :math:`\|r_{:n}\| / \|r\|`). :meth:`coefficients` and :meth:`predict` check their own prefix n
    (:math:`\|K_n a_n - r_{:n}\| / \|r_{:n}\|`), at O(n²) like the solve.

    Parameters
    ----------
    kernel : torch.Tensor
        K, the symmetric positive (semi-)definite (N, N) Gram matrix of the whole sample, in its order (the prefixes
        are its leading blocks); symmetric to its dtype's precision (:func:`cholesky_with_jitter`).
    targets : torch.Tensor
        z, (N,) or (N, k): k right-hand sides solved together (e.g. one per soft ratio), finite.
    f0 : torch.Tensor or None, default None
        Initial outputs on the sample, as in :func:`kernel_regression`; ``None``: zero.
    jitter : float, default 1e-10
        Relative diagonal jitter of the factorisation (:func:`cholesky_with_jitter`), >= 0.

    Attributes
    ----------
    factor : torch.Tensor
        L, (N, N) float64.
    residual_targets : torch.Tensor
        r, (N, k) float64 (k = 1 for (N,) targets).
    whitened : torch.Tensor
        :math:`v = L^{-1} r`, (N, k) float64.

    Raises
    ------
    TypeError, ValueError
        As :func:`kernel_regression` (the whole sample's fit is checked here).
    """

    def __init__(self, kernel: torch.Tensor, targets: torch.Tensor, *, f0: torch.Tensor | None = None,
                 jitter: float = DEFAULT_JITTER):
        self._factorisation = _factorise(kernel, jitter)
        self.factor = self._factorisation.factor
        residual = _residual_targets(targets, f0, self.factor.shape[0], self.factor.device)
        self._vector = residual.ndim == 1
        self.residual_targets = residual[:, None] if self._vector else residual
        self.whitened = torch.linalg.solve_triangular(self.factor, self.residual_targets, upper=False)
        self._solve(self.size)

    @property
    def size(self) -> int:
        """N, the number of points of the whole sample."""
        return self.factor.shape[0]

    def _shape(self, values: torch.Tensor) -> torch.Tensor:
        return values[..., 0] if self._vector else values

    def _check_n(self, n) -> int:
        n = check_positive_int(n, "n")
        if n > self.size:
            raise ValueError(f"n must be in [1, {self.size}] (the sample size), got {n}")
        return n

    def norms(self) -> torch.Tensor:
        r"""The norms :math:`\|\Delta\hat w_n\| = \sqrt{\sum_{i \le n} v_i^2}` of every prefix's weight change.

        Returns
        -------
        torch.Tensor
            Float64, (N,) or (N, k) as the targets; entry n - 1 for the first n points.
        """
        return self._shape(self.whitened.square().cumsum(0).sqrt())

    def coefficients(self, n: int) -> torch.Tensor:
        r"""The coefficients :math:`a_n = K_n^{-1} r_n` of the first n points.

        They give the weight change :math:`\Delta\hat w_n = \Phi_n a_n`.

        Parameters
        ----------
        n : int
            The prefix size, in [1, N].

        Returns
        -------
        torch.Tensor
            Float64, (n,) or (n, k) as the targets.

        Raises
        ------
        TypeError
            If ``n`` is not an int.
        ValueError
            If ``n`` is not in [1, N], or the first n points' jittered solution misses their targets (relative
            training residual above the tolerance, see the class's fit checks).
        """
        return self._shape(self._solve(self._check_n(n)))

    def _solve(self, n: int) -> torch.Tensor:
        """:math:`a_n` (n, k), checked against the unjittered :math:`K_n`."""
        a = torch.linalg.solve_triangular(self.factor[:n, :n].T, self.whitened[:n], upper=True)
        _check_fit(self._factorisation, a, self.residual_targets[:n],
                   "" if n == self.size else f" on the first {n} points")
        return a

    def predict(self, n: int, kernel_test_train: torch.Tensor, f0_test: torch.Tensor | None = None) -> torch.Tensor:
        r"""The student trained on the first n points at test inputs, :math:`f_0(x) + \Theta(x, X_n)\, a_n`.

        Parameters
        ----------
        n : int
            The prefix size, in [1, N].
        kernel_test_train : torch.Tensor
            :math:`\Theta(X_\mathrm{test}, X_m)`, shape (M, m), for any m >= n (only its first n columns are used, so
            one test kernel against the whole sample serves every n).
        f0_test : torch.Tensor or None, default None
            Initial outputs at the test points, (M,) or (M, k) (an (M,) vector is shared by the k columns);
            ``None``: zero.

        Returns
        -------
        torch.Tensor
            Float64, (M,) or (M, k) as the targets.

        Raises
        ------
        TypeError
            If ``n`` is not an int, or ``f0_test`` is not a floating-point tensor.
        ValueError
            If ``n`` is not in [1, N], ``kernel_test_train`` is not a matrix with at least n columns, or ``f0_test``
            does not have M rows or is not finite, or as :meth:`coefficients`.
        """
        n = self._check_n(n)
        if not isinstance(kernel_test_train, torch.Tensor) or kernel_test_train.ndim != 2:
            raise ValueError("kernel_test_train must be an (M, m) matrix Θ(X_test, X_train) with m >= n")
        if kernel_test_train.shape[1] < n:
            raise ValueError(f"kernel_test_train has {kernel_test_train.shape[1]} columns; it needs at least n = {n}")
        out = kernel_test_train[:, :n].to(self.factor.device, torch.float64) @ self.coefficients(n)
        if f0_test is not None:
            f0_test = check_finite_tensor(f0_test, "f0_test").to(out.device, torch.float64)
            if f0_test.shape[0] != out.shape[0]:
                raise ValueError(f"f0_test must have {out.shape[0]} rows (the test points), got {tuple(f0_test.shape)}")
            out = out + (f0_test[:, None] if out.ndim == 2 and f0_test.ndim == 1 else f0_test)
        return out

    def oracle_angles(self) -> torch.Tensor:
        r"""Angles :math:`\bar\alpha_n = \angle(\Delta\hat w_n, \Delta\hat w_N)` between prefixes and the whole sample.

        From the projection identity :math:`\cos\bar\alpha_n = \|\Delta\hat w_n\| / \|\Delta\hat w_N\|` (valid because
        the samples are nested). The whole sample plays the oracle: report N.

        Returns
        -------
        torch.Tensor
            Radians in :math:`[0, \pi/2]`, float64, (N,) or (N, k) as the targets; entry n - 1 for the first n points.

        References
        ----------
        Ji & Zhu 2020, Theorem 1 (the student-oracle angle :math:`\bar\alpha_n`).
        """
        norms = self.whitened.square().cumsum(0).sqrt()
        cosine = norms / norms[-1:]
        # The ratio exceeds 1 only by rounding (a projection cannot be longer than the vector).
        return self._shape(torch.arccos(cosine.clamp(max=1.0)))


def weight_change_cosine(kernel: torch.Tensor, coefficients_1: torch.Tensor,
                         coefficients_2: torch.Tensor) -> torch.Tensor:
    r"""Cosine of the angle between two weight changes, from the kernel alone.

    For :math:`\Delta w_1 = \Phi_1 a_1` and :math:`\Delta w_2 = \Phi_2 a_2`:
    :math:`\cos = a_1^\top K_{12} a_2 / \sqrt{(a_1^\top K_{11} a_1)(a_2^\top K_{22} a_2)}`.

    ``kernel`` is the (N, N) Gram matrix of a sample whose first n1 points carry ``coefficients_1`` and whose first
    n2 points carry ``coefficients_2`` (for a student and an oracle proxy: n1 = n, n2 = N). Coefficients are (n1,)
    and (n2,), or (n1, k) and (n2, k): one cosine per column. This is the direct formula that
    :meth:`NestedKernelRegression.oracle_angles` replaces by a ratio of norms.

    Parameters
    ----------
    kernel : torch.Tensor
        The (N, N) Gram matrix of the sample, finite.
    coefficients_1 : torch.Tensor
        :math:`a_1`, (n1,) or (n1, k), n1 <= N, for the first n1 points.
    coefficients_2 : torch.Tensor
        :math:`a_2`, (n2,) or (n2, k) with the same k, n2 <= N, for the first n2 points.

    Returns
    -------
    torch.Tensor
        The cosine(s) in [-1, 1] up to rounding, float64: a scalar, or (k,).

    Raises
    ------
    TypeError
        If an argument is not a tensor, or the coefficients are not floating point.
    ValueError
        If ``kernel`` is not a square finite floating-point matrix, the coefficients are not finite, have more rows
        than the kernel has points, or are not (n,) or (n, k) with the same k.
    """
    k = check_gram(kernel)
    a1 = check_finite_tensor(coefficients_1, "coefficients_1").to(k.device, torch.float64)
    a2 = check_finite_tensor(coefficients_2, "coefficients_2").to(k.device, torch.float64)
    n1, n2 = a1.shape[0], a2.shape[0]
    if max(n1, n2) > k.shape[0]:
        raise ValueError(f"the coefficients have {n1} and {n2} rows, more than the kernel's {k.shape[0]} points")
    if a1.shape[1:] != a2.shape[1:] or a1.ndim > 2:
        raise ValueError(f"coefficients_1 and coefficients_2 must be (n,) or (n, k) with the same k, got "
                         f"{tuple(a1.shape)} and {tuple(a2.shape)}")
    inner = (a1 * (k[:n1, :n2] @ a2)).sum(0)
    norm1 = (a1 * (k[:n1, :n1] @ a1)).sum(0).clamp_min(0).sqrt()
    norm2 = (a2 * (k[:n2, :n2] @ a2)).sum(0).clamp_min(0).sqrt()
    return inner / (norm1 * norm2)



class KernelGradientFlow:
    r"""A linearized wide network trained by gradient flow on the squared loss for a time :math:`\tau`, in closed form.

    The network has f0 ≡ 0; the loss is :math:`\frac{1}{2n_t}\sum_i (f(x_i) - y_i)^2` and :math:`\tau` is learning
    rate x steps.

    With :math:`K_t = V \mathrm{diag}(\lambda) V^\top` (float64 eigendecomposition) the teacher is
    :math:`f^\tau(x) = \Theta(x, X_t)\, c_\tau`,

    .. math:: c_\tau = V\, \mathrm{diag}\!\left(\frac{1 - e^{-\lambda\tau/n_t}}{\lambda}\right) V^\top Y_t,
              \qquad \|\Delta w_t(\tau)\|^2 = c_\tau^\top K_t c_\tau
              = \sum_j \frac{(1 - e^{-\lambda_j\tau/n_t})^2}{\lambda_j} (v_j^\top Y_t)^2.

    Each eigencomponent grows monotonically with :math:`\tau`, so the weight norm and the logit scale increase, and
    the detail (small-eigenvalue directions) arrives last (Ji & Zhu 2020, Fig. 4). As :math:`\tau \to \infty` the
    teacher becomes the interpolant :math:`K_t^{-1} Y_t`. Eigenvalues at or below rounding level
    (:math:`10^{-13}\lambda_\max`) are treated as zero, where the factor is its limit :math:`\tau/n_t`.

    A singular :math:`K_t` (e.g. a repeated input) is handled by design, even with inconsistent targets: along a null
    direction the training logits do not move, and a repeated input's logit tends to the mean of its targets (the
    least-squares fit) instead of an interpolant. There is no jitter and no fit check.

    Parameters
    ----------
    kernel : torch.Tensor
        :math:`K_t`, the (n_t, n_t) Gram matrix of the teacher's training points, finite, symmetric to its dtype's
        precision (:math:`\max|K_{ij} - K_{ji}| \le 16\, \epsilon_\mathrm{dtype} \max|K|`; used symmetrised,
        :math:`(K + K^\top)/2` in float64, as in :func:`cholesky_with_jitter`).
    targets : torch.Tensor
        :math:`Y_t`, shape (n_t,), finite.

    Attributes
    ----------
    kernel : torch.Tensor
        :math:`K_t` in float64.
    eigenvalues, eigenvectors : torch.Tensor
        :math:`\lambda` (n_t,) and V (n_t, n_t), float64.
    projected_targets : torch.Tensor
        :math:`V^\top Y_t`, (n_t,).
    size : int
        :math:`n_t`.

    Raises
    ------
    TypeError
        If ``kernel`` is not a tensor, or ``targets`` is not a floating-point tensor.
    ValueError
        If ``kernel`` is not a square, finite floating-point matrix symmetric to its dtype's precision, or ``targets``
        is not finite of shape (n_t,).

    References
    ----------
    Jacot, Gabriel & Hongler 2018 (for the squared loss the linearized network follows a linear ODE); Ji & Zhu 2020,
    Fig. 4 (teachers stopped early).
    """

    def __init__(self, kernel: torch.Tensor, targets: torch.Tensor):
        k = check_gram(kernel, symmetric=True)
        y = check_finite_tensor(targets, "targets").to(k.device, torch.float64)
        if y.shape != (k.shape[0],):
            raise ValueError(f"targets must have shape ({k.shape[0]},) to match the kernel, got {tuple(y.shape)}")
        self.kernel = k
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(k)
        self.projected_targets = self.eigenvectors.T @ y
        self.size = k.shape[0]

    def _factors(self, tau) -> tuple[torch.Tensor, bool]:
        if isinstance(tau, torch.Tensor) and tau.ndim == 0:
            tau = tau.item()
        scalar = not isinstance(tau, (Sequence, torch.Tensor)) or isinstance(tau, (str, bytes))
        taus = [tau] if scalar else check_sequence(tau, "tau")
        taus = torch.tensor([check_positive(t, "tau") for t in taus], dtype=torch.float64, device=self.kernel.device)
        lam = self.eigenvalues[:, None]
        zero = lam <= 1e-13 * float(self.eigenvalues.max())
        safe = torch.where(zero, torch.ones_like(lam), lam)
        # (1 − e^{−λτ/n}) / λ, with its limit τ/n for λ ≈ 0
        factor = torch.where(zero, taus[None, :] / self.size, -torch.expm1(-safe * taus[None, :] / self.size) / safe)
        return factor, scalar

    def coefficients(self, tau) -> torch.Tensor:
        r"""The teacher's coefficients :math:`c_\tau` after training time ``tau``.

        Parameters
        ----------
        tau : float or sequence of float
            Training time(s) :math:`\tau` (learning rate x steps), each finite and > 0.

        Returns
        -------
        torch.Tensor
            Float64: (n_t,) for a number ``tau``, (n_t, len(tau)) for a sequence.

        Raises
        ------
        TypeError, ValueError
            If a ``tau`` is not a real number, or not finite and > 0, or the sequence is empty.
        """
        factor, scalar = self._factors(tau)
        c = self.eigenvectors @ (factor * self.projected_targets[:, None])
        return c[:, 0] if scalar else c

    def logits(self, kernel_test_train: torch.Tensor, tau) -> torch.Tensor:
        r"""Teacher logits :math:`f^\tau(x) = \Theta(x, X_t)\, c_\tau` at test points.

        Parameters
        ----------
        kernel_test_train : torch.Tensor
            :math:`\Theta(X_\mathrm{test}, X_t)`, shape (M, n_t): one row per test point.
        tau : float or sequence of float
            Training time(s), each finite and > 0.

        Returns
        -------
        torch.Tensor
            Float64: (M,) for a number ``tau``, (M, len(tau)) for a sequence.

        Raises
        ------
        TypeError, ValueError
            If ``kernel_test_train`` is not an (M, n_t) matrix, or ``tau`` is invalid (see :meth:`coefficients`).
        """
        if not isinstance(kernel_test_train, torch.Tensor) or kernel_test_train.ndim != 2 \
                or kernel_test_train.shape[1] != self.size:
            raise ValueError(f"kernel_test_train must be an (M, {self.size}) matrix Θ(X_test, X_teacher)")
        return kernel_test_train.to(self.kernel.device, torch.float64) @ self.coefficients(tau)

    def weight_change_norm(self, tau) -> torch.Tensor:
        r"""The norm :math:`\|\Delta w_t(\tau)\| = \sqrt{c_\tau^\top K_t c_\tau}` of the teacher's weight change.

        Parameters
        ----------
        tau : float or sequence of float
            Training time(s), each finite and > 0.

        Returns
        -------
        torch.Tensor
            Float64: a scalar for a number ``tau``, (len(tau),) for a sequence.

        Raises
        ------
        TypeError, ValueError
            If ``tau`` is invalid (see :meth:`coefficients`).
        """
        factor, scalar = self._factors(tau)
        lam = self.eigenvalues.clamp_min(0)[:, None]
        squares = (lam * factor.square() * self.projected_targets[:, None].square()).sum(0)
        norm = squares.sqrt()
        return norm[0] if scalar else norm

