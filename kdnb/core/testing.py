"""Assertions for tests of kdnb and of the chapters' own losses.

:func:`assert_gradient_reaches` checks which parameters a loss trains: a distillation loss must move the student (and
a paraphraser or translator trained with it) and leave a frozen teacher alone. It computes the gradient with
:func:`torch.autograd.grad`, so no ``.grad`` attribute is read or changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .validation import check_bool

__all__ = ["assert_gradient_reaches"]


def _named_tensors(group, label: str) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` pairs of a module, a tensor, a mapping of names to either, or an iterable of either."""
    if isinstance(group, nn.Module):
        return [(f"{label}.{name}", p) for name, p in group.named_parameters()]
    if isinstance(group, torch.Tensor):
        return [(label, group)]
    if isinstance(group, Mapping):
        pairs = []
        for key, value in group.items():
            if not isinstance(value, (nn.Module, torch.Tensor)):
                raise TypeError(f"{label}[{key!r}] must be a torch.nn.Module or a torch.Tensor, "
                                f"got {type(value).__name__}")
            pairs += _named_tensors(value, str(key))
        return pairs
    if isinstance(group, (str, bytes)) or not isinstance(group, Iterable):
        raise TypeError(f"{label} must be a module, a tensor, a mapping of names to them or an iterable of them, "
                        f"got {type(group).__name__}")
    pairs = []
    for i, value in enumerate(group):
        if isinstance(value, nn.Module):
            pairs += _named_tensors(value, f"{label}[{i}]({type(value).__name__})")
        elif isinstance(value, torch.Tensor):
            pairs.append((f"{label}[{i}](shape {tuple(value.shape)})", value))
        else:
            raise TypeError(f"{label}[{i}] must be a torch.nn.Module or a torch.Tensor, got {type(value).__name__}")
    return pairs


def _unique(pairs: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    seen, out = set(), []
    for name, p in pairs:
        if id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def assert_gradient_reaches(
    loss: torch.Tensor,
    reached,
    untouched=(),
    *,
    retain_graph: bool = True,
) -> dict[str, torch.Tensor | None]:
    """Assert that the gradient of ``loss`` reaches every parameter of ``reached`` and none of ``untouched``.

    The gradient of ``loss`` with respect to every listed tensor is computed with :func:`torch.autograd.grad`
    (``allow_unused=True``). A *reached* tensor must require gradients and get a gradient that is finite everywhere
    and nonzero somewhere. An *untouched* tensor must get no gradient (it is not in the graph, or does not require
    gradients) or an all-zero one. Every failure is collected, and one :class:`AssertionError` names each offending
    parameter with the reason.

    Parameters
    ----------
    loss : torch.Tensor
        A scalar (0-D, floating-point) tensor, e.g. a distillation loss of a student's and a teacher's outputs.
    reached : torch.nn.Module, torch.Tensor, mapping or iterable
        What the gradient must reach: a module (all its parameters), a tensor, an iterable of modules and tensors, or
        a mapping ``{label: module or tensor}`` whose labels name the parameters in the message (e.g.
        ``{"student": student, "paraphraser": paraphraser}`` gives ``"student.net.0.weight"``).
    untouched : torch.nn.Module, torch.Tensor, mapping or iterable, default ()
        What the gradient must not reach, in the same forms (e.g. ``{"teacher": teacher}``).
    retain_graph : bool, default True
        Keep the graph of ``loss`` so that it can be differentiated again (e.g. by ``loss.backward()`` afterwards).

    Returns
    -------
    dict of str to torch.Tensor or None
        The gradient of each checked tensor (``None`` where the loss does not depend on it), keyed by the names
        used in messages, reached tensors first.

    Raises
    ------
    AssertionError
        If the gradient misses, is zero on, or is not finite on a reached parameter, or is nonzero on an untouched
        one.
    TypeError
        If ``loss`` is not a tensor, ``reached``/``untouched`` are not of the forms above, or ``retain_graph`` is not a
        bool.
    ValueError
        If ``loss`` is not a floating-point scalar, ``reached`` is empty, a tensor is both reached and untouched, or
        two different tensors get the same name (e.g. ``{"m": a}`` reached and ``{"m": b}`` untouched), which would
        make the returned dict keep only one of their gradients.
    """
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss must be a torch.Tensor, got {type(loss).__name__}")
    if loss.ndim != 0 or not loss.is_floating_point():
        raise ValueError(f"loss must be a floating-point scalar (0-D) tensor, got shape {tuple(loss.shape)} "
                         f"and dtype {loss.dtype}")
    retain_graph = check_bool(retain_graph, "retain_graph")
    reached_pairs = _unique(_named_tensors(reached, "reached"))
    untouched_pairs = _unique(_named_tensors(untouched, "untouched"))
    if not reached_pairs:
        raise ValueError("reached must contain at least one parameter")
    both = {id(p) for _, p in reached_pairs} & {id(p) for _, p in untouched_pairs}
    if both:
        names = [name for name, p in reached_pairs if id(p) in both]
        raise ValueError(f"tensors cannot be both reached and untouched: {names}")

    pairs = reached_pairs + untouched_pairs
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"two different tensors share the name(s) {repeated}; give reached and untouched distinct "
                         f"labels (e.g. {{'student': ...}} and {{'teacher': ...}}) so that each has its own gradient")
    differentiable = [i for i, (_, p) in enumerate(pairs) if p.requires_grad]
    grads: list[torch.Tensor | None] = [None] * len(pairs)
    if loss.requires_grad and differentiable:
        computed = torch.autograd.grad(loss, [pairs[i][1] for i in differentiable], retain_graph=retain_graph,
                                       allow_unused=True)
        for i, g in zip(differentiable, computed):
            grads[i] = g

    failures = []
    for (name, p), g in zip(reached_pairs, grads):
        if not p.requires_grad:
            failures.append(f"{name}: does not require gradients")
        elif g is None:
            failures.append(f"{name}: not reached (the loss does not depend on it)")
        elif not bool(torch.isfinite(g).all()):
            failures.append(f"{name}: gradient is not finite (NaN or inf)")
        elif not bool((g != 0).any()):
            failures.append(f"{name}: gradient is zero everywhere")
    for (name, _), g in zip(untouched_pairs, grads[len(reached_pairs):]):
        if g is not None and bool((g != 0).any()):
            failures.append(f"{name}: should be untouched but its gradient is nonzero "
                            f"(max |grad| = {float(g.abs().max()):.3g})")
    if failures:
        raise AssertionError(f"{len(failures)} gradient check(s) failed:\n" + "\n".join(failures))
    return {name: g for (name, _), g in zip(pairs, grads)}
