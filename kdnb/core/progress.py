"""Progress bars that show only where someone watches.

Every progress bar in kdnb comes from :func:`progress_bar`. By default (``enabled=None``) a bar is drawn in a Jupyter
kernel (JupyterLab, the classic notebook, VS Code) and when standard error is a terminal; run from a script whose
output goes to a file or a log, kdnb writes nothing. ``enabled=True`` or ``False`` forces the choice. The environment
variable ``KDNB_PROGRESS=0`` turns the default off everywhere: the book's build sets it, since nobody watches the
kernels that execute its chapters (and a widget saved in a page would need scripts from the network).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm import std

from .validation import check_bool, check_positive_int

__all__ = ["in_jupyter_kernel", "progress_bar", "progress_enabled", "stderr_is_terminal"]


def in_jupyter_kernel() -> bool:
    """Whether the code runs in a Jupyter kernel (IPython's ``ZMQInteractiveShell`` or a subclass of it).

    IPython is not imported when it is not already loaded: a plain script is never in a kernel.

    Returns
    -------
    bool
        True in a Jupyter kernel (JupyterLab, notebook, papermill, VS Code); False in a script, a plain terminal
        IPython, or anywhere ``get_ipython()`` returns ``None``.
    """
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return False
    try:
        shell = get_ipython()
    except Exception:  # noqa: BLE001 -- a broken or stubbed IPython is not a kernel
        return False
    return any(cls.__name__ == "ZMQInteractiveShell" for cls in type(shell).__mro__)


def stderr_is_terminal() -> bool:
    """Whether ``sys.stderr`` is an open stream attached to a terminal (a TTY).

    Returns
    -------
    bool
        False when standard error is redirected to a file or a pipe, closed, replaced by an object without
        ``isatty``, or ``None``.
    """
    isatty = getattr(sys.stderr, "isatty", None)
    if isatty is None:
        return False
    try:
        return bool(isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


def progress_enabled(enabled: bool | None = None, name: str = "enabled") -> bool:
    """Whether a progress bar is drawn: ``enabled`` itself, or for ``None`` whether someone can watch it.

    Parameters
    ----------
    enabled : bool or None, default None
        ``True`` or ``False`` (a numpy bool too) forces the answer; ``None``: False when the environment variable
        ``KDNB_PROGRESS`` is ``0``, else True in a Jupyter kernel (:func:`in_jupyter_kernel`) or when standard error is
        a terminal (:func:`stderr_is_terminal`).
    name : str, default "enabled"
        The argument's name in the caller (e.g. ``"progress"``), used in the error message.

    Returns
    -------
    bool
        Whether to draw the bar.

    Raises
    ------
    TypeError
        If ``enabled`` is neither None nor a bool.
    """
    if enabled is None:
        if os.environ.get("KDNB_PROGRESS", "").strip() == "0":
            return False
        return in_jupyter_kernel() or stderr_is_terminal()
    return check_bool(enabled, name)


def _bar_class(in_kernel: bool):
    """tqdm's widget bar in a Jupyter kernel with ipywidgets (what ``tqdm.auto`` picks), else the text bar.

    Without ipywidgets the text bar is used in a kernel too: ``tqdm.auto`` would warn at import and fall back to it.
    """
    if in_kernel:
        from tqdm import notebook

        if notebook.IProgress is not None:
            return notebook.tqdm
    return std.tqdm


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    enabled: bool | None = None,
    leave: bool = False,
    name: str = "enabled",
) -> std.tqdm:
    """A tqdm progress bar over ``iterable`` (or updated by hand), drawn only where someone watches.

    Iterate over it, or call ``update(n)`` and ``close()`` (it is also a context manager). When it is not drawn it is
    tqdm's disabled bar: iterating it yields ``iterable`` unchanged, and ``update``, ``set_postfix`` and ``close``
    write nothing.

    Parameters
    ----------
    iterable : iterable or None, default None
        What the bar iterates over; ``None`` for a bar advanced with ``update``.
    total : int or None, default None
        The number of steps, >= 0; ``None``: ``len(iterable)`` where it has one.
    desc : str or None, default None
        The label in front of the bar.
    enabled : bool or None, default None
        Draw the bar (``True``), do not (``False``), or decide (``None``): drawn in a Jupyter kernel (as a widget
        when ipywidgets is installed, else as text on standard error) and when standard error is a terminal, not
        when it is redirected to a file, a pipe or a log. See :func:`progress_enabled`.
    leave : bool, default False
        Keep the finished bar on screen; by default it is removed when closed.
    name : str, default "enabled"
        The name of ``enabled`` in the caller (e.g. ``"progress"``), used in the error message.

    Returns
    -------
    tqdm.std.tqdm
        The bar (``tqdm.notebook.tqdm``, a subclass, for the widget), disabled when not drawn.

    Raises
    ------
    TypeError
        If ``enabled`` is neither None nor a bool, ``leave`` is not a bool, ``desc`` is neither None nor a str, or
        ``total`` is neither None nor an int.
    ValueError
        If ``total`` < 0.
    """
    show = progress_enabled(enabled, name)
    leave = check_bool(leave, "leave")
    if desc is not None and not isinstance(desc, str):
        raise TypeError(f"desc must be a str or None, got {type(desc).__name__}")
    if total is not None:
        total = check_positive_int(total, "total", minimum=0)
    if not show:
        return std.tqdm(iterable, total=total, desc=desc, leave=leave, disable=True)
    return _bar_class(in_jupyter_kernel())(iterable, total=total, desc=desc, leave=leave)
