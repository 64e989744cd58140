r"""Knowledge-distillation losses (Hinton, Vinyals & Dean, 2015).

Convention (used throughout the book): the **soft ratio** :math:`\rho \in [0, 1]` is the weight of the soft (teacher)
term, so :math:`\rho = 1` is pure distillation and :math:`\rho = 0` is ordinary training on labels,

.. math::

    \ell = \rho \, c_T \, \mathrm{KL}\!\left(p_T(z_t) \,\|\, p_T(z_s)\right) + (1 - \rho)\, \mathrm{CE}\!\left(y, p_1(z_s)\right),
    \qquad p_T(z) = \mathrm{softmax}(z / T),

with :math:`c_T = T^2` when ``t2_scaling=True`` (Hinton's choice; every ``t2_scaling`` in kdnb has default True:
Hinton et al. 2015. It keeps the soft term's gradient of order one as T grows, since that gradient is
:math:`(c_T/T)(p_T(z_s) - p_T(z_t))`) and :math:`c_T = 1` otherwise (the "plain" convention). The binary losses use
one logit per example and the sigmoid in place of the softmax.

The KL divergence equals the cross-entropy :math:`H(p_T(z_t), p_T(z_s))` minus the teacher's entropy, which does not
depend on the student, so both give the same gradients; KL is reported because it is zero when the student matches.
Everything is computed from log-softmax / softplus, so logits of size 1e4 and temperatures from 0.1 to 100 stay finite.

Numerics shared by every function here:

* **Extreme finite logits.** Any finite logit is accepted, up to ``torch.finfo(dtype).min`` and ``.max`` (the value
  used to mask a class). Where :math:`z/T` would overflow to :math:`\pm\infty` (:math:`|z|` near the dtype's largest
  value and T < 1), the logits of that example are first shifted by their maximum, which leaves the softmax unchanged.
  A class to which the teacher gives probability exactly 0 contributes 0 to the KL (the limit
  :math:`p \log p \to 0`), also where the student's probability is 0 too; so no 0 * inf turns into NaN. The KL is
  :math:`+\infty` only where the teacher gives positive probability to a class whose student probability is exactly
  0 in floating point (the cross-entropy likewise, for the labelled class), which is its true value; the gradients
  stay finite even then, and a term whose weight is 0 (``rho = 0`` or ``rho = 1``) contributes exactly 0.
* **16-bit logits.** ``torch.float16`` and ``torch.bfloat16`` logits are computed in float32 (they are cast, and the
  cast is differentiable, so gradients flow back to 16-bit student logits). Rounding log-probabilities to 8 or 11
  bits before subtracting them would make a KL between close distributions negative or wrong by orders of magnitude.
  The losses are returned in float32 for 16-bit logits (what mixed-precision training expects of a loss); the
  probabilities of :func:`soften` and the closed-form gradients are returned in the logits' own dtype. float32 and
  float64 logits are computed in their own dtype, by the same operations as for ordinary inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .validation import check_choice, check_finite_tensor, check_soft_ratio, check_temperature

__all__ = [
    "binary_kd_loss",
    "binary_kd_loss_gradient",
    "kd_loss",
    "kd_loss_gradient",
    "soften",
]

REDUCTIONS = ("mean", "sum", "none")

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _working(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype the losses compute in: float32 for 16-bit tensors (a differentiable cast), else ``x`` itself."""
    return x.float() if x.dtype in _HALF_DTYPES else x


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature`` along the last axis, shifted by each row's maximum in the rows where it overflows.

    The softmax is unchanged by the shift; rows where ``logits / temperature`` is finite get exactly that value. In
    a shifted row every entry is <= 0 (the row's maximum is 0), at worst -inf, so the softmax has no NaN.
    """
    scaled = logits / temperature
    finite = torch.isfinite(scaled)
    if bool(finite.all()):
        return scaled
    shifted = (logits - logits.amax(dim=-1, keepdim=True).detach()) / temperature
    return torch.where(finite.all(dim=-1, keepdim=True), scaled, shifted)


def _where_positive(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x`` where ``p > 0``, else 0: ``p * _where_positive(p, x)`` is ``p * x`` with 0 * inf (and its gradient) 0."""
    return torch.where(p > 0, x, torch.zeros_like(x))


def _weighted(weight: float, term: torch.Tensor) -> torch.Tensor:
    """``weight * term``, and exactly 0 when ``weight`` is 0 (so an infinite term of weight 0 is not NaN).

    The product is taken in ``term``'s dtype, so a weight that rounds to 0 there (``rho = 1e-300`` with float32) counts
    as 0 too.
    """
    zero = weight == 0 or torch.tensor(weight, dtype=term.dtype).item() == 0
    return torch.zeros_like(term) if zero else weight * term


def soften(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Return the softened class probabilities :math:`\mathrm{softmax}(z/T)` along the last axis.

    Parameters
    ----------
    logits : torch.Tensor
        Shape (..., C): float16, bfloat16, float32 or float64, finite entries (any finite value, the dtype's
        ``torch.finfo`` min and max included); classes along the last axis. 16-bit logits are computed in float32.
    temperature : float
        T > 0 (finite); T = 1 is the ordinary softmax, larger T gives softer probabilities [1]_.

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device as ``logits`` (16-bit results are rounded from float32); each row along the last
        axis sums to 1 up to the rounding of that dtype. A class whose :math:`z/T` is far below the row's maximum gets
        probability exactly 0; rows where :math:`z/T` overflows are shifted by their maximum first, so no entry is
        NaN.

    Raises
    ------
    TypeError
        If ``logits`` is not a floating-point ``torch.Tensor`` or ``temperature`` is not a real number.
    ValueError
        If ``logits`` has a NaN or inf entry, or ``temperature`` is not finite and > 0.

    References
    ----------
    .. [1] G. Hinton, O. Vinyals and J. Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep
       Learning Workshop, arXiv:1503.02531 (2015).
    """
    temperature = check_temperature(temperature)
    check_finite_tensor(logits, "logits")
    return torch.softmax(_scaled(_working(logits), temperature), dim=-1).to(logits.dtype)


def _check_common(student_logits, teacher_logits, rho, temperature, reduction):
    check_finite_tensor(student_logits, "student_logits")
    check_finite_tensor(teacher_logits, "teacher_logits")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape, "
            f"got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if student_logits.dtype != teacher_logits.dtype:
        raise TypeError(
            f"student_logits and teacher_logits must have the same dtype, "
            f"got {student_logits.dtype} and {teacher_logits.dtype}"
        )
    if student_logits.device != teacher_logits.device:
        raise ValueError(
            f"student_logits and teacher_logits must be on the same device, "
            f"got {student_logits.device} and {teacher_logits.device}"
        )
    rho = check_soft_ratio(rho)
    temperature = check_temperature(temperature)
    check_choice(reduction, "reduction", REDUCTIONS)
    return rho, temperature


def _check_labelled(labelled, n: int, device) -> torch.Tensor | None:
    if labelled is None:
        return None
    if not isinstance(labelled, torch.Tensor):
        raise TypeError(f"labelled must be a bool torch.Tensor or None, got {type(labelled).__name__}")
    if labelled.dtype != torch.bool:
        raise TypeError(f"labelled must have dtype torch.bool, got {labelled.dtype}")
    if labelled.shape != (n,):
        raise ValueError(f"labelled must have shape ({n},) to match the batch, got {tuple(labelled.shape)}")
    return labelled.to(device)


def _reduce(soft: torch.Tensor, hard: torch.Tensor, rho: float, c_t: float, labelled, reduction: str):
    """Combine per-example soft and hard terms; with a mask, the hard term averages over labelled examples only."""
    if labelled is not None:
        hard = torch.where(labelled, hard, torch.zeros_like(hard))
    if reduction == "none":
        return _weighted(rho * c_t, soft) + _weighted(1.0 - rho, hard)
    if reduction == "sum":
        return _weighted(rho * c_t, soft.sum()) + _weighted(1.0 - rho, hard.sum())
    n_hard = hard.numel() if labelled is None else int(labelled.sum())
    hard_mean = hard.sum() / n_hard if n_hard > 0 else hard.sum() * 0.0
    return _weighted(rho * c_t, soft.mean()) + _weighted(1.0 - rho, hard_mean)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    rho: float,
    temperature: float,
    t2_scaling: bool = True,
    labelled: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Multi-class Hinton KD loss :math:`\rho c_T \mathrm{KL}(p_T(z_t)\|p_T(z_s)) + (1-\rho)\mathrm{CE}(y, p_1(z_s))`.

    Here :math:`p_T(z) = \mathrm{softmax}(z / T)` and :math:`c_T = T^2` with ``t2_scaling`` (else 1), as in the
    module docstring [1]_.

    Parameters
    ----------
    student_logits, teacher_logits : torch.Tensor
        Shape (N, C) with C >= 2: float16, bfloat16, float32 or float64, finite (any finite value, the dtype's
        ``torch.finfo`` min and max included, e.g. as a class mask), of the same shape, dtype and device. 16-bit
        logits are computed in float32 (see the module docstring).
    labels : torch.Tensor or None, default None
        Shape (N,): integer class indices (int64, int32, int16 or uint8) in [0, C); required unless ``rho == 1``
        (ignored then). Entries where ``labelled`` is False may hold any placeholder.
    rho : float
        Soft ratio in [0, 1] (1 = pure distillation, 0 = labels only); keyword-only.
    temperature : float
        T > 0 (finite), applied to both teacher and student in the soft term only; keyword-only.
    t2_scaling : bool, default True
        Multiply the soft term by :math:`T^2` (default True: Hinton et al. 2015 [1]_), which keeps its gradient of
        order one as T grows; False gives :math:`c_T = 1` (the "plain" convention).
    labelled : torch.Tensor or None, default None
        Optional (N,) bool mask; the hard term uses only the examples where it is True (a transfer set mixes
        labelled and unlabelled inputs). With ``reduction="mean"`` the hard term is averaged over the labelled examples
        and the soft term over all of them (with no labelled example the hard term is 0). ``None`` uses every example.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-example values).

    Returns
    -------
    torch.Tensor
        The loss: a 0-D tensor for ``"mean"`` and ``"sum"``, shape (N,) for ``"none"``, on the logits' device; in the
        logits' dtype for float32 and float64, in float32 for float16 and bfloat16 logits (differentiable with respect
        to the 16-bit student logits). Never NaN for finite logits; :math:`+\infty` only where the teacher (or, in the
        hard term, the label) gives positive probability to an outcome whose student probability is exactly 0.

    Raises
    ------
    TypeError
        If a logit tensor is not a floating-point ``torch.Tensor``, the two logit tensors differ in dtype, ``rho`` or
        ``temperature`` is not a real number, ``labels`` is not an integer ``torch.Tensor``, or ``labelled`` is not a
        ``torch.bool`` tensor.
    ValueError
        If the logits have a NaN or inf entry, differ in shape or device, or are not (N, C) with C >= 2; if ``rho`` is
        outside [0, 1], ``temperature`` is not finite and > 0, or ``reduction`` is not one of the three; if ``labels``
        is missing while ``rho < 1``, is not (N,) or has a class outside [0, C); if ``labelled`` is not (N,).

    References
    ----------
    .. [1] G. Hinton, O. Vinyals and J. Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep
       Learning Workshop, arXiv:1503.02531 (2015).
    """
    rho, temperature = _check_common(student_logits, teacher_logits, rho, temperature, reduction)
    if student_logits.ndim != 2 or student_logits.shape[1] < 2:
        raise ValueError(f"student_logits must have shape (N, C) with C >= 2, got {tuple(student_logits.shape)}")
    n, n_classes = student_logits.shape
    labelled = _check_labelled(labelled, n, student_logits.device)

    z_s, z_t = _working(student_logits), _working(teacher_logits)
    log_p_teacher = F.log_softmax(_scaled(z_t, temperature), dim=1)
    log_p_student = F.log_softmax(_scaled(z_s, temperature), dim=1)
    p_teacher = log_p_teacher.exp()
    # A class the teacher gives probability 0 contributes 0, even where log_p_teacher - log_p_student is -inf - -inf.
    soft = (p_teacher * _where_positive(p_teacher, log_p_teacher - log_p_student)).sum(dim=1)

    if rho < 1.0:
        labels = _check_class_labels(labels, n, n_classes, labelled)
        hard = F.cross_entropy(z_s, labels.to(z_s.device), reduction="none")
    else:
        hard = torch.zeros_like(soft)
    c_t = temperature**2 if t2_scaling else 1.0
    return _reduce(soft, hard, rho, c_t, labelled, reduction)


def _check_class_labels(labels, n: int, n_classes: int, labelled) -> torch.Tensor:
    if labels is None:
        raise ValueError("labels are required when rho < 1 (the hard-label term has weight 1 - rho > 0)")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"labels must be an integer tensor of class indices, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match the logits, got {tuple(labels.shape)}")
    labels = labels.long()
    if labelled is not None:
        # Unlabelled entries may hold any placeholder; map them to class 0 so cross_entropy accepts them.
        labels = torch.where(labelled.to(labels.device), labels, torch.zeros_like(labels))
    if n and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got values in [{int(labels.min())}, {int(labels.max())}]")
    return labels


def kd_loss_gradient(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    rho: float,
    temperature: float,
    t2_scaling: bool = True,
) -> torch.Tensor:
    r"""Closed-form gradient of the per-example :func:`kd_loss` with respect to the student logits.

    .. math:: \partial \ell / \partial z_s = \rho \frac{c_T}{T}\left(p_T(z_s) - p_T(z_t)\right)
              + (1-\rho)\left(p_1(z_s) - e_y\right)

    (no averaging over the batch: row i is the gradient of example i's loss). With ``t2_scaling`` the soft term's
    factor :math:`c_T/T = T` [1]_.

    Parameters
    ----------
    student_logits, teacher_logits : torch.Tensor
        Shape (N, C) with C >= 2: float16, bfloat16, float32 or float64, finite (any finite value, the dtype's
        ``torch.finfo`` min and max included, e.g. as a class mask), of the same shape, dtype and device. 16-bit
        logits are computed in float32 (see the module docstring).
    labels : torch.Tensor or None, default None
        Shape (N,): integer class indices (int64, int32, int16 or uint8) in [0, C); required unless ``rho == 1``
        (ignored then).
    rho : float
        Soft ratio in [0, 1] (1 = pure distillation, 0 = labels only); keyword-only.
    temperature : float
        T > 0 (finite), applied to both teacher and student in the soft term only; keyword-only.
    t2_scaling : bool, default True
        Multiply the soft term by :math:`T^2` (default True: Hinton et al. 2015 [1]_); False gives :math:`c_T = 1`.

    Returns
    -------
    torch.Tensor
        Shape (N, C), same dtype and device as the logits (computed in float32 for 16-bit logits, then rounded):
        row i is the gradient of example i's loss. Finite for every finite input.

    Raises
    ------
    TypeError
        If a logit tensor is not a floating-point ``torch.Tensor``, the two logit tensors differ in dtype, ``rho`` or
        ``temperature`` is not a real number, or ``labels`` is not an integer ``torch.Tensor``.
    ValueError
        If the logits have a NaN or inf entry, differ in shape or device, or are not (N, C) with C >= 2; if ``rho`` is
        outside [0, 1] or ``temperature`` is not finite and > 0; if ``labels`` is missing while ``rho < 1``, is not
        (N,) or has a class outside [0, C).

    References
    ----------
    .. [1] G. Hinton, O. Vinyals and J. Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep
       Learning Workshop, arXiv:1503.02531 (2015).
    """
    rho, temperature = _check_common(student_logits, teacher_logits, rho, temperature, "none")
    if student_logits.ndim != 2 or student_logits.shape[1] < 2:
        raise ValueError(f"student_logits must have shape (N, C) with C >= 2, got {tuple(student_logits.shape)}")
    c_t = temperature**2 if t2_scaling else 1.0
    z_s, z_t = _working(student_logits), _working(teacher_logits)
    soft = torch.softmax(_scaled(z_s, temperature), 1) - torch.softmax(_scaled(z_t, temperature), 1)
    grad = rho * c_t / temperature * soft
    if rho < 1.0:
        n, n_classes = student_logits.shape
        labels = _check_class_labels(labels, n, n_classes, None)
        one_hot = F.one_hot(labels, n_classes).to(z_s.dtype)
        grad = grad + (1.0 - rho) * (torch.softmax(z_s, 1) - one_hot)
    return grad.to(student_logits.dtype)


def _check_binary(student_logits, labels, rho):
    if student_logits.ndim != 1:
        raise ValueError(f"binary logits must have shape (N,) (one logit per example), got {tuple(student_logits.shape)}")
    if rho < 1.0:
        if labels is None:
            raise ValueError("labels are required when rho < 1 (the hard-label term has weight 1 - rho > 0)")
        check_finite_tensor(labels, "labels")
        if labels.shape != student_logits.shape:
            raise ValueError(f"labels must have shape {tuple(student_logits.shape)}, got {tuple(labels.shape)}")
        if bool(((labels < 0) | (labels > 1)).any()):
            raise ValueError("binary labels must lie in [0, 1] (probabilities of the positive class)")
        return labels.to(_working(student_logits).dtype)
    return None


def binary_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    rho: float,
    temperature: float,
    t2_scaling: bool = True,
    labelled: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Binary (sigmoid) KD loss, one logit per example (the setting of Ji & Zhu 2020).

    .. math:: \ell = \rho\, c_T\, \mathrm{KL}\!\left(\sigma(z_t/T) \,\|\, \sigma(z_s/T)\right)
              + (1-\rho)\, H\!\left(y, \sigma(z_s)\right)

    with Bernoulli KL and binary cross-entropy ``H`` [2]_. ``labels`` are floats in [0, 1]. Other arguments as in
    :func:`kd_loss`. The log-probabilities are :math:`\log\sigma(a) = -\mathrm{softplus}(-a)`, which is stable.

    Parameters
    ----------
    student_logits, teacher_logits : torch.Tensor
        Shape (N,), one logit per example: float16, bfloat16, float32 or float64, finite (any finite value, the
        dtype's ``torch.finfo`` min and max included), of the same shape, dtype and device. 16-bit logits are
        computed in float32 (see the module docstring).
    labels : torch.Tensor or None, default None
        Shape (N,): floating-point, finite probabilities of the positive class in [0, 1] (every entry, also those
        masked out by ``labelled``); required unless ``rho == 1`` (ignored then). Cast to the logits' dtype (float32
        for 16-bit logits).
    rho : float
        Soft ratio in [0, 1] (1 = pure distillation, 0 = labels only); keyword-only.
    temperature : float
        T > 0 (finite), applied to both teacher and student in the soft term only; keyword-only.
    t2_scaling : bool, default True
        Multiply the soft term by :math:`T^2` (default True: Hinton et al. 2015 [1]_); False gives :math:`c_T = 1`.
    labelled : torch.Tensor or None, default None
        Optional (N,) bool mask; the hard term uses only the examples where it is True. With ``reduction="mean"``
        the hard term is averaged over the labelled examples and the soft term over all of them (with no labelled
        example the hard term is 0). ``None`` uses every example.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-example values).

    Returns
    -------
    torch.Tensor
        The loss: a 0-D tensor for ``"mean"`` and ``"sum"``, shape (N,) for ``"none"``, on the logits' device; in the
        logits' dtype for float32 and float64, in float32 for float16 and bfloat16 logits (differentiable with respect
        to the 16-bit student logits). Never NaN for finite logits; :math:`+\infty` only where the teacher (or, in the
        hard term, the label) gives positive probability to an outcome whose student probability is exactly 0.

    Raises
    ------
    TypeError
        If a logit tensor is not a floating-point ``torch.Tensor``, the two logit tensors differ in dtype, ``rho`` or
        ``temperature`` is not a real number, ``labels`` is not a floating-point ``torch.Tensor``, or ``labelled`` is
        not a ``torch.bool`` tensor.
    ValueError
        If the logits have a NaN or inf entry, differ in shape or device, or are not 1-D; if ``rho`` is outside
        [0, 1] or ``temperature`` is not finite and > 0; if ``labels`` is missing while ``rho < 1``, is not (N,), has
        a NaN or inf entry or a value outside [0, 1]; if ``reduction`` is not one of the three or ``labelled`` is not
        (N,).

    References
    ----------
    .. [1] G. Hinton, O. Vinyals and J. Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep
       Learning Workshop, arXiv:1503.02531 (2015).
    .. [2] G. Ji and Z. Zhu, "Knowledge Distillation in Wide Neural Networks: Risk Bound, Data Efficiency and
       Imperfect Teacher", Advances in Neural Information Processing Systems 33 (2020), arXiv:2010.10090.
    """
    rho, temperature = _check_common(student_logits, teacher_logits, rho, temperature, reduction)
    labels = _check_binary(student_logits, labels, rho)
    labelled = _check_labelled(labelled, student_logits.shape[0], student_logits.device)

    z_s, z_t = _working(student_logits), _working(teacher_logits)
    a_t, a_s = z_t / temperature, z_s / temperature
    p_t = torch.sigmoid(a_t)
    q_t = 1 - p_t
    # log p - log q for both outcomes, via softplus (log σ(a) = -softplus(-a), log(1-σ(a)) = -softplus(a)). An outcome
    # of teacher probability 0 (a_t = ∓inf once z_t / T overflows) contributes 0 instead of 0 * (inf - inf).
    soft = (p_t * _where_positive(p_t, F.softplus(-a_s) - F.softplus(-a_t))
            + q_t * _where_positive(q_t, F.softplus(a_s) - F.softplus(a_t)))
    if labels is not None:
        hard = F.binary_cross_entropy_with_logits(z_s, labels, reduction="none")
    else:
        hard = torch.zeros_like(soft)
    c_t = temperature**2 if t2_scaling else 1.0
    return _reduce(soft, hard, rho, c_t, labelled, reduction)


def binary_kd_loss_gradient(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    rho: float,
    temperature: float,
    t2_scaling: bool = True,
) -> torch.Tensor:
    r"""Closed-form per-example gradient of :func:`binary_kd_loss` with respect to the student logits.

    .. math:: \partial\ell/\partial z_s = \rho \frac{c_T}{T}\left[\sigma(z_s/T) - \sigma(z_t/T)\right]
              + (1-\rho)\left[\sigma(z_s) - y\right]

    (no averaging over the batch: entry i is the derivative of example i's loss), in the one-logit setting of
    Ji & Zhu 2020 [2]_.

    Parameters
    ----------
    student_logits, teacher_logits : torch.Tensor
        Shape (N,), one logit per example: float16, bfloat16, float32 or float64, finite (any finite value, the
        dtype's ``torch.finfo`` min and max included), of the same shape, dtype and device. 16-bit logits are
        computed in float32 (see the module docstring).
    labels : torch.Tensor or None, default None
        Shape (N,): floating-point, finite probabilities of the positive class in [0, 1]; required unless ``rho == 1``
        (ignored then). Cast to the logits' dtype (float32 for 16-bit logits).
    rho : float
        Soft ratio in [0, 1] (1 = pure distillation, 0 = labels only); keyword-only.
    temperature : float
        T > 0 (finite), applied to both teacher and student in the soft term only; keyword-only.
    t2_scaling : bool, default True
        Multiply the soft term by :math:`T^2` (default True: Hinton et al. 2015 [1]_); False gives :math:`c_T = 1`.

    Returns
    -------
    torch.Tensor
        Shape (N,), same dtype and device as the logits (computed in float32 for 16-bit logits, then rounded):
        entry i is the derivative of example i's loss. Finite for every finite input.

    Raises
    ------
    TypeError
        If a logit tensor is not a floating-point ``torch.Tensor``, the two logit tensors differ in dtype, ``rho`` or
        ``temperature`` is not a real number, or ``labels`` is not a floating-point ``torch.Tensor``.
    ValueError
        If the logits have a NaN or inf entry, differ in shape or device, or are not 1-D; if ``rho`` is outside
        [0, 1] or ``temperature`` is not finite and > 0; if ``labels`` is missing while ``rho < 1``, is not (N,), has
        a NaN or inf entry or a value outside [0, 1].

    References
    ----------
    .. [1] G. Hinton, O. Vinyals and J. Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014 Deep
       Learning Workshop, arXiv:1503.02531 (2015).
    .. [2] G. Ji and Z. Zhu, "Knowledge Distillation in Wide Neural Networks: Risk Bound, Data Efficiency and
       Imperfect Teacher", Advances in Neural Information Processing Systems 33 (2020), arXiv:2010.10090.
    """
    rho, temperature = _check_common(student_logits, teacher_logits, rho, temperature, "none")
    labels = _check_binary(student_logits, labels, rho)
    c_t = temperature**2 if t2_scaling else 1.0
    z_s, z_t = _working(student_logits), _working(teacher_logits)
    grad = rho * c_t / temperature * (torch.sigmoid(z_s / temperature) - torch.sigmoid(z_t / temperature))
    if labels is not None:
        grad = grad + (1.0 - rho) * (torch.sigmoid(z_s) - labels)
    return grad.to(student_logits.dtype)
