r"""Imperfect teachers (Ji & Zhu 2020, Fig. 5): the ground-truth logit of the hard-label test, paired gains over
repeats, and where the hard-label sign switches.

The paper reads the sign of :math:`\langle\delta\hat w_h, \Delta\hat w_c\rangle`
(:func:`~kdnb.papers.wide_network_kd.students.hard_label_effect`) against a weight change :math:`\Delta w_g` that
reproduces "the ground truth"; which logit that is, the paper's captions do not say. The inner product is linear in
the ground-truth logit g, so a positive rescaling of g never changes its sign, but the *shape* of g does:
:func:`ground_truth_logit` offers the two conventions the book compares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...core.validation import check_choice, check_finite_tensor

__all__ = ["GROUND_TRUTH_LOGITS", "SignSwitch", "ground_truth_logit", "held_out_soft_gain", "sign_switch"]

GROUND_TRUTH_LOGITS = ("smooth", "step")


def ground_truth_logit(truth: torch.Tensor, convention: str) -> torch.Tensor:
    r"""The ground-truth logit g of the hard-label test, from the values of the function that made the labels.

    The labels are :math:`y_g = \mathbb 1\{f(x) > 0\}` for a smooth function f. ``"smooth"``: :math:`g = f`, the
    function itself; ``"step"``: :math:`g = 2y_g - 1 = \operatorname{sign} f` (0 where f = 0), a logit that only
    knows the label. Both have the sign of the label. A positive factor c in :math:`g = c(2y_g - 1)` would rescale
    :math:`\langle\delta\hat w_h, \Delta\hat w_c\rangle` by c and leave its sign unchanged, so none is applied.

    Parameters
    ----------
    truth : torch.Tensor
        f(x) on the points, (N,) or any shape, floating point and finite.
    convention : {"smooth", "step"}
        Which ground-truth logit.

    Returns
    -------
    torch.Tensor
        g, float64, the shape and device of ``truth``.

    Raises
    ------
    TypeError, ValueError
        If ``truth`` is not a finite floating-point tensor, or ``convention`` is not one of
        :data:`GROUND_TRUTH_LOGITS` (ValueError).

    References
    ----------
    Ji & Zhu 2020, Fig. 5 (right): the angle to the ground truth's weight change; the logit is the book's choice.
    """
    convention = check_choice(convention, "convention", GROUND_TRUTH_LOGITS)
    values = check_finite_tensor(truth, "truth").to(torch.float64)
    return values if convention == "smooth" else torch.sign(values)


def _accuracy_array(accuracy, rhos):
    array = np.asarray(accuracy.numpy() if isinstance(accuracy, torch.Tensor) else accuracy, dtype=np.float64)
    if array.ndim != 3 or array.shape[0] < 2:
        raise ValueError(f"accuracy must be (R, τ, ρ) with R >= 2 repeats, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("accuracy must be finite")
    rhos = [float(r) for r in rhos]
    if len(rhos) != array.shape[2]:
        raise ValueError(f"rhos must have one value per column of accuracy ({array.shape[2]}), got {len(rhos)}")
    if 1.0 not in rhos or not any(r < 1 for r in rhos):
        raise ValueError(f"rhos must contain 1.0 and at least one value below 1, got {rhos}")
    return array, rhos


def held_out_soft_gain(accuracy, rhos) -> np.ndarray:
    r"""Per repeat, the gain of the best :math:`\rho < 1` over :math:`\rho = 1`, with the best chosen without it.

    For repeat r and teacher j, :math:`\rho^*_{-r}` maximises the mean accuracy over the *other* repeats among the
    :math:`\rho < 1`, and the gain is :math:`\mathrm{acc}_r(\rho^*_{-r}) - \mathrm{acc}_r(1)`: a paired difference
    (the same teacher, data and test set on both sides), whose choice of ρ never sees the repeat it scores. Taking
    the best :math:`\rho < 1` of the same repeat instead would be biased upwards: the maximum of many noisy
    accuracies beats any single one even when all have the same mean.

    Parameters
    ----------
    accuracy : array-like
        (R, τ, ρ) test accuracies, R >= 2 repeats, finite.
    rhos : sequence of float
        The soft ratios of the last axis; must contain 1.0 and at least one value below 1.

    Returns
    -------
    numpy.ndarray
        (R, τ) float64 gains.

    Raises
    ------
    ValueError
        If ``accuracy`` is not (R, τ, ρ) with R >= 2 and finite values, or ``rhos`` does not match its last axis or
        lacks 1.0 or a value below 1.

    References
    ----------
    Ji & Zhu 2020, Fig. 5 (left): ρ = 1 is not the best soft ratio with an imperfect teacher.
    """
    array, rhos = _accuracy_array(accuracy, rhos)
    soft = rhos.index(1.0)
    mixed = [j for j, r in enumerate(rhos) if r < 1]
    below = array[:, :, mixed]  # (R, τ, m)
    others = (below.sum(0, keepdims=True) - below) / (array.shape[0] - 1)  # mean over the other repeats
    chosen = others.argmax(2)  # (R, τ), first on ties
    picked = np.take_along_axis(below, chosen[:, :, None], 2)[:, :, 0]
    return picked - array[:, :, soft]


@dataclass(frozen=True)
class SignSwitch:
    r"""Result of :func:`sign_switch`. Indices are into the teachers' axis (increasing quality).

    Parameters
    ----------
    crossing : int or None
        The first teacher more accurate than the best student; ``None`` if none is.
    switch : int or None
        The first teacher from which the mean sign is negative for every later teacher; ``None`` if the last one's
        is not negative.
    holds : bool
        Whether both exist and are at most ``tolerance`` teachers apart.
    """

    crossing: int | None
    switch: int | None
    holds: bool


def sign_switch(mean_sign, teacher_accuracy, best_student_accuracy, *, tolerance: int = 1) -> SignSwitch:
    r"""Does the hard-label sign switch where the teacher overtakes the best student (Ji & Zhu 2020, Fig. 5)?

    Parameters
    ----------
    mean_sign : array-like
        (τ,) mean sign of :math:`\langle\delta\hat w_h, \Delta\hat w_c\rangle` over repeats, teachers in order of
        increasing stopping time.
    teacher_accuracy, best_student_accuracy : array-like
        (τ,) the teachers' accuracies and their best students'.
    tolerance : int, default 1
        How many steps of the teachers' grid "near" allows, >= 0.

    Returns
    -------
    SignSwitch
        The crossing, the switch, and whether they are within ``tolerance`` of each other.

    Raises
    ------
    ValueError
        If the three inputs are not finite 1-D arrays of one length >= 1, or ``tolerance`` < 0.
    TypeError
        If ``tolerance`` is not an int.
    """
    if not isinstance(tolerance, (int, np.integer)) or isinstance(tolerance, bool):
        raise TypeError(f"tolerance must be an int, got {type(tolerance).__name__}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    arrays = [np.asarray(a, dtype=np.float64) for a in (mean_sign, teacher_accuracy, best_student_accuracy)]
    if any(a.ndim != 1 or a.shape != arrays[0].shape for a in arrays) or arrays[0].size == 0:
        raise ValueError("mean_sign, teacher_accuracy and best_student_accuracy must be 1-D arrays of one length")
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError("mean_sign, teacher_accuracy and best_student_accuracy must be finite")
    sign, teacher, student = arrays
    above = np.nonzero(teacher > student)[0]
    crossing = int(above[0]) if above.size else None
    negative = sign < 0
    switch = None
    if negative[-1]:
        last_nonnegative = np.nonzero(~negative)[0]
        switch = int(last_nonnegative[-1]) + 1 if last_nonnegative.size else 0
    holds = crossing is not None and switch is not None and abs(switch - crossing) <= tolerance
    return SignSwitch(crossing=crossing, switch=switch, holds=bool(holds))
