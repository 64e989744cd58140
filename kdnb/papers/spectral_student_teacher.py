r"""Lorenzo Giambagli, Lorenzo Buffoni, Lorenzo Chicchi and Duccio Fanelli. *How a Student becomes a Teacher:
learning and forgetting through Spectral methods.* Advances in Neural Information Processing Systems 36 (NeurIPS
2023). arXiv:2310.12612. Reproduced in chapter 10 (``10_spectral_student_teacher``).

A student wider than its teacher is trained on the teacher's outputs in the *spectral parametrisation*: the map from
a layer of :math:`n_\mathrm{in}` nodes to one of :math:`n_\mathrm{out}` nodes is the lower-left block of the operator
:math:`A = \Phi \Lambda \Phi^{-1}` on :math:`n_\mathrm{in} + n_\mathrm{out}` nodes, with
:math:`\Phi = \begin{pmatrix} I & 0 \\ \phi^\top & I \end{pmatrix}` and
:math:`\Lambda = \mathrm{diag}(\lambda_\mathrm{in}, \lambda_\mathrm{out})`, so that ``y = x W`` with

.. math:: W_{ij} = \phi_{ij}\,(\lambda_{\mathrm{in},i} - \lambda_{\mathrm{out},j}).

As in the authors' public code, :math:`\lambda_\mathrm{in}` is fixed at 0 and :math:`\lambda_\mathrm{out}` starts at
ones, so each hidden node :math:`j` owns one eigenvalue :math:`\lambda_j` that gates its incoming weights
(:math:`W_{:,j} = -\lambda_j \phi_{:,j}`), and setting :math:`\lambda_j = 0` removes the node exactly. With L2 on
both factors the penalty of a node at its best split is :math:`2\sqrt{\alpha\beta}\,\|W_{:,j}\|`, a group lasso
(:func:`group_lasso_penalty`): nodes switch off, and pruning by eigenvalue leaves a sub-network of about the
teacher's size. The conventional ("direct") baseline is the same layer with :math:`\lambda \equiv 1` frozen.

Conventions: inputs are rows (``y = x W``, W of shape (in, out)), so the *column* :math:`j` of W is node
:math:`j`'s incoming weights. The model's second hidden layer is trained and unregularised, its output layer a
frozen sum, as in the authors' code. Training is full-batch Adam through :func:`kdnb.core.training.fit`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.training import fit
from ..core.validation import (
    check_bool,
    check_choice,
    check_finite_tensor,
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_sequence,
)

__all__ = [
    "MODES",
    "SCORES",
    "CollapseFit",
    "SpectralLinear",
    "SpectralNet",
    "StudentRun",
    "active_count",
    "collapse_fit",
    "gaussian_inputs",
    "group_lasso_penalty",
    "make_student",
    "make_teacher",
    "mse_ramp",
    "node_importance",
    "path_magnitudes",
    "prune_nodes",
    "spectral_penalty",
    "train_student",
]

MODES = ("spectral", "direct")
SCORES = ("rescaled", "eigenvalue")


def _glorot_uniform(fan_in: int, fan_out: int, generator: torch.Generator | None) -> torch.Tensor:
    """Glorot (Xavier) uniform draws of shape (fan_in, fan_out), bound :math:`\\sqrt{6/(fan_{in}+fan_{out})}`."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return (torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound


class SpectralLinear(nn.Module):
    r"""A dense layer in the spectral parametrisation, ``y = x W`` with :math:`W_{ij} = \phi_{ij}(\lambda_{in,i} -
    \lambda_{out,j})`.

    Parameters
    ----------
    in_features : int
        :math:`n_\mathrm{in}` >= 1, the size of the layer the map starts from.
    out_features : int
        :math:`n_\mathrm{out}` >= 1, the number of nodes the map feeds (each owns one eigenvalue
        :math:`\lambda_{out,j}`).
    mode : {"spectral", "direct"}, default "spectral"
        ``"spectral"``: :math:`\phi` and :math:`\lambda_\mathrm{out}` are trained. ``"direct"``: :math:`\lambda`
        is frozen at its initial value (ones), the conventional dense layer :math:`W = -\phi`, the paper's baseline.
    train_in_eigenvalues : bool, default False
        Also train :math:`\lambda_\mathrm{in}` (initialised at 0). False is the authors' code; True is a switch,
        spectral mode only.
    generator : torch.Generator, optional
        CPU generator of the Glorot-uniform draw of :math:`\phi`; ``None`` uses torch's global state.

    Attributes
    ----------
    phi : torch.nn.Parameter
        (in_features, out_features), the non-trivial eigenvector components, Glorot-uniform.
    eigenvalues_in : torch.nn.Parameter
        (in_features,), :math:`\lambda_\mathrm{in}`, zeros; trained only with ``train_in_eigenvalues``.
    eigenvalues_out : torch.nn.Parameter
        (out_features,), :math:`\lambda_\mathrm{out}`, ones (the layer starts as a plain dense layer); trained in
        spectral mode.

    Raises
    ------
    TypeError
        If a size is not an int, ``train_in_eigenvalues`` is not a bool or ``generator`` not a torch.Generator.
    ValueError
        If a size is < 1, ``mode`` is unknown, or ``train_in_eigenvalues`` is combined with direct mode.

    References
    ----------
    Giambagli et al. 2023, the spectral parametrisation (as in the authors' ``customspectral.py``: ``base``,
    ``diag_start`` and ``diag_end`` are :math:`\phi`, :math:`\lambda_\mathrm{in}` and :math:`\lambda_\mathrm{out}`).
    """

    def __init__(self, in_features: int, out_features: int, mode: str = "spectral",
                 train_in_eigenvalues: bool = False, generator: torch.Generator | None = None):
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.mode = check_choice(mode, "mode", MODES)
        self.train_in_eigenvalues = check_bool(train_in_eigenvalues, "train_in_eigenvalues")
        if self.train_in_eigenvalues and mode == "direct":
            raise ValueError("train_in_eigenvalues=True needs mode='spectral' (direct mode freezes every eigenvalue)")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.phi = nn.Parameter(_glorot_uniform(self.in_features, self.out_features, generator))
        self.eigenvalues_in = nn.Parameter(torch.zeros(self.in_features), requires_grad=self.train_in_eigenvalues)
        self.eigenvalues_out = nn.Parameter(torch.ones(self.out_features), requires_grad=mode == "spectral")

    def weight(self) -> torch.Tensor:
        r"""The direct-space weights :math:`W_{ij} = \phi_{ij}(\lambda_{in,i} - \lambda_{out,j})`.

        Returns
        -------
        torch.Tensor
            (in_features, out_features); differentiable in :math:`\phi` and the eigenvalues.
        """
        return self.phi * (self.eigenvalues_in[:, None] - self.eigenvalues_out[None, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The map ``x W``.

        Parameters
        ----------
        x : torch.Tensor
            (N, in_features) inputs.

        Returns
        -------
        torch.Tensor
            (N, out_features), the layer's pre-activations.
        """
        return x @ self.weight()

    @torch.no_grad()
    def operator(self) -> torch.Tensor:
        r"""The (in+out)² operator :math:`A = \Phi \Lambda \Phi^{-1}`, built by products and an explicit inverse.

        Returns
        -------
        torch.Tensor
            Float64, (in+out, in+out). Its lower-left (out, in) block is :math:`W^\top` and its eigenvalues are
            :math:`\{\lambda_\mathrm{in}, \lambda_\mathrm{out}\}` (the identities the tests check).
        """
        n_in, n_out = self.in_features, self.out_features
        basis = torch.eye(n_in + n_out, dtype=torch.float64)
        basis[n_in:, :n_in] = self.phi.detach().to(torch.float64).T
        spectrum = torch.cat([self.eigenvalues_in.detach(), self.eigenvalues_out.detach()]).to(torch.float64)
        return basis @ torch.diag(spectrum) @ torch.linalg.inv(basis)

    def extra_repr(self) -> str:
        """The layer's sizes and mode, shown in the module's repr.

        Returns
        -------
        str
            ``"in_features=…, out_features=…, mode=…"``.
        """
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode!r}"


class SpectralNet(nn.Module):
    """The teacher–student network: ``sum(relu(second(relu(hidden(x)))))`` over the second layer's nodes.

    Parameters
    ----------
    hidden : SpectralLinear
        The first layer (input -> first hidden), whose nodes are scored and pruned.
    second : torch.nn.Module
        The second layer (first hidden -> second hidden), a module mapping (N, hidden.out_features) to (N, K).

    Raises
    ------
    TypeError
        If ``hidden`` is not a :class:`SpectralLinear` or ``second`` not a torch module.

    Notes
    -----
    The output layer is the frozen all-ones dense layer of the authors' code, written as a sum: it has no
    parameter. The output has shape (N,).
    """

    def __init__(self, hidden: SpectralLinear, second: nn.Module):
        super().__init__()
        if not isinstance(hidden, SpectralLinear):
            raise TypeError(f"hidden must be a SpectralLinear, got {type(hidden).__name__}")
        if not isinstance(second, nn.Module):
            raise TypeError(f"second must be a torch.nn.Module, got {type(second).__name__}")
        self.hidden = hidden
        self.second = second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output.

        Parameters
        ----------
        x : torch.Tensor
            (N, input_dim) inputs.

        Returns
        -------
        torch.Tensor
            (N,) outputs, the sum over the second hidden layer's ReLU activations.
        """
        return torch.relu(self.second(torch.relu(self.hidden(x)))).sum(-1)


def make_teacher(input_dim: int = 10, hidden: int = 20, second: int = 10, seed: int = 0) -> SpectralNet:
    """The teacher network of the authors' code: two frozen dense ReLU layers without bias and a sum.

    Parameters
    ----------
    input_dim : int, default 10
        Input dimension d >= 1.
    hidden : int, default 20
        :math:`h_T` >= 1, the first hidden layer's width, the size the student's pruning should find.
    second : int, default 10
        Width of the second hidden layer, >= 1. The authors' configuration does not give it; 10 is this book's
        choice.
    seed : int, default 0
        Seeds the Glorot-uniform draws: ``seed`` for the first layer, ``seed + 1`` for the second (0 and 1 in the
        authors' code, whose draws are TensorFlow's and differ from these), >= 0.

    Returns
    -------
    SpectralNet
        In eval mode, every parameter frozen (:math:`\\lambda \\equiv 1`, direct mode).

    Raises
    ------
    TypeError, ValueError
        If a size is not an int >= 1 or ``seed`` not an int >= 0.
    """
    seed = check_positive_int(seed, "seed", minimum=0)
    first = SpectralLinear(input_dim, hidden, mode="direct", generator=torch.Generator().manual_seed(seed))
    last = SpectralLinear(hidden, second, mode="direct", generator=torch.Generator().manual_seed(seed + 1))
    teacher = SpectralNet(first, last)
    teacher.requires_grad_(False)
    return teacher.eval()


def make_student(width: int, mode: str = "spectral", *, generator: torch.Generator, input_dim: int = 10,
                 second: int = 10, train_in_eigenvalues: bool = False) -> SpectralNet:
    """A student of the authors' code: a spectral (or direct) layer of ``width`` nodes, a trained dense layer, a sum.

    Parameters
    ----------
    width : int
        Width of the first hidden layer, >= 1 (over-parameterised when above the teacher's :math:`h_T`).
    mode : {"spectral", "direct"}, default "spectral"
        The first layer's mode (see :class:`SpectralLinear`).
    generator : torch.Generator
        Draws the Glorot-uniform initial weights of both layers (from ``run.generator_for``).
    input_dim : int, default 10
        Input dimension d >= 1.
    second : int, default 10
        Width of the second hidden layer (the teacher's), >= 1; a bias-free dense ReLU layer, trained, unregularised.
    train_in_eigenvalues : bool, default False
        Also train :math:`\\lambda_\\mathrm{in}` of the first layer (spectral mode only).

    Returns
    -------
    SpectralNet
        The untrained student.

    Raises
    ------
    TypeError, ValueError
        As :class:`SpectralLinear`, or if ``generator`` is not a torch.Generator.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    first = SpectralLinear(input_dim, width, mode=mode, train_in_eigenvalues=train_in_eigenvalues,
                           generator=generator)
    second = check_positive_int(second, "second")
    layer = nn.Linear(first.out_features, second, bias=False)
    with torch.no_grad():
        layer.weight.copy_(_glorot_uniform(first.out_features, second, generator).T)
    return SpectralNet(first, layer)


def gaussian_inputs(n: int, input_dim: int = 10, *, generator: torch.Generator) -> torch.Tensor:
    """Standard Gaussian inputs :math:`x \\sim N(0, I_d)`, as the authors' ``DatasetMaker``.

    Parameters
    ----------
    n : int
        Number of inputs, >= 1.
    input_dim : int, default 10
        Dimension d >= 1.
    generator : torch.Generator
        CPU generator of the draw.

    Returns
    -------
    torch.Tensor
        (n, input_dim), float32.

    Raises
    ------
    TypeError, ValueError
        If a size is not an int >= 1 or ``generator`` is not a torch.Generator.
    """
    n, input_dim = check_positive_int(n, "n"), check_positive_int(input_dim, "input_dim")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return torch.randn(n, input_dim, generator=generator)


def _spectral_layers(model: nn.Module) -> list[SpectralLinear]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return [m for m in model.modules() if isinstance(m, SpectralLinear)]


def spectral_penalty(model: nn.Module, alpha_phi: float = 1e-2, alpha_lambda: float = 1e-2,
                     l1_lambda: float = 0.0) -> torch.Tensor:
    r"""The regularisation of the spectral layers: :math:`\alpha_\phi \sum \phi^2 + \alpha_\lambda \sum \lambda^2 +
    \ell_1 \sum |\lambda|`.

    Summed over every :class:`SpectralLinear` of ``model``; the eigenvalue terms cover only the trained eigenvalues
    (in direct mode they would be a constant). Keras' ``'l2'`` regulariser, which the authors' code puts on
    :math:`\phi`, is :math:`0.01 \sum \phi^2`; their eigenvalue L2 is :math:`5 \cdot 10^{-4}`.

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`SpectralNet` or :class:`SpectralLinear` (any module holding spectral layers).
    alpha_phi : float, default 1e-2
        :math:`\alpha_\phi` >= 0, the L2 coefficient on :math:`\phi`.
    alpha_lambda : float, default 1e-2
        :math:`\alpha_\lambda` >= 0, the L2 coefficient on the trained eigenvalues. 1e-2 is this book's CPU
        default; the authors' 5e-4 needs far more steps to sparsify.
    l1_lambda : float, default 0.0
        L1 coefficient on the trained eigenvalues, >= 0 (a switch).

    Returns
    -------
    torch.Tensor
        A scalar, differentiable in the layers' parameters (0 when the model has no spectral layer).

    Raises
    ------
    TypeError
        If ``model`` is not a torch module or a coefficient is not a real number.
    ValueError
        If a coefficient is negative or NaN.
    """
    alpha_phi = check_nonnegative(alpha_phi, "alpha_phi")
    alpha_lambda = check_nonnegative(alpha_lambda, "alpha_lambda")
    l1_lambda = check_nonnegative(l1_lambda, "l1_lambda")
    total = torch.zeros(())
    for layer in _spectral_layers(model):
        total = total + alpha_phi * layer.phi.pow(2).sum()
        for eigenvalues in (layer.eigenvalues_in, layer.eigenvalues_out):
            if eigenvalues.requires_grad:
                total = total + alpha_lambda * eigenvalues.pow(2).sum() + l1_lambda * eigenvalues.abs().sum()
    return total


def group_lasso_penalty(w: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    r"""The smallest L2 penalty of a factorisation :math:`w = \lambda\phi`: :math:`\min_\lambda \alpha\|w/\lambda\|^2
    + \beta\lambda^2 = 2\sqrt{\alpha\beta}\,\|w\|`.

    Attained at :math:`\lambda^2 = \sqrt{\alpha/\beta}\,\|w\|` (by the AM–GM inequality). Summed over nodes it is a
    group lasso: with L2 on both factors a spectral layer pays :math:`\|W_{:,j}\|`, not its square, so whole nodes
    switch off, which plain L2 on W does not do.

    Parameters
    ----------
    w : torch.Tensor
        (..., n) vectors (a node's incoming weights in the last dimension), floating point, finite.
    alpha, beta : float
        The L2 coefficients on :math:`\phi` and on :math:`\lambda`, > 0.

    Returns
    -------
    torch.Tensor
        (...,), :math:`2\sqrt{\alpha\beta}\,\|w\|_2` for each vector.

    Raises
    ------
    TypeError, ValueError
        If ``w`` is not a finite floating tensor or a coefficient is not > 0.
    """
    check_finite_tensor(w, "w")
    alpha, beta = check_positive(alpha, "alpha"), check_positive(beta, "beta")
    return 2 * math.sqrt(alpha * beta) * w.norm(dim=-1)


def _first_layer(model) -> SpectralLinear:
    if isinstance(model, SpectralLinear):
        return model
    if isinstance(model, SpectralNet):
        return model.hidden
    raise TypeError(f"expected a SpectralNet or a SpectralLinear, got {type(model).__name__}")


@torch.no_grad()
def node_importance(layer: SpectralLinear | SpectralNet, score: str = "rescaled") -> torch.Tensor:
    r"""The importance of each node of a spectral layer, the ranking that pruning follows.

    Parameters
    ----------
    layer : SpectralLinear or SpectralNet
        The layer (for a network, its first hidden layer).
    score : {"rescaled", "eigenvalue"}, default "rescaled"
        ``"rescaled"``: :math:`|\lambda_j|\,\|\phi_{:,j}\|\,\sqrt N` (N the width), which is
        :math:`\sqrt N \|W_{:,j}\|` when :math:`\lambda_\mathrm{in} = 0`: the authors' ``RescaledEigenvalue``.
        ``"eigenvalue"``: :math:`|\lambda_j|` alone, as SpectralTools' percentile pruning. The paper's own score is
        not known to this book; neither is "the paper's".

    Returns
    -------
    torch.Tensor
        (N,) non-negative scores, float32.

    Raises
    ------
    TypeError
        If ``layer`` is neither a SpectralLinear nor a SpectralNet.
    ValueError
        If ``score`` is unknown.
    """
    layer = _first_layer(layer)
    check_choice(score, "score", SCORES)
    eigenvalues = layer.eigenvalues_out.detach().abs()
    if score == "eigenvalue":
        return eigenvalues.clone()
    return eigenvalues * layer.phi.detach().norm(dim=0) * math.sqrt(layer.out_features)


def _check_threshold(threshold) -> float:
    threshold = check_positive(threshold, "threshold")
    if not threshold < 1:
        raise ValueError(f"threshold must be in (0, 1) (a fraction of the largest score), got {threshold!r}")
    return threshold


def active_count(layer: SpectralLinear | SpectralNet, threshold: float = 0.05, score: str = "rescaled") -> int:
    """The number of active nodes: those whose max-normalised importance exceeds ``threshold``.

    Parameters
    ----------
    layer : SpectralLinear or SpectralNet
        The layer (for a network, its first hidden layer).
    threshold : float, default 0.05
        In (0, 1); 0.05 as the authors' ``AverageDimension``.
    score : {"rescaled", "eigenvalue"}, default "rescaled"
        The importance (see :func:`node_importance`).

    Returns
    -------
    int
        The count, in [0, N] (0 if every score is 0).

    Raises
    ------
    TypeError, ValueError
        As :func:`node_importance`, or if ``threshold`` is outside (0, 1).
    """
    threshold = _check_threshold(threshold)
    scores = node_importance(layer, score)
    top = float(scores.max())
    if top == 0:
        return 0
    return int((scores / top > threshold).sum())


@torch.no_grad()
def prune_nodes(model: SpectralNet, keep: int, score: str = "rescaled") -> SpectralNet:
    r"""A copy of ``model`` that keeps the ``keep`` most important first-layer nodes and removes the others.

    A node is removed by setting its eigenvalue :math:`\lambda_j` to 0, which zeroes its incoming weights
    :math:`W_{:,j} = \phi_{:,j}(\lambda_\mathrm{in} - \lambda_j)` when :math:`\lambda_\mathrm{in} = 0`: the
    network then computes exactly what it computes with node j deleted (no bias, ReLU(0) = 0). When
    :math:`\lambda_\mathrm{in}` was trained, :math:`\phi_{:,j}` is zeroed too, so that the removal stays exact.
    Ties in the score are broken by node index (a stable sort).

    Parameters
    ----------
    model : SpectralNet
        The trained network; it is not modified.
    keep : int
        Number of nodes kept, in [0, width].
    score : {"rescaled", "eigenvalue"}, default "rescaled"
        The ranking (see :func:`node_importance`).

    Returns
    -------
    SpectralNet
        A deep copy, in eval mode, with the other nodes removed.

    Raises
    ------
    TypeError
        If ``model`` is not a SpectralNet or ``keep`` not an int.
    ValueError
        If ``keep`` is outside [0, width] or ``score`` is unknown.
    """
    if not isinstance(model, SpectralNet):
        raise TypeError(f"model must be a SpectralNet, got {type(model).__name__}")
    width = model.hidden.out_features
    keep = check_positive_int(keep, "keep", minimum=0)
    if keep > width:
        raise ValueError(f"keep must be in [0, {width}] (the width), got {keep}")
    order = torch.sort(node_importance(model, score), descending=True, stable=True).indices
    pruned = copy.deepcopy(model).eval()
    removed = order[keep:]
    pruned.hidden.eigenvalues_out[removed] = 0.0
    if bool((pruned.hidden.eigenvalues_in != 0).any()):
        pruned.hidden.phi[:, removed] = 0.0
    return pruned


@torch.no_grad()
def path_magnitudes(model: SpectralNet) -> np.ndarray:
    r"""The magnitudes :math:`|W^{(1)}_{ij} W^{(2)}_{jk}|` of every input → first hidden → second hidden path, sorted.

    A path's product is unchanged by the rescaling symmetry of a bias-free ReLU node (incoming weights times
    :math:`c > 0`, outgoing weights divided by :math:`c`), so the sorted magnitudes of a student and of its teacher
    can be compared although their weights cannot; the authors' analysis code compares them for pruned students.

    Parameters
    ----------
    model : SpectralNet
        A teacher or a (pruned) student; its second layer is a :class:`SpectralLinear` or a bias-free
        :class:`torch.nn.Linear`.

    Returns
    -------
    numpy.ndarray
        (d · N · K,) float64, in decreasing order (paths through removed nodes give zeros at the end).

    Raises
    ------
    TypeError
        If ``model`` is not a SpectralNet, or its second layer is neither of the two kinds.
    """
    if not isinstance(model, SpectralNet):
        raise TypeError(f"model must be a SpectralNet, got {type(model).__name__}")
    first = model.hidden.weight().detach().double()  # (d, N)
    if isinstance(model.second, SpectralLinear):
        second = model.second.weight().detach().double()  # (N, K)
    elif isinstance(model.second, nn.Linear) and model.second.bias is None:
        second = model.second.weight.detach().double().T
    else:
        raise TypeError(f"the second layer must be a SpectralLinear or a bias-free Linear, got {model.second!r}")
    paths = (first[:, :, None] * second[None, :, :]).abs().ravel().numpy()
    return np.sort(paths)[::-1].copy()


@torch.no_grad()
def _mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((model(x) - y) ** 2).mean())


def _check_data(model: SpectralNet, x, y) -> None:
    check_finite_tensor(x, "x")
    check_finite_tensor(y, "y")
    if x.ndim != 2 or x.shape[1] != model.hidden.in_features:
        raise ValueError(f"x must have shape (N, {model.hidden.in_features}) (the model's input dimension), got "
                         f"{tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},) (one target per input), got {tuple(y.shape)}")


def mse_ramp(model: SpectralNet, x: torch.Tensor, y: torch.Tensor, keep_counts, score: str = "rescaled"
             ) -> np.ndarray:
    r"""The cost of pruning: :math:`\Delta\mathrm{MSE}(n) = |\mathrm{MSE}_\mathrm{pruned} - \mathrm{MSE}_\mathrm{full}|`
    on (test) data, keeping the top ``n`` nodes, for each ``n`` of ``keep_counts``.

    The authors' ``MSERamp`` sweeps cut-offs on the normalised score; a node count is the same ranking, indexed by
    what is kept, so that every width is compared at the same ``n``.

    Parameters
    ----------
    model : SpectralNet
        The trained network.
    x : torch.Tensor
        (N, input_dim) inputs.
    y : torch.Tensor
        (N,) targets (the teacher's outputs).
    keep_counts : sequence of int
        Node counts, each in [0, width].
    score : {"rescaled", "eigenvalue"}, default "rescaled"
        The ranking (see :func:`node_importance`).

    Returns
    -------
    numpy.ndarray
        (len(keep_counts),) float64, :math:`\Delta\mathrm{MSE}` for each count (0 exactly when every node is kept).

    Raises
    ------
    TypeError, ValueError
        If ``model`` is not a SpectralNet, the data have the wrong shapes or non-finite values (x must match the
        model's input dimension), or a count is outside [0, width].
    """
    if not isinstance(model, SpectralNet):
        raise TypeError(f"model must be a SpectralNet, got {type(model).__name__}")
    _check_data(model, x, y)
    counts = check_sequence(keep_counts, "keep_counts")
    full = _mse(model, x, y)
    return np.array([abs(_mse(prune_nodes(model, n, score), x, y) - full) for n in counts], dtype=np.float64)


def train_student(student: SpectralNet, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
                  generator: torch.Generator, lr: float = 5e-3, alpha_phi: float = 1e-2, alpha_lambda: float = 1e-2,
                  l1_lambda: float = 0.0, batch_size: int | None = None) -> list[float]:
    """Train ``student`` in place on the teacher's outputs: Adam on MSE plus :func:`spectral_penalty`.

    The penalty enters through the objective, which closes over the model: :func:`kdnb.core.training.fit`'s
    ``weight_decay`` would put one coefficient on every parameter, the unregularised second layer included.

    Parameters
    ----------
    student : SpectralNet
        The network, trained in place (left in eval mode).
    x : torch.Tensor
        (N, input_dim) training inputs.
    y : torch.Tensor
        (N,) the teacher's outputs on them.
    epochs : int
        Passes over the data, >= 1; with ``batch_size=None`` (full batch, the book's CPU default) it is the number
        of Adam steps.
    generator : torch.Generator
        Shuffles the mini-batches in :func:`kdnb.core.training.fit` (full-batch training draws nothing from it).
    lr : float, default 5e-3
        Adam's learning rate, > 0 (the authors' value for spectral students).
    alpha_phi, alpha_lambda, l1_lambda : float
        The penalty's coefficients (see :func:`spectral_penalty`), >= 0.
    batch_size : int, optional
        Mini-batch size (the authors' code uses 300 for spectral and 500 for direct students); ``None`` (default)
        trains full-batch.

    Returns
    -------
    list of float
        The mean objective (MSE plus penalty) of each epoch, from the values before each update.

    Raises
    ------
    TypeError, ValueError
        If ``student`` is not a SpectralNet, the data have the wrong shapes, or a setting is out of range.
    """
    if not isinstance(student, SpectralNet):
        raise TypeError(f"student must be a SpectralNet, got {type(student).__name__}")
    _check_data(student, x, y)
    spectral_penalty(student, alpha_phi, alpha_lambda, l1_lambda)  # validates the coefficients before training

    def objective(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ((outputs - targets) ** 2).mean() + spectral_penalty(student, alpha_phi, alpha_lambda, l1_lambda)

    history = fit(student, objective, x, [y], epochs=epochs, generator=generator, lr=lr, batch_size=batch_size,
                  progress=False)
    return history.loss


@dataclass(frozen=True)
class StudentRun:
    """What the chapter keeps of one trained student.

    Parameters
    ----------
    mode : str
        ``"spectral"`` or ``"direct"``.
    width : int
        The first hidden layer's width N.
    repeat : int
        The seed index.
    test_mse : float
        The full network's test MSE against the teacher.
    importance : numpy.ndarray
        (N,) max-normalised importance scores, sorted in decreasing order.
    active : int
        The number of scores above the activity threshold.
    ramp : numpy.ndarray
        :math:`\\Delta\\mathrm{MSE}` for each of the chapter's keep counts (NaN where a count exceeds N).
    """

    mode: str
    width: int
    repeat: int
    test_mse: float
    importance: np.ndarray
    active: int
    ramp: np.ndarray

    @classmethod
    def measure(cls, student: SpectralNet, x_test: torch.Tensor, y_test: torch.Tensor, keep_counts, *, repeat: int,
                threshold: float = 0.05, score: str = "rescaled") -> StudentRun:
        """Measure a trained student: test MSE, importance, active count and pruning ramp.

        Parameters
        ----------
        student : SpectralNet
            The trained network.
        x_test : torch.Tensor
            (N_test, input_dim) test inputs.
        y_test : torch.Tensor
            (N_test,) the teacher's outputs on them.
        keep_counts : sequence of int
            The node counts of the ramp; those above the width give NaN.
        repeat : int
            The seed index, recorded.
        threshold : float, default 0.05
            The activity threshold (see :func:`active_count`).
        score : {"rescaled", "eigenvalue"}, default "rescaled"
            The ranking (see :func:`node_importance`).

        Returns
        -------
        StudentRun
            The measurements.
        """
        width = student.hidden.out_features
        counts = check_sequence(keep_counts, "keep_counts")
        inside = [n for n in counts if n <= width]
        ramp = dict(zip(inside, mse_ramp(student, x_test, y_test, inside, score)))
        scores = node_importance(student, score).numpy().astype(np.float64)
        top = scores.max()
        return cls(student.hidden.mode, width, int(repeat), _mse(student, x_test, y_test),
                   np.sort(scores / top if top > 0 else scores)[::-1].copy(),
                   active_count(student, threshold, score), np.array([ramp.get(n, np.nan) for n in counts]))


@dataclass(frozen=True)
class CollapseFit:
    r"""The fit :math:`y = a\,e^{-b x} + c` of the collapsed pruning ramps.

    Parameters
    ----------
    a, b, c : float
        The fitted coefficients.
    residual : float
        Root-mean-square residual of the fit on the points used.
    """

    a: float
    b: float
    c: float
    residual: float

    def __call__(self, x):
        """The fitted curve.

        Parameters
        ----------
        x : array_like
            Points :math:`x = n/h_T - 1`.

        Returns
        -------
        numpy.ndarray
            :math:`a e^{-b x} + c` at each point.
        """
        return self.a * np.exp(-self.b * np.asarray(x, dtype=np.float64)) + self.c


def collapse_fit(x, y) -> CollapseFit:
    r"""Fit :math:`a\,e^{-bx} + c` to collapsed ramps, on the points below the teacher's size (:math:`x < 0`).

    The collapse, as in the authors' (commented) analysis code: :math:`x = n/h_T - 1` and
    :math:`y = \Delta\mathrm{MSE}/\max\Delta\mathrm{MSE}` for each student, all students pooled. The fit uses
    :func:`scipy.optimize.curve_fit` from :math:`(a, b, c) = (0.1, 3, 0)`.

    Parameters
    ----------
    x, y : array_like
        1-D, the same length, finite; at least three points with :math:`x < 0`.

    Returns
    -------
    CollapseFit
        The coefficients and the RMS residual.

    Raises
    ------
    ValueError
        If the arrays are not 1-D of the same length, not finite, or fewer than three points have :math:`x < 0`.
    """
    from scipy.optimize import curve_fit

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D arrays of the same length, got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite")
    below = x < 0
    if below.sum() < 3:
        raise ValueError(f"x must have at least 3 points below 0 (below the teacher's size), got {int(below.sum())}")

    def curve(t, a, b, c):
        return a * np.exp(-b * t) + c

    (a, b, c), _ = curve_fit(curve, x[below], y[below], p0=(0.1, 3.0, 0.0), maxfev=20000)
    residual = float(np.sqrt(np.mean((curve(x[below], a, b, c) - y[below]) ** 2)))
    return CollapseFit(float(a), float(b), float(c), residual)
