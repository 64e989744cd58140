r"""Effective student logits: the logit a wide student reaches on a training point (Ji & Zhu 2020).

The student fits every training point exactly, so its logit there is the minimiser of the per-example distillation
loss (binary, one logit, sigmoid)

.. math:: \ell(z) = \rho\, c_T\, H\!\big(\sigma(z_t/T), \sigma(z/T)\big) + (1-\rho)\, H\!\big(y_g, \sigma(z)\big),

the root :math:`z_\mathrm{eff}(z_t, y_g)` of
:math:`g(z) = \rho \frac{c_T}{T}[\sigma(z/T) - \sigma(z_t/T)] + (1-\rho)[\sigma(z) - y_g]`, with
:math:`c_T = T^2` when ``t2_scaling=True`` (Hinton's convention, kdnb's default everywhere) and :math:`c_T = 1` when
``False`` (the plain soft term, the convention chapters 3 to 5 choose). The two agree at T = 1.
"""

from __future__ import annotations

import torch

from ...core.validation import check_finite_tensor, check_soft_ratios, check_temperature

__all__ = ["effective_logits_hard_derivative", "effective_student_logits", "root_residual"]


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
    t2_scaling: bool = True,
) -> torch.Tensor:
    r"""The logit a wide student reaches on a training point, the effective student logit :math:`z_\mathrm{eff}`.

    It is the root of
    :math:`g(z) = \rho \frac{c_T}{T}[\sigma(z/T) - \sigma(z_t/T)] + (1-\rho)[\sigma(z) - y_g] = 0` (Ji & Zhu 2020,
    Eq. "effective logits"), with :math:`c_T = T^2` if ``t2_scaling`` else 1.

    g is strictly increasing in z, so the root is unique; it is bracketed by stepping outwards from :math:`z_t` and
    found by Newton's method safeguarded by bisection (a step that would leave the bracket bisects it instead) until
    the relative step is below 1e-12. The root is then exact to rounding: its residual is about
    :math:`g'(z)\,\mathrm{ulp}(z)`, below 1e-12 in practice (the tests require 1e-10). ρ = 1 returns
    :math:`z_t` exactly. ρ = 0 is refused: the loss is then minimised only at :math:`\pm\infty`.

    Parameters
    ----------
    teacher_logits : torch.Tensor
        :math:`z_t`, any shape, floating point and finite. For ρ < 1, :math:`|z_t| / \min(T, 1)` must be at most
        600 (beyond that the sigmoids underflow in float64).
    labels : torch.Tensor
        :math:`y_g \in [0, 1]` (the probability of the positive class; usually 0 or 1), the shape of
        ``teacher_logits``.
    rho : float or sequence of float
        The soft ratio ρ in (0, 1], or a non-empty sequence of them, in which case the result has a last axis over
        ``rho``.
    temperature : float
        T > 0 (finite).
    t2_scaling : bool, default True
        :math:`c_T = T^2` (Hinton et al. 2015) if True, else 1 (the plain soft term).

    Returns
    -------
    torch.Tensor
        :math:`z_\mathrm{eff}`, float64, the shape of ``teacher_logits`` (with a trailing ``len(rho)`` axis for a
        sequence ``rho``).

    Raises
    ------
    TypeError
        If ``teacher_logits`` or ``labels`` is not a tensor (``teacher_logits`` floating point), ``rho`` or
        ``temperature`` is not a real number, or ``t2_scaling`` is not a bool.
    ValueError
        If the logits are not finite, ``labels`` has another shape or values outside [0, 1], a ρ is not in (0, 1]
        (ρ = 0 included), ``temperature`` is not finite and > 0, or the teacher logits or a root exceed 600 in
        absolute value for ρ < 1 (ρ so small that the hard label wins almost completely).

    References
    ----------
    Ji & Zhu 2020, Eq. "effective logits" and Fig. 1; the :math:`T^2` convention of Hinton et al. 2015.
    """
    z_t, y = _check_logits_and_labels(teacher_logits, labels)
    rhos, scalar = check_soft_ratios(rho)
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


def root_residual(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    rho,
    temperature: float,
    *,
    t2_scaling: bool = True,
) -> torch.Tensor:
    r"""The left-hand side :math:`g(z)` of the effective-logit equation, evaluated at ``student_logits``.

    At ``student_logits`` z,

    .. math:: g(z) = \rho \frac{c_T}{T}\left[\sigma(z/T) - \sigma(z_t/T)\right] + (1-\rho)\left[\sigma(z) - y_g\right],

    the derivative of the per-example distillation loss with respect to the student's logit (Ji & Zhu 2020). It is 0
    exactly at :func:`effective_student_logits`; use it to check a solution. It is evaluated with plain sigmoids,
    not with the solver's tail-stable differences, so that it is an independent check of the solver (for
    :math:`|z|/T` beyond about 30 its rounding error grows; compare residuals there with care).

    Parameters
    ----------
    student_logits : torch.Tensor
        The logits z at which g is evaluated: the shape of ``teacher_logits``, with a trailing axis of
        ``len(rho)`` when ``rho`` is a sequence.
    teacher_logits, labels : torch.Tensor
        :math:`z_t` and :math:`y_g \in [0, 1]`, of the same shape.
    rho : float or sequence of float
        Soft ratio(s) in (0, 1].
    temperature : float
        T > 0.
    t2_scaling : bool, default True
        :math:`c_T = T^2` (Hinton et al. 2015) if True, else 1.

    Returns
    -------
    torch.Tensor
        g(z), float64, the shape of ``student_logits``.

    Raises
    ------
    ValueError, TypeError
        For arguments out of range, of the wrong type, or of mismatched shapes.
    """
    z_t, y = _check_logits_and_labels(teacher_logits, labels)
    rhos, scalar = check_soft_ratios(rho)
    temperature = check_temperature(temperature)
    if not isinstance(t2_scaling, bool):
        raise TypeError(f"t2_scaling must be True or False, got {t2_scaling!r}")
    z = check_finite_tensor(student_logits, "student_logits").detach().to(z_t.device, torch.float64)
    expected = z_t.shape if scalar else z_t.shape + rhos.shape
    if z.shape != expected:
        raise ValueError(f"student_logits must have shape {tuple(expected)}, got {tuple(z.shape)}")
    c_t = temperature**2 if t2_scaling else 1.0
    if not scalar:
        z_t, y, rhos = z_t[..., None], y[..., None], rhos.to(z.device)
    r = float(rhos[0]) if scalar else rhos
    # Plain sigmoids, not the solver's tail-stable differences: an independent evaluation checks the solver.
    return r * c_t / temperature * (torch.sigmoid(z / temperature) - torch.sigmoid(z_t / temperature)) \
        + (1 - r) * (torch.sigmoid(z) - y)


def effective_logits_hard_derivative(
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    rho,
    temperature: float,
    *,
    t2_scaling: bool = True,
) -> torch.Tensor:
    r"""How the effective logit moves as the hard label gains weight: :math:`\partial z_\mathrm{eff}/\partial(1-\rho)`.

    By implicit differentiation of :math:`g(z_\mathrm{eff}) = 0`:

    .. math:: \frac{\partial z_\mathrm{eff}}{\partial(1-\rho)} =
              \frac{\frac{c_T}{T}\,[\sigma(z/T) - \sigma(z_t/T)] - [\sigma(z) - y_g]}
                   {\rho\, \frac{c_T}{T^2}\, \sigma'(z/T) + (1-\rho)\, \sigma'(z)} \Bigg|_{z = z_\mathrm{eff}}

    Arguments and shapes as in :func:`effective_student_logits` (Ji & Zhu 2020, Theorem 3 uses it through
    :math:`\delta\hat w_h = \Phi K^{-1} \partial z_\mathrm{eff}/\partial(1-\rho)`).

    Parameters
    ----------
    teacher_logits : torch.Tensor
        :math:`z_t`, any shape, floating point and finite.
    labels : torch.Tensor
        :math:`y_g \in [0, 1]`, the shape of ``teacher_logits``.
    rho : float or sequence of float
        Soft ratio(s) in (0, 1].
    temperature : float
        T > 0 (finite).
    t2_scaling : bool, default True
        :math:`c_T = T^2` (Hinton et al. 2015) if True, else 1.

    Returns
    -------
    torch.Tensor
        :math:`\partial z_\mathrm{eff} / \partial(1-\rho)`, float64, the shape of :func:`effective_student_logits`'
        result.

    Raises
    ------
    TypeError, ValueError
        As :func:`effective_student_logits`.

    References
    ----------
    Ji & Zhu 2020, Theorem 3.
    """
    z = effective_student_logits(teacher_logits, labels, rho, temperature, t2_scaling=t2_scaling)
    z_t, y = _check_logits_and_labels(teacher_logits, labels)
    rhos, scalar = check_soft_ratios(rho)
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

