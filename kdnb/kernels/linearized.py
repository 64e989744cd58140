r"""The linearized model and gradient descent in function space.

:class:`LinearizedModel` is a network's first-order Taylor expansion around its initial weights, trainable like any
module; :func:`function_space_gd` runs gradient descent of the linearized model directly on the logits, through its
kernel; :func:`gradient_descent_path` records a real network's logits under the same descent, for a step-by-step
comparison (Lee et al. 2019). Function-space quantities are float64.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, jvp

from ..core.progress import progress_bar
from ..core.runtime import float64_device
from ..core.training import fit, predict_logits
from ..core.validation import (
    check_buffers_unchanged,
    check_eval_mode,
    check_gram,
    check_kernel_targets,
    check_positive,
    check_positive_int,
)

__all__ = ["FunctionSpaceTrajectory", "LinearizedModel", "function_space_gd", "gradient_descent_path"]


class LinearizedModel(nn.Module):
    r"""The first-order Taylor expansion of ``model`` around its current weights :math:`w_0`.

    .. math:: f_\mathrm{lin}(x; w) = f(x; w_0) + J(x)\,(w - w_0), \qquad J(x) = \partial f(x; w_0) / \partial w.

    A module like any other: its parameters :math:`w` start at :math:`w_0` and can be trained with
    :func:`kdnb.core.training.fit`; the forward pass is one Jacobian-vector product (``torch.func.jvp``), so :math:`J`
    is never formed. Only the parameters of ``model`` with ``requires_grad=True`` are linearized; the others, and the
    buffers, stay fixed at their values at construction. ``model`` itself is not modified.

    The linearization is that of the eval-mode function: layers whose output depends on the train mode (dropout,
    batch normalisation) must be in eval mode at construction, and every forward pass evaluates the wrapped model
    with all its modules in eval mode (their flags are restored afterwards). So :func:`kdnb.core.training.fit`, which
    puts the module it trains in train mode, or a later ``model.train()`` cannot make the linearized function random
    or batch-dependent.

    Parameters
    ----------
    model : torch.nn.Module
        The network f at its weights :math:`w_0`, with at least one parameter with ``requires_grad=True``, and no
        dropout or batch normalisation in train mode. It is kept by reference (not copied) and called functionally
        with the linearized module's weights.

    Raises
    ------
    TypeError
        If ``model`` is not a ``torch.nn.Module``.
    ValueError
        If ``model`` has a layer whose output depends on the train mode in train mode
        (:func:`kdnb.core.validation.check_eval_mode`: call ``model.eval()`` first), or no parameter with
        ``requires_grad=True``.

    References
    ----------
    Lee et al. 2019 (wide networks evolve as their linearization).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_eval_mode(model)
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
        self._n_frozen = len(self._fixed_names)  # the frozen parameters come first, then the buffers
        self._fixed_names += [name for name, _ in model.named_buffers()]
        fixed = dict(model.named_parameters())
        fixed.update(dict(model.named_buffers()))
        for k, name in enumerate(self._fixed_names):
            self.register_buffer(f"_fixed_{k}", fixed[name].detach().clone())

    def initial_weights(self) -> dict[str, torch.Tensor]:
        """The initial weights :math:`w_0`, by the parameter names of the wrapped model.

        Returns
        -------
        dict of str to torch.Tensor
            Each linearized parameter's initial value, keyed by its name in ``model.named_parameters()``.
        """
        return {name: getattr(self, f"_initial_{k}") for k, name in enumerate(self._names)}

    def weight_change(self) -> torch.Tensor:
        """The weight change :math:`w - w_0`, flattened into one vector.

        Returns
        -------
        torch.Tensor
            Shape (P,), the linearized parameters in the order of ``model.named_parameters()``.
        """
        initial = self.initial_weights()
        return torch.cat([(w - initial[name]).reshape(-1) for name, w in zip(self._names, self.weights)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r"""The linearized outputs :math:`f(x; w_0) + J(x)\,(w - w_0)`.

        Parameters
        ----------
        x : torch.Tensor
            A batch of inputs, as the wrapped model takes them.

        Returns
        -------
        torch.Tensor
            The outputs, in the shape the wrapped model returns.

        Raises
        ------
        ValueError
            If the wrapped model's forward changed one of the fixed buffers (they are restored first): the
            linearization needs a forward that leaves its buffers alone.

        Notes
        -----
        The wrapped model runs with every module in eval mode, whatever its flags and this module's own
        ``training`` flag; the flags are restored afterwards.
        """
        initial = self.initial_weights()
        change = {name: w - initial[name] for name, w in zip(self._names, self.weights)}
        fixed = {name: getattr(self, f"_fixed_{k}") for k, name in enumerate(self._fixed_names)}
        buffers = {name: fixed[name] for name in self._fixed_names[self._n_frozen:]}
        model = self._function[0]
        with check_buffers_unchanged(buffers, caller="LinearizedModel"), _eval_mode(model):
            try:
                f0, tangent = jvp(lambda p: functional_call(model, (p, fixed), (x,)), (initial,), (change,))
            except RuntimeError:
                # torch.func refuses a forward that writes into a buffer before it writes; a plain forward pass
                # shows whether that was the cause (then the buffers are restored and a ValueError says so).
                if buffers:
                    with torch.no_grad():
                        functional_call(model, (initial, fixed), (x,))
                raise
        return f0 + tangent


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module of ``model`` in eval mode inside the block, its own flags restored after (the ``training``
    attributes are set directly, so overridden ``train()`` methods are not called)."""
    flags = [(module, module.training) for module in model.modules()]
    if not any(flag for _, flag in flags):
        yield
        return
    for module, _ in flags:
        module.training = False
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag



@dataclass(frozen=True)
class FunctionSpaceTrajectory:
    """Logits recorded during :func:`function_space_gd` or :func:`gradient_descent_path`.

    Parameters
    ----------
    steps : torch.Tensor
        Shape (R,): the step numbers at which the logits were recorded, starting with 0 and ending with the last step.
    train : torch.Tensor
        Shape (R, N), float64: the logits on the training points at each recorded step.
    test : torch.Tensor or None
        Shape (R, M), float64: the logits on the test points, or ``None`` when no test points were given.
    """

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
    progress: bool | None = False,
) -> FunctionSpaceTrajectory:
    r"""Gradient descent of the linearized model, run in function space.

    .. math:: z \leftarrow z - \frac{\eta}{n} K\, \ell'(z), \qquad
              z_\mathrm{test} \leftarrow z_\mathrm{test} - \frac{\eta}{n} \Theta(X_\mathrm{test}, X)\, \ell'(z),

    starting from :math:`z = f_0(X)`. ``loss_gradient(z)`` returns the per-example derivatives
    :math:`\ell_i'(z_i)` (shape (N,)) of any loss convex in the logits, e.g. ``functools.partial(
    kdnb.core.losses.binary_kd_loss_gradient, teacher_logits=zt, labels=y, rho=.5, temperature=5)``. This is exactly
    full-batch gradient descent with learning rate :math:`\eta` on :math:`\frac1n\sum_i \ell_i` for the linearized
    model in weight space (its updates stay in the span of the features), so a real network trained with the same
    loss and learning rate can be compared with it step by step. Float64.

    Records the logits at step 0, every ``record_every`` steps (default: only the end) and at the last step.

    Parameters
    ----------
    kernel : torch.Tensor
        K = :math:`\Theta(X, X)`, the (N, N) Gram matrix of the training points, finite.
    loss_gradient : callable
        ``loss_gradient(z)`` returns the per-example derivatives :math:`\ell_i'(z_i)`, a tensor of shape (N,).
    lr : float
        :math:`\eta > 0`, the learning rate.
    steps : int
        Number of steps, >= 0.
    kernel_test_train : torch.Tensor or None, default None
        :math:`\Theta(X_\mathrm{test}, X)`, shape (M, N), for test logits.
    f0 : torch.Tensor or None, default None
        Initial training logits :math:`f_0(X)`, shape (N,); ``None``: zero.
    f0_test : torch.Tensor or None, default None
        Initial test logits, shape (M,); ``None``: zero. Needs ``kernel_test_train``.
    record_every : int or None, default None
        Record every this many steps (>= 1); ``None``: only at steps 0 and ``steps``.
    progress : bool or None, default False
        Show a bar over steps (``True``), or not (``False``); ``None``: only in a Jupyter kernel or when standard
        error is a terminal (:func:`kdnb.core.progress.progress_bar`).

    Returns
    -------
    FunctionSpaceTrajectory
        The recorded steps and logits, float64 (``test`` is ``None`` without ``kernel_test_train``).

    Raises
    ------
    TypeError
        If ``kernel``, ``f0`` or ``f0_test`` is not a tensor, ``loss_gradient`` is not callable, ``lr`` is not a
        real number, ``steps`` or ``record_every`` is not an int, or ``progress`` is neither None nor a bool.
    ValueError
        If ``kernel`` is not a square finite matrix, ``lr`` is not finite and > 0, ``steps`` < 0, ``record_every``
        < 1, ``f0`` is not (N,), ``kernel_test_train`` is not (M, N), ``f0_test`` does not match it or is given
        without it, or ``loss_gradient`` returns a tensor of another shape than (N,).

    References
    ----------
    Lee et al. 2019 (the dynamics of the linearized network in function space).
    """
    k = check_gram(kernel)
    n = k.shape[0]
    if not callable(loss_gradient):
        raise TypeError("loss_gradient must be callable: loss_gradient(z) -> per-example derivatives, shape (N,)")
    lr = check_positive(lr, "lr")
    steps = check_positive_int(steps, "steps", minimum=0)
    record_every = steps if record_every is None else check_positive_int(record_every, "record_every")
    z = torch.zeros(n, dtype=torch.float64, device=k.device) if f0 is None else check_kernel_targets(
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
        z_test = torch.zeros(m, dtype=torch.float64, device=k.device) if f0_test is None else check_kernel_targets(
            f0_test, m, "f0_test", k.device).clone()
    elif f0_test is not None:
        raise ValueError("f0_test was given without kernel_test_train")

    recorded_steps, train_rec, test_rec = [0], [z.clone()], [] if z_test is None else [z_test.clone()]
    for step in progress_bar(range(1, steps + 1), desc="function-space GD", enabled=progress, name="progress"):
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
    progress: bool | None = False,
) -> FunctionSpaceTrajectory:
    r"""Train ``model`` by full-batch gradient descent and record its logits as :func:`function_space_gd` does.

    ``model`` is trained in place by full-batch gradient descent (no momentum) on
    ``objective(model(inputs), *targets)``, and its scalar logits are recorded for a step-by-step comparison. With
    the mean-reduced loss :math:`\frac1n \sum_i \ell_i` and the same ``lr``, a :class:`LinearizedModel` trained here
    follows :func:`function_space_gd` on its empirical NTK exactly; a real network follows it as long as it stays in
    the linear regime. Logits are recorded in float64.

    Parameters
    ----------
    model : torch.nn.Module
        A network with scalar outputs (logits of shape (N,)); trained in place.
    objective : callable
        ``objective(outputs, *targets)`` returns the scalar, mean-reduced loss.
    inputs : torch.Tensor
        Training inputs, shape (N, ...), on the model's device.
    targets : sequence of torch.Tensor or None
        The objective's targets, each with first dimension N (or ``None``, passed through).
    lr : float
        Learning rate, > 0.
    steps : int
        Number of gradient-descent steps, >= 1.
    test_inputs : torch.Tensor or None, default None
        Inputs at which test logits are recorded too.
    record_every : int or None, default None
        Record every this many steps (>= 1); ``None``: only at steps 0 and ``steps``.
    progress : bool or None, default False
        Show a bar over steps (``True``), or not (``False``); ``None``: only in a Jupyter kernel or when standard
        error is a terminal (:func:`kdnb.core.progress.progress_bar`).

    Returns
    -------
    FunctionSpaceTrajectory
        The recorded steps and logits, float64 (``test`` is ``None`` without ``test_inputs``).

    Raises
    ------
    TypeError
        If ``steps`` or ``record_every`` is not an int, ``progress`` is neither None nor a bool, or an argument is
        rejected by :func:`kdnb.core.training.fit`.
    ValueError
        If ``steps`` or ``record_every`` < 1, the model's logits are not one per example (shape (N,)), or a target
        does not have N rows.

    References
    ----------
    Lee et al. 2019 (a wide network trained by gradient descent follows its linearization).
    """
    steps = check_positive_int(steps, "steps")
    record_every = steps if record_every is None else check_positive_int(record_every, "record_every")

    def logits(x):
        out = predict_logits(model, x)
        if out.ndim != 1:
            raise ValueError(f"gradient_descent_path records scalar logits; the model returned shape {tuple(out.shape)}")
        return out.to(device=float64_device(out.device), dtype=torch.float64)

    recorded, train, test = [0], [logits(inputs)], [] if test_inputs is None else [logits(test_inputs)]
    done = 0
    bar = progress_bar(total=steps, desc="gradient descent", enabled=progress, name="progress")
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
