r"""The wide student of Ji & Zhu (2020): its kernel, its initial function, and what hard labels do to it.

The student's kernel is the analytic NTK of a two-layer ReLU network whose first layer has a bias, written with
augmented inputs :math:`\tilde x = [x, 1]/\sqrt 2` (:func:`student_kernel`). The bias matters: without it the
odd spherical harmonics of degree :math:`\ge 3` are missing from the kernel on the sphere, the student cannot learn
them, and the risk stops falling (chapter 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.validation import check_choice, check_finite_tensor, check_positive_int, check_soft_ratios
from ...kernels.analytic import relu_kernels
from ...kernels.regression import DEFAULT_JITTER, NestedKernelRegression, cholesky_with_jitter
from .effective_logits import effective_logits_hard_derivative, effective_student_logits

__all__ = ["ARCHITECTURES", "HardLabelEffect", "hard_label_effect", "kernel_diagonal", "kernel_students",
           "sample_initial_function", "student_kernel", "student_nngp"]


ARCHITECTURES = {
    # x̃ = [x, 1]/√2: first-layer weight and bias variances 1/2 each, readout variance 1; Θ(x, x) = 1 on the sphere.
    "two_layer_bias": dict(depth=1, weight_variance=0.5, bias_variance=0.5, readout_weight_variance=1.0,
                           readout_bias_variance=0.0),
    # A bias-free network with two hidden layers (He variances) is also universal on the sphere.
    "three_layer": dict(depth=2, weight_variance=2.0, bias_variance=0.0),
    # Bias-free two-layer: odd harmonics of degree >= 3 are missing. Only for showing that pitfall.
    "two_layer": dict(depth=1, weight_variance=2.0, bias_variance=0.0),
}
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

    Parameters
    ----------
    x1 : torch.Tensor
        Inputs, (N1, d), floating point and finite (unit vectors in the book's experiments).
    x2 : torch.Tensor or None, default None
        Inputs, (N2, d); ``None``: the Gram matrix of ``x1``.
    architecture : {"two_layer_bias", "three_layer", "two_layer"}, default "two_layer_bias"
        The student's network, a key of :data:`ARCHITECTURES`.

    Returns
    -------
    torch.Tensor
        :math:`\Theta(x_1, x_2)`, (N1, N2) float64.

    Raises
    ------
    TypeError, ValueError
        If ``architecture`` is not a key of :data:`ARCHITECTURES` (ValueError), or as
        :func:`kdnb.kernels.analytic.relu_kernels` for the inputs.

    References
    ----------
    Ji & Zhu 2020 (the wide student); Arora et al. 2019 (the ReLU NTK in closed form).
    """
    return relu_kernels(x1, x2, **_architecture(architecture)).ntk


def student_nngp(x1: torch.Tensor, x2: torch.Tensor | None = None, *,
                 architecture: str = "two_layer_bias") -> torch.Tensor:
    """The covariance :math:`\\mathbb E[f_0(x_1) f_0(x_2)]` of the same student at initialisation (NNGP kernel).

    Parameters
    ----------
    x1 : torch.Tensor
        Inputs, (N1, d), floating point and finite.
    x2 : torch.Tensor or None, default None
        Inputs, (N2, d); ``None``: the Gram matrix of ``x1``.
    architecture : {"two_layer_bias", "three_layer", "two_layer"}, default "two_layer_bias"
        The student's network, a key of :data:`ARCHITECTURES`.

    Returns
    -------
    torch.Tensor
        :math:`\\Sigma(x_1, x_2)`, (N1, N2) float64.

    Raises
    ------
    TypeError, ValueError
        As :func:`student_kernel`.
    """
    return relu_kernels(x1, x2, **_architecture(architecture)).nngp


def kernel_diagonal(x: torch.Tensor, *, architecture: str = "two_layer_bias", block: int = 512) -> torch.Tensor:
    r"""The kernel's diagonal :math:`\Theta(x_i, x_i)` for every row of ``x``, in blocks of ``block`` rows.

    Parameters
    ----------
    x : torch.Tensor
        Inputs, (N, d), floating point and finite.
    architecture : {"two_layer_bias", "three_layer", "two_layer"}, default "two_layer_bias"
        The student's network, a key of :data:`ARCHITECTURES`.
    block : int, default 512
        Rows per block (>= 1): memory is ``block`` squared, not N squared.

    Returns
    -------
    torch.Tensor
        (N,) float64.

    Raises
    ------
    TypeError, ValueError
        If ``block`` is not an int >= 1, or as :func:`student_kernel`.
    """
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
    r"""Outputs :math:`f_0(X)` of randomly initialised infinitely wide students.

    A sample of the Gaussian process with the NNGP covariance, :math:`f_0(X) = L\xi`,
    :math:`L L^\top = \Sigma(X, X) + \epsilon I`, :math:`\xi \sim \mathcal N(0, I)` (jitter as in
    :func:`kdnb.kernels.regression.cholesky_with_jitter`). Learning :math:`-f_0` is the "zero function" task of Ji &
    Zhu's Fig. 3: undoing the initial function.

    Parameters
    ----------
    x : torch.Tensor
        Inputs X, (N, d), floating point and finite, without repeated rows (the covariance must stay positive
        definite).
    generator : torch.Generator
        CPU generator of :math:`\xi`.
    n_samples : int or None, default None
        Number of independent draws (>= 1); ``None``: one draw, returned as a vector.
    architecture : {"two_layer_bias", "three_layer", "two_layer"}, default "two_layer_bias"
        The student's network, a key of :data:`ARCHITECTURES`.
    jitter : float, default 1e-10
        Relative diagonal jitter :math:`\epsilon` (>= 0) of the Cholesky factorisation.

    Returns
    -------
    torch.Tensor
        Float64: (N,), or (N, n_samples) for several independent draws.

    Raises
    ------
    TypeError
        If ``generator`` is not a ``torch.Generator`` or ``n_samples`` is not an int.
    ValueError
        If ``n_samples`` < 1, the covariance is not positive definite even with the jitter, or as
        :func:`student_nngp`.

    References
    ----------
    Ji & Zhu 2020, Fig. 3 (the zero function).
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    factor = cholesky_with_jitter(student_nngp(x, architecture=architecture), jitter)
    columns = 1 if n_samples is None else check_positive_int(n_samples, "n_samples")
    noise = torch.randn(factor.shape[0], columns, generator=generator, dtype=torch.float64).to(factor.device)
    samples = factor @ noise
    return samples[:, 0] if n_samples is None else samples



def kernel_students(
    kernel: torch.Tensor,
    kernel_test_train: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    rhos,
    temperature: float,
    *,
    t2_scaling: bool = True,
    jitter: float = DEFAULT_JITTER,
) -> torch.Tensor:
    r"""Test logits of wide students distilled with each soft ratio.

    Kernel regression (from :math:`f_0 \equiv 0`) of the effective logits :math:`z_\mathrm{eff}(z_t, y_g)`
    (:func:`~kdnb.papers.wide_network_kd.effective_logits.effective_student_logits`) on the training points,
    evaluated at test points.

    Parameters
    ----------
    kernel : torch.Tensor
        The student's NTK on the N training points, (N, N), symmetric positive definite.
    kernel_test_train : torch.Tensor
        The student's NTK between M test points and the training points, (M, N).
    teacher_logits : torch.Tensor
        :math:`z_t`, (N,), floating point and finite.
    labels : torch.Tensor
        :math:`y_g \in [0, 1]`, (N,).
    rhos : float or sequence of float
        Soft ratio(s) in (0, 1].
    temperature : float
        T > 0.
    t2_scaling : bool, default True
        :math:`c_T = T^2` (Hinton et al. 2015) if True, else 1.
    jitter : float, default 1e-10
        Relative diagonal jitter (>= 0) of the Cholesky factorisation.

    Returns
    -------
    torch.Tensor
        Float64: (M, len(rhos)), or (M,) for a single number ``rhos``.

    Raises
    ------
    TypeError, ValueError
        If ``teacher_logits`` is not (N,), ``kernel_test_train`` is not (M, N), or as
        :func:`~kdnb.papers.wide_network_kd.effective_logits.effective_student_logits` and
        :class:`kdnb.kernels.regression.NestedKernelRegression`.

    References
    ----------
    Ji & Zhu 2020 (a wide student is kernel regression of the effective logits).
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
    r"""What a little more hard label does to a wide student (Ji & Zhu 2020, Fig. 5, right), one value per soft
    ratio.

    ``inner_product``: :math:`\langle\delta\hat w_h, \Delta\hat w_c\rangle`; ``cosine``:
    :math:`\cos\alpha(\Delta\hat w, \Delta\hat w_g)`, the angle to the ground truth's projection on the training span
    (:math:`\cos\alpha(\Delta\hat w, \Delta w_g)` is this times the constant :math:`\|\Delta\hat w_g\| / \|\Delta
    w_g\|`); ``cosine_derivative``: :math:`\partial\cos\alpha / \partial(1-\rho)
    = \langle\delta\hat w_h, \Delta\hat w_c\rangle / (\|\Delta\hat w\|\,\|\Delta\hat w_g\|)`. Positive: adding hard
    labels turns the student towards the ground truth.

    Parameters
    ----------
    rhos : tuple of float
        The soft ratios ρ.
    inner_product : torch.Tensor
        :math:`\langle\delta\hat w_h, \Delta\hat w_c\rangle`, (len(rhos),) float64 on the CPU (a scalar for a
        single ρ).
    cosine : torch.Tensor
        :math:`\cos\alpha(\Delta\hat w, \Delta\hat w_g)`, same shape.
    cosine_derivative : torch.Tensor
        :math:`\partial\cos\alpha / \partial(1-\rho)`, same shape.
    """

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
    t2_scaling: bool = True,
    jitter: float = DEFAULT_JITTER,
) -> HardLabelEffect:
    r"""The sign test of Ji & Zhu's Fig. 5 (right): does more hard label turn the student towards the ground truth?

    Computes, for each soft ratio, :class:`HardLabelEffect`'s three quantities.

    With the student's targets :math:`z = z_\mathrm{eff}(z_t, y_g)`, their derivative
    :math:`\dot z = \partial z / \partial(1-\rho)` (:func:`effective_logits_hard_derivative`) and a ground-truth logit
    :math:`g` on the same points (``truth_logits``, with sign :math:`g = y_g`; its weight change
    :math:`\Delta\hat w_g = \Phi K^{-1} g` is the projection of :math:`\Delta w_g` on the training span),

    .. math:: \delta\hat w_h = \Phi K^{-1}\dot z, \qquad
              \Delta\hat w_c = \Delta\hat w_g - \frac{\langle\Delta\hat w, \Delta\hat w_g\rangle}{\|\Delta\hat w\|^2}
              \Delta\hat w, \qquad
              \langle\delta\hat w_h, \Delta\hat w_c\rangle = \dot z^\top K^{-1} g
              - \frac{z^\top K^{-1} g}{z^\top K^{-1} z}\, \dot z^\top K^{-1} z,

    computed from one Cholesky factorisation (float64, jitter as in
    :func:`kdnb.kernels.regression.cholesky_with_jitter`), whose fit to z, :math:`\dot z` and g is checked against the
    unjittered K (:class:`kdnb.kernels.regression.NestedKernelRegression`). Because :math:`\Delta\hat w_c` is the
    part of the ground truth orthogonal to the student,
    :math:`\partial\cos\alpha(\Delta\hat w, \Delta w_g)/\partial(1-\rho) = \langle\delta\hat w_h, \Delta\hat
    w_c\rangle / (\|\Delta\hat w\|\|\Delta w_g\|)`; the normaliser here is :math:`\|\Delta\hat w_g\|`, the same
    for every ρ. The book's definition of :math:`\Delta w_g` is a reconstruction. The inner product is linear in g,
    so a positive rescaling of g keeps its sign, but another *shape* of g can flip it: with the smooth function that
    made the labels and with the step :math:`2y_g - 1`
    (:func:`~kdnb.papers.wide_network_kd.imperfect.ground_truth_logit`) the signs differ (chapter 5).

    Parameters
    ----------
    kernel : torch.Tensor
        K, the student's NTK on the N training points, (N, N), symmetric positive definite.
    teacher_logits : torch.Tensor
        :math:`z_t`, (N,), floating point and finite.
    labels : torch.Tensor
        :math:`y_g \in [0, 1]`, (N,).
    truth_logits : torch.Tensor
        g, the ground-truth logit on the training points, (N,), finite, not all zero.
    rhos : float or sequence of float
        Soft ratio(s) in (0, 1].
    temperature : float
        T > 0.
    t2_scaling : bool, default True
        :math:`c_T = T^2` (Hinton et al. 2015) if True, else 1.
    jitter : float, default 1e-10
        Relative diagonal jitter (>= 0) of the Cholesky factorisation.

    Returns
    -------
    HardLabelEffect
        One value per ρ (scalars for a single number ``rhos``), float64 on the CPU.

    Raises
    ------
    TypeError, ValueError
        If ``truth_logits`` is not (N,) like ``teacher_logits``, ``kernel`` is not (N, N) or not positive definite
        even with the jitter, the student's targets (for some ρ) or ``truth_logits`` are all zero (the angle is
        undefined), ``kernel`` is numerically singular and z, :math:`\dot z` or g is inconsistent on its degenerate
        directions (e.g. a repeated input with two labels: relative training residual above
        ``1e4 * max(jitter, eps)``, see :func:`kdnb.kernels.regression.kernel_regression`), or as
        :func:`~kdnb.papers.wide_network_kd.effective_logits.effective_student_logits`.

    References
    ----------
    Ji & Zhu 2020, Fig. 5 (right) and its caption (the derivative of the cosine); the kernel form is the book's.
    """
    z = effective_student_logits(teacher_logits, labels, rhos, temperature, t2_scaling=t2_scaling)
    dz = effective_logits_hard_derivative(teacher_logits, labels, rhos, temperature, t2_scaling=t2_scaling)
    rho_vector, scalar = check_soft_ratios(rhos)
    g = check_finite_tensor(truth_logits, "truth_logits").to(torch.float64)
    if g.shape != teacher_logits.shape or g.ndim != 1:
        raise ValueError(f"truth_logits must have the shape of teacher_logits {tuple(teacher_logits.shape)} (one "
                         f"ground-truth logit per training point), got {tuple(g.shape)}")
    if scalar:
        z, dz = z[:, None], dz[:, None]
    if isinstance(kernel, torch.Tensor) and kernel.ndim == 2 and kernel.shape[0] != z.shape[0]:
        raise ValueError(f"kernel must be ({z.shape[0]}, {z.shape[0]}) to match the teacher logits")
    if not bool((z != 0).any(0).all()) or not bool((g != 0).any()):
        raise ValueError("the student's targets and truth_logits must not be all zero (the angle is undefined)")
    # Whitened vectors: u^T K^{-1} v = (L^{-1} u)^T (L^{-1} v), with v = L^{-1} [z, dz, g] from one factorisation,
    # whose fit to every column is checked (a singular K with inconsistent columns raises).
    columns = torch.cat([z, dz.to(z.device), g.to(z.device)[:, None]], 1)
    white = NestedKernelRegression(kernel, columns, jitter=jitter).whitened
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


