r"""Shangchen Du, Shan You, Xiaojie Li, Jianlong Wu, Fei Wang, Chen Qian and Changshui Zhang. *Agree to Disagree:
Adaptive Ensemble Knowledge Distillation in Gradient Space.* Advances in Neural Information Processing Systems 33,
2020. Reproduced in chapter 8 (``08_ensemble_distillation``).

Distillation from M teachers. The usual recipe, AVER, averages the per-teacher KD losses. AE-KD picks the teachers'
weights :math:`w` at every step as the min-norm point of the convex hull of the teachers' gradients with respect to
the student's logits (multiple-gradient descent, MGDA, on an upper bound in the output space), with a cap :math:`C`
on every weight that lets some teachers "disagree":

.. math:: w^\star = \arg\min_w \Big\| \sum_m w_m g_m \Big\|^2 \quad \text{s.t.} \quad \sum_m w_m = 1,\;
          0 \le w_m \le C,

with :math:`g_m = \partial L_m / \partial z` and :math:`L_m = (T^2/N) \sum_n \mathrm{KL}(p_T(z_t^m) \| p_T(z))`.
This is the dual of a :math:`\nu`-one-class SVM with the precomputed Gram matrix :math:`G_{ij} = \langle g_i, g_j
\rangle` and :math:`\nu = 1/(CM)`; :math:`C = 1/M` forces :math:`w = 1/M` (AVER) and :math:`C \ge 1` is plain MGDA.

Conventions: teacher logits are (N, M, K), examples first (so :func:`kdnb.core.training.fit` slices them into
mini-batches like any target); per-teacher gradients are (M, N, K), teachers first. Solvers work on the CPU in
float64. The teacher weights are called :math:`w_m` here; the paper calls them :math:`\alpha_m`, and the weight of the
KD term, ``alpha`` below, is the reference code's ``-a``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real

import numpy as np
import torch
import torch.nn.functional as F

from ..core.data import corrupt_labels
from ..core.models import MLP
from ..core.training import predict_logits, train_classifier
from ..core.validation import (
    check_bool,
    check_choice,
    check_finite_tensor,
    check_in_unit_interval,
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_temperature,
)

__all__ = [
    "EnsembleObjective",
    "GRAM_MODES",
    "METHODS",
    "SOLVERS",
    "TeacherEnsemble",
    "capped_min_norm",
    "ensemble_kd_loss",
    "ensemble_weights",
    "kd_logit_gradients",
    "min_norm_slack",
    "per_teacher_kd_losses",
    "project_capped_simplex",
    "train_teacher_ensemble",
]

METHODS = ("ce", "aver", "aekd", "prob_average")
GRAM_MODES = ("flat", "batch_mean")
SOLVERS = ("fista", "ocsvm")
INFEASIBLE = ("raise", "uniform")
# Relative tolerance below which C*M counts as 1 (C = 1/M given as a float, e.g. 0.2 for M = 5).
CAP_TOLERANCE = 1e-12
# A Gram matrix is refused as not PSD below -PSD_TOLERANCE * its largest eigenvalue (rounding of V V^T).
PSD_TOLERANCE = 1e-9


# --- losses and their logit gradients ---------------------------------------------------------------------------


def _check_logits(student_logits, teacher_logits):
    check_finite_tensor(student_logits, "student_logits")
    check_finite_tensor(teacher_logits, "teacher_logits")
    if student_logits.ndim != 2 or student_logits.shape[1] < 2:
        raise ValueError(f"student_logits must have shape (N, K) with K >= 2, got {tuple(student_logits.shape)}")
    n, k = student_logits.shape
    if teacher_logits.ndim != 3 or teacher_logits.shape[0] != n or teacher_logits.shape[2] != k:
        raise ValueError(f"teacher_logits must have shape (N, M, K) = ({n}, M, {k}) to match the student's, got "
                         f"{tuple(teacher_logits.shape)}")
    if teacher_logits.shape[1] < 2:
        raise ValueError(f"teacher_logits must hold M >= 2 teachers (axis 1), got {teacher_logits.shape[1]}")
    if student_logits.dtype != teacher_logits.dtype or student_logits.device != teacher_logits.device:
        raise TypeError(f"student_logits and teacher_logits must have the same dtype and device, got "
                        f"{student_logits.dtype} on {student_logits.device} and {teacher_logits.dtype} on "
                        f"{teacher_logits.device}")


def per_teacher_kd_losses(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    r"""Each teacher's KD loss :math:`L_m = (T^2/N) \sum_n \mathrm{KL}(p_T(z_t^m) \| p_T(z))`.

    This is :func:`kdnb.core.losses.kd_loss` with ``rho=1`` (pure distillation, :math:`T^2` scaling, mean over the
    batch) for every teacher at once; it is the reference code's ``DistillKL``.

    Parameters
    ----------
    student_logits : torch.Tensor
        (N, K) student logits, K >= 2, finite, float32 or float64.
    teacher_logits : torch.Tensor
        (N, M, K) logits of the M >= 2 teachers on the same N examples, same dtype and device.
    temperature : float, default 4.0
        T > 0.

    Returns
    -------
    torch.Tensor
        (M,) losses, differentiable with respect to ``student_logits``.

    Raises
    ------
    ValueError
        If the shapes do not match, M < 2, K < 2, an entry is not finite or ``temperature`` is not > 0.
    TypeError
        If a logit tensor is not a floating-point tensor, or the two differ in dtype or device.

    References
    ----------
    Hinton, G., Vinyals, O. and Dean, J. (2015). Distilling the knowledge in a neural network. arXiv:1503.02531.
    """
    _check_logits(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1).unsqueeze(1)  # (N, 1, K)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)  # (N, M, K)
    p_t = log_p_t.exp()
    # A class of teacher probability 0 contributes 0 (the limit p log p -> 0), not 0 * inf.
    kl = (p_t * torch.where(p_t > 0, log_p_t - log_p_s, torch.zeros_like(p_t))).sum(-1)  # (N, M)
    return temperature**2 * kl.mean(0)


def kd_logit_gradients(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    r"""Closed-form gradients :math:`\partial L_m / \partial z = (T/N)(p_T(z) - p_T(z_t^m))`, one per teacher.

    No backward pass is needed (the reference code runs one per teacher); this is
    :func:`kdnb.core.losses.kd_loss_gradient` with ``rho=1`` divided by N. Summed with weights, it is the gradient of
    KD towards the mixture of the teachers' soft targets, :math:`\sum_m w_m \partial L_m/\partial z =
    (T/N)(p_T(z) - \sum_m w_m p_T(z_t^m))` for :math:`\sum_m w_m = 1` ("logit alignment").

    Parameters
    ----------
    student_logits : torch.Tensor
        (N, K) student logits (detached or not: the result carries no graph).
    teacher_logits : torch.Tensor
        (N, M, K) teacher logits, same dtype and device.
    temperature : float, default 4.0
        T > 0.

    Returns
    -------
    torch.Tensor
        (M, N, K) gradients, teachers first, in the logits' dtype, without a graph.

    Raises
    ------
    ValueError
        As for :func:`per_teacher_kd_losses`.
    TypeError
        As for :func:`per_teacher_kd_losses`.
    """
    _check_logits(student_logits, teacher_logits)
    temperature = check_temperature(temperature)
    with torch.no_grad():
        p_s = torch.softmax(student_logits.detach() / temperature, dim=-1).unsqueeze(1)
        p_t = torch.softmax(teacher_logits / temperature, dim=-1)
        grads = (temperature / student_logits.shape[0]) * (p_s - p_t)  # (N, M, K)
    return grads.permute(1, 0, 2).contiguous()


# --- the capped min-norm problem ---------------------------------------------------------------------------------


def _check_cap(C, m: int, infeasible: str) -> tuple[float, bool]:
    """``C`` as a float and whether it forces uniform weights (C <= 1/M, the latter only with ``"uniform"``)."""
    if isinstance(C, bool) or not isinstance(C, Real):
        raise TypeError(f"C must be a real number (the cap on each teacher's weight), got {type(C).__name__}")
    C = float(C)
    if not math.isfinite(C) or C <= 0:
        raise ValueError(f"C must be finite and > 0 (the cap on each teacher's weight), got {C}")
    check_choice(infeasible, "infeasible", INFEASIBLE)
    if C * m < 1 - CAP_TOLERANCE:
        if infeasible == "uniform":
            return C, True
        raise ValueError(f"C must be >= 1/M = {1 / m:.6g} for M = {m} teachers (M weights <= C cannot sum to 1), got "
                         f"{C}; infeasible='uniform' clamps it to 1/M like the reference code")
    return C, C * m <= 1 + CAP_TOLERANCE


def project_capped_simplex(v, C: float) -> np.ndarray:
    r"""Euclidean projection onto the capped simplex :math:`\{w : \sum_m w_m = 1,\ 0 \le w_m \le C\}`, exactly.

    The projection is :math:`w_m = \mathrm{clip}(v_m - \tau, 0, C)` with :math:`\tau` the root of the piecewise
    linear, non-increasing :math:`h(\tau) = \sum_m \mathrm{clip}(v_m - \tau, 0, C) - 1`. Its breakpoints are the
    :math:`v_m` and :math:`v_m - C`; :math:`h` is evaluated at all 2M of them and interpolated linearly on the
    segment holding the root, which is exact up to rounding (no iteration).

    Parameters
    ----------
    v : array_like
        (M,) finite real numbers, M >= 1.
    C : float
        The cap, with :math:`MC \ge 1` (else the set is empty); :math:`C \ge 1` is the plain simplex.

    Returns
    -------
    numpy.ndarray
        (M,) float64 projection: entries in [0, C], summing to 1 up to rounding.

    Raises
    ------
    ValueError
        If ``v`` is not 1-D or has a non-finite entry, or ``C`` is not > 0 or below 1/M.
    TypeError
        If ``C`` is not a real number.
    """
    v = np.asarray(v, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"v must be a non-empty 1-D array, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("v must have finite entries")
    C, _ = _check_cap(C, v.size, "raise")
    return _project(v, min(C, 1.0))


def _project(v: np.ndarray, c: float) -> np.ndarray:
    breaks = np.sort(np.concatenate([v, v - c]))
    h = np.minimum(np.maximum(v[None, :] - breaks[:, None], 0.0), c).sum(1)  # non-increasing in the breakpoint
    # First breakpoint where h drops to <= 1: the root lies in [breaks[j-1], breaks[j]].
    j = int(np.argmax(h <= 1.0))
    if j == 0 or h[j] == 1.0:
        tau = breaks[j]
    else:
        h0, h1 = h[j - 1], h[j]
        tau = breaks[j - 1] + (h0 - 1.0) / (h0 - h1) * (breaks[j] - breaks[j - 1])
    return np.minimum(np.maximum(v - tau, 0.0), c)


def _check_gram_matrix(gram) -> np.ndarray:
    if isinstance(gram, torch.Tensor):
        gram = gram.detach().cpu().double().numpy()
    try:
        g = np.asarray(gram, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"gram must be a real (M, M) array or tensor, got {type(gram).__name__}") from None
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"gram must be a square (M, M) matrix, got shape {g.shape}")
    if g.shape[0] < 2:
        raise ValueError(f"gram must be at least 2 x 2 (M >= 2 teachers), got shape {g.shape}")
    if not np.isfinite(g).all():
        raise ValueError("gram must have finite entries (no NaN or inf)")
    scale = float(np.abs(g).max())
    if float(np.abs(g - g.T).max()) > 1e-12 * max(scale, np.finfo(float).tiny):
        raise ValueError(f"gram must be symmetric, got max |G - G^T| = {float(np.abs(g - g.T).max()):.3g}")
    g = (g + g.T) / 2
    if scale > 0:
        lowest = float(np.linalg.eigvalsh(g / scale)[0])
        if lowest < -PSD_TOLERANCE:
            raise ValueError(f"gram must be positive semi-definite (a Gram matrix of gradients), got smallest "
                             f"eigenvalue {lowest * scale:.3g} ({lowest:.3g} of max |G|)")
    return g


def _polish(g: np.ndarray, c: float, w: np.ndarray, bound_tol: float = 1e-10) -> np.ndarray | None:
    """The exact optimum on the active set that ``w`` suggests, or None if that set fails the KKT conditions.

    With L = {w_m = 0}, U = {w_m = C} and F the rest, the optimum of ½wᵀGw on that face solves
    G_FF w_F - μ 1 = -C G_FU 1, Σ_F w_F = 1 - C|U|; it is the global optimum iff 0 <= w_F <= C,
    (Gw)_L >= μ and (Gw)_U <= μ (convexity). ``g`` is scaled so that max diag = 1.
    """
    m = len(w)
    lower = w <= bound_tol
    upper = ~lower & (w >= c - bound_tol)
    free = ~lower & ~upper
    x = np.zeros(m)
    x[upper] = c
    nf = int(free.sum())
    if nf == 0:
        if abs(c * upper.sum() - 1.0) > 1e-12:
            return None
        grad = g @ x
        mu = grad[upper].max()
        if lower.any() and grad[lower].min() < mu - 1e-11:
            return None
        return x
    kkt = np.zeros((nf + 1, nf + 1))
    kkt[:nf, :nf] = g[np.ix_(free, free)]
    kkt[:nf, nf] = -1.0
    kkt[nf, :nf] = 1.0
    rhs = np.empty(nf + 1)
    rhs[:nf] = -c * g[np.ix_(free, upper)].sum(1)
    rhs[nf] = 1.0 - c * upper.sum()
    try:
        sol = np.linalg.solve(kkt, rhs)
    except np.linalg.LinAlgError:
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    if not np.isfinite(sol).all() or np.abs(kkt @ sol - rhs).max() > 1e-10:
        return None
    wf, mu = sol[:nf], sol[nf]
    if wf.min() < -1e-12 or wf.max() > c + 1e-12:
        return None
    x[free] = np.clip(wf, 0.0, c)
    grad = g @ x
    if lower.any() and grad[lower].min() < mu - 1e-11:
        return None
    if upper.any() and grad[upper].max() > mu + 1e-11:
        return None
    return x


def _fista(g: np.ndarray, c: float, w0: np.ndarray, max_iter: int, polish_every: int = 20) -> np.ndarray:
    """Accelerated projected gradient (FISTA) on ½wᵀGw over the capped simplex, with active-set polishing."""
    w = _project(w0, c)
    polished = _polish(g, c, w)
    if polished is not None:
        return polished
    lipschitz = float(np.linalg.eigvalsh(g)[-1])
    if lipschitz <= 0:  # every gradient is zero: every feasible w is optimal
        return w
    y, t = w.copy(), 1.0
    for k in range(1, max_iter + 1):
        w_next = _project(y - (g @ y) / lipschitz, c)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = w_next + ((t - 1.0) / t_next) * (w_next - w)
        # Adaptive restart (O'Donoghue and Candès 2015) keeps the iteration monotone near the optimum.
        if (w_next - w) @ (g @ w_next) > 0:
            y, t_next = w_next.copy(), 1.0
        w, t = w_next, t_next
        if k % polish_every == 0:
            polished = _polish(g, c, w)
            if polished is not None:
                return polished
    return w


def _ocsvm(g: np.ndarray, c: float, tol: float) -> np.ndarray:
    from sklearn.svm import OneClassSVM

    m = g.shape[0]
    nu = 1.0 / (c * m)  # in [1/M, 1): C = 1/M (nu = 1) never reaches here
    model = OneClassSVM(kernel="precomputed", nu=nu, tol=tol).fit(g)
    w = np.zeros(m)
    w[model.support_] = model.dual_coef_[0] / (nu * m)  # libsvm's alpha in [0, 1] with sum nu*M
    return w


def capped_min_norm(
    gram,
    C: float,
    solver: str = "fista",
    *,
    initial=None,
    infeasible: str = "raise",
    max_iter: int = 5000,
    tol: float = 1e-10,
) -> np.ndarray:
    r"""The capped min-norm weights :math:`\arg\min_w w^\top G w` over :math:`\sum_m w_m = 1,\ 0 \le w_m \le C`.

    With :math:`G_{ij} = \langle g_i, g_j \rangle` this is the min-norm point of the capped convex hull of the
    teachers' gradients, AE-KD's weight problem (Du et al. 2020). Special cases are exact: :math:`C = 1/M` returns
    :math:`1/M` exactly (AVER); :math:`C \ge 1` is the same problem as :math:`C = 1` (plain MGDA, the cap inactive).

    ``solver="fista"`` (default) runs accelerated projected gradient with the exact projection of
    :func:`project_capped_simplex`, from ``initial`` (a warm start, e.g. the previous step's weights) or the uniform
    weights, and every 20 iterations tries to *polish*: it solves the KKT system on the active set of the iterate
    (teachers at 0, at C, and free) and returns that solution as soon as it passes the KKT conditions, so the
    result is exact up to rounding. A warm start on the right active set returns after one linear solve. On a
    rank-deficient Gram (weights not unique) the returned weights are one minimiser.

    ``solver="ocsvm"`` solves the same problem as the dual of scikit-learn's one-class SVM
    (``OneClassSVM(kernel="precomputed", nu=1/(C M))``, weights ``dual_coef_ / (nu M)``), as the reference code
    does; it is never called with :math:`\nu = 1`, on which scikit-learn raises (C <= 1/M is handled above). Both
    solvers see the Gram scaled to a unit largest diagonal, so a common rescaling of the gradients changes nothing.

    Parameters
    ----------
    gram : array_like or torch.Tensor
        (M, M) Gram matrix of the M >= 2 teachers' gradients: symmetric, positive semi-definite, finite. Computed
        in float64 on the CPU.
    C : float
        The cap on each weight, > 0 and >= 1/M (unless ``infeasible="uniform"``).
    solver : {"fista", "ocsvm"}, default "fista"
        The method (above).
    initial : array_like, optional
        (M,) warm start for ``"fista"`` (projected onto the feasible set first); ignored by ``"ocsvm"``.
    infeasible : {"raise", "uniform"}, default "raise"
        What C < 1/M does: raise, or return the uniform weights like the reference code's clamp of
        :math:`\nu` into :math:`[1/M, 1]`.
    max_iter : int, default 5000
        Most FISTA iterations, >= 1 (the polishing usually ends it far earlier).
    tol : float, default 1e-10
        libsvm's stopping tolerance for ``"ocsvm"``, > 0 (on the scaled Gram).

    Returns
    -------
    numpy.ndarray
        (M,) float64 weights in [0, C], summing to 1 (up to rounding).

    Raises
    ------
    ValueError
        If ``gram`` is not square, symmetric (to 1e-12 of its largest entry), positive semi-definite (to
        :data:`PSD_TOLERANCE` of its largest entry) and finite, or smaller than 2 x 2; if ``C`` is not finite and > 0
        or is below 1/M with ``infeasible="raise"``; if ``initial`` does not have M finite entries; for an unknown
        ``solver`` or ``infeasible``, or ``max_iter``/``tol`` out of range.
    TypeError
        If ``gram`` is not numeric or ``C`` is not a real number.

    References
    ----------
    Du, S. et al. (2020). Agree to disagree: adaptive ensemble knowledge distillation in gradient space. NeurIPS 33.
    Beck, A. and Teboulle, M. (2009). A fast iterative shrinkage-thresholding algorithm for linear inverse problems.
    SIAM J. Imaging Sciences 2(1), 183-202.
    """
    g = _check_gram_matrix(gram)
    m = g.shape[0]
    C, uniform = _check_cap(C, m, infeasible)
    check_choice(solver, "solver", SOLVERS)
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_positive(tol, "tol")
    if initial is not None:
        initial = np.asarray(initial, dtype=np.float64)
        if initial.shape != (m,) or not np.isfinite(initial).all():
            raise ValueError(f"initial must be ({m},) finite weights, got shape {initial.shape}")
    if uniform:
        return np.full(m, 1.0 / m)
    c = min(C, 1.0)
    scale = float(np.diag(g).max())
    if scale <= 0:  # all gradients are zero: any feasible point is optimal
        return np.full(m, 1.0 / m)
    g = g / scale
    if solver == "ocsvm":
        return _ocsvm(g, c, tol)
    return _fista(g, c, np.full(m, 1.0 / m) if initial is None else initial, max_iter)


def min_norm_slack(gram, weights, C: float) -> tuple[float, np.ndarray]:
    r"""The primal reading of the capped min-norm problem: the margin :math:`\rho` and each teacher's slack.

    The capped problem is the dual of :math:`\min_{d,\rho,\xi \ge 0} \tfrac12\|d\|^2 - \rho + C\sum_m \xi_m` subject
    to :math:`\langle d, g_m \rangle \ge \rho - \xi_m`, with :math:`d = \sum_m w_m g_m`. The margin :math:`\rho` is
    the multiplier of :math:`\sum_m w_m = 1`: :math:`\langle g_m, d \rangle = (Gw)_m` equals it for the free
    teachers (:math:`0 < w_m < C`); without a free teacher it is taken as the largest :math:`(Gw)_m` of the capped
    ones (the smallest valid multiplier). The slack is :math:`\xi_m = \max(0, \rho - (Gw)_m)`: only capped teachers
    (:math:`w_m = C`) can have :math:`\xi_m > 0`, the teachers allowed to "disagree" with the direction d.

    Parameters
    ----------
    gram : array_like or torch.Tensor
        (M, M) Gram matrix, as for :func:`capped_min_norm`.
    weights : array_like
        (M,) optimal weights of :func:`capped_min_norm` for the same ``gram`` and ``C``.
    C : float
        The cap.

    Returns
    -------
    rho : float
        The margin :math:`\rho`, >= :math:`\|d\|^2` at the optimum.
    slack : numpy.ndarray
        (M,) float64 slacks :math:`\xi_m \ge 0`.

    Raises
    ------
    ValueError
        If ``weights`` is not (M,) and finite, or for the bad ``gram`` and ``C`` of :func:`capped_min_norm`.
    TypeError
        As for :func:`capped_min_norm`.
    """
    g = _check_gram_matrix(gram)
    m = g.shape[0]
    C, _ = _check_cap(C, m, "raise")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (m,) or not np.isfinite(w).all():
        raise ValueError(f"weights must be ({m},) finite weights, got shape {w.shape}")
    c = min(C, 1.0)
    inner = g @ w
    scale = max(float(np.diag(g).max()), np.finfo(float).tiny)
    tol = 1e-7 * c
    free = (w > tol) & (w < c - tol)
    capped = w >= c - tol
    if free.any():
        rho = float(inner[free].mean())
    elif capped.any():
        rho = float(inner[capped].max())
    else:  # pragma: no cover - weights summing to 1 have a positive entry
        rho = float(inner.max())
    slack = np.maximum(0.0, rho - inner)
    slack[~capped] = 0.0
    slack[slack < 1e-12 * scale] = 0.0
    return rho, slack


def _teacher_vectors(grads: torch.Tensor, gram: str) -> np.ndarray:
    if gram == "flat":
        return grads.reshape(grads.shape[0], -1).double().cpu().numpy()
    return grads.mean(1).double().cpu().numpy()  # the reference code: one batch-mean K-vector per teacher


def ensemble_weights(
    grads: torch.Tensor,
    C: float,
    gram: str = "flat",
    normalize: bool = False,
    *,
    solver: str = "fista",
    initial=None,
    infeasible: str = "raise",
) -> np.ndarray:
    r"""AE-KD's teacher weights for one mini-batch, from the per-teacher logit gradients.

    The Gram matrix is built from ``gram="flat"``: the flattened (N·K) gradients, the MGDA upper bound in the
    student's output space (the default); or ``"batch_mean"``: each teacher's gradient averaged over the batch, one
    K-vector per teacher, as the reference code does (``find_optimal_svm``). ``normalize=True`` mimics the code's
    hint branch: the vectors are scaled to unit norm, the weights solved, then divided by each vector's norm and
    renormalised, so they can exceed ``C``.

    Parameters
    ----------
    grads : torch.Tensor
        (M, N, K) gradients of :func:`kd_logit_gradients`, M >= 2, finite.
    C : float
        The cap, as for :func:`capped_min_norm`.
    gram : {"flat", "batch_mean"}, default "flat"
        Which vectors the Gram matrix is made of.
    normalize : bool, default False
        The reference code's normalised branch (above).
    solver : {"fista", "ocsvm"}, default "fista"
        As for :func:`capped_min_norm`.
    initial : array_like, optional
        (M,) warm start (the previous step's weights).
    infeasible : {"raise", "uniform"}, default "raise"
        As for :func:`capped_min_norm`.

    Returns
    -------
    numpy.ndarray
        (M,) float64 weights summing to 1 (in [0, C] unless ``normalize``).

    Raises
    ------
    ValueError
        If ``grads`` is not (M, N, K) with M >= 2 and finite, if a vector is zero with ``normalize=True``, or for
        the bad arguments of :func:`capped_min_norm`.
    TypeError
        If ``grads`` is not a floating-point tensor or ``normalize`` not a bool.
    """
    check_finite_tensor(grads, "grads")
    if grads.ndim != 3 or grads.shape[0] < 2:
        raise ValueError(f"grads must have shape (M, N, K) with M >= 2 teachers, got {tuple(grads.shape)}")
    check_choice(gram, "gram", GRAM_MODES)
    normalize = check_bool(normalize, "normalize")
    vectors = _teacher_vectors(grads, gram)
    if not normalize:
        return capped_min_norm(vectors @ vectors.T, C, solver, initial=initial, infeasible=infeasible)
    norms = np.linalg.norm(vectors, axis=1)
    if (norms == 0).any():
        raise ValueError("grads has a teacher with a zero gradient, which normalize=True cannot scale to unit norm")
    unit = vectors / norms[:, None]
    w = capped_min_norm(unit @ unit.T, C, solver, initial=initial, infeasible=infeasible) / norms
    return w / w.sum()


# --- the training objective ----------------------------------------------------------------------------------------


def ensemble_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    weights=None,
    *,
    method: str = "aekd",
    temperature: float = 4.0,
    alpha: float = 0.9,
    gamma: float = 1.0,
) -> torch.Tensor:
    r"""The multi-teacher loss :math:`\gamma\,\mathrm{CE}(z, y) + \alpha \sum_m w_m L_m`, weights held constant.

    ``method`` says what the KD term is: ``"aekd"`` and ``"aver"`` weigh the per-teacher losses of
    :func:`per_teacher_kd_losses` by ``weights`` (AVER: :math:`1/M`, the mean of the per-teacher losses, not KD to
    averaged probabilities); ``"prob_average"`` is KD towards the averaged teacher probabilities,
    :math:`T^2 \mathrm{KL}(\tfrac1M \sum_m p_T(z_t^m) \| p_T(z))`; ``"ce"`` has no KD term. No gradient flows through
    the weights.

    Parameters
    ----------
    student_logits : torch.Tensor
        (N, K) student logits.
    teacher_logits : torch.Tensor
        (N, M, K) teacher logits.
    labels : torch.Tensor or None
        (N,) int64 labels; needed when ``gamma > 0``.
    weights : array_like, optional
        (M,) teacher weights for ``"aekd"`` (e.g. from :func:`ensemble_weights`); ``None`` for the other methods
        (``"aver"`` uses exactly ``1/M``).
    method : {"ce", "aver", "aekd", "prob_average"}, default "aekd"
        The KD term (above).
    temperature : float, default 4.0
        T > 0.
    alpha : float, default 0.9
        Weight of the KD term, in [0, 1] (the reference code's ``-a``).
    gamma : float, default 1.0
        Weight of the cross-entropy term, in [0, 1] (the code's ``-r``).

    Returns
    -------
    torch.Tensor
        The scalar loss, differentiable with respect to ``student_logits``.

    Raises
    ------
    ValueError
        If ``weights`` is missing or not (M,) for ``"aekd"``, ``labels`` is missing while ``gamma > 0``, a weight is
        out of range, ``method`` is unknown, or for the bad logits of :func:`per_teacher_kd_losses`.
    TypeError
        As for :func:`per_teacher_kd_losses`.
    """
    check_choice(method, "method", METHODS)
    alpha = check_in_unit_interval(alpha, "alpha")
    gamma = check_in_unit_interval(gamma, "gamma")
    _check_logits(student_logits, teacher_logits)
    m = teacher_logits.shape[1]
    loss = student_logits.new_zeros(())
    if gamma > 0:
        if labels is None:
            raise ValueError("labels are required when gamma > 0 (the cross-entropy term)")
        loss = loss + gamma * F.cross_entropy(student_logits, labels)
    if method == "ce" or alpha == 0:
        return loss
    if method == "prob_average":
        temperature = check_temperature(temperature)
        p_mix = torch.softmax(teacher_logits / temperature, dim=-1).mean(1)
        log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
        kl = (p_mix * torch.where(p_mix > 0, p_mix.log() - log_p_s, torch.zeros_like(p_mix))).sum(1).mean()
        return loss + alpha * temperature**2 * kl
    if method == "aver":
        w = np.full(m, 1.0 / m)
    else:
        if weights is None:
            raise ValueError("weights are required for method='aekd' (see ensemble_weights)")
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (m,) or not np.isfinite(w).all():
            raise ValueError(f"weights must be ({m},) finite numbers, got shape {w.shape}")
    losses = per_teacher_kd_losses(student_logits, teacher_logits, temperature)
    w_t = torch.as_tensor(w, dtype=losses.dtype, device=losses.device)
    return loss + alpha * (w_t * losses).sum()


@dataclass
class EnsembleObjective:
    r"""A multi-teacher objective for :func:`kdnb.core.training.fit` that records every step's teacher weights.

    Called as ``objective(student_logits, teacher_logits, labels)`` (``fit`` slices the (N, M, K) teacher logits
    and the labels into mini-batches), it computes the weights of ``method`` (for ``"aekd"``: :func:`ensemble_weights`
    on the closed-form gradients of :func:`kd_logit_gradients`, warm-started from the previous step), appends them to
    :attr:`weights` and the loss value to :attr:`losses`, and returns :func:`ensemble_kd_loss`. A fresh objective
    is needed for each student.

    With ``distill_decay`` (a switch of the reference code, off by default) the KD weight decays linearly from
    ``alpha`` to 0 over the second half of ``total_steps`` and the cross-entropy weight is :math:`1 - \alpha_t`.

    Parameters
    ----------
    method : {"ce", "aver", "aekd", "prob_average"}, default "aekd"
        As for :func:`ensemble_kd_loss`.
    C : float, default 0.6
        The cap of ``"aekd"`` (0.6 is the reference code's default).
    gram : {"flat", "batch_mean"}, default "flat"
        As for :func:`ensemble_weights`.
    normalize : bool, default False
        As for :func:`ensemble_weights`.
    solver : {"fista", "ocsvm"}, default "fista"
        As for :func:`capped_min_norm`.
    temperature : float, default 4.0
        T > 0.
    alpha : float, default 0.9
        Weight of the KD term, in [0, 1].
    gamma : float, default 1.0
        Weight of the cross-entropy term, in [0, 1].
    distill_decay : bool, default False
        The decay switch (above); needs ``total_steps``.
    total_steps : int, optional
        The number of optimiser steps of the run, for ``distill_decay``.
    infeasible : {"raise", "uniform"}, default "raise"
        As for :func:`capped_min_norm`.
    weights : list of numpy.ndarray
        Filled during training: one (M,) array per step (uniform for ``"aver"``; empty for ``"ce"`` and
        ``"prob_average"``).
    losses : list of float
        Filled during training: each step's loss value.

    Raises
    ------
    ValueError
        If an argument is out of range, or ``distill_decay`` is on without ``total_steps``.
    TypeError
        If a switch is not a bool.
    """

    method: str = "aekd"
    C: float = 0.6
    gram: str = "flat"
    normalize: bool = False
    solver: str = "fista"
    temperature: float = 4.0
    alpha: float = 0.9
    gamma: float = 1.0
    distill_decay: bool = False
    total_steps: int | None = None
    infeasible: str = "raise"
    weights: list = field(default_factory=list)
    losses: list = field(default_factory=list)

    def __post_init__(self):
        check_choice(self.method, "method", METHODS)
        check_choice(self.gram, "gram", GRAM_MODES)
        check_choice(self.solver, "solver", SOLVERS)
        check_choice(self.infeasible, "infeasible", INFEASIBLE)
        self.normalize = check_bool(self.normalize, "normalize")
        self.distill_decay = check_bool(self.distill_decay, "distill_decay")
        self.temperature = check_temperature(self.temperature)
        self.alpha = check_in_unit_interval(self.alpha, "alpha")
        self.gamma = check_in_unit_interval(self.gamma, "gamma")
        self.C = check_positive(self.C, "C")
        if self.distill_decay:
            if self.total_steps is None:
                raise ValueError("total_steps is required with distill_decay=True")
            self.total_steps = check_positive_int(self.total_steps, "total_steps")

    def coefficients(self, step: int) -> tuple[float, float]:
        """The (KD, cross-entropy) weights at a 0-based step: constant, or decayed with ``distill_decay``.

        Parameters
        ----------
        step : int
            The number of steps taken before this one, >= 0.

        Returns
        -------
        tuple of float
            ``(alpha_t, gamma_t)``.
        """
        step = int(check_nonnegative(step, "step"))
        if not self.distill_decay:
            return self.alpha, self.gamma
        half = self.total_steps / 2
        alpha_t = self.alpha if step < half else self.alpha * max(0.0, 1.0 - (step - half) / half)
        return alpha_t, 1.0 - alpha_t

    def __call__(self, student_logits, teacher_logits, labels):
        """The loss of one mini-batch; records its weights and value.

        Parameters
        ----------
        student_logits : torch.Tensor
            (N, K) student logits.
        teacher_logits : torch.Tensor
            (N, M, K) teacher logits.
        labels : torch.Tensor
            (N,) labels.

        Returns
        -------
        torch.Tensor
            The scalar loss.
        """
        alpha, gamma = self.coefficients(len(self.losses))
        m = teacher_logits.shape[1]
        w = None
        if self.method == "aekd":
            grads = kd_logit_gradients(student_logits, teacher_logits, self.temperature)
            w = ensemble_weights(grads, self.C, self.gram, self.normalize, solver=self.solver,
                                 initial=self.weights[-1] if self.weights else None, infeasible=self.infeasible)
            self.weights.append(w)
        elif self.method == "aver":
            self.weights.append(np.full(m, 1.0 / m))
        loss = ensemble_kd_loss(student_logits, teacher_logits, labels, w, method=self.method,
                                temperature=self.temperature, alpha=alpha, gamma=gamma)
        self.losses.append(float(loss.detach()))
        return loss

    def weight_history(self) -> np.ndarray:
        """Every recorded step's weights as one array.

        Returns
        -------
        numpy.ndarray
            (S, M) float64 weights of the S steps taken so far ((0, 0) if none were recorded).
        """
        return np.array(self.weights) if self.weights else np.zeros((0, 0))


# --- the teachers --------------------------------------------------------------------------------------------------


@dataclass
class TeacherEnsemble:
    """Teachers of :func:`train_teacher_ensemble` and their cached logits.

    Parameters
    ----------
    models : list of torch.nn.Module
        The M trained teachers, in eval mode.
    noise_rates : tuple of float
        The label-noise rate each teacher was trained with.
    train_logits : torch.Tensor
        (N_train, M, K) teacher logits on the training inputs (the student's targets).
    test_logits : torch.Tensor
        (N_test, M, K) teacher logits on the test inputs.
    accuracies : list of float
        Each teacher's test accuracy.
    ensemble_accuracy : float
        Test accuracy of the probability-average ensemble (mean of the teachers' softmax).
    """

    models: list
    noise_rates: tuple
    train_logits: torch.Tensor
    test_logits: torch.Tensor
    accuracies: list
    ensemble_accuracy: float


def train_teacher_ensemble(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    generator: torch.Generator,
    noise_rates=(0.0, 0.0, 0.0, 0.3, 0.5),
    hidden=(128,),
    epochs: int = 40,
    lr: float = 1e-3,
    batch_size: int = 64,
    n_classes: int = 10,
) -> TeacherEnsemble:
    """Diverse teachers: MLPs trained on bootstrap resamples of the training set, with label noise.

    Teacher m is an :class:`~kdnb.core.models.MLP` trained by :func:`kdnb.core.training.train_classifier` (Adam,
    cross-entropy) on a bootstrap resample of the training set (N draws with replacement) whose labels are
    corrupted with symmetric noise of rate ``noise_rates[m]`` (:func:`kdnb.core.data.corrupt_labels`). Every draw
    (resample, noise, initial weights, batch order) comes from ``generator``, in that order per teacher.

    Parameters
    ----------
    x_train, x_test : torch.Tensor
        (N, D) training and test inputs.
    y_train, y_test : torch.Tensor
        (N,) int64 labels.
    generator : torch.Generator
        CPU generator of every random draw.
    noise_rates : sequence of float, default (0, 0, 0, 0.3, 0.5)
        One label-noise rate in [0, 1] per teacher, at least 2 teachers.
    hidden : sequence of int, default (128,)
        Hidden widths of each teacher.
    epochs : int, default 40
        Training epochs, >= 1.
    lr : float, default 1e-3
        Adam's learning rate, > 0.
    batch_size : int, default 64
        Mini-batch size, >= 1.
    n_classes : int, default 10
        Number of classes K, >= 2.

    Returns
    -------
    TeacherEnsemble
        The teachers, their cached logits and test accuracies.

    Raises
    ------
    ValueError
        If fewer than 2 noise rates are given or one is outside [0, 1], or for the bad arguments of the training.
    """
    rates = tuple(check_in_unit_interval(r, "noise_rates") for r in noise_rates)
    if len(rates) < 2:
        raise ValueError(f"noise_rates must give at least 2 teachers, got {len(rates)}")
    epochs = check_positive_int(epochs, "epochs")
    n = x_train.shape[0]
    models = []
    for rate in rates:
        idx = torch.randint(0, n, (n,), generator=generator).to(x_train.device)
        labels, _ = corrupt_labels(y_train[idx], rate, n_classes, generator)
        model = MLP(x_train.shape[1], hidden, n_classes, generator=generator).to(x_train.device)
        train_classifier(model, x_train[idx], labels, epochs=epochs, generator=generator, lr=lr,
                         batch_size=batch_size, progress=False, desc="teacher")
        models.append(model)
    train_logits = torch.stack([predict_logits(t, x_train) for t in models], dim=1)
    test_logits = torch.stack([predict_logits(t, x_test) for t in models], dim=1)
    accuracies = [float((test_logits[:, m].argmax(1) == y_test).double().mean()) for m in range(len(models))]
    ensemble = torch.softmax(test_logits, dim=-1).mean(1)
    ensemble_accuracy = float((ensemble.argmax(1) == y_test).double().mean())
    return TeacherEnsemble(models, rates, train_logits, test_logits, accuracies, ensemble_accuracy)
