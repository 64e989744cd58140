r"""Neural tangent kernels: empirical and analytic kernels, the linearized model, and function-space solvers.

A network :math:`f(x; w)` trained by gradient descent from :math:`w_0` stays close, when it is wide, to its
linearization (Jacot et al. 2018; Lee et al. 2019)

.. math:: f_\mathrm{lin}(x; w) = f(x; w_0) + \phi(x)^\top (w - w_0), \qquad \phi(x) = \nabla_w f(x; w_0),

a linear model of the random features :math:`\phi(x)`, whose kernel is the *neural tangent kernel* (NTK)
:math:`\Theta(x, x') = \phi(x)^\top \phi(x')`. This module computes

* the **empirical NTK** of any torch module at its current weights (:func:`empirical_ntk`), by three methods;
* the **analytic (infinite-width) NTK and NNGP kernels** of deep ReLU networks (:func:`relu_ntk`, :func:`relu_nngp`);
* the **linearized model** as a trainable module (:class:`LinearizedModel`);
* **function-space solvers**: the min-norm interpolant (kernel regression) and its weight-change norm
  (:func:`kernel_regression`, :func:`weight_change_norm`), and gradient descent in function space for any loss convex
  in the logits (:func:`function_space_gd`);
* the Mercer **eigenvalues** of a dot-product kernel on the sphere (:func:`sphere_eigenvalues`).

Conventions (NTK parameterisation)
----------------------------------
The analytic kernels are the limits of :class:`kdnb.models.NTKMLP`: L hidden ReLU layers, every weight and bias drawn
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

How the common conventions map onto the arguments (each is a test in ``tests/test_ntk.py``):

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

**Linear algebra.** Kernels for solves are float64. Cholesky factorisations add a jitter of
``jitter * mean(diag K)`` (default ``1e-10``) to the diagonal and raise ``ValueError`` if the matrix is still not
positive definite; nothing is clipped silently.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap
from tqdm import tqdm

from .data import points_at_angles
from .runtime import float64_device
from .models import MLP, AntisymmetricPair, NTKLinear, NTKMLP
from .validation import check_choice, check_positive, check_positive_int, check_variance

__all__ = [
    "METHODS",
    "FunctionSpaceTrajectory",
    "KernelRegression",
    "LinearizedModel",
    "RELUKernels",
    "cholesky_with_jitter",
    "dense_ntk_flops",
    "empirical_ntk",
    "function_space_gd",
    "gradient_descent_path",
    "kernel_regression",
    "ntk_features",
    "relu_kernels",
    "relu_nngp",
    "relu_ntk",
    "sphere_eigenvalues",
    "structured_ntk_supported",
    "time_call",
    "weight_change_norm",
]

METHODS = ("auto", "jacobian", "ntk_vp", "structured")
OUTPUT_MODES = ("full", "trace")
DEFAULT_JITTER = 1e-10
# Memory allowed for the per-block intermediate results of empirical_ntk (Jacobians, activations, tangents).
_BLOCK_BYTES = 512 * 2**20


# ---------------------------------------------------------------------------------------------------------------------
# Empirical NTK
# ---------------------------------------------------------------------------------------------------------------------


def empirical_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    method: str = "auto",
    outputs: str = "full",
    chunk_size: int | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""The empirical NTK :math:`\Theta(x, x') = \nabla_w f(x)^\top \nabla_w f(x')` of ``model`` at its current weights.

    The gradient is taken with respect to every parameter with ``requires_grad=True``. Inputs are the rows (first
    axis) of ``x1`` and ``x2`` (``x2=None``: the Gram matrix of ``x1``, computed once per pair of blocks and mirrored).
    The model is evaluated as it is, example by example: put models with dropout or batch normalisation in eval mode.

    Returns
    -------
    A tensor in the dtype and on the device of the model's parameters. For a **scalar-output** model (logits of shape
    (N,) or (N, 1)) it is the (N1, N2) Gram matrix. For a model with **O > 1 outputs** (any output shape after the
    batch axis is flattened to O), ``outputs="full"`` gives the (N1, N2, O, O) blocks
    :math:`\Theta_{ab}(x, x') = \nabla_w f_a(x)^\top \nabla_w f_b(x')`, and ``outputs="trace"`` their trace
    :math:`\sum_a \Theta_{aa}`, shape (N1, N2) (neural-tangents' ``trace_axes`` divides this by O).

    Methods
    -------
    ``"jacobian"``
        per-example Jacobians (``vmap(jacrev)``), contracted: :math:`O(N O [FP] + N^2 O^2 P)` for P parameters.
    ``"ntk_vp"``
        NTK-vector products: for each column :math:`x'`, a VJP gives :math:`J(x')^\top e_b`, then a JVP over the rows
        gives :math:`J(x) J(x')^\top e_b`. :math:`O(N^2 O [FP])`, and never forms a Jacobian; meant for models whose
        parameter count dwarfs their forward cost (weight sharing).
    ``"structured"``
        the closed form for fully connected ReLU networks (:class:`kdnb.models.MLP` with ReLU, :class:`NTKMLP`, an
        ``nn.Sequential`` of ``Linear``/``NTKLinear`` and ``ReLU``, or an :class:`AntisymmetricPair` of those). With
        :math:`\delta_l = \partial f / \partial g_l` the backpropagated error at layer l and :math:`h_{l-1}` its input,
        :math:`\partial f/\partial W_l = s_l \delta_l h_{l-1}^\top`, so
        :math:`\Theta = \sum_l (\delta_l^\top \delta_l')\,(s_l^2\, h_{l-1}^\top h_{l-1}' + t_l^2)` with weight and bias
        scales :math:`s_l, t_l`: only matrix products of activations, :math:`O(N^2 O^2 \sum_l n_l)`.
    ``"auto"``
        ``"structured"`` when the model is one of those networks (:func:`structured_ntk_supported`), else
        ``"jacobian"``, which was faster than ``"ntk_vp"`` wherever we timed both (``benchmarks/bench_ntk.py``,
        chapter 2); choose ``"ntk_vp"`` explicitly when the Jacobian does not fit in memory.

    ``chunk_size`` is the number of examples per block (rows of ``x1`` and columns of ``x2`` at a time); by default it
    is chosen so that one block's intermediate results stay under 512 MiB. With several blocks, the column blocks'
    Jacobians (or activations) are recomputed for each row block: time is traded for bounded memory. ``progress``
    shows a bar over blocks (default: when there are more than eight).
    """
    check_choice(method, "method", METHODS)
    check_choice(outputs, "outputs", OUTPUT_MODES)
    params, single, batch = _functional_model(model)
    reference = next(iter(params.values()))
    symmetric = x2 is None
    x1 = _check_ntk_inputs(x1, "x1", reference)
    x2 = x1 if symmetric else _check_ntk_inputs(x2, "x2", reference)
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(f"x1 and x2 must have the same feature shape, got {tuple(x1.shape[1:])} and "
                         f"{tuple(x2.shape[1:])}")

    with torch.no_grad():
        probe = _per_example_outputs(model(x1[:1]), 1)
    n_outputs = probe.shape[1]
    plan = _structured_plan(model)
    if method == "auto":
        method = "structured" if plan is not None else "jacobian"
    if method == "structured" and plan is None:
        raise ValueError(
            f"method='structured' needs a fully connected ReLU network (kdnb MLP with relu, NTKMLP, an nn.Sequential "
            f"of Linear/NTKLinear and ReLU, or an AntisymmetricPair of those); got {type(model).__name__}. "
            f"Use method='jacobian' or 'ntk_vp'."
        )

    # Memory of one block of c examples: c * per_example + c**2 * per_pair bytes, kept under _BLOCK_BYTES.
    itemsize = reference.element_size()
    n_params = sum(p.numel() for p in params.values())
    per_pair = 2 * itemsize * n_outputs**2  # the block itself and one temporary
    if method == "structured":
        widths = sum(layer.weight.shape[0] + layer.weight.shape[1] for _, layers in plan for layer in layers)
        per_example = itemsize * widths * (n_outputs + 1)
        features = lambda x: _structured_features(plan, x)  # noqa: E731
        contract = lambda a, b: _structured_contract(plan, a, b, n_outputs)  # noqa: E731
    elif method == "jacobian":
        per_example = 3 * itemsize * n_outputs * n_params  # the Jacobian and vmap's intermediate copies
        features = lambda x: _jacobian_features(single, params, x)  # noqa: E731
        contract = _jacobian_contract
    else:
        # Per column: the tangents J(x')^T e_b (P numbers per output); per (row, column) pair: the JVP's primal and
        # tangent activations.
        per_example = 2 * itemsize * n_outputs * n_params
        per_pair += 2 * itemsize * n_outputs * _activation_count(model, x1[:1])
        features = lambda x: x  # noqa: E731
        contract = lambda a, b: _ntk_vp_block(single, batch, params, a, b, n_outputs)  # noqa: E731

    if chunk_size is None:
        # Largest c with c * per_example + c**2 * per_pair <= budget.
        c = (-per_example + math.sqrt(per_example**2 + 4 * per_pair * _BLOCK_BYTES)) / (2 * per_pair)
        chunk_size = max(1, min(max(x1.shape[0], x2.shape[0]), int(c)))
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    kernel = _blocked_kernel(x1, x2, symmetric, chunk_size, features, contract, n_outputs, reference, progress)
    if n_outputs == 1:
        return kernel[:, :, 0, 0].contiguous()
    if outputs == "trace":
        return kernel.diagonal(dim1=2, dim2=3).sum(-1)
    return kernel


def structured_ntk_supported(model: nn.Module) -> bool:
    """Whether :func:`empirical_ntk` has the closed-form ``"structured"`` path for ``model``."""
    return _structured_plan(model) is not None


def ntk_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    r"""The features of the linearized model, :math:`\phi(x) = \nabla_w f(x; w)`, one row per example.

    Shape (N, P) for a scalar-output model and (N, O, P) otherwise, with the trainable parameters flattened and
    concatenated in the order of ``model.named_parameters()``. :func:`empirical_ntk` is :math:`\phi(x)^\top \phi(x')`
    without forming them; this is for checks in weight space on small models (memory N O P).
    """
    params, single, _ = _functional_model(model)
    x = _check_ntk_inputs(x, "x", next(iter(params.values())))
    features = _jacobian_features(single, params, x)
    return features[:, 0] if features.shape[1] == 1 else features


def _functional_model(model: nn.Module):
    """The trainable parameters (detached), and the model as pure functions of them: of one example (outputs
    flattened to (O,)) and of a batch (outputs (n, O)). Frozen parameters and buffers are held fixed."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("model has no parameter with requires_grad=True: its NTK and features are zero")
    frozen = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    frozen.update(dict(model.named_buffers()))

    def single(p, xi):
        return functional_call(model, (p, frozen), (xi.unsqueeze(0),)).reshape(-1)

    def batch(p, xb):
        return _per_example_outputs(functional_call(model, (p, frozen), (xb,)), xb.shape[0])

    return params, single, batch


def _check_ntk_inputs(x, name: str, reference: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, ...) with N >= 1 examples along the first axis, got "
                         f"{tuple(x.shape)}")
    if x.dtype != reference.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the model's parameters are {reference.dtype}; convert one "
                        f"of them (e.g. model.double() and x.double())")
    if x.device != reference.device:
        raise ValueError(f"{name} is on {x.device} but the model is on {reference.device}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must contain only finite values (found NaN or inf)")
    return x


def _per_example_outputs(out: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != n:
        raise ValueError("the model must return a tensor whose first axis is the batch axis")
    return out.reshape(n, -1)


def _activation_count(model: nn.Module, x: torch.Tensor) -> int:
    """Numbers of intermediate values a forward pass of one example produces (summed over leaf modules)."""
    total = [int(x.numel())]

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            total[0] += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def _blocked_kernel(x1, x2, symmetric, chunk, features, contract, n_outputs, reference, progress):
    """Assemble the (N1, N2, O, O) kernel block by block; with ``symmetric`` only blocks on or above the diagonal."""
    n1, n2 = x1.shape[0], x2.shape[0]
    rows = [slice(i, min(i + chunk, n1)) for i in range(0, n1, chunk)]
    cols = rows if symmetric else [slice(j, min(j + chunk, n2)) for j in range(0, n2, chunk)]
    pairs = [(i, j) for i in range(len(rows)) for j in range(len(cols)) if not symmetric or j >= i]
    kernel = torch.empty(n1, n2, n_outputs, n_outputs, dtype=reference.dtype, device=reference.device)
    show = len(pairs) > 8 if progress is None else bool(progress)
    bar = tqdm(total=len(pairs), desc="empirical NTK blocks", disable=not show, leave=False)
    for i, r in enumerate(rows):
        f1 = features(x1[r])
        for j, c in enumerate(cols):
            if symmetric and j < i:
                continue
            f2 = f1 if symmetric and i == j else features(x2[c])
            block = contract(f1, f2)
            kernel[r, c] = block
            if symmetric and j > i:
                kernel[c, r] = block.permute(1, 0, 3, 2)
            bar.update()
    bar.close()
    return kernel


def _jacobian_features(single, params, x):
    jac = vmap(jacrev(single), in_dims=(None, 0))(params, x)  # name -> (n, O, *shape)
    n = x.shape[0]
    return torch.cat([j.reshape(n, j.shape[1], -1) for j in jac.values()], dim=2)  # (n, O, P)


def _jacobian_contract(j1, j2):
    n1, o, p = j1.shape
    n2 = j2.shape[0]
    if o == 1:
        return (j1[:, 0] @ j2[:, 0].T)[:, :, None, None]
    return (j1.reshape(n1 * o, p) @ j2.reshape(n2 * o, p).T).reshape(n1, o, n2, o).permute(0, 2, 1, 3)


def _ntk_vp_block(single, batch, params, x1, x2, n_outputs):
    eye = torch.eye(n_outputs, dtype=x1.dtype, device=x1.device)

    def column(x2_j):
        _, pullback = vjp(lambda p: single(p, x2_j), params)

        def along_output(e_b):
            (tangent,) = pullback(e_b)  # J(x2_j)^T e_b, shaped like the parameters
            return jvp(lambda p: batch(p, x1), (params,), (tangent,))[1]  # J(x1) J(x2_j)^T e_b: (n1, O)

        return vmap(along_output)(eye)  # (O_b, n1, O_a)

    out = vmap(column)(x2)  # (n2, O_b, n1, O_a)
    return out.permute(2, 0, 3, 1)


# The structured (closed-form) path. A "plan" is a list of branches (coefficient, dense layers): the kernel is the
# coefficient-weighted sum of the branches' kernels, which covers AntisymmetricPair ((Θ_a + Θ_b) / 2).


@dataclass(frozen=True)
class _Dense:
    weight: torch.Tensor
    bias: torch.Tensor | None
    weight_scale: float
    bias_scale: float
    train_weight: bool
    train_bias: bool


def _dense_layers(module: nn.Module) -> list[_Dense] | None:
    """The layers of a plain fully connected ReLU network, or None if ``module`` is anything else.

    Types are matched exactly (a subclass may override ``forward``), and parametrized layers (whose ``weight`` is
    computed from other tensors) are refused: for them the closed form would silently give a different kernel.
    """
    if type(module) in (MLP, NTKMLP):
        module = module.net  # their forward is net(x), squeezed; the walk below checks the activations are ReLU
    if type(module) is not nn.Sequential:
        return None
    flat: list[nn.Module] = []

    def walk(m):
        for child in m:
            if type(child) is nn.Sequential:
                walk(child)
            else:
                flat.append(child)

    walk(module)
    if not flat or len(flat) % 2 == 0:
        return None
    layers = []
    for k, m in enumerate(flat):
        if k % 2 == 1:
            if type(m) is not nn.ReLU:
                return None
            continue
        if type(m) is NTKLinear:
            w_scale, b_scale = m.weight_scale, m.bias_scale
        elif type(m) is nn.Linear:
            w_scale, b_scale = 1.0, 1.0
        else:
            return None
        if nn.utils.parametrize.is_parametrized(m):
            return None
        bias = m.bias
        layers.append(_Dense(m.weight.detach(), None if bias is None else bias.detach(), w_scale, b_scale,
                             m.weight.requires_grad, bias is not None and bias.requires_grad))
    return layers


def _structured_plan(model: nn.Module):
    """Branches (coefficient, layers) whose weighted kernels sum to the model's NTK, or None.

    The plan must cover every trainable parameter of the model exactly once; a layer used twice (tied weights) or a
    parameter outside the layers makes the closed form wrong, so such models get None (and the Jacobian method).
    """
    if type(model) is AntisymmetricPair:
        first, second = _structured_plan(model.first), _structured_plan(model.second)
        if first is None or second is None:
            return None
        plan = [(0.5 * c, layers) for c, layers in first + second]
    else:
        layers = _dense_layers(model)
        if layers is None:
            return None
        plan = [(1.0, layers)]
    covered = []
    for _, layers in plan:
        for layer in layers:
            covered += [layer.weight] if layer.train_weight else []
            covered += [layer.bias] if layer.train_bias else []
    trainable = [p for p in model.parameters() if p.requires_grad]  # parameters() lists each tensor once
    covered_ids = [t.untyped_storage().data_ptr() for t in covered]
    if len(covered_ids) != len(set(covered_ids)) or len(covered) != len(trainable):
        return None
    return plan


def _structured_features(plan, x):
    """Per branch and layer: the input h_{l-1} of layer l and the backpropagated error δ_l = ∂f/∂g_l, (n, O, n_l)."""
    x = x.reshape(x.shape[0], -1)
    out = []
    for _, layers in plan:
        inputs, masks = [x], []
        h = x
        for layer in layers[:-1]:
            g = layer.weight_scale * (h @ layer.weight.T)
            if layer.bias is not None:
                g = g + layer.bias_scale * layer.bias
            masks.append(g > 0)  # relu'(0) = 0, as in autograd
            h = torch.relu(g)
            inputs.append(h)
        # δ of the readout is the identity (O x O); propagate it back through the hidden layers.
        readout = layers[-1]
        delta = (readout.weight_scale * readout.weight).unsqueeze(0).expand(x.shape[0], -1, -1)  # (n, O, n_L)
        deltas = [None] * len(layers)
        for l in range(len(layers) - 2, -1, -1):
            delta = delta * masks[l].unsqueeze(1)
            deltas[l] = delta
            if l > 0:
                delta = delta @ (layers[l].weight_scale * layers[l].weight)
        out.append((inputs, deltas))
    return out


def _structured_contract(plan, f1, f2, n_outputs):
    x1, x2 = f1[0][0][0], f2[0][0][0]
    kernel = torch.zeros(x1.shape[0], x2.shape[0], n_outputs, n_outputs, dtype=x1.dtype, device=x1.device)
    scalar = kernel[:, :, 0, 0] if n_outputs == 1 else None
    for (coefficient, layers), (in1, d1), (in2, d2) in zip(plan, f1, f2):
        for l, layer in enumerate(layers):
            if not (layer.train_weight or layer.train_bias):
                continue
            # s_l^2 h^T h' from the weights, t_l^2 from the bias: the input-side factor of layer l's contribution.
            inner = torch.zeros(x1.shape[0], x2.shape[0], dtype=x1.dtype, device=x1.device)
            if layer.train_weight:
                inner += layer.weight_scale**2 * (in1[l] @ in2[l].T)
            if layer.train_bias:
                inner += layer.bias_scale**2
            if d1[l] is None:  # readout: its error δ is the identity, so outputs do not mix
                kernel += coefficient * inner[:, :, None, None] * torch.eye(n_outputs, dtype=x1.dtype,
                                                                            device=x1.device)
            elif scalar is not None:
                scalar += coefficient * (d1[l][:, 0] @ d2[l][:, 0].T) * inner
            else:
                kernel += coefficient * torch.einsum("iam,jbm->ijab", d1[l], d2[l]) * inner[:, :, None, None]
    return kernel


def dense_ntk_flops(layer_widths: Sequence[int], n1: int, n2: int, method: str) -> float:
    r"""Leading-order floating-point operations of the empirical NTK of a dense scalar-output network.

    ``layer_widths`` = (d_in, n_1, ..., n_L, 1); P is the number of weights. Counts (one multiply-add = 2 FLOPs):

    * ``"structured"``: :math:`2 n_1 n_2 (\sum_{l \le L} n_l + \sum_{l \le L+1} n_{l-1})` for the products of errors
      and of activations, plus :math:`2 (n_1 + n_2) P` for the forward and backward passes;
    * ``"jacobian"``: :math:`2 n_1 n_2 P` for the contraction, plus :math:`4 (n_1 + n_2) P` to form the Jacobians;
    * ``"ntk_vp"``: :math:`2 n_1 n_2 P + 4 n_2 P`: the tangent part of a JVP over the rows for every column (``vmap``
      shares the primal forward pass between columns), plus one VJP per column;
    * ``"matmul"``: the same count as ``"structured"`` (the size of the matrix product used as a peak reference).
    """
    check_choice(method, "method", ("structured", "jacobian", "ntk_vp", "matmul"))
    widths = [check_positive_int(w, "layer width") for w in layer_widths]
    if len(widths) < 3 or widths[-1] != 1:
        raise ValueError("layer_widths must be (d_in, n_1, ..., n_L, 1) with at least one hidden layer")
    n1, n2 = check_positive_int(n1, "n1"), check_positive_int(n2, "n2")
    weights = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    if method in ("structured", "matmul"):
        return 2.0 * n1 * n2 * (sum(widths[1:-1]) + sum(widths[:-1])) + 2.0 * (n1 + n2) * weights
    if method == "jacobian":
        return 2.0 * n1 * n2 * weights + 4.0 * (n1 + n2) * weights
    return 2.0 * n1 * n2 * weights + 4.0 * n2 * weights


def time_call(function: Callable[[], object], *, repeats: int = 3, warmup: int = 1) -> float:
    """Best wall-clock time in seconds of ``function()`` over ``repeats`` runs, after ``warmup`` untimed runs.

    The minimum is reported because on a shared machine every disturbance only adds time. CUDA and MPS work is
    synchronised before the clock is read.
    """
    repeats = check_positive_int(repeats, "repeats")
    warmup = check_positive_int(warmup, "warmup", minimum=0)
    def sync():  # GPU work is asynchronous: wait for it before reading the clock
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            torch.mps.synchronize()

    for _ in range(warmup):
        function()
    sync()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


# ---------------------------------------------------------------------------------------------------------------------
# Analytic kernels of deep ReLU networks
# ---------------------------------------------------------------------------------------------------------------------


class RELUKernels(NamedTuple):
    """The infinite-width kernels of a ReLU network: NNGP covariance and NTK, each (N1, N2) float64."""

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

    The network, the recursion and the table of conventions are in the module docstring (:mod:`kdnb.ntk`); the finite
    network is :class:`kdnb.models.NTKMLP` with the same arguments. ``readout_*`` default to the hidden values.
    Computed in float64, on the inputs' device (on the CPU for MPS inputs: MPS has no float64). Precision: the first layer's angles are computed from the
    input vectors and are exact to rounding; deeper layers recover angles from covariances, which for nearly parallel
    pairs of points leaves errors of about 1e-8 relative. With ``x2=None`` the result is exactly symmetric and its
    diagonal exact (the angle of a point with itself is 0, not recovered from rounded products).
    """
    depth = check_positive_int(depth, "depth")
    sw = check_variance(weight_variance, "weight_variance", positive=True)
    sb = check_variance(bias_variance, "bias_variance", positive=False)
    sw_out = sw if readout_weight_variance is None else check_variance(
        readout_weight_variance, "readout_weight_variance", positive=True)
    sb_out = sb if readout_bias_variance is None else check_variance(
        readout_bias_variance, "readout_bias_variance", positive=False)
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
    return RELUKernels(nngp=cross, ntk=ntk)


def relu_ntk(x1: torch.Tensor, x2: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """The infinite-width NTK of a ReLU network, (N1, N2) float64; arguments as in :func:`relu_kernels`."""
    return relu_kernels(x1, x2, **kwargs).ntk


def relu_nngp(x1: torch.Tensor, x2: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """The NNGP covariance :math:`\\mathbb{E}[f(x) f(x')]` of the same network at initialisation; see
    :func:`relu_kernels`."""
    return relu_kernels(x1, x2, **kwargs).nngp


def sphere_eigenvalues(
    kernel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    dim: int,
    max_degree: int,
    *,
    quadrature_points: int = 400,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mercer eigenvalues of a dot-product kernel :math:`k(x, x') = \kappa(x^\top x')` on the sphere
    :math:`S^{d-1}`, by the Funk–Hecke formula (Bietti & Mairal 2019):

    .. math:: \mu_k = \frac{\Gamma(d/2)}{\sqrt\pi\, \Gamma((d-1)/2)} \int_{-1}^{1} \kappa(t)\, P_k^{(d)}(t)\,
              (1 - t^2)^{(d-3)/2}\, dt,

    with :math:`P_k^{(d)}` the Gegenbauer polynomial normalised to :math:`P_k^{(d)}(1) = 1` (Legendre for d = 3),
    for uniform measure on the sphere. Eigenvalue :math:`\mu_k` belongs to the :math:`N(d, k)` spherical harmonics of
    degree k. ``kernel(x1, x2)`` is evaluated between a fixed unit vector and unit vectors at the Gauss–Jacobi nodes.

    Returns ``(mu, multiplicity)``, both of length ``max_degree + 1``, float64. Accuracy: for a smooth profile the
    quadrature is exact to rounding; the ReLU kernels are not smooth at :math:`t = \pm 1`, and with the default 400
    nodes their eigenvalues up to degree 20 are accurate to about 5e-5 relative (more nodes, more accuracy).
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


# ---------------------------------------------------------------------------------------------------------------------
# The linearized model
# ---------------------------------------------------------------------------------------------------------------------


class LinearizedModel(nn.Module):
    r"""The first-order Taylor expansion of ``model`` around its current weights :math:`w_0` (Lee et al. 2019):

    .. math:: f_\mathrm{lin}(x; w) = f(x; w_0) + J(x)\,(w - w_0), \qquad J(x) = \partial f(x; w_0) / \partial w.

    A module like any other: its parameters :math:`w` start at :math:`w_0` and can be trained with
    :func:`kdnb.training.fit`; the forward pass is one Jacobian-vector product (``torch.func.jvp``), so :math:`J` is
    never formed. Only the parameters of ``model`` with ``requires_grad=True`` are linearized; the others, and the
    buffers, stay fixed. ``model`` itself is not modified.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self._function = [model]  # kept out of the module tree: its own parameters are never used or trained
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        if not names:
            raise ValueError("model has no parameter with requires_grad=True: there is nothing to linearize")
        self._names = names
        self.weights = nn.ParameterList()
        for name, p in model.named_parameters():
            if p.requires_grad:
                self.weights.append(nn.Parameter(p.detach().clone()))
                self.register_buffer(f"_initial_{len(self.weights) - 1}", p.detach().clone())
        self._fixed_names = [name for name, p in model.named_parameters() if not p.requires_grad]
        self._fixed_names += [name for name, _ in model.named_buffers()]
        fixed = dict(model.named_parameters())
        fixed.update(dict(model.named_buffers()))
        for k, name in enumerate(self._fixed_names):
            self.register_buffer(f"_fixed_{k}", fixed[name].detach().clone())

    def initial_weights(self) -> dict[str, torch.Tensor]:
        """:math:`w_0`, by the parameter names of the wrapped model."""
        return {name: getattr(self, f"_initial_{k}") for k, name in enumerate(self._names)}

    def weight_change(self) -> torch.Tensor:
        """:math:`w - w_0`, flattened into one vector."""
        initial = self.initial_weights()
        return torch.cat([(w - initial[name]).reshape(-1) for name, w in zip(self._names, self.weights)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        initial = self.initial_weights()
        change = {name: w - initial[name] for name, w in zip(self._names, self.weights)}
        fixed = {name: getattr(self, f"_fixed_{k}") for k, name in enumerate(self._fixed_names)}
        model = self._function[0]
        f0, tangent = jvp(lambda p: functional_call(model, (p, fixed), (x,)), (initial,), (change,))
        return f0 + tangent


# ---------------------------------------------------------------------------------------------------------------------
# Function-space solvers
# ---------------------------------------------------------------------------------------------------------------------


def _check_gram(kernel, name: str = "kernel") -> torch.Tensor:
    if not isinstance(kernel, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(kernel).__name__}")
    if kernel.ndim == 4:
        raise ValueError(f"{name} has shape {tuple(kernel.shape)}: the blocks of a multi-output model. The solvers need "
                         f"the (N, N) Gram matrix of a scalar output (take one output's block, or outputs='trace')")
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] == 0:
        raise ValueError(f"{name} must be a square (N, N) Gram matrix, got shape {tuple(kernel.shape)}")
    if not kernel.is_floating_point() or not bool(torch.isfinite(kernel).all()):
        raise ValueError(f"{name} must be a floating-point matrix with finite entries")
    return kernel.to(device=float64_device(kernel.device), dtype=torch.float64)


def _check_targets(targets, n: int, name: str, device) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(targets).__name__}")
    if targets.ndim not in (1, 2) or targets.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, k) to match the kernel, got {tuple(targets.shape)}")
    if not targets.is_floating_point() or not bool(torch.isfinite(targets).all()):
        raise ValueError(f"{name} must be floating point with finite entries")
    return targets.to(device=device, dtype=torch.float64)


def _initial_outputs(f0, like: torch.Tensor, name: str) -> torch.Tensor:
    """``f0`` checked against outputs ``like``, (N,) or (N, k): same shape, or (N,) shared by the k columns."""
    f = _check_targets(f0, like.shape[0], name, like.device)
    if f.shape == like.shape:
        return f
    if like.ndim == 2 and f.ndim == 1:
        return f[:, None]
    raise ValueError(f"{name} must have shape {tuple(like.shape)} (or ({like.shape[0]},) for several target columns), "
                     f"got {tuple(f.shape)}")


def _residual_targets(targets, f0, n: int, device) -> torch.Tensor:
    """:math:`r = z - f_0` in float64."""
    z = _check_targets(targets, n, "targets", device)
    return z if f0 is None else z - _initial_outputs(f0, z, "f0")


def cholesky_with_jitter(kernel: torch.Tensor, jitter: float = DEFAULT_JITTER) -> torch.Tensor:
    r"""Lower Cholesky factor L of :math:`K + \epsilon\, \overline{\mathrm{diag} K}\, I` in float64,
    :math:`\epsilon` = ``jitter`` (default 1e-10).

    Raises ``ValueError`` if ``kernel`` is not symmetric (to 1e-8 relative) or not positive definite even with the
    jitter (duplicate inputs, or a kernel that is not a kernel).
    """
    k = _check_gram(kernel)
    jitter = float(jitter)
    if not (jitter >= 0 and math.isfinite(jitter)):
        raise ValueError(f"jitter must be a finite number >= 0, got {jitter!r}")
    scale = float(k.diagonal().abs().mean())
    if float((k - k.T).abs().max()) > 1e-8 * max(scale, 1e-300):
        raise ValueError("kernel must be symmetric (a Gram matrix); got an asymmetric matrix")
    shifted = k + (jitter * scale) * torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
    factor, info = torch.linalg.cholesky_ex(shifted)
    if int(info) != 0:
        raise ValueError(f"kernel is not positive definite even with jitter {jitter:g} x mean diagonal; are some "
                         f"inputs repeated? (Cholesky failed at column {int(info)})")
    return factor


@dataclass(frozen=True)
class KernelRegression:
    r"""The min-norm interpolant of kernel regression (the endpoint of gradient flow on the linearized model).

    With :math:`r = z - f_0(X)`: coefficients :math:`a = K^{-1} r`, predictions
    :math:`f(x) = f_0(x) + \Theta(x, X)\, a`, and weight change :math:`\Delta \hat w = \Phi a` with
    :math:`\|\Delta \hat w\|^2 = r^\top K^{-1} r` (computed without forming the features :math:`\Phi`).
    """

    coefficients: torch.Tensor
    factor: torch.Tensor
    residual_targets: torch.Tensor

    @property
    def weight_change_norm(self) -> torch.Tensor:
        """:math:`\\|\\Delta \\hat w\\| = \\sqrt{r^\\top K^{-1} r}` (one value per target column)."""
        return (self.residual_targets * self.coefficients).sum(0).clamp_min(0).sqrt()

    def predict(self, kernel_test_train: torch.Tensor, f0_test: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions :math:`f_0(x) + \\Theta(x, X) a` at test points; ``kernel_test_train`` is (M, N)."""
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
    r"""Solve kernel regression, :math:`a = K^{-1}(z - f_0)`, by one Cholesky factorisation (float64, jitter as in
    :func:`cholesky_with_jitter`).

    ``targets`` are (N,) or (N, k) (k right-hand sides at once, e.g. one per soft ratio); ``f0`` are the initial
    outputs on the training points (``None``: zero, as with :class:`kdnb.models.AntisymmetricPair`). Any loss convex
    in the logits whose per-example minimiser is z leads gradient flow from :math:`w_0` to this solution.
    """
    factor = cholesky_with_jitter(kernel, jitter)
    z = _residual_targets(targets, f0, factor.shape[0], factor.device)
    rhs = z if z.ndim == 2 else z[:, None]
    coefficients = torch.cholesky_solve(rhs, factor)
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
    Cholesky factor :math:`L_{:n,:n}`, so :math:`\|\Delta \hat w_n\|^2 = \sum_{i \le n} v_i^2`. Shape (N,) or (N, k).
    """
    factor = cholesky_with_jitter(kernel, jitter)
    r = _residual_targets(targets, f0, factor.shape[0], factor.device)
    rhs = r if r.ndim == 2 else r[:, None]
    v = torch.linalg.solve_triangular(factor, rhs, upper=False)
    squares = v.square().cumsum(0) if prefixes else v.square().sum(0, keepdim=True)
    norms = squares.sqrt()
    if not prefixes:
        norms = norms[0]
    return norms if r.ndim == 2 else norms[..., 0]


@dataclass(frozen=True)
class FunctionSpaceTrajectory:
    """Logits recorded during :func:`function_space_gd`: ``train`` (R, N) and ``test`` (R, M) at ``steps`` (R,)."""

    steps: torch.Tensor
    train: torch.Tensor
    test: torch.Tensor | None


def function_space_gd(
    kernel: torch.Tensor,
    loss_gradient: Callable[[torch.Tensor], torch.Tensor],
    *,
    lr: float,
    steps: int,
    kernel_test_train: torch.Tensor | None = None,
    f0: torch.Tensor | None = None,
    f0_test: torch.Tensor | None = None,
    record_every: int | None = None,
    progress: bool = False,
) -> FunctionSpaceTrajectory:
    r"""Gradient descent of the linearized model, run in function space:

    .. math:: z \leftarrow z - \frac{\eta}{n} K\, \ell'(z), \qquad
              z_\mathrm{test} \leftarrow z_\mathrm{test} - \frac{\eta}{n} \Theta(X_\mathrm{test}, X)\, \ell'(z),

    starting from :math:`z = f_0(X)`. ``loss_gradient(z)`` returns the per-example derivatives
    :math:`\ell_i'(z_i)` (shape (N,)) of any loss convex in the logits, e.g. ``functools.partial(
    kdnb.losses.binary_kd_loss_gradient, teacher_logits=zt, labels=y, rho=.5, temperature=5)``. This is exactly
    full-batch gradient descent with learning rate :math:`\eta` on :math:`\frac1n\sum_i \ell_i` for the linearized
    model in weight space (its updates stay in the span of the features), so a real network trained with the same
    loss and learning rate can be compared with it step by step. Float64.

    Records the logits at step 0, every ``record_every`` steps (default: only the end) and at the last step.
    """
    k = _check_gram(kernel)
    n = k.shape[0]
    if not callable(loss_gradient):
        raise TypeError("loss_gradient must be callable: loss_gradient(z) -> per-example derivatives, shape (N,)")
    lr = check_positive(lr, "lr")
    steps = check_positive_int(steps, "steps", minimum=0)
    record_every = steps if record_every is None else check_positive_int(record_every, "record_every")
    z = torch.zeros(n, dtype=torch.float64, device=k.device) if f0 is None else _check_targets(
        f0, n, "f0", k.device).clone()
    if z.ndim != 1:
        raise ValueError("f0 must have shape (N,): function_space_gd is for scalar outputs")
    k_test = None
    z_test = None
    if kernel_test_train is not None:
        if not isinstance(kernel_test_train, torch.Tensor) or kernel_test_train.ndim != 2 or \
                kernel_test_train.shape[1] != n:
            raise ValueError(f"kernel_test_train must be an (M, {n}) matrix Θ(X_test, X_train)")
        k_test = kernel_test_train.to(k.device, torch.float64)
        m = k_test.shape[0]
        z_test = torch.zeros(m, dtype=torch.float64, device=k.device) if f0_test is None else _check_targets(
            f0_test, m, "f0_test", k.device).clone()
    elif f0_test is not None:
        raise ValueError("f0_test was given without kernel_test_train")

    recorded_steps, train_rec, test_rec = [0], [z.clone()], [] if z_test is None else [z_test.clone()]
    for step in tqdm(range(1, steps + 1), desc="function-space GD", disable=not progress, leave=False):
        grad = loss_gradient(z)
        if not isinstance(grad, torch.Tensor) or grad.shape != z.shape:
            raise ValueError(f"loss_gradient must return a tensor of shape {tuple(z.shape)} (one derivative per "
                             f"example), got {getattr(grad, 'shape', type(grad).__name__)}")
        grad = grad.to(device=k.device, dtype=torch.float64) * (lr / n)
        z = z - k @ grad
        if z_test is not None:
            z_test = z_test - k_test @ grad
        if step % record_every == 0 or step == steps:
            recorded_steps.append(step)
            train_rec.append(z.clone())
            if z_test is not None:
                test_rec.append(z_test.clone())
    return FunctionSpaceTrajectory(
        steps=torch.tensor(recorded_steps),
        train=torch.stack(train_rec),
        test=None if z_test is None else torch.stack(test_rec),
    )


def gradient_descent_path(
    model: nn.Module,
    objective: Callable[..., torch.Tensor],
    inputs: torch.Tensor,
    targets: Sequence[torch.Tensor | None],
    *,
    lr: float,
    steps: int,
    test_inputs: torch.Tensor | None = None,
    record_every: int | None = None,
    progress: bool = False,
) -> FunctionSpaceTrajectory:
    r"""Train ``model`` in place by full-batch gradient descent (no momentum) on ``objective(model(inputs), *targets)``
    and record its scalar logits as :func:`function_space_gd` does, for a step-by-step comparison.

    With the mean-reduced loss :math:`\frac1n \sum_i \ell_i` and the same ``lr``, a :class:`LinearizedModel`
    trained here follows :func:`function_space_gd` on its empirical NTK exactly; a real network follows it as long
    as it stays in the linear regime. Logits are recorded in float64.
    """
    from .training import fit, predict_logits

    steps = check_positive_int(steps, "steps")
    record_every = steps if record_every is None else check_positive_int(record_every, "record_every")

    def logits(x):
        out = predict_logits(model, x)
        if out.ndim != 1:
            raise ValueError(f"gradient_descent_path records scalar logits; the model returned shape {tuple(out.shape)}")
        return out.to(device=float64_device(out.device), dtype=torch.float64)

    recorded, train, test = [0], [logits(inputs)], [] if test_inputs is None else [logits(test_inputs)]
    done = 0
    bar = tqdm(total=steps, desc="gradient descent", disable=not progress, leave=False)
    while done < steps:
        chunk = min(record_every - done % record_every, steps - done)
        # Plain SGD has no state, so training in segments is the same as one run of `steps` steps.
        fit(model, objective, inputs, targets, epochs=chunk, generator=torch.Generator(), lr=lr, optimizer="sgd",
            progress=False)
        done += chunk
        bar.update(chunk)
        recorded.append(done)
        train.append(logits(inputs))
        if test_inputs is not None:
            test.append(logits(test_inputs))
    bar.close()
    return FunctionSpaceTrajectory(steps=torch.tensor(recorded), train=torch.stack(train),
                                   test=None if test_inputs is None else torch.stack(test))
