"""Training: one small fit loop for every chapter, its history, and evaluation.

A chapter never writes its own loop: it builds a model, picks an objective (:func:`cross_entropy_objective`,
:func:`distillation_objective`, or any callable ``loss(outputs, *targets) -> scalar``) and calls :func:`fit`.
Mini-batches are shuffled with an explicit generator, so the same seed gives the same run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .losses import binary_kd_loss, kd_loss
from .validation import check_choice, check_positive, check_positive_int, check_soft_ratio, check_temperature

__all__ = [
    "History",
    "accuracy",
    "cross_entropy_objective",
    "distill",
    "distillation_objective",
    "fit",
    "predict_logits",
    "teacher_snapshots",
    "train_classifier",
]

OPTIMIZERS = ("adam", "sgd")


@dataclass
class History:
    """Per-epoch training loss and, where an evaluation function was given, its metrics."""

    loss: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    epochs: list[int] = field(default_factory=list)

    def to_frame(self):
        """The history as a pandas DataFrame indexed by epoch (metrics are NaN at epochs not evaluated)."""
        import pandas as pd

        frame = pd.DataFrame({"loss": self.loss}, index=pd.RangeIndex(1, len(self.loss) + 1, name="epoch"))
        for name, values in self.metrics.items():
            frame[name] = pd.Series(values, index=self.epochs)
        return frame


def cross_entropy_objective() -> Callable[..., torch.Tensor]:
    """Ordinary training on labels: ``loss(logits, labels)``; (N,) logits use binary cross-entropy."""

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.ndim == 1:
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return F.cross_entropy(logits, labels)

    return loss


def distillation_objective(
    rho: float, temperature: float, t2_scaling: bool = True, binary: bool = False
) -> Callable[..., torch.Tensor]:
    """KD objective ``loss(student_logits, teacher_logits, labels, labelled=None)`` (see :func:`kdnb.core.losses.kd_loss`)."""
    rho = check_soft_ratio(rho)
    temperature = check_temperature(temperature)
    base = binary_kd_loss if binary else kd_loss

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
    progress: bool = True,
    desc: str = "fit",
) -> History:
    """Train ``model`` in place by minimising ``objective(model(x_batch), *targets_batch)``; return the history.

    Parameters
    ----------
    inputs : (N, ...) tensor on the model's device.
    targets : tensors with first dimension N (sliced into batches alongside ``inputs``), or ``None`` entries, which
        are passed through as ``None``.
    epochs : passes over the data.
    generator : CPU generator that shuffles the mini-batches.
    batch_size : ``None`` (default) for full-batch training.
    optimizer : ``"adam"`` or ``"sgd"`` (plain gradient descent, no momentum).
    evaluate : optional ``f(model) -> {name: value}``, called every ``eval_every`` epochs and after the last, in
        eval mode and without gradients.
    progress : show a tqdm bar over epochs.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(objective):
        raise TypeError("objective must be callable: objective(outputs, *targets) -> scalar tensor")
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if isinstance(targets, torch.Tensor) or not isinstance(targets, (list, tuple)):
        raise TypeError("targets must be a list or tuple of tensors (or None), e.g. [labels]")
    n = inputs.shape[0]
    for i, t in enumerate(targets):
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape[0] != n):
            raise ValueError(f"targets[{i}] must be a tensor with first dimension {n} (the number of inputs)")
    epochs = check_positive_int(epochs, "epochs")
    lr = check_positive(lr, "lr")
    weight_decay = float(weight_decay)
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    eval_every = check_positive_int(eval_every, "eval_every")
    check_choice(optimizer, "optimizer", OPTIMIZERS)
    if batch_size is None or batch_size >= n:
        batch_size = n
    batch_size = check_positive_int(batch_size, "batch_size")

    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.Adam(params, lr=lr, weight_decay=weight_decay) if optimizer == "adam"
           else torch.optim.SGD(params, lr=lr, weight_decay=weight_decay))
    history = History()
    bar = tqdm(range(1, epochs + 1), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=generator).to(inputs.device) if batch_size < n else None
        total, seen = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size] if order is not None else slice(None)
            batch_targets = [t[idx] if t is not None else None for t in targets]
            opt.zero_grad(set_to_none=True)
            loss = objective(model(inputs[idx]), *batch_targets)
            if loss.ndim != 0:
                raise ValueError("objective must return a scalar tensor (use reduction='mean' or 'sum')")
            loss.backward()
            opt.step()
            m = n if order is None else len(idx)
            total += float(loss.detach()) * m
            seen += m
        history.loss.append(total / seen)
        if evaluate is not None and (epoch % eval_every == 0 or epoch == epochs):
            model.eval()
            with torch.no_grad():
                for name, value in evaluate(model).items():
                    history.metrics.setdefault(name, []).append(float(value))
            history.epochs.append(epoch)
        if progress:
            bar.set_postfix(loss=f"{history.loss[-1]:.4f}")
    model.eval()
    return history


@torch.no_grad()
def predict_logits(model: nn.Module, inputs: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Model outputs in eval mode, computed in chunks of ``batch_size`` without gradients."""
    batch_size = check_positive_int(batch_size, "batch_size")
    was_training = model.training
    model.eval()
    out = torch.cat([model(inputs[i:i + batch_size]) for i in range(0, inputs.shape[0], batch_size)])
    model.train(was_training)
    return out


@torch.no_grad()
def accuracy(model_or_logits: nn.Module | torch.Tensor, *args: torch.Tensor) -> float:
    """Classification accuracy: ``accuracy(model, x, y)`` or ``accuracy(logits, y)``.

    (N, C) logits are scored by argmax; (N,) logits (binary) by their sign, against 0/1 labels.
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
    progress: bool = True,
    desc: str = "teacher",
) -> History:
    """Train ``model`` on hard labels with cross-entropy and Adam (a teacher, or a student "from scratch")."""
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
    keeps no optimiser state, so training in segments is the same run as training straight through. Returns, for
    each epoch, the list of ``model``'s logits on each tensor of ``evaluate_on``.
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
) -> History:
    r"""Train ``student`` on the transfer set ``inputs`` with the KD loss of :func:`kdnb.core.losses.kd_loss`.

    ``teacher_logits`` are precomputed (the teacher is fixed). ``labels`` and the optional ``labelled`` mask give the
    hard-label term, weighted :math:`1-\rho`; with ``rho=1`` no labels are needed.
    """
    if teacher_logits.shape[0] != inputs.shape[0]:
        raise ValueError("teacher_logits must have one row per input of the transfer set")
    objective = distillation_objective(rho, temperature, t2_scaling=t2_scaling, binary=teacher_logits.ndim == 1)
    targets = [teacher_logits, labels, labelled]
    return fit(student, objective, inputs, targets, epochs=epochs, generator=generator, lr=lr,
               batch_size=batch_size, progress=progress, desc=desc)
