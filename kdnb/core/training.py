"""Training: one small fit loop for every chapter, its history, and evaluation.

A chapter never writes its own loop: it builds a model, picks an objective (:func:`cross_entropy_objective`,
:func:`distillation_objective`, or any callable ``loss(outputs, *targets) -> scalar``) and calls :func:`fit`, which
also offers SGD momentum, a cosine learning-rate schedule, a per-step callback and parameter groups. Mini-batches are
shuffled with an explicit generator, so the same seed gives the same run. Every ``t2_scaling`` argument here defaults
to True: Hinton et al. (2015)'s :math:`T^2` factor on the soft term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from .losses import binary_kd_loss, kd_loss
from .progress import progress_bar
from .validation import (
    check_bool,
    check_choice,
    check_in_unit_interval,
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_soft_ratio,
    check_temperature,
)

__all__ = [
    "History",
    "accuracy",
    "cross_entropy_objective",
    "distill",
    "distillation_objective",
    "fit",
    "n_predicted_classes",
    "predict_logits",
    "teacher_snapshots",
    "train_classifier",
]

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")


@dataclass
class History:
    """Per-epoch training loss and, where an evaluation function was given, its metrics (as filled by :func:`fit`).

    Parameters
    ----------
    loss : list of float
        Mean training loss of each epoch, epochs 1, 2, ... in order.
    metrics : dict of str to list of float
        Each evaluated metric, one value per entry of ``epochs``.
    epochs : list of int
        The (1-based) epochs at which the metrics were evaluated.
    """

    loss: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    epochs: list[int] = field(default_factory=list)

    def to_frame(self):
        """The history as a table.

        Returns
        -------
        pandas.DataFrame
            Indexed by epoch (from 1), a ``"loss"`` column and one column per metric (NaN at epochs not evaluated).
        """
        import pandas as pd

        frame = pd.DataFrame({"loss": self.loss}, index=pd.RangeIndex(1, len(self.loss) + 1, name="epoch"))
        for name, values in self.metrics.items():
            frame[name] = pd.Series(values, index=self.epochs)
        return frame


def cross_entropy_objective() -> Callable[..., torch.Tensor]:
    """The objective of ordinary training on labels, for :func:`fit`.

    Returns
    -------
    callable
        ``loss(logits, labels) -> scalar``: the mean cross-entropy of (N, C) logits against (N,) int64 labels, or
        the mean binary cross-entropy of (N,) logits against (N,) labels in [0, 1].
    """

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.ndim == 1:
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return F.cross_entropy(logits, labels)

    return loss


def distillation_objective(
    rho: float, temperature: float, t2_scaling: bool = True, binary: bool = False
) -> Callable[..., torch.Tensor]:
    """The knowledge-distillation objective for :func:`fit`.

    Parameters
    ----------
    rho : float
        Soft ratio in [0, 1], the weight of the soft (teacher) term (1: pure distillation).
    temperature : float
        Temperature T > 0 of the soft term.
    t2_scaling : bool, default True
        Multiply the soft term by :math:`T^2` (default True: Hinton et al. 2015); False gives the plain soft term.
    binary : bool, default False
        One logit per example (:func:`kdnb.core.losses.binary_kd_loss`) instead of (N, C) logits
        (:func:`kdnb.core.losses.kd_loss`).

    Returns
    -------
    callable
        ``loss(student_logits, teacher_logits, labels=None, labelled=None) -> scalar``, the mean KD loss.

    Raises
    ------
    TypeError
        If ``t2_scaling`` or ``binary`` is not a bool (or numpy bool).
    ValueError
        If ``rho`` is outside [0, 1] or ``temperature`` is not > 0.

    References
    ----------
    Hinton, G., Vinyals, O. and Dean, J. (2015). Distilling the knowledge in a neural network. arXiv:1503.02531.
    """
    rho = check_soft_ratio(rho)
    temperature = check_temperature(temperature)
    t2_scaling = check_bool(t2_scaling, "t2_scaling")
    base = binary_kd_loss if check_bool(binary, "binary") else kd_loss

    def loss(student_logits, teacher_logits, labels=None, labelled=None):
        return base(student_logits, teacher_logits, labels, rho=rho, temperature=temperature,
                    t2_scaling=t2_scaling, labelled=labelled)

    return loss


def fit(
    model: nn.Module,
    objective: Callable[..., torch.Tensor],
    inputs: torch.Tensor,
    targets: Sequence[torch.Tensor | None],
    *,
    epochs: int,
    generator: torch.Generator,
    lr: float = 1e-2,
    batch_size: int | None = None,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    eval_every: int = 1,
    progress: bool | None = None,
    desc: str = "fit",
    momentum: float = 0.0,
    nesterov: bool = False,
    schedule: str = "constant",
    callback: Callable[[int, float, nn.Module], object] | None = None,
    params: Sequence[torch.Tensor] | Sequence[dict] | None = None,
) -> History:
    r"""Train ``model`` in place by minimising ``objective(model(x_batch), *targets_batch)``; return the history.

    Each epoch shuffles the examples with ``generator`` (unless full-batch) and takes one optimiser step per
    mini-batch, so there are :math:`S = \mathrm{epochs} \cdot \lceil N / \mathrm{batch\_size} \rceil` steps in all.
    The model is in train mode while it trains and is left in eval mode. With the defaults (constant learning rate,
    no momentum, every trainable parameter of ``model`` in one group, no callback) the optimiser is built and stepped
    exactly as it always was, so earlier results are reproduced bit for bit.

    Parameters
    ----------
    model : torch.nn.Module
        The network, trained in place; its output is the first argument of ``objective``.
    objective : callable
        ``objective(outputs, *batch_targets) -> scalar tensor``, e.g. :func:`cross_entropy_objective` or
        :func:`distillation_objective`. It may close over other modules (a paraphraser, a translator); their
        parameters are trained when they are in ``params``, and their train/eval mode is the caller's.
    inputs : torch.Tensor
        (N, ...) inputs on the model's device, N >= 1.
    targets : list or tuple
        Tensors with first dimension N, sliced into batches alongside ``inputs``, or ``None`` entries, which are
        passed through as ``None``.
    epochs : int
        Passes over the data, >= 1.
    generator : torch.Generator
        CPU generator that shuffles the mini-batches (one ``randperm`` of N per epoch when ``batch_size < N``);
        required even for full-batch training, so that no draw ever falls back on the global random state.
    lr : float, default 1e-2
        Learning rate, > 0 (the peak rate with ``schedule="cosine"``; the default of groups in ``params``).
    batch_size : int, optional
        Mini-batch size, an int >= 1; ``None`` (default) or a value >= N for full-batch training.
    optimizer : {"adam", "sgd"}, default "adam"
        Adam, or stochastic gradient descent (plain unless ``momentum > 0``).
    weight_decay : float, default 0.0
        L2 penalty coefficient (the optimiser's ``weight_decay``), >= 0.
    evaluate : callable, optional
        ``f(model) -> {name: value}``, called every ``eval_every`` epochs and after the last, in eval mode and
        without gradients; the values are recorded in ``History.metrics``.
    eval_every : int, default 1
        Evaluation period in epochs, >= 1.
    progress : bool or None, default None
        Show a tqdm bar over epochs (``True``), never (``False``), or only where someone watches (``None``: in a
        Jupyter kernel or when standard error is a terminal; see :func:`kdnb.core.progress.progress_bar`).
    desc : str, default "fit"
        Label of the progress bar.
    momentum : float, default 0.0
        Heavy-ball momentum of SGD, in [0, 1): :math:`v \leftarrow \mu v + g`, :math:`w \leftarrow w - \eta v`
        (PyTorch's convention, no dampening). Only with ``optimizer="sgd"``.
    nesterov : bool, default False
        Nesterov momentum (:math:`w \leftarrow w - \eta (g + \mu v)`), a bool or numpy bool; needs
        ``optimizer="sgd"`` and ``momentum > 0``.
    schedule : {"constant", "cosine"}, default "constant"
        Learning-rate schedule. ``"cosine"``: step :math:`t = 0, \dots, S-1` uses
        :math:`\eta_t = \tfrac12 \eta \, (1 + \cos(\pi t / S))` for each group's base rate :math:`\eta`, from
        :math:`\eta` at the first step towards 0 (reached at :math:`t = S`, after the last step); no warm-up.
    callback : callable, optional
        ``callback(step, loss, model)``, called after every optimiser step (S calls in all, before any evaluation of
        that epoch), with ``step`` the number of steps taken so far (1 to S), ``loss`` the float value of the
        mini-batch loss that step descended (computed before the update) and ``model`` in train mode. Its return
        value is ignored.
    params : sequence, optional
        What the optimiser updates instead of every trainable parameter of ``model``: a sequence of tensors (one
        group), or torch-style parameter groups ``[{"params": [...], "lr": ..., "weight_decay": ...}, ...]`` whose
        optional ``"lr"`` (> 0) and ``"weight_decay"`` (>= 0) override ``lr`` and ``weight_decay`` for that group,
        e.g. a student and a paraphraser trained at different rates. Every tensor must be a leaf that requires
        gradients, and appear once.

    Returns
    -------
    History
        The mean training loss of each epoch (averaged over examples, from the mini-batch losses before each step)
        and the evaluated metrics.

    Raises
    ------
    TypeError
        If ``model``, ``objective``, ``inputs``, ``targets``, ``generator``, ``batch_size``, ``callback``,
        ``nesterov``, ``params`` or ``progress`` (None or a bool) has the wrong type.
    ValueError
        If ``inputs`` holds no example, a number is out of its range, a choice is unknown, momentum is combined with
        Adam, a target's length is not N, a parameter group is malformed, or ``objective`` does not return a scalar.

    References
    ----------
    Kingma, D. P. and Ba, J. (2015). Adam: a method for stochastic optimization. ICLR 2015.
    Sutskever, I., Martens, J., Dahl, G. and Hinton, G. (2013). On the importance of initialization and momentum in
    deep learning. ICML 2013.
    Loshchilov, I. and Hutter, F. (2017). SGDR: stochastic gradient descent with warm restarts. ICLR 2017 (the
    cosine schedule, here without restarts).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(objective):
        raise TypeError("objective must be callable: objective(outputs, *targets) -> scalar tensor")
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.ndim == 0 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be an (N, ...) tensor with N >= 1 examples, got shape {tuple(inputs.shape)}")
    if isinstance(targets, torch.Tensor) or not isinstance(targets, (list, tuple)):
        raise TypeError("targets must be a list or tuple of tensors (or None), e.g. [labels]")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    n = inputs.shape[0]
    for i, t in enumerate(targets):
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape[0] != n):
            raise ValueError(f"targets[{i}] must be a tensor with first dimension {n} (the number of inputs)")
    epochs = check_positive_int(epochs, "epochs")
    lr = check_positive(lr, "lr")
    weight_decay = check_nonnegative(weight_decay, "weight_decay")
    eval_every = check_positive_int(eval_every, "eval_every")
    check_choice(optimizer, "optimizer", OPTIMIZERS)
    momentum, nesterov = _check_momentum(momentum, nesterov, optimizer)
    check_choice(schedule, "schedule", SCHEDULES)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable as callback(step, loss, model) or None, got "
                        f"{type(callback).__name__}")
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
    if batch_size is None or batch_size >= n:
        batch_size = n

    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        params = _check_param_groups(params)
    opt = (torch.optim.Adam(params, lr=lr, weight_decay=weight_decay) if optimizer == "adam"
           else torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay))
    total_steps = epochs * len(range(0, n, batch_size))
    base_lrs = [group["lr"] for group in opt.param_groups]
    step = 0
    history = History()
    bar = progress_bar(range(1, epochs + 1), desc=desc, enabled=progress, name="progress")
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=generator).to(inputs.device) if batch_size < n else None
        total, seen = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size] if order is not None else slice(None)
            batch_targets = [t[idx] if t is not None else None for t in targets]
            opt.zero_grad(set_to_none=True)
            if schedule == "cosine":
                for group, base_lr in zip(opt.param_groups, base_lrs):
                    group["lr"] = 0.5 * base_lr * (1.0 + math.cos(math.pi * step / total_steps))
            loss = objective(model(inputs[idx]), *batch_targets)
            if loss.ndim != 0:
                raise ValueError("objective must return a scalar tensor (use reduction='mean' or 'sum')")
            loss.backward()
            opt.step()
            step += 1
            m = n if order is None else len(idx)
            value = float(loss.detach())
            total += value * m
            seen += m
            if callback is not None:
                callback(step, value, model)
        history.loss.append(total / seen)
        if evaluate is not None and (epoch % eval_every == 0 or epoch == epochs):
            model.eval()
            with torch.no_grad():
                for name, value in evaluate(model).items():
                    history.metrics.setdefault(name, []).append(float(value))
            history.epochs.append(epoch)
        if not bar.disable:
            bar.set_postfix(loss=f"{history.loss[-1]:.4f}")
    model.eval()
    return history


def _check_momentum(momentum, nesterov, optimizer: str) -> tuple[float, bool]:
    """``momentum`` in [0, 1) and ``nesterov`` a bool, both for SGD only; returned as (float, bool)."""
    try:
        momentum = check_in_unit_interval(momentum, "momentum")
    except ValueError:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}") from None
    if momentum == 1:
        raise ValueError("momentum must be in [0, 1), got 1 (the velocity would never decay)")
    nesterov = check_bool(nesterov, "nesterov")
    if optimizer != "sgd" and (momentum > 0 or nesterov):
        raise ValueError(f"momentum and nesterov apply to optimizer='sgd' only (Adam keeps its own moment "
                         f"estimates), got optimizer={optimizer!r}")
    if nesterov and momentum == 0:
        raise ValueError("nesterov=True needs momentum > 0")
    return momentum, nesterov


GROUP_KEYS = ("params", "lr", "weight_decay")


def _check_param_groups(params) -> list:
    """``params`` of :func:`fit` as a list of tensors or of group dicts with list-valued ``"params"``, validated."""
    if isinstance(params, (torch.Tensor, dict)) or not isinstance(params, (list, tuple)):
        raise TypeError("params must be a list of tensors or a list of parameter groups "
                        "[{'params': [...], 'lr': ...}, ...]")
    if not params:
        raise ValueError("params must not be empty")
    if all(isinstance(p, dict) for p in params):
        groups = []
        for i, group in enumerate(params):
            extra = set(group) - set(GROUP_KEYS)
            if "params" not in group or extra:
                raise ValueError(f"params[{i}] must be a dict with a 'params' entry and optionally 'lr' and "
                                 f"'weight_decay', got keys {sorted(group)}")
            tensors = group["params"]
            tensors = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
            if not tensors:
                raise ValueError(f"params[{i}]['params'] must not be empty")
            checked = {"params": _check_trainable(tensors, f"params[{i}]['params']")}
            if "lr" in group:
                checked["lr"] = check_positive(group["lr"], f"params[{i}]['lr']")
            if "weight_decay" in group:
                checked["weight_decay"] = check_nonnegative(group["weight_decay"], f"params[{i}]['weight_decay']")
            groups.append(checked)
        tensors = [p for group in groups for p in group["params"]]
    elif any(isinstance(p, dict) for p in params):
        raise TypeError("params must be all tensors or all parameter-group dicts, not a mix")
    else:
        groups = tensors = _check_trainable(list(params), "params")
    if len({id(p) for p in tensors}) != len(tensors):
        raise ValueError("a tensor appears more than once in params (each may be in one group only)")
    return groups


def _check_trainable(tensors: list, name: str) -> list:
    for j, p in enumerate(tensors):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{name}[{j}] must be a torch.Tensor (a parameter), got {type(p).__name__}")
        if not (p.is_leaf and p.requires_grad):
            raise ValueError(f"{name}[{j}] must be a leaf tensor with requires_grad=True (a trainable parameter)")
    return tensors


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Model outputs in eval mode, computed in chunks of ``batch_size`` without gradients.

    The model's train/eval mode is restored afterwards.

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    inputs : torch.Tensor
        (N, ...) inputs on the model's device.
    batch_size : int, default 4096
        Chunk size, >= 1 (memory only: the outputs do not depend on it beyond floating-point rounding).

    Returns
    -------
    torch.Tensor
        The outputs concatenated along the first dimension, e.g. (N, C) or (N,) logits.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    was_training = model.training
    model.eval()
    out = torch.cat([model(inputs[i:i + batch_size]) for i in range(0, inputs.shape[0], batch_size)])
    model.train(was_training)
    return out


@torch.no_grad()
def accuracy(model_or_logits: nn.Module | torch.Tensor, *args: torch.Tensor) -> float:
    """Classification accuracy: ``accuracy(model, x, y)`` or ``accuracy(logits, y)``.

    (N, C) logits are scored by argmax; (N,) logits (binary) by their sign (> 0 is class 1), against 0/1 labels.

    Parameters
    ----------
    model_or_logits : torch.nn.Module or torch.Tensor
        A model (evaluated with :func:`predict_logits`) or its (N, C) or (N,) logits.
    *args : torch.Tensor
        ``inputs, labels`` after a model, ``labels`` after logits; labels are (N,) class indices (or 0/1).

    Returns
    -------
    float
        Fraction of correct predictions, in [0, 1].

    Raises
    ------
    TypeError
        If the number of tensors after the first argument is wrong.
    ValueError
        If the logits and labels differ in length.
    """
    if isinstance(model_or_logits, nn.Module):
        if len(args) != 2:
            raise TypeError("accuracy(model, inputs, labels) takes exactly two tensors after the model")
        logits = predict_logits(model_or_logits, args[0])
        labels = args[1]
    else:
        if len(args) != 1:
            raise TypeError("accuracy(logits, labels) takes exactly one tensor after the logits")
        logits, labels = model_or_logits, args[0]
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits and labels disagree in length: {logits.shape[0]} and {labels.shape[0]}")
    predicted = (logits > 0).long() if logits.ndim == 1 else logits.argmax(dim=1)
    return float((predicted == labels.long()).double().mean())


def n_predicted_classes(model: nn.Module, inputs: torch.Tensor) -> int:
    """The number of distinct classes a classifier predicts (argmax of its logits) on ``inputs``.

    A trained classifier that predicts one class for every input has *collapsed*: its output no longer depends on
    the input (e.g. every ReLU is silent), and its accuracy is the frequency of that class.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier with (N, C) logits, C >= 2, evaluated with :func:`predict_logits`.
    inputs : torch.Tensor
        (N, ...) inputs, N >= 1.

    Returns
    -------
    int
        Between 1 and min(N, C).

    Raises
    ------
    ValueError
        If the logits are not (N, C) with C >= 2, or ``inputs`` holds no example.
    """
    if not isinstance(inputs, torch.Tensor) or inputs.ndim == 0 or inputs.shape[0] == 0:
        raise ValueError("inputs must be an (N, ...) tensor with N >= 1 examples")
    logits = predict_logits(model, inputs)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"n_predicted_classes needs (N, C) logits with C >= 2, got shape {tuple(logits.shape)}")
    return int(logits.argmax(1).unique().numel())


def train_classifier(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    generator: torch.Generator,
    lr: float = 1e-3,
    batch_size: int | None = None,
    weight_decay: float = 0.0,
    progress: bool | None = None,
    desc: str = "teacher",
) -> History:
    """Train ``model`` on hard labels with cross-entropy and Adam (a teacher, or a student "from scratch").

    This is :func:`fit` with :func:`cross_entropy_objective` and its other options at their defaults.

    Parameters
    ----------
    model : torch.nn.Module
        The network, trained in place.
    inputs : torch.Tensor
        (N, ...) training inputs.
    labels : torch.Tensor
        (N,) int64 class labels, or (N,) 0/1 labels for a model with one logit.
    epochs : int
        Passes over the data, >= 1.
    generator : torch.Generator
        CPU generator of the mini-batch order.
    lr : float, default 1e-3
        Adam's learning rate, > 0.
    batch_size : int, optional
        Mini-batch size; ``None`` for full batch.
    weight_decay : float, default 0.0
        L2 penalty, >= 0.
    progress : bool or None, default None
        Show a progress bar: forced on or off, or (``None``) only where someone watches, as in :func:`fit`.
    desc : str, default "teacher"
        Label of the progress bar.

    Returns
    -------
    History
        Per-epoch training loss.
    """
    return fit(model, cross_entropy_objective(), inputs, [labels], epochs=epochs, generator=generator, lr=lr,
               batch_size=batch_size, weight_decay=weight_decay, progress=progress, desc=desc)


def teacher_snapshots(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: Sequence[int],
    evaluate_on: Sequence[torch.Tensor],
    generator: torch.Generator,
    lr: float = 0.1,
    progress: bool = False,
) -> list[list[torch.Tensor]]:
    """Train ``model`` by full-batch gradient descent on its labels and record its logits at several epochs.

    This is a teacher stopped early at each of ``epochs`` (increasing), from one training run: plain gradient descent
    keeps no optimiser state, so training in segments is the same run as training straight through.

    Parameters
    ----------
    model : torch.nn.Module
        The teacher, trained in place (it ends at the last epoch).
    inputs : torch.Tensor
        (N, ...) training inputs.
    labels : torch.Tensor
        (N,) labels (int64 classes, or 0/1 for one logit).
    epochs : sequence of int
        Strictly increasing epochs (each >= 1) at which to record the logits.
    evaluate_on : sequence of torch.Tensor
        Input tensors on which the logits are recorded.
    generator : torch.Generator
        CPU generator passed to :func:`fit` (unused by full-batch training, but required).
    lr : float, default 0.1
        Gradient-descent step size, > 0.
    progress : bool, default False
        Show progress bars.

    Returns
    -------
    list of list of torch.Tensor
        For each epoch, the list of ``model``'s logits on each tensor of ``evaluate_on``.

    Raises
    ------
    ValueError
        If ``epochs`` is empty or not increasing.
    TypeError
        If ``evaluate_on`` is a tensor rather than a list of tensors.
    """
    epochs = [check_positive_int(e, "epochs") for e in epochs]
    if not epochs or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ValueError(f"epochs must be a non-empty increasing sequence, got {epochs}")
    if isinstance(evaluate_on, torch.Tensor):
        raise TypeError("evaluate_on must be a list of input tensors, e.g. [x_transfer, x_test]")
    snapshots, done = [], 0
    for epoch in epochs:
        fit(model, cross_entropy_objective(), inputs, [labels], epochs=epoch - done, generator=generator, lr=lr,
            optimizer="sgd", progress=progress, desc=f"teacher to epoch {epoch}")
        done = epoch
        snapshots.append([predict_logits(model, x) for x in evaluate_on])
    return snapshots


def distill(
    student: nn.Module,
    inputs: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    rho: float,
    temperature: float,
    epochs: int,
    generator: torch.Generator,
    t2_scaling: bool = True,
    labelled: torch.Tensor | None = None,
    lr: float = 1e-3,
    batch_size: int | None = None,
    progress: bool = False,
    desc: str = "student",
    optimizer: str = "adam",
    momentum: float = 0.0,
    schedule: str = "constant",
    weight_decay: float = 0.0,
) -> History:
    r"""Train ``student`` on the transfer set ``inputs`` with the KD loss of :func:`kdnb.core.losses.kd_loss`.

    ``teacher_logits`` are precomputed (the teacher is fixed). ``labels`` and the optional ``labelled`` mask give the
    hard-label term, weighted :math:`1-\rho`; with ``rho=1`` no labels are needed. The optimiser is Adam unless
    asked otherwise; the optimiser options are :func:`fit`'s, with its defaults, so a student can be trained exactly
    like a baseline fitted with :func:`fit` (e.g. SGD with momentum and a cosine schedule).

    Parameters
    ----------
    student : torch.nn.Module
        The student, trained in place.
    inputs : torch.Tensor
        (N, ...) transfer-set inputs.
    teacher_logits : torch.Tensor
        (N, C) teacher logits on ``inputs``, or (N,) for a binary task (then the binary KD loss is used).
    labels : torch.Tensor, optional
        (N,) hard labels (int64 classes, or floats in [0, 1] when binary); needed unless ``rho == 1``.
    rho : float
        Soft ratio in [0, 1] (1: pure distillation, 0: labels only).
    temperature : float
        Temperature T > 0.
    epochs : int
        Passes over the transfer set, >= 1.
    generator : torch.Generator
        CPU generator of the mini-batch order.
    t2_scaling : bool, default True
        Multiply the soft term by :math:`T^2` (default True: Hinton et al. 2015).
    labelled : torch.Tensor, optional
        (N,) bool mask of the examples whose hard label is used.
    lr : float, default 1e-3
        Adam's learning rate, > 0.
    batch_size : int, optional
        Mini-batch size; ``None`` for full batch.
    progress : bool, default False
        Show a progress bar.
    desc : str, default "student"
        Label of the progress bar.
    optimizer : {"adam", "sgd"}, default "adam"
        The optimiser, as in :func:`fit`.
    momentum : float, default 0.0
        SGD's heavy-ball momentum in [0, 1), as in :func:`fit` (only with ``optimizer="sgd"``).
    schedule : {"constant", "cosine"}, default "constant"
        Learning-rate schedule, as in :func:`fit`.
    weight_decay : float, default 0.0
        L2 penalty coefficient, >= 0.

    Returns
    -------
    History
        Per-epoch training loss.

    Raises
    ------
    ValueError
        If ``teacher_logits`` does not have one row per input, or for the bad arguments of :func:`fit` and the loss.

    References
    ----------
    Hinton, G., Vinyals, O. and Dean, J. (2015). Distilling the knowledge in a neural network. arXiv:1503.02531.
    """
    if teacher_logits.shape[0] != inputs.shape[0]:
        raise ValueError("teacher_logits must have one row per input of the transfer set")
    objective = distillation_objective(rho, temperature, t2_scaling=t2_scaling, binary=teacher_logits.ndim == 1)
    targets = [teacher_logits, labels, labelled]
    return fit(student, objective, inputs, targets, epochs=epochs, generator=generator, lr=lr,
               batch_size=batch_size, progress=progress, desc=desc, optimizer=optimizer, momentum=momentum,
               schedule=schedule, weight_decay=weight_decay)
