r"""The empirical neural tangent kernel of any torch module, by three methods, and its cost in FLOPs.

A network :math:`f(x; w)` trained by gradient descent from :math:`w_0` stays close, when it is wide, to its
linearization (Jacot et al. 2018; Lee et al. 2019)

.. math:: f_\mathrm{lin}(x; w) = f(x; w_0) + \phi(x)^\top (w - w_0), \qquad \phi(x) = \nabla_w f(x; w_0),

a linear model of the random features :math:`\phi(x)`, whose kernel is the *neural tangent kernel* (NTK)
:math:`\Theta(x, x') = \phi(x)^\top \phi(x')`. :func:`empirical_ntk` computes it at a model's current weights;
:func:`ntk_features` gives the features themselves for small models. Its infinite-width limit is in
:mod:`kdnb.kernels.analytic`, the linearized model in :mod:`kdnb.kernels.linearized`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from ..core.models import MLP, AntisymmetricPair, NTKLinear, NTKMLP
from ..core.progress import progress_bar
from ..core.validation import (
    check_bool,
    check_buffers_unchanged,
    check_choice,
    check_eval_mode,
    check_positive_int,
)

__all__ = ["METHODS", "OUTPUT_MODES", "dense_ntk_flops", "empirical_ntk", "ntk_features",
           "structured_ntk_supported"]

METHODS = ("auto", "jacobian", "ntk_vp", "structured")
OUTPUT_MODES = ("full", "trace")
# Memory allowed for the per-block intermediate results of empirical_ntk (Jacobians, activations, tangents).
_BLOCK_BYTES = 512 * 2**20

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
    r"""The empirical neural tangent kernel of ``model`` at its current weights.

    :math:`\Theta(x, x') = \nabla_w f(x)^\top \nabla_w f(x')`, the gradient taken with respect to every parameter
    with ``requires_grad=True``. Inputs are the rows (first axis) of ``x1`` and ``x2``. The model is evaluated as it
    is, example by example, and is left untouched (parameters, buffers, train/eval flags): a model with dropout or
    batch normalisation in train mode is refused (call ``model.eval()``), as is one whose forward changes a buffer.

    Parameters
    ----------
    model : torch.nn.Module
        The network f. Its output's first axis is the batch axis; any output shape after it is flattened to O
        outputs. At least one parameter must have ``requires_grad=True``.
    x1 : torch.Tensor
        Inputs, shape (N1, ...) with N1 >= 1 examples along the first axis, finite, in the dtype and on the device of
        the model's parameters.
    x2 : torch.Tensor or None, default None
        Inputs, shape (N2, ...) with the feature shape of ``x1``, same requirements. ``None``: the Gram matrix of
        ``x1``, computed once per pair of blocks and mirrored.
    method : {"auto", "jacobian", "ntk_vp", "structured"}, default "auto"
        How the kernel is computed; see Notes.
    outputs : {"full", "trace"}, default "full"
        For a model with O > 1 outputs: every (O, O) block, or their trace (see Returns). Ignored for scalar outputs.
    chunk_size : int or None, default None
        The number of examples per block (rows of ``x1`` and columns of ``x2`` at a time), >= 1. By default it is
        chosen so that one block's intermediate results stay under 512 MiB. With several blocks, the column blocks'
        Jacobians (or activations) are recomputed for each row block: time is traded for bounded memory.
    progress : bool or None, default None
        Show a bar over blocks (``True``), never (``False``), or (``None``) when there are more than eight blocks and
        someone watches: in a Jupyter kernel or when standard error is a terminal, not in a script whose output goes
        to a file or a log (:func:`kdnb.core.progress.progress_bar`).

    Returns
    -------
    torch.Tensor
        In the dtype and on the device of the model's parameters. For a **scalar-output** model (logits of shape
        (N,) or (N, 1)) it is the (N1, N2) Gram matrix. For a model with **O > 1 outputs** (any output shape after
        the batch axis is flattened to O), ``outputs="full"`` gives the (N1, N2, O, O) blocks
        :math:`\Theta_{ab}(x, x') = \nabla_w f_a(x)^\top \nabla_w f_b(x')`, and ``outputs="trace"`` their trace
        :math:`\sum_a \Theta_{aa}`, shape (N1, N2) (neural-tangents' ``trace_axes`` divides this by O).

    Raises
    ------
    TypeError
        If ``model`` is not a ``torch.nn.Module``, an input is not a tensor, or an input's dtype differs from the
        parameters'; if ``chunk_size`` is not an int; if ``progress`` is neither None nor a bool.
    ValueError
        If ``method`` or ``outputs`` is not one of the allowed values; if the model has no trainable parameter or
        does not return a tensor with the batch axis first; if a layer whose output depends on the train mode
        (dropout, batch normalisation, see :func:`kdnb.core.validation.check_eval_mode`) is in train mode, before any
        forward pass; if the model's forward changed one of its buffers (they are restored first, see
        :func:`kdnb.core.validation.check_buffers_unchanged`); if an input has no example, contains NaN or inf, or is
        on another device than the model; if ``x1`` and ``x2`` have different feature shapes; if
        ``method="structured"`` is asked for a model without the closed form; if ``chunk_size`` < 1.

    See Also
    --------
    ntk_features : The features :math:`\phi(x)` themselves, for small models.
    kdnb.kernels.analytic.relu_ntk : The infinite-width limit.

    Notes
    -----
    The methods:

    ``"jacobian"``
        per-example Jacobians (``vmap(jacrev)``), contracted: :math:`O(N O [FP] + N^2 O^2 P)` for P parameters.
    ``"ntk_vp"``
        NTK-vector products: for each column :math:`x'`, a VJP gives :math:`J(x')^\top e_b`, then a JVP over the rows
        gives :math:`J(x) J(x')^\top e_b`. :math:`O(N^2 O [FP])`, and never forms a Jacobian; meant for models whose
        parameter count dwarfs their forward cost (weight sharing).
    ``"structured"``
        the closed form for fully connected ReLU networks (:class:`kdnb.core.models.MLP` with ReLU, :class:`NTKMLP`, an
        ``nn.Sequential`` of ``Linear``/``NTKLinear`` and ``ReLU``, or an :class:`AntisymmetricPair` of those). With
        :math:`\delta_l = \partial f / \partial g_l` the backpropagated error at layer l and :math:`h_{l-1}` its input,
        :math:`\partial f/\partial W_l = s_l \delta_l h_{l-1}^\top`, so
        :math:`\Theta = \sum_l (\delta_l^\top \delta_l')\,(s_l^2\, h_{l-1}^\top h_{l-1}' + t_l^2)` with weight and bias
        scales :math:`s_l, t_l`: only matrix products of activations, :math:`O(N^2 O^2 \sum_l n_l)`.
    ``"auto"``
        ``"structured"`` when the model is one of those networks (:func:`structured_ntk_supported`), else
        ``"jacobian"``, which was faster than ``"ntk_vp"`` wherever we timed both (``benchmarks/bench_ntk.py``,
        chapter 2); choose ``"ntk_vp"`` explicitly when the Jacobian does not fit in memory.

    References
    ----------
    Jacot, Gabriel & Hongler 2018 (the neural tangent kernel); Lee et al. 2019 (wide networks evolve as their
    linearization, whose features are :math:`\phi(x) = \nabla_w f(x; w_0)`).
    """
    check_choice(method, "method", METHODS)
    check_choice(outputs, "outputs", OUTPUT_MODES)
    if progress is not None:
        check_bool(progress, "progress")
    params, single, batch = _functional_model(model)
    reference = next(iter(params.values()))
    symmetric = x2 is None
    x1 = _check_ntk_inputs(x1, "x1", reference)
    x2 = x1 if symmetric else _check_ntk_inputs(x2, "x2", reference)
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(f"x1 and x2 must have the same feature shape, got {tuple(x1.shape[1:])} and "
                         f"{tuple(x2.shape[1:])}")

    with check_buffers_unchanged(model, caller="empirical_ntk"):
        kernel, n_outputs = _kernel_blocks(model, x1, x2, symmetric, params, single, batch, reference, method,
                                           chunk_size, progress)
    if n_outputs == 1:
        return kernel[:, :, 0, 0].contiguous()
    if outputs == "trace":
        return kernel.diagonal(dim1=2, dim2=3).sum(-1)
    return kernel


def _kernel_blocks(model, x1, x2, symmetric, params, single, batch, reference, method, chunk_size, progress):
    """The (N1, N2, O, O) kernel by ``method`` (resolved here from "auto"), and O: the body of empirical_ntk."""
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
    return kernel, n_outputs


def structured_ntk_supported(model: nn.Module) -> bool:
    """Whether :func:`empirical_ntk` has the closed-form ``"structured"`` path for ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        Any module.

    Returns
    -------
    bool
        True for a fully connected ReLU network whose every trainable parameter is one of its dense layers' (a kdnb
        ``MLP`` with ReLU, ``NTKMLP``, an ``nn.Sequential`` of ``Linear``/``NTKLinear`` and ``ReLU``, or an
        ``AntisymmetricPair`` of those); False otherwise (then ``method="auto"`` uses ``"jacobian"``).
    """
    return _structured_plan(model) is not None


def ntk_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    r"""The features of the linearized model, :math:`\phi(x) = \nabla_w f(x; w)`, one row per example.

    :func:`empirical_ntk` is :math:`\phi(x)^\top \phi(x')` without forming them; this is for checks in weight space
    on small models (memory N O P).

    Parameters
    ----------
    model : torch.nn.Module
        The network f at its current weights w; the gradient is taken with respect to every parameter with
        ``requires_grad=True`` (at least one). Left untouched; layers whose output depends on the train mode must be
        in eval mode, as for :func:`empirical_ntk`.
    x : torch.Tensor
        Inputs, shape (N, ...) with N >= 1, finite, in the dtype and on the device of the model's parameters.

    Returns
    -------
    torch.Tensor
        Shape (N, P) for a scalar-output model and (N, O, P) otherwise, with the P trainable parameters flattened and
        concatenated in the order of ``model.named_parameters()``.

    Raises
    ------
    TypeError
        If ``model`` is not a module, ``x`` is not a tensor, or its dtype differs from the parameters'.
    ValueError
        If the model has no trainable parameter, has dropout or batch normalisation in train mode
        (:func:`kdnb.core.validation.check_eval_mode`), or its forward changed one of its buffers (restored first);
        if ``x`` is empty, not finite or on another device, or the model's output has no batch axis.

    References
    ----------
    Lee et al. 2019 (the linearized network and its features).
    """
    params, single, _ = _functional_model(model)
    x = _check_ntk_inputs(x, "x", next(iter(params.values())))
    with check_buffers_unchanged(model, caller="ntk_features"):
        with torch.no_grad():  # a plain forward pass first: it checks the batch axis and shows a buffer update
            _per_example_outputs(model(x[:1]), 1)
        features = _jacobian_features(single, params, x)
    return features[:, 0] if features.shape[1] == 1 else features


def _functional_model(model: nn.Module):
    """The trainable parameters (detached), and the model as pure functions of them: of one example (outputs
    flattened to (O,)) and of a batch (outputs (n, O)). Frozen parameters and buffers are held fixed. Models with
    train-mode layers are refused here, before any forward pass."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_eval_mode(model)
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
    enabled = (None if len(pairs) > 8 else False) if progress is None else progress
    bar = progress_bar(total=len(pairs), desc="empirical NTK blocks", enabled=enabled, name="progress")
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

    With P the number of weights, the counts are (one multiply-add = 2 FLOPs):

    * ``"structured"``: :math:`2 n_1 n_2 (\sum_{l \le L} n_l + \sum_{l \le L+1} n_{l-1})` for the products of errors
      and of activations, plus :math:`2 (n_1 + n_2) P` for the forward and backward passes;
    * ``"jacobian"``: :math:`2 n_1 n_2 P` for the contraction, plus :math:`4 (n_1 + n_2) P` to form the Jacobians;
    * ``"ntk_vp"``: :math:`2 n_1 n_2 P + 4 n_2 P`: the tangent part of a JVP over the rows for every column (``vmap``
      shares the primal forward pass between columns), plus one VJP per column;
    * ``"matmul"``: the same count as ``"structured"`` (the size of the matrix product used as a peak reference).

    Parameters
    ----------
    layer_widths : sequence of int
        (d_in, n_1, ..., n_L, 1): the input dimension, the L >= 1 hidden widths and the single output; every entry
        >= 1.
    n1, n2 : int
        Numbers of rows of ``x1`` and ``x2`` (>= 1).
    method : {"structured", "jacobian", "ntk_vp", "matmul"}
        The method whose cost is counted.

    Returns
    -------
    float
        The number of floating-point operations.

    Raises
    ------
    TypeError
        If a width, ``n1`` or ``n2`` is not an int.
    ValueError
        If ``method`` is not one of the four, a width, ``n1`` or ``n2`` is < 1, or ``layer_widths`` does not end in
        1 or has no hidden layer.
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

