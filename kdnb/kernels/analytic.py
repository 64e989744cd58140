r"""Analytic (infinite-width) kernels of deep ReLU networks and their spectra on the sphere.

* :func:`relu_kernels`, :func:`relu_ntk`, :func:`relu_nngp`: the NNGP covariance and the NTK of an infinitely wide
  ReLU network, the limits of :class:`kdnb.core.models.NTKMLP`;
* :func:`sphere_eigenvalues`: the Mercer eigenvalues of a dot-product kernel on the sphere (Funk–Hecke).

Conventions (NTK parameterisation)
----------------------------------
The analytic kernels are the limits of :class:`kdnb.core.models.NTKMLP`: L hidden ReLU layers, every weight and bias drawn
from N(0, 1) and scaled in the forward pass,

.. math:: g_1 = \sigma_w W_1 x / \sqrt{c} + \sigma_b b_1, \qquad
          g_{l+1} = \frac{\sigma_w}{\sqrt{n_l}} W_{l+1}\,\mathrm{relu}(g_l) + \sigma_b b_{l+1},

with :math:`c = d_\mathrm{in}` if ``normalize_input`` else 1, and the readout layer :math:`l = L+1` using
:math:`\sigma_{w,\mathrm{out}}, \sigma_{b,\mathrm{out}}`. With :math:`\Sigma` the NNGP covariance and :math:`\Theta`
the NTK, the recursion is (Jacot et al. 2018; Arora et al. 2019; neural-tangents' ``stax``)

.. math::
    \Sigma_1 = \sigma_w^2\, x^\top x'/c + \sigma_b^2, \quad \Theta_1 = \Sigma_1; \qquad
    \Sigma_{l+1} = \sigma_w^2\, \kappa_1(\Sigma_l) + \sigma_b^2, \quad
    \Theta_{l+1} = \Sigma_{l+1} + \sigma_w^2\, \kappa_0(\Sigma_l)\, \Theta_l,

where for pre-activations of covariance :math:`[[q, q_{12}], [q_{12}, q']]` at angle
:math:`\theta = \arccos(q_{12}/\sqrt{q q'})` (Cho & Saul 2009)

.. math:: \kappa_1 = \mathbb{E}[\mathrm{relu}(u)\,\mathrm{relu}(v)] = \frac{\sqrt{q q'}\,(\sin\theta + (\pi - \theta)
          \cos\theta)}{2\pi}, \qquad \kappa_0 = \mathbb{E}[\mathrm{relu}'(u)\,\mathrm{relu}'(v)] = \frac{\pi - \theta}{2\pi}.

How the common conventions map onto the arguments (each is a test in ``tests/kernels/test_analytic.py``):

=============================================  ============================================================  ==========================
convention                                     arguments                                                     :math:`\Theta(x, x)`, unit x
=============================================  ============================================================  ==========================
two-layer "c = 1" (Du et al. 2019; Ji & Zhu)   ``depth=1, weight_variance=1``                                1
same, with a first-layer bias,                 ``depth=1, weight_variance=.5, bias_variance=.5,``            1
:math:`\tilde x = [x, 1]/\sqrt 2`               ``readout_weight_variance=1, readout_bias_variance=0``
Arora et al. 2019 (:math:`c_\sigma = 2`)       ``depth=L, weight_variance=2, readout_weight_variance=1``      L + 1
He initialisation, all layers                  ``depth=L, weight_variance=2``                                 2(L + 1)
neural-tangents ``Dense(W_std, b_std)``        ``normalize_input=True, weight_variance=W_std**2,``
                                               ``bias_variance=b_std**2``
=============================================  ============================================================  ==========================

**Scale factor.** Without biases, the ReLU kernels are positively homogeneous, so every weight variance is an overall
factor: :math:`\Theta(\sigma_w^2 = 2) = 2^{L+1}\,\Theta(\sigma_w^2 = 1)` (and the same for :math:`\Sigma`), and the
Arora and He kernels differ by exactly 2. With biases no such factor exists.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from ..core.data import points_at_angles
from ..core.runtime import float64_device
from ..core.validation import check_bool, check_positive_int, check_variance

__all__ = ["RELUKernels", "relu_kernels", "relu_nngp", "relu_ntk", "sphere_eigenvalues"]


class RELUKernels(NamedTuple):
    r"""The infinite-width kernels of a ReLU network: NNGP covariance and NTK, each (N1, N2) float64.

    Parameters
    ----------
    nngp : torch.Tensor
        The NNGP covariance :math:`\Sigma(x_1, x_2)` of the network's output at initialisation, (N1, N2) float64.
    ntk : torch.Tensor
        The neural tangent kernel :math:`\Theta(x_1, x_2)`, (N1, N2) float64.
    """

    nngp: torch.Tensor
    ntk: torch.Tensor


def _check_kernel_inputs(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, d) with N, d >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must contain only finite values (found NaN or inf)")
    # float64 throughout; MPS has no float64, so such inputs are computed on the CPU.
    return x.to(device=float64_device(x.device), dtype=torch.float64)


def relu_kernels(
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    depth: int,
    weight_variance: float = 1.0,
    bias_variance: float = 0.0,
    readout_weight_variance: float | None = None,
    readout_bias_variance: float | None = None,
    normalize_input: bool = False,
) -> RELUKernels:
    r"""NNGP covariance and NTK of an infinitely wide ReLU network with ``depth`` = L >= 1 hidden layers.

    The network, the recursion and the table of conventions are in the module docstring
    (:mod:`kdnb.kernels.analytic`); the finite network is :class:`kdnb.core.models.NTKMLP` with the same arguments.
    Computed in float64, on the inputs' device (on the CPU for MPS inputs: MPS has no float64). Precision: the first
    layer's angles are computed from the input vectors and are exact to rounding; deeper layers recover angles from
    covariances, which for nearly parallel pairs of points leaves errors of about 1e-8 relative. With ``x2=None`` the
    result is exactly symmetric and its diagonal exact (the angle of a point with itself is 0, not recovered from
    rounded products).

    Parameters
    ----------
    x1 : torch.Tensor
        Inputs, shape (N1, d) with N1, d >= 1, floating point and finite (any scale: the kernels are not restricted
        to the sphere).
    x2 : torch.Tensor or None, default None
        Inputs, shape (N2, d), on the device of ``x1``; ``None``: the Gram matrix of ``x1``.
    depth : int
        L >= 1, the number of hidden ReLU layers.
    weight_variance : float, default 1.0
        :math:`\sigma_w^2 > 0` of the hidden layers.
    bias_variance : float, default 0.0
        :math:`\sigma_b^2 \ge 0` of the hidden layers (0: no biases).
    readout_weight_variance : float or None, default None
        :math:`\sigma_{w,\mathrm{out}}^2 > 0` of the readout layer; ``None``: ``weight_variance``.
    readout_bias_variance : float or None, default None
        :math:`\sigma_{b,\mathrm{out}}^2 \ge 0` of the readout layer; ``None``: ``bias_variance``.
    normalize_input : bool, default False
        Divide the first layer's :math:`x^\top x'` by :math:`c = d` (neural-tangents' convention); else c = 1.

    Returns
    -------
    RELUKernels
        ``nngp`` :math:`\Sigma` and ``ntk`` :math:`\Theta`, each (N1, N2) float64.

    Raises
    ------
    TypeError
        If an input is not a floating-point tensor, ``depth`` is not an int, a variance is not a real number, or
        ``normalize_input`` is not a bool (or numpy bool).
    ValueError
        If ``depth`` < 1, a weight variance is not > 0 or a bias variance is negative (or either is not finite), an
        input is not (N, d) with N, d >= 1 or contains NaN or inf, or ``x1`` and ``x2`` differ in the number of
        features or in device.

    References
    ----------
    Jacot, Gabriel & Hongler 2018 (the NTK recursion); Arora et al. 2019 (its ReLU closed forms and the
    :math:`c_\sigma = 2` convention); Cho & Saul 2009 (the arc-cosine kernels :math:`\kappa_0, \kappa_1`).
    """
    depth = check_positive_int(depth, "depth")
    sw = check_variance(weight_variance, "weight_variance", positive=True)
    sb = check_variance(bias_variance, "bias_variance", positive=False)
    sw_out = sw if readout_weight_variance is None else check_variance(
        readout_weight_variance, "readout_weight_variance", positive=True)
    sb_out = sb if readout_bias_variance is None else check_variance(
        readout_bias_variance, "readout_bias_variance", positive=False)
    normalize_input = check_bool(normalize_input, "normalize_input")
    symmetric = x2 is None
    x1 = _check_kernel_inputs(x1, "x1")
    x2 = x1 if symmetric else _check_kernel_inputs(x2, "x2")
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"x1 and x2 must have the same number of features, got {x1.shape[1]} and {x2.shape[1]}")
    if x1.device != x2.device:
        raise ValueError(f"x1 and x2 must be on the same device, got {x1.device} and {x2.device}")
    scale = x1.shape[1] if normalize_input else 1.0

    # Layer 1 is the linear kernel of the augmented inputs [σ_w x/√c, σ_b]. Its angle is computed from the vectors
    # with Kahan's formula θ = 2 atan2(‖u − v‖, ‖u + v‖) (u, v unit), which is accurate even for (anti)parallel
    # inputs, where recovering it from q q' − q12² would lose half the digits.
    def augment(x):
        parts = [math.sqrt(sw / scale) * x]
        if sb > 0:
            parts.append(torch.full((x.shape[0], 1), math.sqrt(sb), dtype=x.dtype, device=x.device))
        a = torch.cat(parts, 1)
        norm = a.norm(dim=1)
        return a / torch.where(norm > 0, norm, 1.0)[:, None], norm

    u1, norm1 = augment(x1)
    u2, norm2 = (u1, norm1) if symmetric else augment(x2)
    exact = "donot_use_mm_for_euclid_dist"
    theta = 2 * torch.atan2(torch.cdist(u1, u2, compute_mode=exact), torch.cdist(u1, -u2, compute_mode=exact))
    if symmetric:
        theta = (theta + theta.T) / 2  # cdist's reductions need not be bitwise symmetric; the kernel must be
    scale12 = norm1[:, None] * norm2[None, :]
    cross, gap = scale12 * torch.cos(theta), scale12 * torch.sin(theta)  # q12 and √(q q' − q12²)
    var1, var2 = norm1.square(), norm2.square()
    ntk = cross.clone()
    for layer in range(depth):
        if layer > 0:
            # Deeper layers only have covariances: entries for nearly parallel pairs are accurate to about 1e-8.
            gap = (var1[:, None] * var2[None, :] - cross.square()).clamp_min(0.0).sqrt()
            if symmetric:
                gap.diagonal().zero_()
            theta = torch.atan2(gap, cross)
        w, b = (sw_out, sb_out) if layer == depth - 1 else (sw, sb)
        # sin θ √(q q') = gap and cos θ √(q q') = q12: no division, so zero-variance inputs are safe.
        relu_cov = (gap + (math.pi - theta) * cross) / (2 * math.pi)  # κ1
        relu_grad_cov = (math.pi - theta) / (2 * math.pi)  # κ0
        cross = w * relu_cov + b
        ntk = cross + w * relu_grad_cov * ntk
        if symmetric:
            var1 = var2 = cross.diagonal().clone()
        else:
            var1, var2 = w * var1 / 2 + b, w * var2 / 2 + b
    if symmetric:
        # Elementwise kernels round differently in their vectorised body and their scalar tail, so entries (i, j) and
        # (j, i) can differ in the last bit. Mirror the lower triangle, the one Cholesky and eigh read.
        cross = torch.tril(cross) + torch.tril(cross, -1).mT
        ntk = torch.tril(ntk) + torch.tril(ntk, -1).mT
    return RELUKernels(nngp=cross, ntk=ntk)


def relu_ntk(x1: torch.Tensor, x2: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """The infinite-width NTK of a ReLU network, (N1, N2) float64; arguments as in :func:`relu_kernels`.

    Parameters
    ----------
    x1 : torch.Tensor
        Inputs, shape (N1, d), floating point and finite.
    x2 : torch.Tensor or None, default None
        Inputs, shape (N2, d); ``None``: the Gram matrix of ``x1``.
    **kwargs
        The keyword arguments of :func:`relu_kernels` (``depth`` is required).

    Returns
    -------
    torch.Tensor
        :math:`\\Theta(x_1, x_2)`, (N1, N2) float64.

    Raises
    ------
    TypeError, ValueError
        As :func:`relu_kernels`.
    """
    return relu_kernels(x1, x2, **kwargs).ntk


def relu_nngp(x1: torch.Tensor, x2: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """The NNGP covariance :math:`\\mathbb{E}[f(x) f(x')]` of the same network at initialisation.

    Arguments as in :func:`relu_kernels`.

    Parameters
    ----------
    x1 : torch.Tensor
        Inputs, shape (N1, d), floating point and finite.
    x2 : torch.Tensor or None, default None
        Inputs, shape (N2, d); ``None``: the Gram matrix of ``x1``.
    **kwargs
        The keyword arguments of :func:`relu_kernels` (``depth`` is required).

    Returns
    -------
    torch.Tensor
        :math:`\\Sigma(x_1, x_2)`, (N1, N2) float64.

    Raises
    ------
    TypeError, ValueError
        As :func:`relu_kernels`.
    """
    return relu_kernels(x1, x2, **kwargs).nngp


def sphere_eigenvalues(
    kernel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    dim: int,
    max_degree: int,
    *,
    quadrature_points: int = 400,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mercer eigenvalues of a dot-product kernel on the sphere, by the Funk–Hecke formula.

    For :math:`k(x, x') = \kappa(x^\top x')` on :math:`S^{d-1}` (Bietti & Mairal 2019):

    .. math:: \mu_k = \frac{\Gamma(d/2)}{\sqrt\pi\, \Gamma((d-1)/2)} \int_{-1}^{1} \kappa(t)\, P_k^{(d)}(t)\,
              (1 - t^2)^{(d-3)/2}\, dt,

    with :math:`P_k^{(d)}` the Gegenbauer polynomial normalised to :math:`P_k^{(d)}(1) = 1` (Legendre for d = 3),
    for uniform measure on the sphere. Eigenvalue :math:`\mu_k` belongs to the :math:`N(d, k)` spherical harmonics of
    degree k. ``kernel(x1, x2)`` is evaluated between a fixed unit vector and unit vectors at the Gauss–Jacobi nodes.

    Accuracy: for a smooth profile the quadrature is exact to rounding; the ReLU kernels are not smooth at
    :math:`t = \pm 1`, and with the default 400 nodes their eigenvalues up to degree 20 are accurate to about 5e-5
    relative (more nodes, more accuracy).

    Parameters
    ----------
    kernel : callable
        ``kernel(x1, x2)`` returns the (N1, N2) kernel matrix between rows of ``x1`` and ``x2`` (float64 unit
        vectors of dimension ``dim``), e.g. ``functools.partial(relu_ntk, depth=1)``.
    dim : int
        d >= 3, the dimension of the ambient space of :math:`S^{d-1}`.
    max_degree : int
        The largest harmonic degree k >= 0.
    quadrature_points : int, default 400
        Number of Gauss–Jacobi nodes, >= ``max_degree + 1``.

    Returns
    -------
    mu : torch.Tensor
        :math:`\mu_k` for k = 0..``max_degree``, shape (max_degree + 1,), float64.
    multiplicity : torch.Tensor
        :math:`N(d, k)`, the number of spherical harmonics of degree k, shape (max_degree + 1,), float64.

    Raises
    ------
    TypeError
        If ``kernel`` is not callable, or ``dim``, ``max_degree`` or ``quadrature_points`` is not an int.
    ValueError
        If ``dim`` < 3, ``max_degree`` < 0, ``quadrature_points`` <= ``max_degree``, or ``kernel`` does not return
        a (1, quadrature_points) matrix for one pole and the nodes.

    References
    ----------
    Bietti & Mairal 2019 (the Funk–Hecke formula and the spectra of NTKs on the sphere).
    """
    from scipy.special import eval_gegenbauer, gammaln, roots_jacobi

    if not callable(kernel):
        raise TypeError("kernel must be callable: kernel(x1, x2) -> (N1, N2) tensor")
    dim = check_positive_int(dim, "dim", minimum=3)
    max_degree = check_positive_int(max_degree, "max_degree", minimum=0)
    quadrature_points = check_positive_int(quadrature_points, "quadrature_points", minimum=max_degree + 1)
    alpha = (dim - 3) / 2
    t, weights = roots_jacobi(quadrature_points, alpha, alpha)
    t = torch.as_tensor(t, dtype=torch.float64)
    pole = points_at_angles([0.0], dim)
    values = torch.as_tensor(kernel(pole, points_at_angles(torch.arccos(t), dim)), dtype=torch.float64)
    values = values.reshape(-1).cpu().numpy()
    if values.shape[0] != len(t):
        raise ValueError(f"kernel must return a (1, {len(t)}) matrix for one pole and {len(t)} points")
    lam = (dim - 2) / 2
    normaliser = math.exp(gammaln(dim / 2) - gammaln((dim - 1) / 2)) / math.sqrt(math.pi)
    mu, mult = [], []
    for k in range(max_degree + 1):
        legendre = eval_gegenbauer(k, lam, t.numpy()) / eval_gegenbauer(k, lam, 1.0)
        mu.append(normaliser * float((weights * values * legendre).sum()))
        mult.append(1 if k == 0 else round((2 * k + dim - 2) / k * math.comb(k + dim - 3, dim - 2)))
    return torch.tensor(mu, dtype=torch.float64), torch.tensor(mult, dtype=torch.float64)
