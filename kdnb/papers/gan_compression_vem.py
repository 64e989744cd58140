r"""Minsoo Kang, Hyewon Yoo, Eunhee Kang, Sehwan Ki, Hyong-Euk Lee and Bohyung Han. *Information-Theoretic GAN
Compression with Variational Energy-based Model.* Advances in Neural Information Processing Systems 35, 2022 (VEM;
arXiv:2303.16050). Reproduced in chapter 7 (``07_gan_compression_vem``).

VEM distils a GAN generator by maximising a variational lower bound on the mutual information between the teacher's
output ``t`` and the student's output ``s`` (Barber and Agakov's bound, the family of VID):

.. math::

    I(T; S) \ge H(T) + \mathbb{E}_{p(t, s)} \log q_\theta(t \mid s), \qquad
    q_\theta(t \mid s) = e^{-E_\theta(t, s)} / Z_\theta(s),

with a conditional energy-based model (EBM) ``E_theta``. The gap of the bound is ``E_s KL(p(t|s) || q_theta(t|s))``.
The EBM is trained by contrastive divergence (CD), its negatives drawn by a short Langevin chain started at the
student output; the student follows the pathwise gradient of the bound with the EBM frozen. The conventions the
paper leaves open (the sampler, its step and noise, the positives of the EBM) are arguments here, with the released
code's choice as the default and the alternative named.

Pieces, by section of the chapter:

- the bound in one dimension, where ``q_theta`` can be normalised exactly on a grid: :class:`ConditionalEnergy`,
  :func:`grid_log_q`, :func:`grid_sample`, :func:`ba_estimate`, :func:`paired_gap`, the reference problems
  :func:`gaussian_channel` and :func:`bimodal_channel` (with their mutual information and the best Gaussian-family
  bound), :func:`fit_energy` (exact grid likelihood or VEM's CD) and :func:`bound_gradients`;
- the sampler and the two losses: :func:`langevin`, :func:`ebm_loss`, :func:`mi_student_loss`;
- a 2-D GAN compressed by distillation: :func:`sample_ring`, :func:`ring_centres`, :func:`fit_gan`,
  :func:`distill_generator`, :func:`rbf_mmd2`, :func:`mode_coverage`;
- image enhancement on the photographs bundled with scikit-image: :func:`photo_patches`, :func:`degrade`,
  :class:`ConvGenerator`, :class:`PatchDiscriminator`, :class:`ConvEnergy`, :func:`psnr`, :func:`ssim`,
  :func:`n_parameters`.

Every random draw takes an explicit CPU ``generator``. The 1-D bound computations are in float64.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdnb.core.models import MLP, initialize_from
from kdnb.core.progress import progress_bar
from kdnb.core.runtime import float64_device
from kdnb.core.validation import (
    check_choice,
    check_finite_tensor,
    check_in_unit_interval,
    check_nonnegative,
    check_positive,
    check_positive_int,
)

__all__ = [
    "BimodalChannel",
    "ConditionalEnergy",
    "ConvEnergy",
    "ConvGenerator",
    "GaussianChannel",
    "PatchDiscriminator",
    "PatchSplit",
    "SAMPLERS",
    "POSITIVES",
    "ba_estimate",
    "bimodal_channel",
    "bound_gradients",
    "degrade",
    "distill_generator",
    "ebm_loss",
    "fit_energy",
    "fit_gan",
    "gaussian_channel",
    "grid_log_q",
    "grid_sample",
    "langevin",
    "mi_student_loss",
    "mode_coverage",
    "n_parameters",
    "paired_gap",
    "photo_patches",
    "psnr",
    "rbf_mmd2",
    "ring_centres",
    "sample_ring",
    "ssim",
]

SAMPLERS = ("decoupled", "ula")
POSITIVES = ("teacher", "target")
F64 = torch.float64


# ----------------------------------------------------------------------------------------------------------------
# The conditional energy and its exact normalisation in one dimension
# ----------------------------------------------------------------------------------------------------------------


class ConditionalEnergy(nn.Module):
    """A conditional energy ``E_theta(t, s)``: an MLP on ``concat(t, s)`` with one output, ``q_theta ∝ exp(-E)``.

    Parameters
    ----------
    t_dim, s_dim : int
        Dimensions of the teacher output ``t`` and the student output ``s``, each >= 1.
    hidden : sequence of int, default (64, 64)
        Hidden widths of the :class:`kdnb.core.models.MLP` (GELU activations, smooth so that Langevin's input
        gradients are; PyTorch's initialisation).
    generator : torch.Generator, optional
        Generator of the initial weights.
    dtype : torch.dtype, default torch.float32
        Parameter dtype; the grid computations of :func:`grid_log_q` need ``torch.float64``.

    Notes
    -----
    ``forward(t, s)`` takes ``t`` of shape (N, t_dim) (or (N,) when ``t_dim == 1``) and ``s`` of shape (N, s_dim)
    (or (N,)), and returns the energies, shape (N,). The sign convention is the released code's (Kang et al. 2022,
    framework figure): training lowers the energy of (teacher output, student output) pairs.
    """

    def __init__(self, t_dim: int, s_dim: int, hidden: Sequence[int] = (64, 64), generator=None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.t_dim = check_positive_int(t_dim, "t_dim")
        self.s_dim = check_positive_int(s_dim, "s_dim")
        self.mlp = MLP(self.t_dim + self.s_dim, hidden, 1, activation="gelu", generator=generator).to(dtype)

    def forward(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Energies ``E(t, s)``.

        Parameters
        ----------
        t : torch.Tensor
            Shape (N, t_dim) or (N,).
        s : torch.Tensor
            Shape (N, s_dim) or (N,).

        Returns
        -------
        torch.Tensor
            Shape (N,).
        """
        t = t.reshape(len(t), -1)
        s = s.reshape(len(s), -1)
        if t.shape[1] != self.t_dim or s.shape[1] != self.s_dim:
            raise ValueError(f"t must have {self.t_dim} and s {self.s_dim} features, got {t.shape[1]} and "
                             f"{s.shape[1]}")
        if len(t) != len(s):
            raise ValueError(f"t and s must hold the same number of examples, got {len(t)} and {len(s)}")
        return self.mlp(torch.cat([t, s], dim=1)).reshape(-1)


def _check_grid(grid) -> torch.Tensor:
    grid = check_finite_tensor(grid, "grid")
    if grid.dim() != 1 or len(grid) < 3:
        raise ValueError(f"grid must be a 1-D tensor of at least 3 points, got shape {tuple(grid.shape)}")
    steps = torch.diff(grid.to(F64))
    if not bool((steps > 0).all()):
        raise ValueError("grid must be strictly increasing")
    if float((steps - steps.mean()).abs().max()) > 1e-9 * float(steps.mean()) * len(grid):
        raise ValueError("grid must be uniform (equal steps); got steps from "
                         f"{float(steps.min()):.3g} to {float(steps.max()):.3g}")
    return grid.to(F64)


def _grid_energies(energy: nn.Module, s: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Energies E(g_j, s_i) of every grid point for every student output, shape (N, G)."""
    n, g = len(s), len(grid)
    s_rep = s.reshape(n, 1, -1).expand(n, g, s.reshape(n, -1).shape[1]).reshape(n * g, -1)
    t_rep = grid.reshape(1, g).expand(n, g).reshape(n * g, 1)
    return energy(t_rep, s_rep).reshape(n, g)


def _check_1d_inputs(energy, t, s, grid):
    if not isinstance(energy, nn.Module):
        raise TypeError(f"energy must be a torch.nn.Module E(t, s), got {type(energy).__name__}")
    param = next(energy.parameters(), None)
    dtype = param.dtype if param is not None else F64
    device = param.device if param is not None else torch.device("cpu")
    grid = _check_grid(grid)
    step = float(grid[1] - grid[0])
    grid = grid.to(device=device, dtype=dtype)
    t = check_finite_tensor(t, "t").to(device=device, dtype=dtype)
    s = check_finite_tensor(s, "s").to(device=device, dtype=dtype)
    if t.reshape(len(t), -1).shape[1] != 1:
        raise ValueError(f"t must be one-dimensional per example (shape (N,) or (N, 1)), got {tuple(t.shape)}")
    if len(t) != len(s):
        raise ValueError(f"t and s must hold the same number of examples, got {len(t)} and {len(s)}")
    return t.reshape(-1), s, grid, step


def grid_log_q(energy: nn.Module, t: torch.Tensor, s: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``log q_theta(t | s)`` for a one-dimensional ``t``, normalised by quadrature on a uniform grid (float64).

    ``log Z(s) = logsumexp_j(-E(g_j, s)) + log Δ`` (the rectangle rule, so ``Σ_j q(g_j | s) Δ = 1`` exactly);
    the grid must cover the mass of ``q``, which the caller checks by its range. The energies are computed in the
    energy's dtype and the normalisation in float64; pass a float64 energy (``ConditionalEnergy(...,
    dtype=torch.float64)``) for checks to 1e-8. Gradients flow to the energy's parameters and to ``s``.

    Parameters
    ----------
    energy : torch.nn.Module
        ``E(t, s)`` with a one-dimensional ``t`` (e.g. :class:`ConditionalEnergy`).
    t : torch.Tensor
        Teacher outputs, shape (N,) or (N, 1).
    s : torch.Tensor
        Student outputs, shape (N,) or (N, s_dim).
    grid : torch.Tensor
        Uniform, strictly increasing grid of ``t`` values, shape (G,), G >= 3.

    Returns
    -------
    torch.Tensor
        ``log q(t_i | s_i)``, shape (N,), float64 (nats).

    Raises
    ------
    TypeError
        If ``energy`` is not a module.
    ValueError
        If the grid is not uniform and increasing, ``t`` is not one-dimensional, or the batch sizes differ.
    """
    t, s, grid, step = _check_1d_inputs(energy, t, s, grid)
    exact = float64_device(grid.device)  # MPS has no float64: the normalisation then runs on the CPU
    log_z = torch.logsumexp(-_grid_energies(energy, s, grid).to(exact, F64), dim=1) + math.log(step)
    return -energy(t.reshape(-1, 1), s).to(exact, F64) - log_z


def grid_sample(energy: nn.Module, s: torch.Tensor, grid: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Exact samples of the grid distribution ``q_theta(g_j | s) Δ``, one per student output (inverse CDF).

    Parameters
    ----------
    energy, s, grid
        As in :func:`grid_log_q`.
    generator : torch.Generator
        CPU generator of the uniform draws.

    Returns
    -------
    torch.Tensor
        Grid points, shape (N,), float64, detached.
    """
    _, s, grid, _ = _check_1d_inputs(energy, torch.zeros(len(s)), s, grid)
    with torch.no_grad():
        cdf = torch.softmax(-_grid_energies(energy, s, grid), dim=1).cumsum(dim=1).cpu()
        cdf = cdf.to(F64)
        u = torch.rand(len(s), 1, generator=generator, dtype=F64)
        index = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp(max=len(grid) - 1).reshape(-1)
    return grid.cpu().to(F64)[index].to(grid.device)


def _mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.detach().cpu().to(F64).reshape(-1)
    if len(values) < 2:
        raise ValueError(f"need at least 2 samples for a standard error, got {len(values)}")
    return float(values.mean()), float(values.std(unbiased=True) / math.sqrt(len(values)))


def ba_estimate(log_q: torch.Tensor, entropy_t: float) -> tuple[float, float]:
    """The Barber–Agakov bound ``H(T) + E log q(t|s)`` estimated from samples, with its standard error.

    Parameters
    ----------
    log_q : torch.Tensor
        ``log q(t_i | s_i)`` on samples of ``p(t, s)``, shape (N,), N >= 2 (nats).
    entropy_t : float
        The (differential) entropy ``H(T)`` in nats, known in closed form for the reference problems.

    Returns
    -------
    (float, float)
        The estimate and the standard error of the mean, in nats (Kang et al. 2022, the bound of Sec. 3).
    """
    mean, se = _mean_and_se(log_q)
    return float(entropy_t) + mean, se


def paired_gap(log_q: torch.Tensor, log_p: torch.Tensor) -> tuple[float, float]:
    """The paired estimate of ``E[log q(t|s) − log p(t|s)] = −E_s KL(p(t|s) ‖ q(t|s)) ≤ 0``, with its standard error.

    Pairing the two log densities on the same samples cancels most of the noise of two separate bound estimates,
    so validity (the gap is at most 0) can be tested at a few standard errors.

    Parameters
    ----------
    log_q, log_p : torch.Tensor
        ``log q`` and the true ``log p`` on the same samples, shape (N,) each, N >= 2.

    Returns
    -------
    (float, float)
        Mean difference and its standard error (nats).

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    if log_q.shape != log_p.shape:
        raise ValueError(f"log_q and log_p must have the same shape, got {tuple(log_q.shape)} and "
                         f"{tuple(log_p.shape)}")
    return _mean_and_se(log_q.detach().cpu().to(F64) - log_p.detach().cpu().to(F64))


# ----------------------------------------------------------------------------------------------------------------
# Reference channels with a known mutual information
# ----------------------------------------------------------------------------------------------------------------


class _Channel:
    """A 1-D channel: ``s ~ N(0, 1)``, then ``t`` drawn given ``s`` by the subclass's ``_teacher_given``."""

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` pairs from the channel.

        Parameters
        ----------
        n : int
            Number of pairs, >= 1.
        generator : torch.Generator
            CPU generator of the draws.

        Returns
        -------
        (torch.Tensor, torch.Tensor)
            ``(s, t)``, each of shape (n,), float64.
        """
        n = check_positive_int(n, "n")
        s = torch.randn(n, generator=generator, dtype=F64)
        return s, self._teacher_given(s, generator)


@dataclass(frozen=True)
class GaussianChannel(_Channel):
    """``s ~ N(0, 1)``, ``t = rho s + sqrt(1 - rho^2) eps``: ``I(T; S) = -½ log(1 - rho²)`` nats.

    Its conditional ``p(t|s)`` is Gaussian, so the best Gaussian-family bound is tight (``gaussian_bound == I``).
    Build it with :func:`gaussian_channel`, which checks ``rho``.

    Parameters
    ----------
    rho : float
        Correlation of ``s`` and ``t``, ``|rho| < 1``.
    """

    rho: float

    @property
    def mutual_information(self) -> float:
        """``I(T; S) = -½ log(1 - rho²)`` in nats."""
        return -0.5 * math.log(1 - self.rho**2)

    @property
    def entropy_t(self) -> float:
        """``H(T) = ½ log(2πe)`` in nats (``T ~ N(0, 1)``)."""
        return 0.5 * math.log(2 * math.pi * math.e)

    @property
    def gaussian_bound(self) -> float:
        """The best bound over conditional Gaussians, here equal to ``I`` (nats)."""
        return self.mutual_information

    def _teacher_given(self, s: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.rho * s + math.sqrt(1 - self.rho**2) * torch.randn(len(s), generator=generator, dtype=F64)

    def log_p(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The true conditional log-density ``log p(t | s)`` in nats.

        Parameters
        ----------
        t, s : torch.Tensor
            Teacher and student outputs, shape (N,) each.

        Returns
        -------
        torch.Tensor
            Shape (N,), float64.
        """
        var = 1 - self.rho**2
        return -0.5 * (t.reshape(-1) - self.rho * s.reshape(-1)) ** 2 / var - 0.5 * math.log(2 * math.pi * var)


def gaussian_channel(rho: float = 0.8) -> GaussianChannel:
    """The Gaussian channel of correlation ``rho`` (:class:`GaussianChannel`).

    Parameters
    ----------
    rho : float, default 0.8
        Correlation, ``|rho| < 1``.

    Returns
    -------
    GaussianChannel

    Raises
    ------
    ValueError
        If ``|rho| >= 1`` (the information is infinite at 1).
    """
    rho = float(rho)
    if not math.isfinite(rho) or abs(rho) >= 1:
        raise ValueError(f"rho must satisfy |rho| < 1, got {rho}")
    return GaussianChannel(rho)


def _normal_expectation(fn: Callable[[np.ndarray], np.ndarray], n: int = 20001, width: float = 10.0) -> float:
    """``E f(s)`` for ``s ~ N(0, 1)`` by the trapezoid rule on [-width, width] (error far below 1e-8 here)."""
    s = np.linspace(-width, width, n)
    density = np.exp(-0.5 * s**2) / math.sqrt(2 * math.pi)
    return float(np.trapezoid(density * fn(s), s))


@dataclass(frozen=True)
class BimodalChannel(_Channel):
    """``s ~ N(0, 1)``, ``t = B s + noise · eps`` with a fair sign ``B = ±1``: a bimodal ``p(t | s)``.

    ``B s`` is again standard normal, so ``T ~ N(0, 1 + noise²)`` and ``H(T)`` is closed-form; ``H(T|S)`` (hence
    ``I``) is computed by quadrature. The best bound over conditional Gaussians ``q(t|s) = N(mu(s), v(s))`` takes
    the conditional moments ``mu = 0``, ``v = s² + noise²``, and equals ``H(T) − ½ E_s log(2πe (s² + noise²))``.
    Build it with :func:`bimodal_channel`, which checks ``noise``.

    Parameters
    ----------
    noise : float
        Standard deviation ``> 0`` of the noise around ``±s``.
    """

    noise: float

    @property
    def entropy_t(self) -> float:
        """``H(T) = ½ log(2πe (1 + noise²))`` in nats."""
        return 0.5 * math.log(2 * math.pi * math.e * (1 + self.noise**2))

    @property
    def conditional_entropy(self) -> float:
        """``H(T | S)`` in nats, by nested quadrature (trapezoid rule in ``t`` and ``s``)."""
        sigma = self.noise
        t = np.linspace(-12, 12, 4801)

        def h_given(s_values: np.ndarray) -> np.ndarray:
            out = np.empty_like(s_values)
            for chunk in range(0, len(s_values), 500):
                sv = s_values[chunk:chunk + 500, None]
                log_p = _log_mixture(t[None, :], sv, sigma)
                out[chunk:chunk + 500] = -np.trapezoid(np.exp(log_p) * log_p, t, axis=1)
            return out

        return _normal_expectation(h_given, n=4001, width=8.0)

    @property
    def mutual_information(self) -> float:
        """``I(T; S) = H(T) − H(T | S)`` in nats (by quadrature)."""
        return self.entropy_t - self.conditional_entropy

    @property
    def gaussian_bound(self) -> float:
        """The best bound over conditional Gaussians, ``H(T) − ½ E_s log(2πe (s² + noise²))``, in nats."""
        sigma2 = self.noise**2
        return self.entropy_t - 0.5 * math.log(2 * math.pi * math.e) - 0.5 * _normal_expectation(
            lambda s: np.log(s**2 + sigma2))

    def _teacher_given(self, s: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        sign = torch.randint(0, 2, (len(s),), generator=generator).to(F64) * 2 - 1
        return sign * s + self.noise * torch.randn(len(s), generator=generator, dtype=F64)

    def log_p(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The true conditional log-density ``log p(t | s)`` in nats.

        Parameters
        ----------
        t, s : torch.Tensor
            Teacher and student outputs, shape (N,) each.

        Returns
        -------
        torch.Tensor
            Shape (N,), float64.
        """
        t, s = t.reshape(-1).to(F64), s.reshape(-1).to(F64)
        var = self.noise**2
        a = -0.5 * (t - s) ** 2 / var
        b = -0.5 * (t + s) ** 2 / var
        return torch.logaddexp(a, b) - math.log(2) - 0.5 * math.log(2 * math.pi * var)

    def gaussian_log_q(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The best conditional Gaussian's ``log q(t|s) = log N(t; 0, s² + noise²)``.

        Parameters
        ----------
        t, s : torch.Tensor
            Teacher and student outputs, shape (N,) each.

        Returns
        -------
        torch.Tensor
            Shape (N,), float64 (nats).
        """
        t, s = t.reshape(-1).to(F64), s.reshape(-1).to(F64)
        var = s**2 + self.noise**2
        return -0.5 * t**2 / var - 0.5 * torch.log(2 * math.pi * var)


def _log_mixture(t: np.ndarray, s: np.ndarray, sigma: float) -> np.ndarray:
    a = -0.5 * (t - s) ** 2 / sigma**2
    b = -0.5 * (t + s) ** 2 / sigma**2
    return np.logaddexp(a, b) - math.log(2) - 0.5 * math.log(2 * math.pi * sigma**2)


def bimodal_channel(noise: float = 0.3) -> BimodalChannel:
    """The bimodal channel ``t = ±s + noise · eps`` (:class:`BimodalChannel`).

    Parameters
    ----------
    noise : float, default 0.3
        Standard deviation of the noise, ``> 0``.

    Returns
    -------
    BimodalChannel

    Raises
    ------
    ValueError
        If ``noise <= 0``.
    """
    return BimodalChannel(check_positive(noise, "noise"))


# ----------------------------------------------------------------------------------------------------------------
# The sampler and the two losses of VEM
# ----------------------------------------------------------------------------------------------------------------


def langevin(energy: nn.Module, s: torch.Tensor, steps: int, step_size: float, noise_std: float | None = None, *,
             generator: torch.Generator, init: str = "student", init_std: float = 1.0, kind: str = "decoupled",
             clamp: tuple[float, float] | None = None) -> torch.Tensor:
    """Short-run Langevin negatives ``t̃`` for ``q_theta(t | s)``, started at the student output, detached.

    ``kind="decoupled"`` (the released code, ``forward_EBM``): ``t ← t − step_size ∇_t E(t, s) + noise_std ε``.
    ``kind="ula"`` (the textbook unadjusted Langevin algorithm): ``t ← t − (step_size/2) ∇_t E + sqrt(step_size) ε``,
    whose chain targets ``q_theta`` as ``step_size → 0`` with ``steps · step_size → ∞`` (with a bias of order
    ``step_size`` otherwise). The decoupled chain is the same algorithm at another temperature: for small steps it
    is stationary at ``∝ exp(−2 step_size E / noise_std²)``, i.e. ``q_theta`` at the temperature
    ``noise_std² / (2 step_size)`` (2.5·10⁻⁴ at the released 0.05 and 0.005: close to descending the energy). The
    paper asks for an MCMC sampler started at ``s`` and names neither; the released code is the default. ``s`` is
    detached: the chain never reaches the student.

    Parameters
    ----------
    energy : torch.nn.Module
        ``E(t, s)``; its parameters receive no gradient.
    s : torch.Tensor
        Student outputs, shape (N, ...) ; ``t`` has the same shape (the chain starts at ``s``).
    steps : int
        Chain length K >= 1.
    step_size : float
        Step ``> 0`` (``eta`` of ULA).
    noise_std : float, optional
        Noise ``>= 0`` of the decoupled chain; required for ``"decoupled"``, must be None for ``"ula"``.
    generator : torch.Generator
        CPU generator of the noise.
    init : {"student", "noisy_student"}
        ``t⁰ = s`` (the paper's framework figure), or ``s + init_std · N(0, 1)``.
    init_std : float, default 1.0
        Noise of ``"noisy_student"``, ``>= 0``.
    kind : {"decoupled", "ula"}, default "decoupled"
        The update rule (above).
    clamp : (float, float), optional
        Clamp the final samples to ``[low, high]`` (the released code clamps images to [-1, 1]).

    Returns
    -------
    torch.Tensor
        Samples of the shape of ``s``, detached.

    Raises
    ------
    ValueError
        If ``steps < 1``, ``step_size <= 0``, ``noise_std < 0``, ``init_std < 0``, or ``kind``/``init`` is unknown,
        or ``noise_std`` does not match ``kind``.
    """
    steps = check_positive_int(steps, "steps")
    step_size = check_positive(step_size, "step_size")
    kind = check_choice(kind, "kind", SAMPLERS)
    init = check_choice(init, "init", ("student", "noisy_student"))
    init_std = check_nonnegative(init_std, "init_std")
    if kind == "decoupled":
        if noise_std is None:
            raise ValueError("noise_std is required for kind='decoupled' (the released code's separate noise)")
        noise_std = check_nonnegative(noise_std, "noise_std")
    elif noise_std is not None:
        raise ValueError("noise_std must be None for kind='ula' (its noise is sqrt(step_size))")
    else:
        noise_std = math.sqrt(step_size)
    drift = step_size if kind == "decoupled" else step_size / 2
    s = s.detach()

    def noise_like(x):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)

    t = s.clone() if init == "student" else s + init_std * noise_like(s)
    params = list(energy.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            t = t.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(energy(t, s).sum(), t)
            t = t - drift * grad + noise_std * noise_like(t)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    t = t.detach()
    if clamp is not None:
        low, high = map(float, clamp)
        if not low < high:
            raise ValueError(f"clamp must be (low, high) with low < high, got {clamp}")
        t = t.clamp(low, high)
    return t


def _check_batch(t, s, t_neg):
    if not (len(t) == len(s) == len(t_neg)):
        raise ValueError(f"t, s and t_neg must hold the same number of examples, got {len(t)}, {len(s)} and "
                         f"{len(t_neg)}")


def ebm_loss(energy: nn.Module, t: torch.Tensor, s: torch.Tensor, t_neg: torch.Tensor, l2: float = 0.05
             ) -> torch.Tensor:
    """VEM's contrastive-divergence loss of the EBM, inputs detached (the released code's ``loss_EBM``).

    ``mean E(t, s) − mean E(t_neg, s) + l2 · mean(E(t, s)² + E(t_neg, s)²)``: its gradient in ``theta`` is the
    CD estimate of ``∇_theta E[−log q_theta(t|s)]`` (Kang et al. 2022, Sec. 3, the EBM's gradient) with negatives
    ``t_neg`` from ``q_theta``, plus the released code's energy penalty (coefficient 0.05, not in the paper text).

    Parameters
    ----------
    energy : torch.nn.Module
        ``E(t, s)``.
    t : torch.Tensor
        Positives (teacher outputs, or ground truth with ``positives="target"``), shape (N, ...).
    s : torch.Tensor
        Student outputs, shape (N, ...).
    t_neg : torch.Tensor
        Negatives, e.g. from :func:`langevin`, shape of ``t``.
    l2 : float, default 0.05
        Energy penalty ``>= 0``.

    Returns
    -------
    torch.Tensor
        Scalar loss; only the energy's parameters receive gradient.
    """
    _check_batch(t, s, t_neg)
    l2 = check_nonnegative(l2, "l2")
    s = s.detach()
    positive, negative = energy(t.detach(), s), energy(t_neg.detach(), s)
    return positive.mean() - negative.mean() + l2 * (positive**2 + negative**2).mean()


def mi_student_loss(energy: nn.Module, t: torch.Tensor, s: torch.Tensor, t_neg: torch.Tensor) -> torch.Tensor:
    """The student's loss ``L_MI = mean E(t, s) − mean E(t_neg, s)``, gradient through ``s`` only (EBM frozen).

    Its gradient in the student's parameters is ``−∂Ĩ/∂φ`` of the bound (Kang et al. 2022, Sec. 3, the student's
    gradient), with ``t`` the teacher output and ``t_neg ~ q_theta(·|s)`` detached.

    Parameters
    ----------
    energy : torch.nn.Module
        ``E(t, s)``; evaluated with detached copies of its parameters, so it receives no gradient.
    t, s, t_neg : torch.Tensor
        Teacher outputs, student outputs (carrying the student's graph) and negatives, shape (N, ...) each.

    Returns
    -------
    torch.Tensor
        Scalar loss.
    """
    _check_batch(t, s, t_neg)
    frozen = {name: p.detach() for name, p in energy.named_parameters()}
    frozen.update(dict(energy.named_buffers()))

    def e(a, b):
        return torch.func.functional_call(energy, frozen, (a, b))

    return e(t.detach(), s).mean() - e(t_neg.detach(), s).mean()


# ----------------------------------------------------------------------------------------------------------------
# Training the EBM on a reference channel, and the two gradients of the bound
# ----------------------------------------------------------------------------------------------------------------


def fit_energy(energy: nn.Module, channel, *, method: str = "grid_nll", iterations: int = 1000, batch_size: int = 128,
               grid: torch.Tensor, lr: float = 1e-3, betas: tuple[float, float] = (0.0, 0.999), l2: float = 0.05,
               sampler: dict | None = None, checkpoints: Sequence[int] = (), n_eval: int = 10_000,
               generator: torch.Generator, eval_generator: torch.Generator, desc: str | None = None) -> dict:
    """Train a float64 1-D energy on samples of ``channel`` and report the bound at checkpoints.

    ``method="grid_nll"`` minimises the exact ``−mean log q_theta(t|s)`` of :func:`grid_log_q` (maximum likelihood,
    the EBM step of the paper without sampling error); ``method="cd"`` is VEM's own training, :func:`ebm_loss` with
    negatives from :func:`langevin` started at ``s`` (``sampler``: its keyword arguments ``steps``, ``step_size``,
    ``noise_std``, ``kind``, ``init``, ``init_std``). Either way the bound is evaluated exactly, by quadrature, on
    ``n_eval`` fresh samples drawn once from ``eval_generator``.

    Parameters
    ----------
    energy : torch.nn.Module
        ``E(t, s)`` with one-dimensional ``t`` and ``s``, trained in its own dtype (float32 is 4x faster on a CPU).
    channel : GaussianChannel or BimodalChannel
        Provides ``sample``, ``log_p`` and ``entropy_t``.
    method : {"grid_nll", "cd"}
    iterations, batch_size : int
        Adam steps and samples a step, >= 1.
    grid : torch.Tensor
        The quadrature grid of :func:`grid_log_q`.
    lr, betas : float, (float, float)
        Adam's settings (betas (0, 0.999) as in the released code).
    l2 : float
        Energy penalty of :func:`ebm_loss` (``"cd"`` only).
    sampler : dict, optional
        Settings of :func:`langevin` for ``"cd"``; required there.
    checkpoints : sequence of int
        Iterations after which the bound is evaluated, in ``[0, iterations]``; 0 is the initial energy.
    n_eval : int
        Evaluation samples, >= 2.
    generator, eval_generator : torch.Generator
        CPU generators of the training draws (samples and chains) and of the evaluation samples.
    desc : str, optional
        Label of the progress bar.

    Returns
    -------
    dict
        ``iteration``, ``bound``, ``bound_se``, ``gap``, ``gap_se`` (lists, one entry a checkpoint, nats).

    Raises
    ------
    ValueError
        If ``method`` is unknown, ``sampler`` is missing for ``"cd"``, or a checkpoint is out of range.
    """
    method = check_choice(method, "method", ("grid_nll", "cd"))
    iterations = check_positive_int(iterations, "iterations")
    batch_size = check_positive_int(batch_size, "batch_size")
    n_eval = check_positive_int(n_eval, "n_eval", minimum=2)
    grid = _check_grid(grid)
    marks = sorted({int(c) for c in checkpoints})
    if marks and (marks[0] < 0 or marks[-1] > iterations):
        raise ValueError(f"checkpoints must lie in [0, {iterations}], got {list(checkpoints)}")
    if method == "cd" and sampler is None:
        raise ValueError("method='cd' needs sampler=dict(steps=..., step_size=..., noise_std=...)")
    s_eval, t_eval = channel.sample(n_eval, eval_generator)
    log_p_eval = channel.log_p(t_eval, s_eval)
    optimiser = torch.optim.Adam(energy.parameters(), lr=lr, betas=betas)
    grid_dtype = next(energy.parameters()).dtype
    grid_device = next(energy.parameters()).device
    history = {"iteration": [], "bound": [], "bound_se": [], "gap": [], "gap_se": []}

    def evaluate(iteration):
        # the bound is evaluated in float64 whatever the training dtype (on the CPU where the device has none)
        exact = copy.deepcopy(energy).to(float64_device(grid_device), F64)
        with torch.no_grad():
            log_q = torch.cat([grid_log_q(exact, t_eval[i:i + 2000], s_eval[i:i + 2000], grid)
                               for i in range(0, n_eval, 2000)])
        bound, bound_se = ba_estimate(log_q, channel.entropy_t)
        gap, gap_se = paired_gap(log_q, log_p_eval)
        for key, value in zip(history, (iteration, bound, bound_se, gap, gap_se)):
            history[key].append(value)

    if 0 in marks:
        evaluate(0)
    for iteration in progress_bar(range(1, iterations + 1), desc=desc or f"EBM ({method})"):
        s, t = (x.to(grid_device, grid_dtype) for x in channel.sample(batch_size, generator))
        if method == "grid_nll":
            loss = -grid_log_q(energy, t, s, grid).mean()
        else:
            t_neg = langevin(energy, s.reshape(-1, 1), generator=generator, **sampler)
            loss = ebm_loss(energy, t.reshape(-1, 1), s.reshape(-1, 1), t_neg, l2=l2)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if iteration in marks:
            evaluate(iteration)
    return history


def bound_gradients(energy: nn.Module, student: Callable[[], torch.Tensor], parameters: Sequence[torch.Tensor],
                    t: torch.Tensor, t_neg: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's gradient of the bound two ways: autograd through the quadrature ``log Z``, and VEM's CD form.

    ``a = ∇_φ mean log q_theta(t | s(φ))`` through :func:`grid_log_q`, and ``b = −∇_φ L_MI`` of
    :func:`mi_student_loss` with the negatives ``t_neg``. Since ``∇_s log Z(s) = −E_{q(t̃|s)} ∇_s E(t̃, s)``,
    ``b`` is an unbiased estimate of ``a`` when ``t_neg`` are exact samples of the grid distribution
    (:func:`grid_sample`); with Langevin samples it is biased by the chain (Kang et al. 2022, Sec. 3).

    Parameters
    ----------
    energy : torch.nn.Module
        A float64 1-D ``E(t, s)``.
    student : callable
        ``student()`` returns the student outputs ``s(φ)``, shape (N,) or (N, 1), as a function of ``parameters``.
    parameters : sequence of torch.Tensor
        The student's parameters ``φ`` (requiring grad).
    t : torch.Tensor
        Teacher outputs, shape (N,).
    t_neg : torch.Tensor
        Negatives, one per example, shape (N,).
    grid : torch.Tensor
        The quadrature grid.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``a`` and ``b``, flattened and concatenated over ``parameters``, float64.
    """
    parameters = list(parameters)
    exact = grid_log_q(energy, t, student(), grid).mean()
    a = torch.autograd.grad(exact, parameters)
    s = student().reshape(-1, 1)
    cd = mi_student_loss(energy, t.reshape(-1, 1).to(s.dtype), s, t_neg.reshape(-1, 1).to(s.dtype))
    b = torch.autograd.grad(-cd, parameters)
    return (torch.cat([g.reshape(-1) for g in a]).to(F64), torch.cat([g.reshape(-1) for g in b]).to(F64))


# ----------------------------------------------------------------------------------------------------------------
# Generators: the 2-D ring and the GAN and distillation loops
# ----------------------------------------------------------------------------------------------------------------


def ring_centres(modes: int = 8, radius: float = 2.0) -> torch.Tensor:
    """The centres of the ring's modes, equally spaced on a circle (the first on the positive x axis).

    Parameters
    ----------
    modes : int, default 8
        Number of modes, >= 1.
    radius : float, default 2.0
        Radius ``> 0`` of the circle.

    Returns
    -------
    torch.Tensor
        Shape (modes, 2), float32.
    """
    modes = check_positive_int(modes, "modes")
    radius = check_positive(radius, "radius")
    angle = torch.arange(modes, dtype=torch.float32) * (2 * math.pi / modes)
    return radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)


def sample_ring(n: int, generator: torch.Generator, modes: int = 8, radius: float = 2.0, std: float = 0.05
                ) -> torch.Tensor:
    """Points of the mixture of ``modes`` equally weighted Gaussians centred on the ring (:func:`ring_centres`).

    Parameters
    ----------
    n : int
        Number of points, >= 1.
    generator : torch.Generator
        CPU generator of the draws.
    modes : int, default 8
    radius : float, default 2.0
    std : float, default 0.05
        Standard deviation ``> 0`` of each Gaussian.

    Returns
    -------
    torch.Tensor
        Shape (n, 2), float32.
    """
    n = check_positive_int(n, "n")
    std = check_positive(std, "std")
    centres = ring_centres(modes, radius)
    which = torch.randint(0, modes, (n,), generator=generator)
    return centres[which] + std * torch.randn(n, 2, generator=generator)


def _adam(module: nn.Module, lr: float, betas) -> torch.optim.Adam:
    return torch.optim.Adam(module.parameters(), lr=check_positive(lr, "lr"), betas=tuple(betas))


def fit_gan(generator_net: nn.Module, discriminator: nn.Module, sample: Callable, *, steps: int, lr: float = 1e-3,
            betas: tuple[float, float] = (0.5, 0.999), l1_weight: float = 0.0, conditional: bool = False,
            generator: torch.Generator, desc: str = "GAN") -> dict:
    """Train a GAN with the non-saturating loss, one discriminator step a generator step.

    ``sample(generator)`` returns ``(inputs, real)``: the generator's inputs (latents, or the degraded images of a
    conditional task) and a batch of real outputs. With ``conditional=True`` (pix2pix) the discriminator scores
    ``concat(inputs, output)`` along dimension 1, and ``l1_weight`` adds ``l1_weight · mean |G(inputs) − real|``
    to the generator's loss (pix2pix's 100); unconditionally it scores the outputs alone.

    Parameters
    ----------
    generator_net, discriminator : torch.nn.Module
        ``G`` and ``D`` (``D`` returns logits of any shape; all are averaged).
    sample : callable
        ``sample(generator) -> (inputs, real)``.
    steps : int
        Generator steps, >= 1.
    lr, betas : float, (float, float)
        Adam's settings for both networks.
    l1_weight : float
        Weight ``>= 0`` of the paired L1 term.
    conditional : bool
        Whether ``D`` sees the inputs.
    generator : torch.Generator
        CPU generator passed to ``sample``.
    desc : str
        Progress-bar label.

    Returns
    -------
    dict
        ``d_loss`` and ``g_loss``, one entry a step.
    """
    steps = check_positive_int(steps, "steps")
    l1_weight = check_nonnegative(l1_weight, "l1_weight")
    opt_g, opt_d = _adam(generator_net, lr, betas), _adam(discriminator, lr, betas)
    history = {"d_loss": [], "g_loss": []}

    def score(inputs, output):
        return discriminator(torch.cat([inputs, output], dim=1) if conditional else output)

    for _ in progress_bar(range(steps), desc=desc):
        inputs, real = sample(generator)
        fake = generator_net(inputs)
        real_logits, fake_logits = score(inputs, real), score(inputs, fake.detach())
        d_loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                  + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        fake_logits = score(inputs, fake)
        g_loss = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
        if l1_weight:
            g_loss = g_loss + l1_weight * (fake - real).abs().mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        history["d_loss"].append(float(d_loss.detach()))
        history["g_loss"].append(float(g_loss.detach()))
    return history


def distill_generator(student: nn.Module, teacher: nn.Module, sample: Callable, *, steps: int, lr: float = 1e-3,
                      betas: tuple[float, float] = (0.5, 0.999), generator: torch.Generator,
                      energy: nn.Module | None = None, mi_weight: float = 0.1, energy_lr: float = 1e-3,
                      energy_betas: tuple[float, float] = (0.0, 0.999), l2: float = 0.05,
                      sampler: dict | None = None, positives: str = "teacher", desc: str = "distil") -> dict:
    """Distil ``teacher`` into ``student`` by L1 to the teacher's output, plus VEM's ``L_MI`` when ``energy`` is given.

    Each step draws ``(inputs, target) = sample(generator)``; ``t = teacher(inputs)`` (no gradient) and
    ``s = student(inputs)``. The student's loss is ``mean |s − t| + mi_weight · L_MI(t, s, t̃)`` with negatives
    ``t̃ = langevin(energy, s, **sampler)``; then the EBM takes one step of :func:`ebm_loss` on the same negatives,
    its positives being the teacher's outputs (``positives="teacher"``, the paper's framework figure and the
    released CycleGAN distiller) or the ground truth (``"target"``, the released Pix2Pix distiller). Without
    ``energy`` this is plain KD-L1.

    Parameters
    ----------
    student, teacher : torch.nn.Module
        The teacher is used in eval mode and never updated.
    sample : callable
        ``sample(generator) -> (inputs, target)`` or ``(inputs, target, teacher_outputs)`` (the teacher's outputs
        on ``inputs``, precomputed on a fixed training set, so that the teacher is not run again); ``target`` may
        be None unless ``positives="target"``.
    steps : int
        Student steps, >= 1.
    lr, betas : float, (float, float)
        The student's Adam.
    generator : torch.Generator
        CPU generator of the batches and the chains.
    energy : torch.nn.Module, optional
        ``E(t, s)`` of the outputs' shape; None for KD-L1 alone.
    mi_weight : float, default 0.1
        ``lambda_MI >= 0`` (the released code's default).
    energy_lr, energy_betas : float, (float, float)
        The EBM's Adam (betas (0, 0.999) as in the code; the code's rate is 1e-4 for its conv EBMs).
    l2 : float
        Energy penalty of :func:`ebm_loss`.
    sampler : dict, optional
        Keyword arguments of :func:`langevin`; required with ``energy``.
    positives : {"teacher", "target"}
    desc : str
        Progress-bar label.

    Returns
    -------
    dict
        ``l1`` and ``mi`` (NaN without an energy), one entry a step.

    Raises
    ------
    ValueError
        If ``positives`` is unknown, ``sampler`` is missing with an energy, or a target is needed and missing.
    """
    steps = check_positive_int(steps, "steps")
    mi_weight = check_nonnegative(mi_weight, "mi_weight")
    positives = check_choice(positives, "positives", POSITIVES)
    if energy is not None and sampler is None:
        raise ValueError("an energy needs sampler=dict(steps=..., step_size=..., noise_std=...) for its negatives")
    teacher.eval()
    opt_s = _adam(student, lr, betas)
    opt_e = _adam(energy, energy_lr, energy_betas) if energy is not None else None
    history = {"l1": [], "mi": []}
    for _ in progress_bar(range(steps), desc=desc):
        drawn = sample(generator)
        inputs, target = drawn[0], drawn[1]
        if energy is not None and positives == "target" and target is None:
            raise ValueError("positives='target' needs sample() to return the ground truth as its target")
        if len(drawn) == 3:  # the teacher's outputs, precomputed on a fixed training set
            t = drawn[2].detach()
        else:
            with torch.no_grad():
                t = teacher(inputs)
        s = student(inputs)
        l1 = (s - t).abs().mean()
        loss = l1
        mi = float("nan")
        if energy is not None:
            t_neg = langevin(energy, s, generator=generator, **sampler)
            mi_term = mi_student_loss(energy, t, s, t_neg)
            loss = loss + mi_weight * mi_term
            mi = float(mi_term.detach())
        opt_s.zero_grad(set_to_none=True)
        loss.backward()
        opt_s.step()
        if energy is not None:
            e_loss = ebm_loss(energy, t if positives == "teacher" else target, s, t_neg, l2=l2)
            opt_e.zero_grad(set_to_none=True)
            e_loss.backward()
            opt_e.step()
        history["l1"].append(float(l1.detach()))
        history["mi"].append(mi)
    return history


def rbf_mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] = (0.1, 0.3, 1.0, 3.0)) -> float:
    """Squared MMD with the sum of Gaussian kernels ``exp(−‖a − b‖² / (2 h²))`` over ``bandwidths`` (V-statistic).

    The biased (V-statistic) estimate ``mean k(x, x') + mean k(y, y') − 2 mean k(x, y)``, which is 0 for identical
    samples and never negative.

    Parameters
    ----------
    x, y : torch.Tensor
        Samples, shapes (N, D) and (M, D).
    bandwidths : sequence of float
        Kernel widths ``h > 0``.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If a bandwidth is not positive or the dimensions differ.
    """
    x = check_finite_tensor(x, "x").to(F64)
    y = check_finite_tensor(y, "y").to(F64)
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (N, D) and (M, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    widths = [check_positive(h, "bandwidths") for h in bandwidths]
    if not widths:
        raise ValueError("bandwidths must name at least one width")

    def k(a, b):
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in widths)

    return float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())


def mode_coverage(samples: torch.Tensor, centres: torch.Tensor, radius: float = 0.15, min_share: float = 0.01
                  ) -> dict:
    """Share of samples within ``radius`` of a mode centre, and the number of modes that hold at least ``min_share``.

    Parameters
    ----------
    samples : torch.Tensor
        Points, shape (N, D).
    centres : torch.Tensor
        Mode centres, shape (M, D).
    radius : float, default 0.15
        Distance ``> 0`` within which a sample belongs to its nearest centre.
    min_share : float, default 0.01
        Share of all samples, in [0, 1], that a mode must hold to count as covered.

    Returns
    -------
    dict
        ``near`` (fraction of samples within ``radius`` of their nearest centre) and ``modes`` (int).
    """
    radius = check_positive(radius, "radius")
    min_share = check_in_unit_interval(min_share, "min_share")
    d = torch.cdist(samples.float(), centres.float())
    nearest, which = d.min(dim=1)
    close = nearest <= radius
    counts = torch.bincount(which[close], minlength=len(centres)).float() / len(samples)
    return {"near": float(close.float().mean()), "modes": int((counts >= min_share).sum())}


# ----------------------------------------------------------------------------------------------------------------
# Image enhancement on the photographs bundled with scikit-image
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchSplit:
    """Grey patches in [-1, 1], shape (N, 1, P, P), with the photograph each came from.

    ``train`` and ``test`` come from disjoint photographs (``train_sources`` and ``test_sources`` name them per
    patch).

    Parameters
    ----------
    train, test : torch.Tensor
        Patches, shape (N, 1, P, P), float32 in [-1, 1].
    train_sources, test_sources : tuple of str
        The ``skimage.data`` name of each patch's photograph.
    """

    train: torch.Tensor
    test: torch.Tensor
    train_sources: tuple[str, ...]
    test_sources: tuple[str, ...]


def _grey_photograph(name: str) -> np.ndarray:
    import skimage.data
    from skimage.color import rgb2gray

    if not hasattr(skimage.data, name):
        raise ValueError(f"skimage.data has no image {name!r}")
    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        image = rgb2gray(image[..., :3])
    image = image.astype(np.float64)
    if image.max() > 1.0:
        image = image / 255.0
    return image * 2 - 1


def photo_patches(train_photos: Sequence[str], test_photos: Sequence[str], *, patch: int = 32,
                  n_train: int = 2000, n_test: int = 500, generator: torch.Generator) -> PatchSplit:
    """Random grey patches of scikit-image's bundled photographs, split by photograph into train and test.

    Each photograph is converted to grey (``skimage.color.rgb2gray``), mapped to [-1, 1], and patches are cut at
    uniformly random positions, equally many from each photograph of a split. No download: only images shipped
    inside scikit-image are used (``skimage.data.camera``, ``astronaut``, ...).

    Parameters
    ----------
    train_photos, test_photos : sequence of str
        Names of ``skimage.data`` functions; the two sets must be disjoint and non-empty.
    patch : int
        Side ``P >= 4`` in pixels.
    n_train, n_test : int
        Patches in each split (rounded down to a multiple of the number of photographs), >= 1.
    generator : torch.Generator
        CPU generator of the positions.

    Returns
    -------
    PatchSplit

    Raises
    ------
    ValueError
        If a photograph is in both sets, a set is empty, a name is unknown, or a photograph is smaller than ``patch``.
    """
    train_photos, test_photos = tuple(train_photos), tuple(test_photos)
    if not train_photos or not test_photos:
        raise ValueError("train_photos and test_photos must each name at least one photograph")
    both = set(train_photos) & set(test_photos)
    if both:
        raise ValueError(f"a photograph cannot be in both splits: {sorted(both)}")
    patch = check_positive_int(patch, "patch", minimum=4)

    def cut(names, n):
        n = check_positive_int(n, "n_train" if names is train_photos else "n_test")
        per = max(n // len(names), 1)
        patches, sources = [], []
        for name in names:
            image = _grey_photograph(name)
            h, w = image.shape
            if h < patch or w < patch:
                raise ValueError(f"photograph {name!r} ({h}x{w}) is smaller than patch={patch}")
            rows = torch.randint(0, h - patch + 1, (per,), generator=generator).tolist()
            cols = torch.randint(0, w - patch + 1, (per,), generator=generator).tolist()
            patches += [image[r:r + patch, c:c + patch] for r, c in zip(rows, cols)]
            sources += [name] * per
        return torch.tensor(np.stack(patches), dtype=torch.float32).unsqueeze(1), tuple(sources)

    train, train_sources = cut(train_photos, n_train)
    test, test_sources = cut(test_photos, n_test)
    return PatchSplit(train, test, train_sources, test_sources)


def degrade(patches: torch.Tensor, task: str, *, noise_std: float = 0.2, generator: torch.Generator | None = None
            ) -> torch.Tensor:
    """The input of an enhancement task: ``"denoise"`` adds ``N(0, noise_std²)``; ``"super_resolution"`` averages
    2×2 blocks and repeats each value back to the full size (a 2× downscale seen at the original resolution).

    Parameters
    ----------
    patches : torch.Tensor
        Clean patches, shape (N, C, P, P), P even for super-resolution.
    task : {"denoise", "super_resolution"}
    noise_std : float
        Noise ``>= 0`` of ``"denoise"`` (in the [-1, 1] units of the patches).
    generator : torch.Generator, optional
        Required for ``"denoise"``.

    Returns
    -------
    torch.Tensor
        Shape of ``patches``.
    """
    task = check_choice(task, "task", ("denoise", "super_resolution"))
    if patches.dim() != 4:
        raise ValueError(f"patches must have shape (N, C, P, P), got {tuple(patches.shape)}")
    if task == "denoise":
        if generator is None:
            raise ValueError("task='denoise' needs a generator for its noise")
        noise_std = check_nonnegative(noise_std, "noise_std")
        return patches + noise_std * torch.randn(patches.shape, generator=generator)
    if patches.shape[-1] % 2 or patches.shape[-2] % 2:
        raise ValueError(f"super_resolution needs an even patch size, got {tuple(patches.shape[-2:])}")
    return F.interpolate(F.avg_pool2d(patches, 2), scale_factor=2, mode="nearest")


class ConvGenerator(nn.Module):
    """A small conv encoder-decoder with a residual output: ``G(x) = x + f(x)``.

    ``f``: 3×3 conv (1 → c1), 4×4 stride-2 conv (c1 → c2), 3×3 conv (c2 → c2), 4×4 stride-2 transposed conv
    (c2 → c1), 3×3 conv (c1 → 1), LeakyReLU(0.2) between. ``channels=(32, 64)`` has 103,169 parameters;
    ``(4, 8)`` (1/8 of the channels) 1,697, about 1/61.

    Parameters
    ----------
    channels : (int, int)
        ``(c1, c2)``, each >= 1.
    generator : torch.Generator, optional
        Generator of the initial weights.
    """

    def __init__(self, channels: tuple[int, int] = (32, 64), generator: torch.Generator | None = None):
        super().__init__()
        c1, c2 = (check_positive_int(c, "channels") for c in channels)
        act = nn.LeakyReLU(0.2)
        self.net = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), act,
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), act,
            nn.Conv2d(c2, c2, 3, padding=1), act,
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), act,
            nn.Conv2d(c1, 1, 3, padding=1),
        )
        if generator is not None:
            initialize_from(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The enhanced images ``x + f(x)``.

        Parameters
        ----------
        x : torch.Tensor
            Degraded images, shape (N, 1, P, P), P divisible by 4.

        Returns
        -------
        torch.Tensor
            Shape of ``x``.
        """
        return x + self.net(x)


class PatchDiscriminator(nn.Module):
    """A pix2pix-style patch discriminator on ``concat(input, output)``: logits of shape (N, 1, P/4, P/4).

    Parameters
    ----------
    in_channels : int, default 2
    channels : int, default 16
    generator : torch.Generator, optional
    """

    def __init__(self, in_channels: int = 2, channels: int = 16, generator: torch.Generator | None = None):
        super().__init__()
        c = check_positive_int(channels, "channels")
        act = nn.LeakyReLU(0.2)
        self.net = nn.Sequential(
            nn.Conv2d(check_positive_int(in_channels, "in_channels"), c, 4, stride=2, padding=1), act,
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), act,
            nn.Conv2d(2 * c, 1, 3, padding=1),
        )
        if generator is not None:
            initialize_from(self, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits of ``concat(input, output)``.

        Parameters
        ----------
        x : torch.Tensor
            Shape (N, in_channels, P, P).

        Returns
        -------
        torch.Tensor
            Shape (N, 1, P/4, P/4).
        """
        return self.net(x)


class ConvEnergy(nn.Module):
    """A convolutional conditional energy ``E(t, s)`` on ``concat(t, s)`` (2 channels): a scalar per image.

    Two stride-2 convolutions with SiLU (smooth, so that Langevin's input gradients are), a global spatial mean and
    a linear layer. The released EBMs are deeper residual networks with spectral normalisation (Kang et al. 2022,
    code); this one is sized for a CPU.

    Parameters
    ----------
    channels : int, default 16
    generator : torch.Generator, optional
    """

    def __init__(self, channels: int = 16, generator: torch.Generator | None = None):
        super().__init__()
        c = check_positive_int(channels, "channels")
        self.features = nn.Sequential(
            nn.Conv2d(2, c, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.SiLU(),
        )
        self.head = nn.Linear(2 * c, 1)
        if generator is not None:
            initialize_from(self, generator)

    def forward(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Energies ``E(t, s)`` of image pairs.

        Parameters
        ----------
        t, s : torch.Tensor
            Images of shape (N, 1, P, P) each.

        Returns
        -------
        torch.Tensor
            Shape (N,).
        """
        if t.shape != s.shape:
            raise ValueError(f"t and s must have the same shape, got {tuple(t.shape)} and {tuple(s.shape)}")
        return self.head(self.features(torch.cat([t, s], dim=1)).mean(dim=(2, 3))).reshape(-1)


def _per_image(metric, pred: torch.Tensor, target: torch.Tensor, data_range: float) -> np.ndarray:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    data_range = check_positive(data_range, "data_range")
    p = pred.detach().cpu().to(F64).numpy().reshape(len(pred), *pred.shape[-2:])
    q = target.detach().cpu().to(F64).numpy().reshape(len(target), *target.shape[-2:])
    return np.array([metric(a, b, data_range) for a, b in zip(q, p)])


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> np.ndarray:
    """PSNR of each image against its target (``skimage.metrics.peak_signal_noise_ratio``).

    Parameters
    ----------
    pred, target : torch.Tensor
        Images, shape (N, 1, P, P) each.
    data_range : float, default 2.0
        Range of the pixel values, ``> 0`` (2 for images in [-1, 1]).

    Returns
    -------
    numpy.ndarray
        PSNR in dB, shape (N,).
    """
    from skimage.metrics import peak_signal_noise_ratio

    return _per_image(lambda a, b, r: peak_signal_noise_ratio(a, b, data_range=r), pred, target, data_range)


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> np.ndarray:
    """SSIM of each image against its target (``skimage.metrics.structural_similarity``, 7×7 window).

    Parameters
    ----------
    pred, target : torch.Tensor
        Images, shape (N, 1, P, P) each.
    data_range : float, default 2.0
        Range of the pixel values, ``> 0``.

    Returns
    -------
    numpy.ndarray
        SSIM, shape (N,).
    """
    from skimage.metrics import structural_similarity

    return _per_image(lambda a, b, r: structural_similarity(a, b, data_range=r), pred, target, data_range)


def n_parameters(module: nn.Module) -> int:
    """Number of trainable parameters.

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    int
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
