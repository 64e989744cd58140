r"""Jaehoon Lee, Lechao Xiao, Samuel S. Schoenholz, Yasaman Bahri, Roman Novak, Jascha Sohl-Dickstein and Jeffrey
Pennington. *Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent.* Advances in Neural
Information Processing Systems 32, 2019. arXiv:1902.06720. Reproduced in chapter 2 (``02_ntk_linearization``).

Wide networks as linear models, with the kernel of Jacot, Gabriel and Hongler (NeurIPS 2018) and its ReLU closed
forms (Arora et al. 2019). The machinery of chapter 2 is paper-agnostic and lives in :mod:`kdnb.kernels` (empirical
and analytic kernels, the linearized model, kernel regression), which chapters 3 to 5 reuse; this module holds what
is specific to the paper: the drivers of chapter 2's experiments, which draw the distillation task
(:func:`distillation_task`), train wide networks next to their linearization (:func:`linearization_gap_experiment`),
check weight changes against kernel quadratic forms (:func:`weight_space_bridge`) and compare the ways of computing
the empirical NTK (:func:`method_agreement`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations, pairwise

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core.data import GaussianMixtureOnSphere, sample_sphere
from ..core.losses import binary_kd_loss_gradient
from ..core.models import NTKMLP, AntisymmetricPair
from ..core.sweeps import PowerLawFit, power_law_fit, power_law_slopes, relative_error
from ..core.training import distillation_objective
from ..core.validation import (
    check_positive,
    check_positive_int,
    check_soft_ratio,
    check_temperature,
)
from ..kernels.analytic import relu_ntk
from ..kernels.empirical import empirical_ntk, ntk_features
from ..kernels.linearized import function_space_gd, gradient_descent_path
from ..kernels.regression import weight_change_norm

__all__ = [
    "DistillationTask",
    "LinearizationGapRun",
    "WeightSpaceBridge",
    "distillation_task",
    "linearization_gap_experiment",
    "linearization_gaps",
    "method_agreement",
    "weight_space_bridge",
]

NTK_METHODS = ("jacobian", "ntk_vp", "structured")
VARIANCE_NAMES = ("weight_variance", "bias_variance", "readout_weight_variance", "readout_bias_variance")
GAP_COLUMNS = ["to its linearization", "to infinite width", "linearization to infinite width"]


@dataclass(frozen=True)
class DistillationTask:
    r"""A binary distillation task on the sphere, made by :func:`distillation_task`.

    Parameters
    ----------
    x_train : torch.Tensor
        (n_train, dim) training inputs on the unit sphere :math:`S^{\mathrm{dim}-1}`.
    x_test : torch.Tensor
        (n_test, dim) test inputs on the sphere.
    teacher_logits : torch.Tensor
        (n_train,) the teacher's logits :math:`z_t(x)` at the training inputs.
    labels : torch.Tensor
        (n_train,) the hard labels :math:`y = \mathbb 1\{z_t > 0\}`, 0. or 1.
    """

    x_train: torch.Tensor
    x_test: torch.Tensor
    teacher_logits: torch.Tensor
    labels: torch.Tensor


def distillation_task(
    generator: torch.Generator,
    *,
    n_train: int,
    n_test: int,
    dim: int = 3,
    n_modes: int = 4,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> DistillationTask:
    r"""Draw the distillation task of chapter 2: a smooth random teacher on the sphere, its logits and labels.

    The teacher's logit :math:`z_t` is a sum of ``n_modes`` Gaussian bumps on :math:`S^{\mathrm{dim}-1}`
    (:class:`kdnb.core.data.GaussianMixtureOnSphere`) and the hard label is its sign,
    :math:`y = \mathbb 1\{z_t > 0\}`. Draws, in this order and from ``generator`` on the CPU in float64: the
    teacher, ``n_train`` training inputs, ``n_test`` test inputs; the results are then moved to ``device`` and
    ``dtype``.

    Parameters
    ----------
    generator : torch.Generator
        A CPU generator; it is advanced by the draws.
    n_train : int
        Number of training inputs, >= 1.
    n_test : int
        Number of test inputs, >= 1.
    dim : int, default 3
        Input dimension, >= 2 (inputs on :math:`S^{\mathrm{dim}-1}`).
    n_modes : int, default 4
        Number of Gaussian bumps of the teacher, >= 1.
    device : torch.device or str, default "cpu"
        Device of the returned tensors.
    dtype : torch.dtype, default torch.float64
        Floating-point dtype of the returned tensors.

    Returns
    -------
    DistillationTask
        The training and test inputs, the teacher's logits and the labels at the training inputs.

    Raises
    ------
    TypeError
        If ``generator`` is not a :class:`torch.Generator`, or a size is not an int.
    ValueError
        If a size is < 1 or ``dim`` < 2.

    References
    ----------
    Lee et al. 2019 (the linearization experiment, here with the binary distillation loss of Hinton et al. 2015).
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    n_train = check_positive_int(n_train, "n_train")
    n_test = check_positive_int(n_test, "n_test")
    dim = check_positive_int(dim, "dim", minimum=2)
    n_modes = check_positive_int(n_modes, "n_modes")
    teacher = GaussianMixtureOnSphere(dim, n_modes, generator)
    x_train = sample_sphere(n_train, dim, generator)
    x_test = sample_sphere(n_test, dim, generator)
    teacher_logits = teacher(x_train)
    labels = (teacher_logits > 0).to(torch.float64)
    to = {"device": device, "dtype": dtype}
    return DistillationTask(x_train.to(**to), x_test.to(**to), teacher_logits.to(**to), labels.to(**to))


@dataclass(frozen=True)
class LinearizationGapRun:
    r"""Result of :func:`linearization_gap_experiment`.

    Parameters
    ----------
    widths : tuple of int
        The hidden widths m of the networks (both copies of the antisymmetric pair together), increasing.
    repeats : int
        The number of tasks (repeats).
    steps : int
        The number of gradient-descent steps every model took.
    paths : dict
        The trajectories (:class:`kdnb.kernels.linearized.FunctionSpaceTrajectory`), in the order they were run:
        ``paths["infinite", r]`` is the infinite-width linear model of task r, and ``paths[m, r]`` a dict with
        ``"network"`` (the network of width m) and ``"linearization"`` (the linear model with its empirical NTK at
        initialization).
    gaps : pandas.DataFrame
        One row per (width, repeat), in the order of ``paths``: columns ``width``, ``repeat``, and the relative
        distances :math:`\lVert a - b\rVert / \lVert b\rVert` of the final test logits ``"to its linearization"``
        (network to its linearization), ``"to infinite width"`` (network to the infinite-width model) and
        ``"linearization to infinite width"``.
    gap_by_width : pandas.DataFrame
        The three distances averaged over repeats, indexed by width.
    gap_fit : kdnb.core.sweeps.PowerLawFit
        Power law of the mean distance to the linearization against width.
    gap_fit_infinite : kdnb.core.sweeps.PowerLawFit
        Power law of the mean distance to the infinite-width model against width.
    gap_slopes : pandas.Series
        The exponent of the distance to the linearization against width, fitted on each repeat (task) alone
        (:func:`kdnb.core.sweeps.power_law_slopes`), indexed by repeat: the samples a claim on the rate is decided on.
    """

    widths: tuple[int, ...]
    repeats: int
    steps: int
    paths: dict
    gaps: pd.DataFrame
    gap_by_width: pd.DataFrame
    gap_fit: PowerLawFit
    gap_fit_infinite: PowerLawFit
    gap_slopes: pd.Series


def _check_variances(variances) -> dict:
    """The keyword arguments shared by :class:`NTKMLP` and :func:`relu_ntk`, checked by name."""
    if variances is None:
        return {}
    if not isinstance(variances, Mapping):
        raise TypeError(f"variances must be a mapping of variance names to values, got {type(variances).__name__}")
    unknown = sorted(set(variances) - set(VARIANCE_NAMES))
    if unknown:
        raise ValueError(f"variances may only name {list(VARIANCE_NAMES)}, got {unknown}")
    return dict(variances)


def linearization_gap_experiment(
    generator_for: Callable[..., torch.Generator],
    *,
    widths: Sequence[int],
    repeats: int,
    n_train: int,
    n_test: int,
    rho: float,
    temperature: float,
    steps: int,
    lr: float,
    t2_scaling: bool = True,
    variances: Mapping[str, float] | None = None,
    record_every: int | None = None,
    dim: int = 3,
    n_modes: int = 4,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> LinearizationGapRun:
    r"""Train wide networks on the distillation loss next to their linearization and the infinite-width model.

    For each repeat r, a task is drawn by :func:`distillation_task` from ``generator_for(3, r)``. The
    infinite-width linear model (kernel :func:`kdnb.kernels.analytic.relu_ntk` with ``depth=1`` and
    ``variances``) is trained in function space (:func:`kdnb.kernels.linearized.function_space_gd`). Then, for each
    width m, a one-hidden-layer student :class:`kdnb.core.models.NTKMLP` of width m/2, drawn from
    ``generator_for(4, m, r)`` with ``variances``, is wrapped in an antisymmetric pair
    (:class:`kdnb.core.models.AntisymmetricPair`, so its initial function is zero); its linearization (the linear
    model with its empirical NTK at initialization) is trained in function space, and the network itself by
    full-batch gradient descent (:func:`kdnb.kernels.linearized.gradient_descent_path`). All three take ``steps``
    steps with learning rate ``lr`` on the binary distillation loss

    .. math:: \ell(z_s) = \rho\, c_T\, H(\sigma(z_t/T), \sigma(z_s/T)) + (1-\rho)\, H(y, \sigma(z_s)).

    The gaps are the relative distances between the final test logits.

    Parameters
    ----------
    generator_for : callable
        ``generator_for(*keys)`` returns a fresh CPU generator for integer keys, e.g. a chapter's
        :meth:`kdnb.core.runtime.Chapter.generator_for`; keys ``(3, r)`` draw task r and ``(4, m, r)`` its student
        of width m.
    widths : sequence of int
        At least two distinct even widths m >= 2 (both copies together), increasing.
    repeats : int
        Number of tasks, >= 1.
    n_train : int
        Training inputs per task, >= 1.
    n_test : int
        Test inputs per task, >= 1.
    rho : float
        Soft ratio in [0, 1].
    temperature : float
        Temperature T > 0.
    steps : int
        Gradient-descent steps, >= 1.
    lr : float
        Learning rate, > 0.
    t2_scaling : bool, default True
        Multiply the soft term by :math:`c_T = T^2` (Hinton et al. 2015); False gives the plain soft term.
    variances : mapping or None, default None
        Keyword arguments shared by the student network and the analytic kernel, among ``weight_variance``,
        ``bias_variance``, ``readout_weight_variance`` and ``readout_bias_variance``; ``None``: their defaults.
    record_every : int or None, default None
        Record the trajectories every this many steps (>= 1); ``None``: ``max(1, steps // 20)``.
    dim : int, default 3
        Input dimension, >= 2.
    n_modes : int, default 4
        Gaussian bumps of the teacher, >= 1.
    device : torch.device or str, default "cpu"
        Device of the networks and kernels.
    dtype : torch.dtype, default torch.float64
        Dtype of the networks and inputs (the linear models run in float64).
    progress : bool, default False
        Show a bar over the network's gradient-descent steps.

    Returns
    -------
    LinearizationGapRun
        The trajectories, the per-(width, repeat) gap table, its mean over repeats and the fitted power laws.

    Raises
    ------
    TypeError
        If ``generator_for`` is not callable, ``t2_scaling`` is not a bool, ``variances`` is not a mapping, or an
        argument has the wrong type.
    ValueError
        If ``widths`` has fewer than two values, is not increasing, or has an odd width or one below 2; if ``rho``,
        ``temperature``, ``lr``, a size or ``steps`` is out of range; or ``variances`` names an unknown argument.

    References
    ----------
    Lee et al. 2019 (a wide network trained by gradient descent stays close to its linearization, with a gap of
    order :math:`1/\sqrt m`); Jacot et al. 2018 (the kernel). Chapter 2, figure ``fig-training``.
    """
    if not callable(generator_for):
        raise TypeError("generator_for must be callable: generator_for(*keys) -> torch.Generator")
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise TypeError(f"widths must be a sequence of ints, got {type(widths).__name__}")
    widths = [check_positive_int(w, "widths", minimum=2) for w in widths]
    if len(widths) < 2 or any(b <= a for a, b in pairwise(widths)):
        raise ValueError(f"widths must be at least two increasing widths (a power law is fitted), got {widths}")
    if any(w % 2 for w in widths):
        raise ValueError(f"widths must be even (an antisymmetric pair of two networks of width m/2), got {widths}")
    repeats = check_positive_int(repeats, "repeats")
    n_train, n_test = check_positive_int(n_train, "n_train"), check_positive_int(n_test, "n_test")
    rho = check_soft_ratio(rho, "rho")
    temperature = check_temperature(temperature, "temperature")
    steps = check_positive_int(steps, "steps")
    lr = check_positive(lr, "lr")
    if not isinstance(t2_scaling, bool):
        raise TypeError(f"t2_scaling must be True or False, got {t2_scaling!r}")
    variances = _check_variances(variances)
    record_every = max(1, steps // 20) if record_every is None else check_positive_int(record_every, "record_every")

    objective = distillation_objective(rho, temperature, t2_scaling=t2_scaling, binary=True)

    def linear_model_path(kernel, kernel_test, teacher_logits, labels):
        gradient = lambda z: binary_kd_loss_gradient(  # the loss's closed-form derivative, per example
            z, teacher_logits.to(z), labels.to(z), rho=rho, temperature=temperature, t2_scaling=t2_scaling)
        return function_space_gd(kernel, gradient, lr=lr, steps=steps, kernel_test_train=kernel_test,
                                 record_every=record_every)

    paths = {}  # (width or "infinite", repeat) -> {"network", "linearization"} trajectories
    for repeat in range(repeats):
        task = distillation_task(generator_for(3, repeat), n_train=n_train, n_test=n_test, dim=dim, n_modes=n_modes,
                                 device=device, dtype=dtype)
        x_train, x_test, teacher_logits, labels = task.x_train, task.x_test, task.teacher_logits, task.labels
        paths["infinite", repeat] = linear_model_path(relu_ntk(x_train, depth=1, **variances),
                                                      relu_ntk(x_test, x_train, depth=1, **variances), teacher_logits,
                                                      labels)
        for width in widths:
            student = AntisymmetricPair(NTKMLP(dim, [width // 2], generator=generator_for(4, width, repeat),
                                               dtype=dtype, **variances).to(device))
            # The linearization uses the kernel at initialization, so it is computed before the network trains.
            own = linear_model_path(empirical_ntk(student, x_train), empirical_ntk(student, x_test, x_train),
                                    teacher_logits, labels)
            network = gradient_descent_path(student, objective, x_train, [teacher_logits, labels], lr=lr,
                                            steps=steps, test_inputs=x_test, record_every=record_every,
                                            progress=progress)
            paths[width, repeat] = {"network": network, "linearization": own}

    gaps = linearization_gaps(paths)
    gap_by_width = gaps.groupby("width")[GAP_COLUMNS].mean()
    gap_fit = power_law_fit(gap_by_width.index, gap_by_width["to its linearization"])
    gap_fit_infinite = power_law_fit(gap_by_width.index, gap_by_width["to infinite width"])
    gap_slopes = power_law_slopes(gaps, "width", "to its linearization", by="repeat")
    return LinearizationGapRun(widths=tuple(widths), repeats=repeats, steps=steps, paths=paths, gaps=gaps,
                               gap_by_width=gap_by_width, gap_fit=gap_fit, gap_fit_infinite=gap_fit_infinite,
                               gap_slopes=gap_slopes)


def linearization_gaps(paths: Mapping) -> pd.DataFrame:
    r"""The per-(width, repeat) table of relative distances between final test logits.

    Parameters
    ----------
    paths : mapping
        As :attr:`LinearizationGapRun.paths`: ``paths["infinite", r]`` a
        :class:`kdnb.kernels.linearized.FunctionSpaceTrajectory` with test logits, and ``paths[m, r]`` a mapping with
        ``"network"`` and ``"linearization"`` trajectories of the same test points, for every repeat r that has a
        width.

    Returns
    -------
    pandas.DataFrame
        One row per (width, repeat) key, in the order of ``paths``: ``width``, ``repeat``, ``"to its
        linearization"`` (:math:`\lVert f_\mathrm{net} - f_\mathrm{lin}\rVert / \lVert f_\mathrm{lin}\rVert`),
        ``"to infinite width"`` and ``"linearization to infinite width"``, each at the last recorded step.

    Raises
    ------
    TypeError
        If ``paths`` is not a mapping.
    ValueError
        If a width's repeat has no ``"infinite"`` entry, or a trajectory has no test logits.

    References
    ----------
    Lee et al. 2019 (the distance of a trained network to its linearization).
    """
    if not isinstance(paths, Mapping):
        raise TypeError(f"paths must be a mapping, got {type(paths).__name__}")
    gap_rows = []
    for (key, repeat), path in paths.items():
        if key == "infinite":
            continue
        if ("infinite", repeat) not in paths:
            raise ValueError(f"paths has width {key} for repeat {repeat} but no ('infinite', {repeat}) entry")
        trajectories = [path["network"], path["linearization"], paths["infinite", repeat]]
        if any(t.test is None for t in trajectories):
            raise ValueError(f"every trajectory needs test logits; ({key}, {repeat}) lacks them")
        network = path["network"].test[-1]
        linearization, infinite = path["linearization"].test[-1], paths["infinite", repeat].test[-1]
        gap_rows.append({"width": key, "repeat": repeat,
                         "to its linearization": relative_error(network, linearization),
                         "to infinite width": relative_error(network, infinite),
                         "linearization to infinite width": relative_error(linearization, infinite)})
    return pd.DataFrame(gap_rows)


@dataclass(frozen=True)
class WeightSpaceBridge:
    r"""Result of :func:`weight_space_bridge`.

    Parameters
    ----------
    table : pandas.DataFrame
        Indexed by the prefix size n (increasing, ending with N): ``"norm, weight space"`` (the min-norm weight change
        from the explicit features, by an SVD least-squares solve), ``"norm, kernel"`` (the same from the empirical
        NTK, one Cholesky factorization), ``"norm, infinite width"`` (from the infinite-width kernel),
        ``"cos angle, weight space"`` (cosine of the angle between the weight changes of n and N inputs) and
        ``"norm ratio"`` (the kernel norm divided by its value at N).
    norm_error : float
        The largest relative difference between the weight-space and the kernel norms, >= 0.
    projection_error : float
        The largest relative difference between the cosine and the norm ratio, >= 0.
    n_parameters : int
        The number P of trainable parameters of the student (columns of its feature matrix).
    """

    table: pd.DataFrame
    norm_error: float
    projection_error: float
    n_parameters: int


def weight_space_bridge(
    student: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    infinite_kernel: torch.Tensor,
    n_prefixes: int = 12,
    smallest_prefix: int = 4,
) -> WeightSpaceBridge:
    r"""Check in weight space that the min-norm weight changes of nested samples are kernel quadratic forms.

    With the student's features :math:`\Phi_n = [\phi(x_1), \dots, \phi(x_n)]` (formed explicitly by
    :func:`kdnb.kernels.empirical.ntk_features`, then on the CPU in float64), the min-norm solution of
    :math:`\Phi_n^\top \Delta w = z_{1..n}` is found by least squares (``torch.linalg.lstsq``, driver ``"gelsd"``,
    an SVD) for each prefix size n, and compared with the kernel formulas
    :math:`\lVert\Delta\hat w_n\rVert^2 = z_n^\top K_n^{-1} z_n`
    (:func:`kdnb.kernels.regression.weight_change_norm` with ``prefixes=True``) and the projection identity
    :math:`\cos\angle(\Delta\hat w_n, \Delta\hat w_N) = \lVert\Delta\hat w_n\rVert / \lVert\Delta\hat w_N\rVert`.
    The prefix sizes are the distinct integer parts of ``n_prefixes`` geometrically spaced values from
    ``smallest_prefix`` to N, and N itself.

    Parameters
    ----------
    student : torch.nn.Module
        A scalar-output network at its initial weights (its logits are taken as zero: use an antisymmetric pair).
    inputs : torch.Tensor
        (N, d) inputs, in the dtype and on the device of the student's parameters; the prefixes are nested.
    targets : torch.Tensor
        (N,) target logits at the inputs.
    infinite_kernel : torch.Tensor
        (N, N) Gram matrix of the infinite-width kernel at the inputs, for the ``"norm, infinite width"`` column.
    n_prefixes : int, default 12
        Number of geometrically spaced prefix sizes before rounding, >= 2.
    smallest_prefix : int, default 4
        The smallest prefix size, in [1, N].

    Returns
    -------
    WeightSpaceBridge
        The table of norms and cosines per prefix size, the two largest relative differences and the parameter count.

    Raises
    ------
    TypeError
        If ``student`` is not a module or ``inputs``, ``targets`` or ``infinite_kernel`` is not a tensor.
    ValueError
        If ``targets`` is not (N,), ``infinite_kernel`` is not (N, N), ``n_prefixes`` < 2, or ``smallest_prefix`` is
        outside [1, N]; or as :func:`kdnb.kernels.empirical.ntk_features` and
        :func:`kdnb.kernels.regression.weight_change_norm`.

    References
    ----------
    Ji & Zhu 2020 (weight changes, norms and angles of wide students); Lee et al. 2019 (the linearized features).
    Chapter 2, figure ``fig-weight-space``.
    """
    if not isinstance(student, nn.Module):
        raise TypeError(f"student must be a torch.nn.Module, got {type(student).__name__}")
    for name, value in (("inputs", inputs), ("targets", targets), ("infinite_kernel", infinite_kernel)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    n = len(inputs)
    if targets.shape != (n,):
        raise ValueError(f"targets must have shape ({n},) (one logit per input), got {tuple(targets.shape)}")
    if infinite_kernel.shape != (n, n):
        raise ValueError(f"infinite_kernel must have shape ({n}, {n}), got {tuple(infinite_kernel.shape)}")
    n_prefixes = check_positive_int(n_prefixes, "n_prefixes", minimum=2)
    smallest_prefix = check_positive_int(smallest_prefix, "smallest_prefix")
    if smallest_prefix > n:
        raise ValueError(f"smallest_prefix must be in [1, N] = [1, {n}], got {smallest_prefix}")

    # The SVD-based least-squares driver exists on the CPU only, so the weight-space solve runs there.
    features = ntk_features(student, inputs).to("cpu", torch.float64)  # (n, P)
    targets_cpu = targets.to("cpu", torch.float64)
    prefixes = sorted({int(k) for k in np.unique(np.geomspace(smallest_prefix, n, n_prefixes).astype(int))} | {n})
    weight_space = {k: torch.linalg.lstsq(features[:k], targets_cpu[:k, None], driver="gelsd").solution[:, 0]
                    for k in prefixes}
    full_change = weight_space[n]
    kernel_norms = weight_change_norm(empirical_ntk(student, inputs), targets, prefixes=True)
    infinite_norms = weight_change_norm(infinite_kernel, targets, prefixes=True)
    table = pd.DataFrame({
        "n": prefixes,
        "norm, weight space": [float(weight_space[k].norm()) for k in prefixes],
        "norm, kernel": [float(kernel_norms[k - 1]) for k in prefixes],
        "norm, infinite width": [float(infinite_norms[k - 1]) for k in prefixes],
        "cos angle, weight space": [float(weight_space[k] @ full_change / (weight_space[k].norm() * full_change.norm()))
                                    for k in prefixes],
    }).set_index("n")
    table["norm ratio"] = table["norm, kernel"] / table["norm, kernel"].iloc[-1]
    projection_error = float(((table["cos angle, weight space"] - table["norm ratio"]).abs() / table["norm ratio"]).max())
    norm_error = float(((table["norm, weight space"] - table["norm, kernel"]).abs() / table["norm, kernel"]).max())
    return WeightSpaceBridge(table=table, norm_error=norm_error, projection_error=projection_error,
                             n_parameters=int(features.shape[1]))


def method_agreement(model: nn.Module, inputs: torch.Tensor, methods: Sequence[str] = NTK_METHODS) -> float:
    r"""The largest disagreement between ways of computing the empirical NTK, relative to the kernel's size.

    Computes the Gram matrix :math:`\Theta(X, X)` of ``inputs`` with each method of
    :func:`kdnb.kernels.empirical.empirical_ntk` and returns
    :math:`\max_{a < b} \max_{ij} |\Theta^{(a)}_{ij} - \Theta^{(b)}_{ij}| / \max_{ij} |\Theta^{(m_0)}_{ij}|` over
    the pairs of methods in order, with :math:`m_0` the first method.

    Parameters
    ----------
    model : torch.nn.Module
        A scalar-output network (``"structured"`` needs a fully connected ReLU network, e.g.
        :class:`kdnb.core.models.NTKMLP`).
    inputs : torch.Tensor
        (N, d) inputs in the dtype and on the device of the model's parameters.
    methods : sequence of str, default ("jacobian", "ntk_vp", "structured")
        At least two distinct methods among ``"jacobian"``, ``"ntk_vp"`` and ``"structured"``.

    Returns
    -------
    float
        The largest relative difference, >= 0 (rounding error when the methods agree).

    Raises
    ------
    TypeError
        If ``methods`` is not a sequence of str.
    ValueError
        If ``methods`` has fewer than two distinct methods or an unknown one, the first method's kernel is zero, or
        as :func:`kdnb.kernels.empirical.empirical_ntk`.

    References
    ----------
    Novak et al. 2022 (fast finite-width NTK: Jacobian contraction, NTK-vector products, structured derivatives).
    Chapter 2, claims ``methods-agree-float32`` and ``methods-agree-float64``.
    """
    if isinstance(methods, (str, bytes)) or not isinstance(methods, Sequence) or \
            not all(isinstance(m, str) for m in methods):
        raise TypeError(f"methods must be a sequence of method names, got {methods!r}")
    methods = tuple(methods)
    unknown = [m for m in methods if m not in NTK_METHODS]
    if unknown:
        raise ValueError(f"methods must be among {list(NTK_METHODS)}, got {unknown}")
    if len(set(methods)) != len(methods) or len(methods) < 2:
        raise ValueError(f"methods must be at least two distinct methods, got {list(methods)}")
    kernels = {m: empirical_ntk(model, inputs, method=m) for m in methods}
    scale = float(kernels[methods[0]].abs().max())
    if scale == 0:
        raise ValueError("the kernel is zero: a relative difference is undefined")
    return max(float((kernels[a] - kernels[b]).abs().max()) / scale for a, b in combinations(methods, 2))
