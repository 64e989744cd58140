r"""Distillation on real data: train a teacher, distil it into a student, and measure what the soft targets carry.

These are the building blocks of chapter 1 (Hinton, Vinyals & Dean, 2015) and of chapter 5's digits teacher. A
*transfer set* is the set of inputs on which the student matches the teacher; hard labels may be known for only part
of it (``labelled``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .losses import kd_loss_gradient, soften
from .data import stratified_subset
from .models import MLP
from .training import History, cross_entropy_objective, distillation_objective, fit, predict_logits
from .validation import check_positive_int

__all__ = ["REGIMES", "distill", "mean_soft_targets", "soft_gradient_norm", "teacher_snapshots", "train_classifier",
           "train_student"]

REGIMES = ("scratch", "kd", "transfer")


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
    r"""Train ``student`` on the transfer set ``inputs`` with the KD loss of :func:`kdnb.losses.kd_loss`.

    ``teacher_logits`` are precomputed (the teacher is fixed). ``labels`` and the optional ``labelled`` mask give the
    hard-label term, weighted :math:`1-\rho`; with ``rho=1`` no labels are needed.
    """
    if teacher_logits.shape[0] != inputs.shape[0]:
        raise ValueError("teacher_logits must have one row per input of the transfer set")
    objective = distillation_objective(rho, temperature, t2_scaling=t2_scaling, binary=teacher_logits.ndim == 1)
    targets = [teacher_logits, labels, labelled]
    return fit(student, objective, inputs, targets, epochs=epochs, generator=generator, lr=lr,
               batch_size=batch_size, progress=progress, desc=desc)


def soft_gradient_norm(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, t2_scaling: bool
) -> float:
    r"""Mean over examples of :math:`\|\partial \ell_{soft} / \partial z_s\|_2`, the soft term's pull on the logits.

    Hinton et al. (2015) scale the soft term by :math:`T^2` because this norm otherwise falls like :math:`1/T^2`.
    """
    grad = kd_loss_gradient(student_logits, teacher_logits, rho=1.0, temperature=temperature, t2_scaling=t2_scaling)
    return float(grad.norm(dim=1).mean())


@torch.no_grad()
def mean_soft_targets(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, temperature: float,
                      n_classes: int) -> torch.Tensor:
    """(C, C) matrix whose row c is the teacher's mean softened distribution over inputs of class c."""
    probs = soften(predict_logits(model, inputs), temperature)
    out = torch.zeros(n_classes, n_classes, dtype=probs.dtype)
    for c in range(n_classes):
        members = labels == c
        if not bool(members.any()):
            raise ValueError(f"class {c} has no examples among the inputs")
        out[c] = probs[members].mean(0).cpu()
    return out


def train_student(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    regime: str,
    n_labels: int | None,
    hidden: tuple[int, ...],
    rho: float,
    temperature: float,
    epochs: int,
    generator: torch.Generator,
    lr: float = 1e-2,
    t2_scaling: bool = True,
    omit_class: int | None = None,
) -> nn.Module:
    """Train a fresh MLP student in one of three regimes and return it.

    * ``"scratch"``: cross-entropy on the ``n_labels`` labelled examples only (no teacher);
    * ``"kd"``: the KD loss on the same ``n_labels`` examples (the teacher's soft targets on those inputs);
    * ``"transfer"``: the KD loss on every training input (the transfer set), with hard labels on ``n_labels`` only.

    The labelled examples are a class-stratified subset drawn with ``generator`` (all of them for ``n_labels=None``).
    ``omit_class`` removes every example of that class from the training data first (Hinton et al. 2015, §3: a
    student that never sees a 3). The student is an MLP ``64 -> hidden -> C`` initialised from ``generator``.
    """
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    if not (x_train.shape[0] == y_train.shape[0] == teacher_logits.shape[0]):
        raise ValueError("x_train, y_train and teacher_logits must have the same number of rows")
    n_classes = teacher_logits.shape[1]
    if omit_class is not None:
        if not 0 <= omit_class < n_classes:
            raise ValueError(f"omit_class must be in [0, {n_classes}), got {omit_class}")
        keep = y_train != omit_class
        x_train, y_train, teacher_logits = x_train[keep], y_train[keep], teacher_logits[keep]
    n = x_train.shape[0]
    if n_labels is None:
        labelled_idx = torch.arange(n, device=y_train.device)
    else:
        labelled_idx = stratified_subset(y_train, n_labels, generator)
    student = MLP(x_train.shape[1], hidden, n_classes, generator=generator).to(x_train.device)
    if regime == "scratch":
        train_classifier(student, x_train[labelled_idx], y_train[labelled_idx], epochs=epochs, lr=lr,
                         generator=generator, progress=False, desc="scratch student")
    elif regime == "kd":
        distill(student, x_train[labelled_idx], teacher_logits[labelled_idx], y_train[labelled_idx], rho=rho,
                temperature=temperature, t2_scaling=t2_scaling, epochs=epochs, lr=lr, generator=generator)
    else:
        labelled = torch.zeros(n, dtype=torch.bool, device=x_train.device)
        labelled[labelled_idx] = True
        distill(student, x_train, teacher_logits, y_train, labelled=labelled, rho=rho, temperature=temperature,
                t2_scaling=t2_scaling, epochs=epochs, lr=lr, generator=generator)
    return student
