"""Plotting: one seaborn style for the whole book, and helpers that glue figures and numbers into the prose.

In the book, a figure is placed in the text with MyST-NB's ``{glue:figure}`` directive, which carries the caption and a
label that the prose references. :func:`glue_figure` glues the figure under a name and also shows it, with its caption,
in the cell's own output for readers in JupyterLab. Tag such cells ``remove-output`` so that the book shows the figure
once, where the prose puts it (the glued copy is kept: MyST-NB reads glue data before it applies cell tags).
"""

from __future__ import annotations

import io
from numbers import Real

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker

__all__ = ["PALETTE", "glue_figure", "glue_value", "log_ticks", "use_style"]

PALETTE = "colorblind"


def use_style(context: str = "notebook") -> None:
    """Apply the book's style: seaborn ``whitegrid``, the colour-blind palette, and figure defaults.

    The figure defaults are a 6.4 x 4.0 inch figure at 100 dpi (saved at 120 dpi with a tight bounding box), bold axis
    titles and legends without a frame. The style changes matplotlib's global settings for the process.

    Parameters
    ----------
    context : str, default "notebook"
        The seaborn scaling context: ``"paper"``, ``"notebook"``, ``"talk"`` or ``"poster"``.
    """
    import seaborn as sns

    sns.set_theme(context=context, style="whitegrid", palette=PALETTE)
    matplotlib.rcParams.update({
        "figure.figsize": (6.4, 4.0),
        "figure.dpi": 100,
        "savefig.dpi": 120,
        "savefig.bbox": "tight",
        "axes.titleweight": "bold",
        "legend.frameon": False,
    })


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency of the notebook stack
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def glue_figure(name: str, fig: "matplotlib.figure.Figure", caption: str) -> None:
    """Glue ``fig`` as ``name`` for ``{glue:figure}``, show it with ``caption`` below, and close it.

    Every axis that holds data must have both labels set: a figure with an unlabelled axis raises ``ValueError``,
    so that an unlabelled plot never reaches the book. Colorbars, hidden axes, axes without data and the hidden axis
    of a twin (``ax.twinx()``) are exempt. Outside a Jupyter kernel the figure is checked and closed, nothing is glued.

    Parameters
    ----------
    name : str
        The non-empty glue name that ``{glue:figure}`` refers to.
    fig : matplotlib.figure.Figure
        The figure; in a kernel it is rendered to PNG, and it is always closed.
    caption : str
        The non-empty caption shown below the figure in the cell's output.

    Raises
    ------
    ValueError
        If ``name`` or ``caption`` is empty or not a string, or an axis that holds data lacks an x or a y label.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError("caption must be a non-empty string")
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>" or not ax.get_visible() or not ax.has_data():
            continue
        # A twin axis (ax.twinx()) hides its own x axis: only the axes that are drawn need labels.
        missing_x = ax.xaxis.get_visible() and not ax.get_xlabel()
        missing_y = ax.yaxis.get_visible() and not ax.get_ylabel()
        if missing_x or missing_y:
            raise ValueError(f"figure {name!r}: every axis needs an x and a y label (axis titled {ax.get_title()!r})")
    if _in_notebook():
        from IPython.display import Image, Markdown, display
        from myst_nb import glue

        # Render the PNG here rather than relying on the kernel's matplotlib backend: with MPLBACKEND=Agg (as in a
        # test run) IPython has no PNG formatter for figures, and the book would get "<Figure size ...>" as text.
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        image = Image(data=buffer.getvalue(), format="png")
        glue(name, image, display=False)
        display(image)
        display(Markdown(f"*Figure `{name}`.* {caption}"))
    plt.close(fig)


def glue_value(name: str, value: float) -> None:
    """Glue a number for ``{glue:text}`` in the prose, e.g. ``{glue:text}`kd-gain:.1%```; a no-op outside a kernel.

    Glue numbers, not pre-formatted strings: MyST-NB shows a glued string with its quotes.

    Parameters
    ----------
    name : str
        The non-empty glue name that ``{glue:text}`` refers to.
    value : float
        A real number (bools are refused), glued as a float.

    Raises
    ------
    TypeError
        If ``value`` is not a real number.
    ValueError
        If ``name`` is empty or not a string.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"value must be a number, got {type(value).__name__}")
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string")
    if _in_notebook():
        from myst_nb import glue

        glue(name, float(value), display=False)


def log_ticks(ax: "matplotlib.axes.Axes", ticks, axis: str = "x") -> None:
    """Put a log-scaled axis's ticks at ``ticks`` (e.g. the sample sizes of a sweep), labelled as plain numbers.

    The minor ticks are left unlabelled (matplotlib's default labels minor ticks like 2x10^1, 3x10^1, which collide).
    The axis is set to a log scale.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        The axes to change.
    ticks : Iterable of float
        The major tick positions, a non-empty collection of positive real numbers.
    axis : {"x", "y"}, default "x"
        Which axis of ``ax`` to change.

    Raises
    ------
    ValueError
        If ``axis`` is not ``"x"`` or ``"y"``, or ``ticks`` is empty or holds a value that is not a positive real
        number.
    """
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    ticks = list(ticks)
    if not ticks or any(not isinstance(t, Real) or t <= 0 for t in ticks):
        raise ValueError("ticks must be a non-empty sequence of positive numbers (the axis is logarithmic)")
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    target.set_major_formatter(ScalarFormatter())
    target.set_minor_formatter(NullFormatter())
