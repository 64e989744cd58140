r"""Knowledge distillation into an infinitely wide student (Ji & Zhu, NeurIPS 2020).

A very wide student trains linearly in its weights (chapter 2), so distillation reduces to kernel regression. The
objects of Ji & Zhu's theory are then closed forms, computed here in float64:

* **Effective student logits** (:func:`effective_student_logits`). The student fits every training point exactly, so
  its logit there is the minimiser of the per-example distillation loss (binary, one logit, sigmoid)

  .. math:: \ell(z) = \rho\, c_T\, H\!\big(\sigma(z_t/T), \sigma(z/T)\big) + (1-\rho)\, H\!\big(y_g, \sigma(z)\big),

  the root :math:`z_\mathrm{eff}(z_t, y_g)` of
  :math:`g(z) = \rho \frac{c_T}{T}[\sigma(z/T) - \sigma(z_t/T)] + (1-\rho)[\sigma(z) - y_g]`.
  ``t2_scaling=False`` is the plain soft term :math:`c_T = 1` (the default here, our best reading of the paper;
  unverified); ``True`` is Hinton's :math:`c_T = T^2`. The two agree at T = 1.
* **The student** (:class:`NestedKernelRegression`): kernel regression of the effective logits,
  :math:`\Delta\hat w_n = \Phi_n K_n^{-1}(z_n - f_0(X_n))`, for *every* prefix n of one sample, from one Cholesky
  factorisation. Its norm is :math:`\|\Delta\hat w_n\| = \sqrt{r_n^\top K_n^{-1} r_n}`.
* **Zero and oracle weight changes.** :math:`\Delta w_z = -\Phi K^{-1} f_0(X)` fits the zero function, so
  :math:`\Delta\hat w - \Delta w_z = \Phi K^{-1} z` depends only on the targets: with ``f0=None`` (the antisymmetric
  initialisation, :class:`kdnb.models.AntisymmetricPair`) every quantity below *is* the one relative to
  :math:`\Delta w_z`. The oracle :math:`\Delta w_*` is the limit :math:`n \to \infty`; it is approximated by the
  solve on :math:`N_\mathrm{or} \gg n` points, of which the training points are a prefix. For :math:`\rho < 1` the
  oracle target is discontinuous and its norm grows with :math:`N_\mathrm{or}`, so always report :math:`N_\mathrm{or}`.
* **Angles** :math:`\bar\alpha_n = \angle(\Delta\hat w_n, \Delta w_*)`. For nested samples :math:`\Delta\hat w_n`
  is the orthogonal projection of :math:`\Delta\hat w_N` onto :math:`\mathrm{span}\,\Phi_n`, hence
  :math:`\cos\bar\alpha_n = \|\Delta\hat w_n\| / \|\Delta\hat w_N\|` (:meth:`NestedKernelRegression.oracle_angles`).
* **Transfer risk** :math:`R_n = P_x[\mathrm{sign} f_s(x) \ne \mathrm{sign}\, z_*(x)]` (:func:`transfer_risk`),
  the **accumulative angle distribution**
  :math:`p(\beta) = P_x\big[\,|\pi/2 - \angle(\phi(x), v)| \le \beta\,\big]` with :math:`v = \Delta w_*` and
  :math:`|\pi/2 - \angle(\phi(x), v)| = \arcsin\big(|z_*(x)| / (\sqrt{\Theta(x,x)}\,\|v\|)\big)`
  (:func:`boundary_angles`, :func:`accumulative_angle_distribution`), and **Theorem 1**,
  :math:`R_n \le p(\bar\alpha_n)` (:func:`transfer_risk_experiment` checks it on every run).
* **Data inefficiency** (Definition 1),
  :math:`I(n) = n\, \mathbb E\,[\ln\|\Delta\hat w_{n+1}\| - \ln\|\Delta\hat w_n\|] \approx
  d\,\mathbb E \ln\|\Delta\hat w_n\| / d\ln n` (:func:`data_inefficiency`, windowed because the one-step version is
  too noisy).
* **A teacher stopped early** (:class:`EarlyStoppedTeacher`): a linearized wide network trained by gradient flow on
  the squared loss for time :math:`\tau`.

The student's kernel is the analytic NTK of a two-layer ReLU network whose first layer has a bias, written with
augmented inputs :math:`\tilde x = [x, 1]/\sqrt 2` (:func:`student_kernel`). The bias matters: without it the
odd spherical harmonics of degree :math:`\ge 3` are missing from the kernel on the sphere, the student cannot learn
them, and the risk stops falling (chapter 2, section 5).

Which equations are reconstructions: the paper's body could not be read, so the soft-term constant :math:`c_T`, the
definitions of :math:`\Delta w_z`, :math:`\Delta w_*`, :math:`p(\beta)` and the form of Theorem 1 and Definition 1 are
reconstructed from its captions and checked for consistency by simulation
(``shared/papers/ji-zhu-2020-kd-wide-networks.md``). The uncertain conventions are arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .data import GaussianMixtureOnSphere, sample_sphere
from .runtime import float64_device
from .ntk import DEFAULT_JITTER, _check_gram, _residual_targets, cholesky_with_jitter, relu_kernels
from .validation import (
    check_choice,
    check_finite_tensor,
    check_in_unit_interval,
    check_positive,
    check_positive_int,
    check_temperature,
)

__all__ = [
    "ARCHITECTURES",
    "EarlyStoppedTeacher",
    "HardLabelEffect",
    "ImperfectTeacherRun",
    "NestedKernelRegression",
    "StoppedTeacherNorms",
    "TransferRiskRun",
    "accumulative_angle_distribution",
    "boundary_angles",
    "data_inefficiency",
    "effective_logits_hard_derivative",
    "effective_student_logits",
    "flip_signs",
    "hard_label_effect",
    "imperfect_teacher_experiment",
    "kernel_diagonal",
    "kernel_students",
    "sample_initial_function",
    "student_kernel",
    "student_nngp",
    "transfer_risk",
    "early_stopped_distillation_norms",
    "target_difficulty_norms",
    "transfer_risk_experiment",
    "weight_change_cosine",
]

ARCHITECTURES = {
    # x̃ = [x, 1]/√2: first-layer weight and bias variances 1/2 each, readout variance 1; Θ(x, x) = 1 on the sphere.
    "two_layer_bias": dict(depth=1, weight_variance=0.5, bias_variance=0.5, readout_weight_variance=1.0,
                           readout_bias_variance=0.0),
    # A bias-free network with two hidden layers (He variances) is also universal on the sphere.
    "three_layer": dict(depth=2, weight_variance=2.0, bias_variance=0.0),
    # Bias-free two-layer: odd harmonics of degree >= 3 are missing. Only for showing that pitfall.
    "two_layer": dict(depth=1, weight_variance=2.0, bias_variance=0.0),
}

_BRACKET_DOUBLINGS = 1100  # 2**1100 > float64 max: no finite root is missed
_LARGEST_LOGIT = 600.0  # beyond ~700 both sigmoid tails underflow in float64 and g(z) reads exactly 0
_STEP_TOLERANCE = 1e-12  # relative Newton step at which an element counts as converged
_SOLVER_LIMIT = 2200  # safeguarded Newton needs ~5-10 steps; bisection alone reaches adjacent floats in < 2200


# ---------------------------------------------------------------------------------------------------------------------
# Effective student logits
# ---------------------------------------------------------------------------------------------------------------------


def _sigmoid_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """σ(a) − σ(b) = σ(a)σ(−b) − σ(−a)σ(b): each product keeps its relative precision in the tails."""
    return torch.sigmoid(a) * torch.sigmoid(-b) - torch.sigmoid(-a) * torch.sigmoid(b)


def _sigmoid_minus_label(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """σ(z) − y = (1 − y)σ(z) − yσ(−z), exact in the tails for y ∈ {0, 1}."""
    return (1 - y) * torch.sigmoid(z) - y * torch.sigmoid(-z)


def _as_list(values, name: str) -> list:
    """A non-empty list from a sequence or a 1-D tensor, with an error naming ``name`` otherwise."""
    if isinstance(values, torch.Tensor):
        if values.ndim != 1:
            raise ValueError(f"{name} must be a 1-D sequence, got a tensor of shape {tuple(values.shape)}")
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence (a list of values), got {type(values).__name__}")
    if len(values) == 0:
        raise ValueError(f"{name} must not be empty")
    return list(values)


def _check_rho(rho) -> tuple[torch.Tensor, bool]:
    """ρ as a float64 vector and whether it was a sequence. ρ = 0 has no finite root, so it is refused."""
    if isinstance(rho, torch.Tensor) and rho.ndim == 0:
        rho = rho.item()
    scalar = not isinstance(rho, (Sequence, torch.Tensor)) or isinstance(rho, (str, bytes))
    values = [rho] if scalar else list(rho.tolist() if isinstance(rho, torch.Tensor) else rho)
    if not values:
        raise ValueError("rho must be a number in (0, 1] or a non-empty sequence of them")
    for value in values:
        if not isinstance(value, bool) and isinstance(value, (int, float)) and float(value) == 0.0:
            raise ValueError(
                "rho must be in (0, 1], got 0: with no soft term the per-example loss is pure cross-entropy on the "
                "hard label, whose minimiser is z = +inf (y = 1) or -inf (y = 0), so there is no finite effective "
                "logit. Use a small rho (e.g. 0.05) or train for a fixed time instead")
        check_in_unit_interval(value, "rho", open_low=True)
    return torch.tensor([float(v) for v in values], dtype=torch.float64), scalar


def _check_logits_and_labels(teacher_logits, labels):
    # detached: the root is found iteratively, and autograd through the iterations is not the implicit derivative
    z_t = check_finite_tensor(teacher_logits, "teacher_logits").detach().to(torch.float64)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.shape != teacher_logits.shape:
        raise ValueError(f"labels must have the shape of teacher_logits {tuple(teacher_logits.shape)}, got "
                         f"{tuple(labels.shape)} (one hard label per teacher logit)")
    y = labels.detach().to(device=z_t.device, dtype=torch.float64)
    if not bool(torch.isfinite(y).all()) or bool(((y < 0) | (y > 1)).any()):
        raise ValueError("labels must lie in [0, 1] (the probability of the positive class; usually 0 or 1)")
    return z_t, y


def _root_function(z, z_t, y, rho, temperature, c_t):
    soft = _sigmoid_difference(z / temperature, z_t / temperature)
    return rho * (c_t / temperature) * soft + (1 - rho) * _sigmoid_minus_label(z, y)


def _solve_effective_logits(z_t, y, r, temperature, c_t):
    """Roots of g for flat (M,) arrays. Each element is solved on its own (converged elements leave the active set),
    so a root does not depend on the other elements it is batched with."""

    def g(z, idx):
        return _root_function(z, z_t[idx], y[idx], r[idx], temperature, c_t)

    def slope(z, idx):  # g'(z) > 0
        def sigmoid_slope(a):
            return torch.sigmoid(a) * torch.sigmoid(-a)

        return r[idx] * c_t / temperature**2 * sigmoid_slope(z / temperature) + (1 - r[idx]) * sigmoid_slope(z)

    # Bracket [lo, hi] with g(lo) <= 0 <= g(hi), stepping outwards from z_t with doubling steps.
    lo, hi = z_t - 1.0, z_t + 1.0
    for side, sign in ((lo, -1.0), (hi, 1.0)):
        active = torch.arange(len(z_t), device=z_t.device)
        step = 1.0
        for _ in range(_BRACKET_DOUBLINGS):
            wrong = g(side[active], active) * sign < 0
            active = active[wrong]
            if active.numel() == 0:
                break
            side[active] += sign * step
            step *= 2
        if active.numel() or not bool(torch.isfinite(side).all()):
            raise ValueError("no finite effective logit: the soft term underflows for these teacher logits and "
                             "temperature (|teacher_logits| / temperature is too large for float64)")

    # Newton's method kept inside the bracket: a step that would leave it bisects the bracket instead, so every
    # iteration shrinks the bracket or converges quadratically.
    root = torch.minimum(torch.maximum(z_t, lo), hi)
    active = torch.arange(len(z_t), device=z_t.device)
    eps = torch.finfo(torch.float64).eps
    for _ in range(_SOLVER_LIMIT):
        z, a, b = root[active], lo[active], hi[active]
        value = g(z, active)
        a, b = torch.where(value < 0, z, a), torch.where(value > 0, z, b)
        newton = z - value / slope(z, active)
        # Near the root the Newton step is rounding noise of g divided by g' (up to ~1e-12 where g is flat); a step
        # that small means quadratic convergence has already made the error far smaller, so the element is done.
        # Testing this before the bracket matters: a zero step sits on the bracket's edge and must not bisect.
        small = (newton - z).abs() <= _STEP_TOLERANCE * z.abs().clamp_min(1.0)
        inside = (newton > a) & (newton < b)
        step = torch.where(small | inside, newton, a + (b - a) / 2) - z
        step = torch.where(value == 0, torch.zeros_like(step), step)
        root[active], lo[active], hi[active] = z + step, a, b
        moving = ~small & (value != 0) & (b - a > 4 * eps * z.abs().clamp_min(1.0))
        active = active[moving]
        if active.numel() == 0:
            break
    return root


def effective_student_logits(
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    rho,
    temperature: float,
    *,
    t2_scaling: bool = False,
) -> torch.Tensor:
    r"""The logit a wide student reaches on a training point: the root of
    :math:`g(z) = \rho \frac{c_T}{T}[\sigma(z/T) - \sigma(z_t/T)] + (1-\rho)[\sigma(z) - y_g] = 0` (Ji & Zhu 2020,
    Eq. "effective logits"), with :math:`c_T = T^2` if ``t2_scaling`` else 1.

    ``teacher_logits`` :math:`z_t` and ``labels`` :math:`y_g \in [0, 1]` have the same shape; ``rho`` is a number in
    (0, 1] or a sequence of them, in which case the result has a last axis over ``rho``. Float64.

    g is strictly increasing in z, so the root is unique; it is bracketed by stepping outwards from :math:`z_t` and
    found by Newton's method safeguarded by bisection (a step that would leave the bracket bisects it instead) until
    the relative step is below 1e-12. The root is then exact to rounding: its residual is about
    :math:`g'(z)\,\mathrm{ulp}(z)`, below 1e-12 in practice (the tests require 1e-10). ρ = 1 returns
    :math:`z_t` exactly. ρ = 0 is refused: the loss is then minimised only at :math:`\pm\infty`.
    """
    z_t, y = _check_logits_and_labels(teacher_logits, labels)
    rhos, scalar = _check_rho(rho)
    temperature = check_temperature(temperature)
    if not isinstance(t2_scaling, bool):
        raise TypeError(f"t2_scaling must be True or False, got {t2_scaling!r}")
    c_t = temperature**2 if t2_scaling else 1.0
    rhos = rhos.to(z_t.device)

    shape = z_t.shape + rhos.shape
    z_t = z_t[..., None].expand(shape).reshape(-1)
    y = y[..., None].expand(shape).reshape(-1)
    r = rhos.expand(shape).reshape(-1)
    root = z_t.clone()  # ρ = 1: the root is z_t exactly
    mixed = r < 1.0
    if bool(mixed.any()):
        if float(z_t[mixed].abs().max()) / min(temperature, 1.0) > _LARGEST_LOGIT:
            raise ValueError(f"teacher_logits / min(temperature, 1) must be at most {_LARGEST_LOGIT:g} in absolute "
                             f"value when rho < 1: beyond that the sigmoids underflow in float64 and the root "
                             f"cannot be resolved (got |z_t| up to {float(z_t.abs().max()):.3g} at temperature "
                             f"{temperature:g})")
        root[mixed] = _solve_effective_logits(z_t[mixed], y[mixed], r[mixed], temperature, c_t)
        if float(root[mixed].abs().max()) > _LARGEST_LOGIT:
            raise ValueError(f"an effective logit exceeds {_LARGEST_LOGIT:g} in absolute value (rho is so small that "
                             f"the hard label wins almost completely), where float64 sigmoids underflow; use a larger "
                             f"rho")
    root = root.reshape(shape)
    return root[..., 0] if scalar else root


def effective_logits_hard_derivative(
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    rho,
    temperature: float,
    *,
    t2_scaling: bool = False,
) -> torch.Tensor:
    r"""How the effective logit moves when the hard label gains weight, :math:`\partial z_\mathrm{eff} /
    \partial(1-\rho)`, by implicit differentiation of :math:`g(z_\mathrm{eff}) = 0`:

    .. math:: \frac{\partial z_\mathrm{eff}}{\partial(1-\rho)} =
              \frac{\frac{c_T}{T}\,[\sigma(z/T) - \sigma(z_t/T)] - [\sigma(z) - y_g]}
                   {\rho\, \frac{c_T}{T^2}\, \sigma'(z/T) + (1-\rho)\, \sigma'(z)} \Bigg|_{z = z_\mathrm{eff}}

    Arguments and shapes as in :func:`effective_student_logits` (Ji & Zhu 2020, Theorem 3 uses it through
    :math:`\delta\hat w_h = \Phi K^{-1} \partial z_\mathrm{eff}/\partial(1-\rho)`).
    """
    z = effective_student_logits(teacher_logits, labels, rho, temperature, t2_scaling=t2_scaling)
    z_t, y = _check_logits_and_labels(teacher_logits, labels)
    rhos, scalar = _check_rho(rho)
    temperature = float(temperature)
    c_t = temperature**2 if t2_scaling else 1.0
    if scalar:
        z = z[..., None]
    z_t, y, r = z_t[..., None], y[..., None], rhos.to(z.device)
    numerator = c_t / temperature * _sigmoid_difference(z / temperature, z_t / temperature) - _sigmoid_minus_label(z, y)

    def sigmoid_slope(a):
        return torch.sigmoid(a) * torch.sigmoid(-a)

    denominator = r * c_t / temperature**2 * sigmoid_slope(z / temperature) + (1 - r) * sigmoid_slope(z)
    derivative = numerator / denominator
    return derivative[..., 0] if scalar else derivative


# ---------------------------------------------------------------------------------------------------------------------
# The student's kernel
# ---------------------------------------------------------------------------------------------------------------------


def _architecture(architecture: str) -> dict:
    return ARCHITECTURES[check_choice(architecture, "architecture", tuple(ARCHITECTURES))]


def student_kernel(x1: torch.Tensor, x2: torch.Tensor | None = None, *,
                   architecture: str = "two_layer_bias") -> torch.Tensor:
    r"""The analytic NTK :math:`\Theta(x_1, x_2)` of the wide student, (N1, N2) float64.

    ``architecture``: ``"two_layer_bias"`` (default) is one hidden ReLU layer with a first-layer bias, i.e. the
    bias-free kernel of :math:`\tilde x = [x, 1]/\sqrt 2`:
    :math:`\Theta = \|\tilde x\|\|\tilde x'\|\,[\sin\theta + 2(\pi-\theta)\cos\theta]/(2\pi)`, with
    :math:`\Theta(x, x) = 1` on the unit sphere. ``"three_layer"`` is two bias-free hidden layers; ``"two_layer"`` one
    bias-free hidden layer (not universal on the sphere; for the pitfall only). See :data:`ARCHITECTURES`.
    """
    return relu_kernels(x1, x2, **_architecture(architecture)).ntk


def student_nngp(x1: torch.Tensor, x2: torch.Tensor | None = None, *,
                 architecture: str = "two_layer_bias") -> torch.Tensor:
    """The covariance :math:`\\mathbb E[f_0(x_1) f_0(x_2)]` of the same student at initialisation (NNGP kernel)."""
    return relu_kernels(x1, x2, **_architecture(architecture)).nngp


def kernel_diagonal(x: torch.Tensor, *, architecture: str = "two_layer_bias", block: int = 512) -> torch.Tensor:
    r""":math:`\Theta(x_i, x_i)` for every row of ``x``, (N,) float64, in blocks of ``block`` rows."""
    block = check_positive_int(block, "block")
    parts = [student_kernel(x[i:i + block], architecture=architecture).diagonal() for i in range(0, len(x), block)]
    return torch.cat(parts)


def sample_initial_function(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    n_samples: int | None = None,
    architecture: str = "two_layer_bias",
    jitter: float = DEFAULT_JITTER,
) -> torch.Tensor:
    r"""Outputs :math:`f_0(X)` of randomly initialised infinitely wide students: a sample of the Gaussian process
    with the NNGP covariance, :math:`f_0(X) = L\xi`, :math:`L L^\top = \Sigma(X, X) + \epsilon I`, :math:`\xi \sim
    \mathcal N(0, I)` (jitter as in :func:`kdnb.ntk.cholesky_with_jitter`).

    Learning :math:`-f_0` is the "zero function" task of Ji & Zhu's Fig. 3: undoing the initial function. (N,), or
    (N, n_samples) for several independent draws.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    factor = cholesky_with_jitter(student_nngp(x, architecture=architecture), jitter)
    columns = 1 if n_samples is None else check_positive_int(n_samples, "n_samples")
    noise = torch.randn(factor.shape[0], columns, generator=generator, dtype=torch.float64).to(factor.device)
    samples = factor @ noise
    return samples[:, 0] if n_samples is None else samples


def flip_signs(values: torch.Tensor, p_flip: float, generator: torch.Generator) -> torch.Tensor:
    """``values`` with each sign flipped independently with probability ``p_flip`` in [0, 1] (label noise;
    ``p_flip = 0.5`` makes the signs random)."""
    values = check_finite_tensor(values, "values")
    p_flip = check_in_unit_interval(p_flip, "p_flip")
    flips = torch.rand(values.shape, generator=generator, dtype=torch.float64).to(values.device) < p_flip
    return torch.where(flips, -values, values)


# ---------------------------------------------------------------------------------------------------------------------
# The wide student on nested samples
# ---------------------------------------------------------------------------------------------------------------------


class NestedKernelRegression:
    r"""Kernel regression on every prefix :math:`X_{:n}` of one sample, n = 1..N, from one factorisation.

    With :math:`K = L L^\top` (float64, jitter as in :func:`kdnb.ntk.cholesky_with_jitter`) the leading n x n block
    :math:`K_n` has Cholesky factor :math:`L_{:n,:n}`, and :math:`v = L^{-1} r` restricted to its first n entries is
    :math:`L_n^{-1} r_n`. Hence, with :math:`r = z - f_0(X)`:

    * :math:`\|\Delta\hat w_n\|^2 = r_n^\top K_n^{-1} r_n = \sum_{i \le n} v_i^2` for all n at once
      (:meth:`norms`), and each increment is :math:`v_{n+1}^2 = (r_{n+1} - \mu_n(x_{n+1}))^2 / s_n^2(x_{n+1})`, the
      squared standardised error of the kernel-regression prediction :math:`\mu_n` with posterior variance
      :math:`s_n^2`;
    * the coefficients :math:`a_n = K_n^{-1} r_n = L_n^{-\top} v_{:n}` cost O(n²) each (:meth:`coefficients`).

    ``targets`` are (N,) or (N, k): k right-hand sides solved together (e.g. one per soft ratio).
    """

    def __init__(self, kernel: torch.Tensor, targets: torch.Tensor, *, f0: torch.Tensor | None = None,
                 jitter: float = DEFAULT_JITTER):
        self.factor = cholesky_with_jitter(kernel, jitter)
        residual = _residual_targets(targets, f0, self.factor.shape[0], self.factor.device)
        self._vector = residual.ndim == 1
        self.residual_targets = residual[:, None] if self._vector else residual
        self.whitened = torch.linalg.solve_triangular(self.factor, self.residual_targets, upper=False)

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
        r""":math:`\|\Delta\hat w_n\|` for n = 1..N: (N,) or (N, k)."""
        return self._shape(self.whitened.square().cumsum(0).sqrt())

    def coefficients(self, n: int) -> torch.Tensor:
        r""":math:`a_n = K_n^{-1} r_n`, so that :math:`\Delta\hat w_n = \Phi_n a_n`: (n,) or (n, k)."""
        n = self._check_n(n)
        a = torch.linalg.solve_triangular(self.factor[:n, :n].T, self.whitened[:n], upper=True)
        return self._shape(a)

    def predict(self, n: int, kernel_test_train: torch.Tensor, f0_test: torch.Tensor | None = None) -> torch.Tensor:
        r"""The student trained on the first n points at test inputs, :math:`f_0(x) + \Theta(x, X_n)\, a_n`.

        ``kernel_test_train`` is :math:`\Theta(X_\mathrm{test}, X_m)` for any m >= n (only its first n columns are
        used, so one test kernel against the whole sample serves every n)."""
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
        r"""Angles :math:`\bar\alpha_n = \angle(\Delta\hat w_n, \Delta\hat w_N)` for n = 1..N, in radians, from the
        projection identity :math:`\cos\bar\alpha_n = \|\Delta\hat w_n\| / \|\Delta\hat w_N\|` (valid because the
        samples are nested). The whole sample plays the oracle: report N."""
        norms = self.whitened.square().cumsum(0).sqrt()
        cosine = norms / norms[-1:]
        # The ratio exceeds 1 only by rounding (a projection cannot be longer than the vector).
        return self._shape(torch.arccos(cosine.clamp(max=1.0)))


def weight_change_cosine(kernel: torch.Tensor, coefficients_1: torch.Tensor,
                         coefficients_2: torch.Tensor) -> torch.Tensor:
    r"""Cosine of the angle between :math:`\Delta w_1 = \Phi_1 a_1` and :math:`\Delta w_2 = \Phi_2 a_2`, from the
    kernel alone: :math:`\cos = a_1^\top K_{12} a_2 / \sqrt{(a_1^\top K_{11} a_1)(a_2^\top K_{22} a_2)}`.

    ``kernel`` is the (N, N) Gram matrix of a sample whose first n1 points carry ``coefficients_1`` and whose first
    n2 points carry ``coefficients_2`` (for a student and an oracle proxy: n1 = n, n2 = N). Coefficients are (n1,)
    and (n2,), or (n1, k) and (n2, k): one cosine per column. This is the direct formula that
    :meth:`NestedKernelRegression.oracle_angles` replaces by a ratio of norms.
    """
    k = _check_gram(kernel)
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


# ---------------------------------------------------------------------------------------------------------------------
# Transfer risk, the accumulative angle distribution and Theorem 1
# ---------------------------------------------------------------------------------------------------------------------


def transfer_risk(student_logits: torch.Tensor, oracle_logits: torch.Tensor) -> torch.Tensor:
    r"""Transfer risk :math:`R = P_x[\mathrm{sign}\, f_s(x) \ne \mathrm{sign}\, z_*(x)]`, estimated on test points
    (rows). (M,) inputs give a scalar; (M, k) inputs one risk per column."""
    s = check_finite_tensor(student_logits, "student_logits")
    o = check_finite_tensor(oracle_logits, "oracle_logits").to(s.device)
    if s.shape != o.shape or s.ndim not in (1, 2) or s.shape[0] == 0:
        raise ValueError(f"student_logits and oracle_logits must have the same shape (M,) or (M, k), got "
                         f"{tuple(s.shape)} and {tuple(o.shape)}")
    return ((s > 0) != (o > 0)).to(torch.float64).mean(0)


def boundary_angles(oracle_logits: torch.Tensor, kernel_diagonal: torch.Tensor,
                    oracle_norm: torch.Tensor | float) -> torch.Tensor:
    r"""Angular distance from each feature vector :math:`\phi(x)` to the oracle's decision hyperplane
    :math:`v^\perp`: :math:`|\pi/2 - \angle(\phi(x), v)| = \arcsin\big(|z_*(x)| / (\sqrt{\Theta(x,x)}\,\|v\|)
    \big)`, using :math:`\langle\phi(x), v\rangle = z_*(x)` and :math:`\|\phi(x)\|^2 = \Theta(x, x)`.

    ``oracle_logits`` (M,) or (M, k), ``kernel_diagonal`` (M,), ``oracle_norm`` a number or (k,). By Cauchy-Schwarz
    the sine is at most 1 when :math:`z_*` is the oracle's own prediction; a larger value means the logits and the
    norm do not belong to one weight vector, and raises.
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
    r"""The accumulative angle distribution :math:`p(\beta) = P_x[\,|\pi/2 - \angle(\phi(x), v)| \le \beta\,]`
    (Ji & Zhu 2020, Theorem 1): the empirical CDF of :func:`boundary_angles` at ``beta``.

    ``angles`` (M,) or (M, k); ``beta`` a number or a tensor of angles in radians. Returns ``beta``'s shape, with a
    trailing k axis for (M, k) angles; a (k,) ``beta`` with (M, k) angles is read as one angle per column.
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
    r"""Data inefficiency :math:`I(n) = n\, \mathbb E[\ln\|\Delta\hat w_{n+1}\| - \ln\|\Delta\hat w_n\|]`
    (Ji & Zhu 2020, Definition 1), the local slope of :math:`\mathbb E \ln\|\Delta\hat w_n\|` against
    :math:`\ln n`.

    ``norms`` are prefix norms (from :meth:`NestedKernelRegression.norms`) stacked over independent repeats:
    (R, N) or (R, N, k), entry ``[r, n - 1]`` for n points. The expectation is the mean of the logarithms over the R
    repeats. With ``window`` = c > 1 (default √2) the estimator is the slope between :math:`n_- = \mathrm{round}(n/c)`
    and :math:`n_+ = \mathrm{round}(cn)`,

    .. math:: \hat I(n) = \frac{\mathbb E \ln\|\Delta\hat w_{n_+}\| - \mathbb E \ln\|\Delta\hat w_{n_-}\|}
                              {\ln(n_+/n_-)},

    which is exact for a power law and far less noisy than ``window=None``, the one-step definition. ``n`` is an int
    or a sequence; returns (len(n),) or (len(n), k) (a scalar tensor for an int ``n`` and (R, N) norms).
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


# ---------------------------------------------------------------------------------------------------------------------
# An early-stopped teacher
# ---------------------------------------------------------------------------------------------------------------------


class EarlyStoppedTeacher:
    r"""A linearized wide network (f0 ≡ 0) trained by gradient flow on :math:`\frac{1}{2n_t}\sum_i (f(x_i) - y_i)^2`
    for time :math:`\tau` (learning rate x steps), in closed form.

    With :math:`K_t = V \mathrm{diag}(\lambda) V^\top` (float64 eigendecomposition) the teacher is
    :math:`f^\tau(x) = \Theta(x, X_t)\, c_\tau`,

    .. math:: c_\tau = V\, \mathrm{diag}\!\left(\frac{1 - e^{-\lambda\tau/n_t}}{\lambda}\right) V^\top Y_t,
              \qquad \|\Delta w_t(\tau)\|^2 = c_\tau^\top K_t c_\tau
              = \sum_j \frac{(1 - e^{-\lambda_j\tau/n_t})^2}{\lambda_j} (v_j^\top Y_t)^2.

    Each eigencomponent grows monotonically with :math:`\tau`, so the weight norm and the logit scale increase, and
    the detail (small-eigenvalue directions) arrives last (Ji & Zhu 2020, Fig. 4). As :math:`\tau \to \infty` the
    teacher becomes the interpolant :math:`K_t^{-1} Y_t`. Eigenvalues at or below rounding level
    (:math:`10^{-13}\lambda_\max`) are treated as zero, where the factor is its limit :math:`\tau/n_t`.
    """

    def __init__(self, kernel: torch.Tensor, targets: torch.Tensor):
        k = _check_gram(kernel)
        if float((k - k.T).abs().max()) > 1e-8 * float(k.diagonal().abs().mean()):
            raise ValueError("kernel must be a symmetric Gram matrix")
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
        taus = [tau] if scalar else _as_list(tau, "tau")
        taus = torch.tensor([check_positive(t, "tau") for t in taus], dtype=torch.float64, device=self.kernel.device)
        lam = self.eigenvalues[:, None]
        zero = lam <= 1e-13 * float(self.eigenvalues.max())
        safe = torch.where(zero, torch.ones_like(lam), lam)
        # (1 − e^{−λτ/n}) / λ, with its limit τ/n for λ ≈ 0
        factor = torch.where(zero, taus[None, :] / self.size, -torch.expm1(-safe * taus[None, :] / self.size) / safe)
        return factor, scalar

    def coefficients(self, tau) -> torch.Tensor:
        r""":math:`c_\tau`: (n_t,) for a number ``tau``, (n_t, len(tau)) for a sequence."""
        factor, scalar = self._factors(tau)
        c = self.eigenvectors @ (factor * self.projected_targets[:, None])
        return c[:, 0] if scalar else c

    def logits(self, kernel_test_train: torch.Tensor, tau) -> torch.Tensor:
        r"""Teacher logits :math:`f^\tau(x) = \Theta(x, X_t)\, c_\tau` at test points (rows of
        ``kernel_test_train``, shape (M, n_t))."""
        if not isinstance(kernel_test_train, torch.Tensor) or kernel_test_train.ndim != 2 \
                or kernel_test_train.shape[1] != self.size:
            raise ValueError(f"kernel_test_train must be an (M, {self.size}) matrix Θ(X_test, X_teacher)")
        return kernel_test_train.to(self.kernel.device, torch.float64) @ self.coefficients(tau)

    def weight_change_norm(self, tau) -> torch.Tensor:
        r""":math:`\|\Delta w_t(\tau)\|`, a scalar or (len(tau),)."""
        factor, scalar = self._factors(tau)
        lam = self.eigenvalues.clamp_min(0)[:, None]
        squares = (lam * factor.square() * self.projected_targets[:, None].square()).sum(0)
        norm = squares.sqrt()
        return norm[0] if scalar else norm


# ---------------------------------------------------------------------------------------------------------------------
# Figure 2 of Ji & Zhu in one call
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferRiskRun:
    r"""One repeat of the transfer-risk experiment (:func:`transfer_risk_experiment`); axes are (n, ρ).

    ``risk``: against the true oracle logits :math:`z_*` at test points; ``risk_to_proxy``: against the oracle proxy
    (the student trained on all :math:`N_\mathrm{or}` points), the quantity Theorem 1 bounds; ``angles``:
    :math:`\bar\alpha_n` from the norm ratio, ``direct_angles`` the same from the inner product
    :math:`a_n^\top K a_N` (:func:`weight_change_cosine`); ``bound``: :math:`p(\bar\alpha_n)`;
    ``boundary_angles`` (M, ρ) give :math:`p(\beta)`; ``projection_error``: the largest relative gap between the
    two cosines over all n; ``norms`` (N_or, ρ): :math:`\|\Delta\hat w_n\|` for every prefix."""

    n_values: tuple[int, ...]
    rhos: tuple[float, ...]
    n_oracle: int
    risk: torch.Tensor
    risk_to_proxy: torch.Tensor
    angles: torch.Tensor
    direct_angles: torch.Tensor
    bound: torch.Tensor
    boundary_angles: torch.Tensor
    oracle_norm: torch.Tensor
    projection_error: float
    norms: torch.Tensor


def transfer_risk_experiment(
    generator: torch.Generator,
    *,
    n_values: Sequence[int],
    rhos: Sequence[float],
    temperature: float,
    n_oracle: int,
    n_test: int,
    dim: int = 3,
    n_modes: int = 4,
    mode_width: float | None = 0.5,
    t2_scaling: bool = False,
    architecture: str = "two_layer_bias",
    device: torch.device | str | None = None,
) -> TransferRiskRun:
    r"""Distil a perfect teacher into wide students on nested samples and measure Ji & Zhu's Fig. 2 quantities.

    The teacher logit is a Gaussian-mixture function on the sphere :math:`S^{d-1}`
    (:class:`kdnb.data.GaussianMixtureOnSphere`, ``n_modes`` bumps of width ``mode_width``) and the hard label is
    its sign (a perfect teacher). ``n_oracle`` points are drawn; the students are trained on the first n of them for
    each n in ``n_values``, and the student on all of them is the oracle proxy. Students start from f0 ≡ 0. Risks
    are measured on ``n_test`` fresh points. Random draws use ``generator`` on the CPU, so a seed gives the same
    sample on every device; the kernels are computed on ``device`` (default CPU) and the results returned on the CPU.
    """
    n_values = tuple(check_positive_int(n, "n_values") for n in _as_list(n_values, "n_values"))
    if any(b <= a for a, b in zip(n_values, n_values[1:])):
        raise ValueError(f"n_values must be increasing, got {n_values}")
    n_oracle = check_positive_int(n_oracle, "n_oracle", minimum=2)
    if max(n_values) >= n_oracle:
        raise ValueError(f"every n in n_values must be < n_oracle = {n_oracle} (the oracle proxy needs more points "
                         f"than any student), got {max(n_values)}")
    n_test = check_positive_int(n_test, "n_test")
    rho_vector, _ = _check_rho(_as_list(rhos, "rhos"))
    rhos = tuple(rho_vector.tolist())

    teacher = GaussianMixtureOnSphere(dim, n_modes, generator, width=mode_width)
    x = sample_sphere(n_oracle, dim, generator)
    x_test = sample_sphere(n_test, dim, generator)

    def targets(points):
        z_t = teacher(points)
        return effective_student_logits(z_t, (z_t > 0).to(torch.float64), rhos, temperature, t2_scaling=t2_scaling)

    z, z_star = targets(x), targets(x_test)
    device = float64_device("cpu" if device is None else device)  # MPS has no float64: CPU
    x, x_test, z, z_star = (t.to(device) for t in (x, x_test, z, z_star))
    kernel = student_kernel(x, architecture=architecture)
    kernel_test = student_kernel(x_test, x, architecture=architecture)
    students = NestedKernelRegression(kernel, z)
    norms = students.norms()
    proxy = students.predict(n_oracle, kernel_test)
    angles_all = students.oracle_angles()
    diagonal = kernel_diagonal(x_test, architecture=architecture)
    b_angles = boundary_angles(proxy, diagonal, norms[-1])

    risk, risk_proxy, angles, direct_angles, bound = [], [], [], [], []
    oracle_coefficients = students.coefficients(n_oracle)
    projection_error = 0.0
    for n in n_values:
        prediction = students.predict(n, kernel_test)
        risk.append(transfer_risk(prediction, z_star))
        risk_proxy.append(transfer_risk(prediction, proxy))
        angles.append(angles_all[n - 1])
        bound.append(accumulative_angle_distribution(b_angles, angles_all[n - 1]))
        # The norm ratio replaces the inner-product formula: check the projection identity at every n.
        direct = weight_change_cosine(kernel, students.coefficients(n), oracle_coefficients)
        ratio = torch.cos(angles_all[n - 1])
        projection_error = max(projection_error, float(((direct - ratio).abs() / ratio.abs().clamp_min(1e-300)).max()))
        direct_angles.append(torch.arccos(direct.clamp(-1.0, 1.0)))
    return TransferRiskRun(n_values=n_values, rhos=rhos, n_oracle=n_oracle, risk=torch.stack(risk).cpu(),
                           risk_to_proxy=torch.stack(risk_proxy).cpu(), angles=torch.stack(angles).cpu(),
                           direct_angles=torch.stack(direct_angles).cpu(),
                           bound=torch.stack(bound).cpu(), boundary_angles=b_angles.cpu(),
                           oracle_norm=norms[-1].cpu(), projection_error=projection_error, norms=norms.cpu())


# ---------------------------------------------------------------------------------------------------------------------
# Figures 3 and 4 of Ji & Zhu: prefix norms for data inefficiency
# ---------------------------------------------------------------------------------------------------------------------


def target_difficulty_norms(
    generator: torch.Generator,
    *,
    n_points: int,
    dim: int = 3,
    n_modes: Sequence[int] = (1, 4, 16, 64),
    flip_probabilities: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.5),
    flip_modes: int = 4,
    architecture: str = "two_layer_bias",
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    r"""Prefix norms :math:`\|\Delta\hat w_n - \Delta w_z\|`, n = 1..``n_points``, for the targets of Ji & Zhu's
    Fig. 3, all on one sample of the sphere and solved from one factorisation.

    Keys: ``"modes=K"`` for a Gaussian-mixture function with K bumps of width :math:`1/\sqrt K`
    (:class:`kdnb.data.GaussianMixtureOnSphere`); ``"flip=p"`` for the ``flip_modes`` function with each sign flipped
    with probability p; ``"random"`` for independent :math:`\mathcal N(0, 1)` targets; ``"zero"`` for
    :math:`-f_0(X)`, undoing a random initial function (:func:`sample_initial_function`). Targets are regressed
    directly (the student distils a teacher whose logits are these values, with ρ = 1). Each value is (n_points,), on
    the CPU; the kernel and its factorisation run on ``device`` (default CPU), the random draws on the CPU.
    """
    n_points = check_positive_int(n_points, "n_points", minimum=2)
    modes = [check_positive_int(k, "n_modes") for k in _as_list(n_modes, "n_modes")]
    flips = [check_in_unit_interval(p, "flip_probabilities") for p in flip_probabilities]
    if len(set(modes)) != len(modes) or len(set(flips)) != len(flips):
        raise ValueError("n_modes and flip_probabilities must not repeat a value (each names one target)")
    x = sample_sphere(n_points, dim, generator)
    columns: dict[str, torch.Tensor] = {}
    for k in modes:
        columns[f"modes={k}"] = GaussianMixtureOnSphere(dim, k, generator)(x)
    if flips:
        base = GaussianMixtureOnSphere(dim, check_positive_int(flip_modes, "flip_modes"), generator)(x)
        for p in flips:
            columns[f"flip={p:g}"] = flip_signs(base, p, generator)
    columns["random"] = torch.randn(n_points, generator=generator, dtype=torch.float64)
    columns["zero"] = -sample_initial_function(x, generator, architecture=architecture)
    device = float64_device("cpu" if device is None else device)  # MPS has no float64: CPU
    targets = torch.stack(list(columns.values()), 1).to(device)
    norms = NestedKernelRegression(student_kernel(x.to(device), architecture=architecture), targets).norms().cpu()
    return {name: norms[:, j] for j, name in enumerate(columns)}


def _teacher_task(generator, *, dim, n_modes, mode_width, n_teacher, teacher_scale, sizes, architecture, device):
    """The shared setup of Figs. 4 and 5: a ground-truth function g, an :class:`EarlyStoppedTeacher` trained on
    ``n_teacher`` points of its own with targets ``teacher_scale`` x sign g, and fresh samples of the given ``sizes``
    with their values of g. Draws, in this order and on the CPU: g, the teacher's points, each sample."""
    n_teacher = check_positive_int(n_teacher, "n_teacher", minimum=2)
    teacher_scale = check_positive(teacher_scale, "teacher_scale")
    truth = GaussianMixtureOnSphere(dim, n_modes, generator, width=mode_width)
    x_teacher = sample_sphere(n_teacher, dim, generator)
    samples = [sample_sphere(n, dim, generator) for n in sizes]
    device = float64_device("cpu" if device is None else device)  # MPS has no float64: CPU
    targets = (teacher_scale * torch.sign(truth(x_teacher))).to(device)
    x_teacher = x_teacher.to(device)
    teacher = EarlyStoppedTeacher(student_kernel(x_teacher, architecture=architecture), targets)
    return teacher, x_teacher, [(x.to(device), truth(x).to(device)) for x in samples]


@dataclass(frozen=True)
class StoppedTeacherNorms:
    r"""Result of :func:`early_stopped_distillation_norms`: ``norms`` (N, τ, ρ) are the students' prefix norms,
    ``teacher_norms`` (τ,) the teachers' :math:`\|\Delta w_t(\tau)\|`, ``teacher_accuracy`` (τ,) their sign
    agreement with the ground truth on the students' points."""

    taus: tuple[float, ...]
    rhos: tuple[float, ...]
    norms: torch.Tensor
    teacher_norms: torch.Tensor
    teacher_accuracy: torch.Tensor


def early_stopped_distillation_norms(
    generator: torch.Generator,
    *,
    n_points: int,
    taus: Sequence[float],
    rhos: Sequence[float],
    temperature: float,
    n_teacher: int = 256,
    teacher_scale: float = 4.0,
    dim: int = 3,
    n_modes: int = 4,
    mode_width: float | None = 0.5,
    t2_scaling: bool = False,
    architecture: str = "two_layer_bias",
    device: torch.device | str | None = None,
) -> StoppedTeacherNorms:
    r"""Ji & Zhu's Fig. 4 (right): distil early-stopped teachers with several soft ratios and return the students'
    prefix norms for :func:`data_inefficiency`.

    The ground truth is the sign of a Gaussian-mixture function on :math:`S^{d-1}`. Each teacher is an
    :class:`EarlyStoppedTeacher` trained on ``n_teacher`` points of its own with targets
    ``teacher_scale`` x (±1), stopped at time τ. The students see ``n_points`` other points, with the teacher's
    logits :math:`z_t` and the true hard labels :math:`y_g`, and regress :math:`z_\mathrm{eff}(z_t, y_g)`.
    """
    n_points = check_positive_int(n_points, "n_points", minimum=2)
    rho_vector, _ = _check_rho(_as_list(rhos, "rhos"))
    taus = [check_positive(t, "taus") for t in _as_list(taus, "taus")]
    teacher, x_teacher, [(x, g)] = _teacher_task(
        generator, dim=dim, n_modes=n_modes, mode_width=mode_width, n_teacher=n_teacher, teacher_scale=teacher_scale,
        sizes=[n_points], architecture=architecture, device=device)
    labels = (g > 0).to(torch.float64)
    z_t = teacher.logits(student_kernel(x, x_teacher, architecture=architecture), taus)  # (N, τ)
    z = effective_student_logits(z_t, labels[:, None].expand_as(z_t), rho_vector.tolist(), temperature,
                                 t2_scaling=t2_scaling)  # (N, τ, ρ)
    n_taus, n_rhos = z.shape[1], z.shape[2]
    norms = NestedKernelRegression(student_kernel(x, architecture=architecture), z.reshape(n_points, -1)).norms()
    accuracy = ((z_t > 0) == (labels[:, None] > 0)).to(torch.float64).mean(0)
    return StoppedTeacherNorms(taus=tuple(float(t) for t in taus), rhos=tuple(rho_vector.tolist()),
                               norms=norms.reshape(n_points, n_taus, n_rhos).cpu(),
                               teacher_norms=teacher.weight_change_norm(taus).cpu(), teacher_accuracy=accuracy.cpu())


# ---------------------------------------------------------------------------------------------------------------------
# Imperfect teachers (Ji & Zhu 2020, Theorems 2 and 3, Fig. 5)
# ---------------------------------------------------------------------------------------------------------------------


def kernel_students(
    kernel: torch.Tensor,
    kernel_test_train: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    rhos,
    temperature: float,
    *,
    t2_scaling: bool = False,
    jitter: float = DEFAULT_JITTER,
) -> torch.Tensor:
    r"""Test logits of wide students distilled with each soft ratio: kernel regression (from :math:`f_0 \equiv 0`) of
    the effective logits :math:`z_\mathrm{eff}(z_t, y_g)` on the training points, evaluated at test points.

    ``kernel`` (N, N) and ``kernel_test_train`` (M, N) are the student's NTK; ``teacher_logits`` and ``labels`` are
    (N,). Returns (M, len(rhos)), or (M,) for a single number ``rhos``.
    """
    if not isinstance(teacher_logits, torch.Tensor) or teacher_logits.ndim != 1:
        raise ValueError("teacher_logits must be a tensor of shape (N,): one logit per training point")
    targets = effective_student_logits(teacher_logits, labels, rhos, temperature, t2_scaling=t2_scaling)
    solution = NestedKernelRegression(kernel, targets, jitter=jitter)
    if not isinstance(kernel_test_train, torch.Tensor) or kernel_test_train.ndim != 2 \
            or kernel_test_train.shape[1] != solution.size:
        raise ValueError(f"kernel_test_train must be an (M, {solution.size}) matrix Θ(X_test, X_train)")
    return solution.predict(solution.size, kernel_test_train)


@dataclass(frozen=True)
class HardLabelEffect:
    r"""What a little more hard label does to a wide student (Ji & Zhu 2020, Theorem 3), one value per soft ratio.

    ``inner_product``: :math:`\langle\delta\hat w_h, \Delta\hat w_c\rangle`; ``cosine``:
    :math:`\cos\alpha(\Delta\hat w, \Delta\hat w_g)`, the angle to the ground truth's projection on the training span
    (:math:`\cos\alpha(\Delta\hat w, \Delta w_g)` is this times the constant :math:`\|\Delta\hat w_g\| / \|\Delta
    w_g\|`); ``cosine_derivative``: :math:`\partial\cos\alpha / \partial(1-\rho)
    = \langle\delta\hat w_h, \Delta\hat w_c\rangle / (\|\Delta\hat w\|\,\|\Delta\hat w_g\|)`. Positive: adding hard
    labels turns the student towards the ground truth."""

    rhos: tuple[float, ...]
    inner_product: torch.Tensor
    cosine: torch.Tensor
    cosine_derivative: torch.Tensor


def hard_label_effect(
    kernel: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    truth_logits: torch.Tensor,
    rhos,
    temperature: float,
    *,
    t2_scaling: bool = False,
    jitter: float = DEFAULT_JITTER,
) -> HardLabelEffect:
    r"""The sign test of Ji & Zhu's Theorem 3: does more hard label turn the student towards the ground truth?

    With the student's targets :math:`z = z_\mathrm{eff}(z_t, y_g)`, their derivative
    :math:`\dot z = \partial z / \partial(1-\rho)` (:func:`effective_logits_hard_derivative`) and a ground-truth logit
    :math:`g` on the same points (``truth_logits``, with sign :math:`g = y_g`; its weight change
    :math:`\Delta\hat w_g = \Phi K^{-1} g` is the projection of :math:`\Delta w_g` on the training span),

    .. math:: \delta\hat w_h = \Phi K^{-1}\dot z, \qquad
              \Delta\hat w_c = \Delta\hat w_g - \frac{\langle\Delta\hat w, \Delta\hat w_g\rangle}{\|\Delta\hat w\|^2}
              \Delta\hat w, \qquad
              \langle\delta\hat w_h, \Delta\hat w_c\rangle = \dot z^\top K^{-1} g
              - \frac{z^\top K^{-1} g}{z^\top K^{-1} z}\, \dot z^\top K^{-1} z,

    computed from one Cholesky factorisation (float64, jitter as in :func:`kdnb.ntk.cholesky_with_jitter`). Because
    :math:`\Delta\hat w_c` is the part of the ground truth orthogonal to the student,
    :math:`\partial\cos\alpha(\Delta\hat w, \Delta w_g)/\partial(1-\rho) = \langle\delta\hat w_h, \Delta\hat
    w_c\rangle / (\|\Delta\hat w\|\|\Delta w_g\|)`; the normaliser here is :math:`\|\Delta\hat w_g\|`, the same
    for every ρ. The paper's exact definition of :math:`\Delta w_g` is a reconstruction; another choice of g changes
    the value, and only the sign is claimed.
    """
    z = effective_student_logits(teacher_logits, labels, rhos, temperature, t2_scaling=t2_scaling)
    dz = effective_logits_hard_derivative(teacher_logits, labels, rhos, temperature, t2_scaling=t2_scaling)
    rho_vector, scalar = _check_rho(rhos)
    g = check_finite_tensor(truth_logits, "truth_logits").to(torch.float64)
    if g.shape != teacher_logits.shape or g.ndim != 1:
        raise ValueError(f"truth_logits must have the shape of teacher_logits {tuple(teacher_logits.shape)} (one "
                         f"ground-truth logit per training point), got {tuple(g.shape)}")
    if scalar:
        z, dz = z[:, None], dz[:, None]
    factor = cholesky_with_jitter(kernel, jitter)
    if factor.shape[0] != z.shape[0]:
        raise ValueError(f"kernel must be ({z.shape[0]}, {z.shape[0]}) to match the teacher logits")
    if not bool((z != 0).any(0).all()) or not bool((g != 0).any()):
        raise ValueError("the student's targets and truth_logits must not be all zero (the angle is undefined)")
    z, dz = z.to(factor.device), dz.to(factor.device)
    # Whitened vectors: u^T K^{-1} v = (L^{-1} u)^T (L^{-1} v).
    white = torch.linalg.solve_triangular(factor, torch.cat([z, dz, g.to(factor.device)[:, None]], 1), upper=False)
    wz, wdz, wg = white[:, :z.shape[1]], white[:, z.shape[1]:2 * z.shape[1]], white[:, -1:]
    z_norm2, g_norm2 = wz.square().sum(0), wg.square().sum(0)
    z_dot_g, dz_dot_g, dz_dot_z = (wz * wg).sum(0), (wdz * wg).sum(0), (wdz * wz).sum(0)
    inner = dz_dot_g - z_dot_g / z_norm2 * dz_dot_z
    cosine = z_dot_g / (z_norm2.sqrt() * g_norm2.sqrt())
    derivative = inner / (z_norm2.sqrt() * g_norm2.sqrt())

    def shape(t):
        return t[0] if scalar else t

    return HardLabelEffect(rhos=tuple(rho_vector.tolist()), inner_product=shape(inner).cpu(),
                           cosine=shape(cosine).cpu(), cosine_derivative=shape(derivative).cpu())


@dataclass(frozen=True)
class ImperfectTeacherRun:
    r"""One repeat of :func:`imperfect_teacher_experiment`. Axes are (τ,) or (τ, ρ).

    ``teacher_accuracy`` and ``student_accuracy``: agreement of the sign with the ground truth on the test points;
    ``inner_product`` and ``cosine_derivative`` (τ, ρ): the :class:`HardLabelEffect` values; ``finite_difference``
    (τ, len(check_rhos)): central differences of the cosine in :math:`1-\rho`, to compare with ``check_derivative``,
    the analytic values at the same ρ; ``soft_finite_difference`` (τ,): a one-sided second-order difference at
    ρ = 1, :math:`[-3c(1) + 4c(1-h) - c(1-2h)]/(2h)`, to compare with ``soft_derivative``, the analytic value there."""

    taus: tuple[float, ...]
    rhos: tuple[float, ...]
    teacher_accuracy: torch.Tensor
    student_accuracy: torch.Tensor
    inner_product: torch.Tensor
    cosine_derivative: torch.Tensor
    check_rhos: tuple[float, ...]
    check_derivative: torch.Tensor
    finite_difference: torch.Tensor
    soft_derivative: torch.Tensor
    soft_finite_difference: torch.Tensor


def imperfect_teacher_experiment(
    generator: torch.Generator,
    *,
    taus: Sequence[float],
    rhos: Sequence[float],
    temperature: float,
    n_teacher: int = 256,
    n_student: int = 128,
    n_test: int = 3000,
    teacher_scale: float = 4.0,
    dim: int = 3,
    n_modes: int = 4,
    mode_width: float | None = 0.5,
    t2_scaling: bool = False,
    check_rhos: Sequence[float] = (0.3, 0.6, 0.9),
    epsilon: float = 1e-4,
    soft_step: float = 1e-6,
    architecture: str = "two_layer_bias",
    device: torch.device | str | None = None,
) -> ImperfectTeacherRun:
    r"""Ji & Zhu's Fig. 5 (synthetic): distil teachers of increasing quality with every soft ratio.

    The ground truth is the sign of a Gaussian-mixture function g on :math:`S^{d-1}`. Each teacher is an
    :class:`EarlyStoppedTeacher` on ``n_teacher`` points of its own (targets ``teacher_scale`` x sign g), stopped at
    each τ: early teachers are poor, late ones good. Students are wide kernel students on ``n_student`` other points,
    with the teacher's logits and the true hard labels (:func:`kernel_students`), scored on ``n_test`` test points.
    :func:`hard_label_effect` is evaluated on the students' points with g as the ground-truth logit, and its
    derivative is checked against a central difference with step ``epsilon`` at ``check_rhos``, and at ρ = 1 (where
    the sign test is made) against a one-sided second-order difference with step ``soft_step``. Random draws on the
    CPU, kernels on ``device`` (default CPU), results on the CPU.
    """
    taus = [check_positive(t, "taus") for t in _as_list(taus, "taus")]
    rho_vector, _ = _check_rho(_as_list(rhos, "rhos"))
    check_vector, _ = _check_rho(_as_list(check_rhos, "check_rhos"))
    epsilon = check_positive(epsilon, "epsilon")
    soft_step = check_positive(soft_step, "soft_step")
    if soft_step >= 0.25:
        raise ValueError(f"soft_step must be < 0.25 (ρ = 1 − 2 soft_step must stay in (0, 1)), got {soft_step}")
    if float(check_vector.max()) + epsilon > 1 or float(check_vector.min()) - epsilon <= 0:
        raise ValueError(f"check_rhos ± epsilon must stay inside (0, 1], got {check_vector.tolist()} ± {epsilon}")
    n_student = check_positive_int(n_student, "n_student", minimum=2)
    n_test = check_positive_int(n_test, "n_test")
    teacher, x_teacher, [(x, g), (x_test, g_test)] = _teacher_task(
        generator, dim=dim, n_modes=n_modes, mode_width=mode_width, n_teacher=n_teacher, teacher_scale=teacher_scale,
        sizes=[n_student, n_test], architecture=architecture, device=device)
    labels, test_labels = (g > 0).to(torch.float64), g_test > 0
    z_t = teacher.logits(student_kernel(x, x_teacher, architecture=architecture), taus)  # (N, τ)
    z_t_test = teacher.logits(student_kernel(x_test, x_teacher, architecture=architecture), taus)  # (M, τ)
    kernel = student_kernel(x, architecture=architecture)
    kernel_test = student_kernel(x_test, x, architecture=architecture)

    rhos_list, checks = rho_vector.tolist(), check_vector.tolist()
    # One call per teacher for every ρ needed: the grid, the check points and their ± epsilon, and 1, 1 − h, 1 − 2h.
    n_r, n_c = len(rhos_list), len(checks)
    all_rhos = (rhos_list + checks + [r + epsilon for r in checks] + [r - epsilon for r in checks]
                + [1.0, 1.0 - soft_step, 1.0 - 2 * soft_step])
    student_accuracy, inner, derivative, check, finite, soft_derivative, soft_finite = [], [], [], [], [], [], []
    for i in range(len(taus)):
        logits = kernel_students(kernel, kernel_test, z_t[:, i], labels, rhos_list, temperature,
                                 t2_scaling=t2_scaling)
        student_accuracy.append(((logits > 0) == test_labels[:, None]).to(torch.float64).mean(0))
        effect = hard_label_effect(kernel, z_t[:, i], labels, g, all_rhos, temperature, t2_scaling=t2_scaling)
        inner.append(effect.inner_product[:n_r])
        derivative.append(effect.cosine_derivative[:n_r])
        check.append(effect.cosine_derivative[n_r:n_r + n_c])
        up, down = effect.cosine[n_r + n_c:n_r + 2 * n_c], effect.cosine[n_r + 2 * n_c:n_r + 3 * n_c]
        finite.append(-(up - down) / (2 * epsilon))  # ∂/∂(1 − ρ) = −∂/∂ρ
        at_one, one_step, two_steps = effect.cosine[-3:]
        soft_derivative.append(effect.cosine_derivative[-3])
        soft_finite.append((-3 * at_one + 4 * one_step - two_steps) / (2 * soft_step))
    teacher_accuracy = ((z_t_test > 0) == test_labels[:, None]).to(torch.float64).mean(0)
    return ImperfectTeacherRun(taus=tuple(taus), rhos=tuple(rhos_list), teacher_accuracy=teacher_accuracy.cpu(),
                               student_accuracy=torch.stack(student_accuracy).cpu(),
                               inner_product=torch.stack(inner), cosine_derivative=torch.stack(derivative),
                               check_rhos=tuple(checks), check_derivative=torch.stack(check),
                               finite_difference=torch.stack(finite), soft_derivative=torch.stack(soft_derivative),
                               soft_finite_difference=torch.stack(soft_finite))
