"""Plotting: one style for the whole book, figures saved for the page's column, and numbers quoted in the prose.

A chapter shows a figure in two steps that work the same in the HTML book (MyST-NB) and in JupyterLab
(jupyterlab-myst):

1. a code cell draws it and calls :func:`save_figure`, which checks that it can be read at the size the book shows
   it (no wider than the content column, no text smaller than 9 pt, labelled axes, no text over other text, over a
   neighbouring panel or over data) and writes it as a PNG next to the chapter;
2. a markdown cell places it with MyST's ``{figure}`` directive, which carries the caption and the label that
   ``{numref}`` refers to.

Numbers quoted in the prose are MyST inline expressions, ``{eval}`prose.teacher_accuracy```, on a :class:`Prose`
namespace that a code cell fills with :meth:`Prose.add`. Each value carries its format, so both renderers show the same
text ("97.2%"); an expression that names a number never added is an error in the book build.
"""

from __future__ import annotations

import io
import math
import os
import struct
from numbers import Real
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np

__all__ = [
    "COLUMN_WIDTH_PX",
    "FIGURE_DPI",
    "MIN_FONT_PT",
    "PALETTE",
    "Prose",
    "Quoted",
    "figure_problems",
    "log_ticks",
    "save_figure",
    "use_style",
]

PALETTE = "colorblind"
#: Width in CSS pixels of the book's content column (784 px at a 1280-pixel window, book/_static/kdnb.css), less a margin; a figure at most this
#: wide is shown at its own size, so its fonts keep their size.
COLUMN_WIDTH_PX = 780
#: Resolution of saved figures: 100 pixels per inch, so a 6.4-inch figure is 640 pixels wide on the page.
FIGURE_DPI = 100
#: Smallest text allowed on a figure, in CSS points (12 CSS pixels) at the size the page shows it.
MIN_FONT_PT = 9.0


def use_style(context: str = "notebook") -> None:
    """Apply the book's style: seaborn ``whitegrid``, the colour-blind palette, and figure defaults.

    The figure defaults are a 6.4 x 4.0 inch figure saved at :data:`FIGURE_DPI` (100 dpi) with a tight bounding box,
    so that it is 640 pixels wide, bold axis titles and legends without a frame. Font sizes are those of seaborn's
    context (``"notebook"``: 11-12 pt), above the book's 9-point minimum. The style changes matplotlib's global
    settings for the process.

    Parameters
    ----------
    context : str, default "notebook"
        The seaborn scaling context: ``"paper"``, ``"notebook"``, ``"talk"`` or ``"poster"``.
    """
    import seaborn as sns

    sns.set_theme(context=context, style="whitegrid", palette=PALETTE)
    matplotlib.rcParams.update({
        "figure.figsize": (6.4, 4.0),
        "figure.dpi": FIGURE_DPI,
        "savefig.dpi": FIGURE_DPI,
        "savefig.bbox": "tight",
        "axes.titleweight": "bold",
        "legend.frameon": False,
    })


def _png_width(png: bytes) -> int:
    """Width in pixels from a PNG's IHDR chunk (bytes 16-20, big-endian)."""
    return struct.unpack(">I", png[16:20])[0]


def _render_png(fig, dpi: float) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def _in_view(axis, loc: float) -> bool:
    low, high = sorted(axis.get_view_interval())
    span = max(high - low, abs(high), 1e-300)
    return low - 1e-9 * span <= loc <= high + 1e-9 * span


def _axis_texts(ax):
    """The drawn texts of one axes: titles, axis labels, offset texts and the tick labels inside the view."""
    texts = [ax.title, ax._left_title, ax._right_title]  # the three title slots of matplotlib's Axes
    for axis in (ax.xaxis, ax.yaxis):
        if not axis.get_visible():
            continue
        texts += [axis.label, axis.get_offset_text()]
        for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
            if tick.get_visible() and _in_view(axis, tick.get_loc()):
                texts += [label for label in (tick.label1, tick.label2) if label.get_visible()]
    return texts


def _drawn(text) -> bool:
    return text.get_visible() and bool(text.get_text().strip())


def _boxes_overlap(a, b, tolerance: float = 1.0) -> bool:
    """Whether two display-space boxes share more than ``tolerance`` pixels in both directions."""
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > tolerance) and (min(a.y1, b.y1) - max(a.y0, b.y0) > tolerance)


def _data_points(ax) -> np.ndarray:
    """Display-space points that an axes draws as data, shape (n, 2): line vertices (and points every 3 pixels
    along each segment, so that a line crossing a box is found), scatter offsets and error-bar segments; points
    outside the axes' box are dropped."""
    from matplotlib.collections import LineCollection, PathCollection

    pieces = []

    def densify(xy):
        xy = xy[np.all(np.isfinite(xy), axis=1)]
        if len(xy) < 2:
            return xy
        steps = np.clip(np.ceil(np.linalg.norm(np.diff(xy, axis=0), axis=1) / 3.0), 1, 200).astype(int)
        fractions = [np.arange(n) / n for n in steps]
        starts, deltas = xy[:-1], np.diff(xy, axis=0)
        dense = np.concatenate([s + f[:, None] * d for s, d, f in zip(starts, deltas, fractions)])
        return np.vstack([dense, xy[-1:]])

    for line in ax.get_lines():
        if not line.get_visible():
            continue
        xy = line.get_transform().transform(line.get_xydata())
        pieces.append(densify(xy) if line.get_linestyle() not in ("None", "none", "", " ") else xy)
    for collection in ax.collections:
        if not collection.get_visible():
            continue
        if isinstance(collection, PathCollection) and len(collection.get_offsets()):
            pieces.append(collection.get_offset_transform().transform(np.asarray(collection.get_offsets())))
        elif isinstance(collection, LineCollection):
            transform = collection.get_transform()
            pieces += [densify(transform.transform(np.asarray(segment))) for segment in collection.get_segments()]
    if not pieces:
        return np.empty((0, 2))
    points = np.vstack([p for p in pieces if len(p)]) if any(len(p) for p in pieces) else np.empty((0, 2))
    frame = ax.get_window_extent()
    inside = ((points[:, 0] >= frame.x0) & (points[:, 0] <= frame.x1)
              & (points[:, 1] >= frame.y0) & (points[:, 1] <= frame.y1))
    return points[inside]


def _bar_boxes(ax) -> list:
    """Display-space boxes of the bars (rectangle patches) that an axes draws, clipped to the axes."""
    from matplotlib.patches import Rectangle
    from matplotlib.transforms import Bbox

    frame = ax.get_window_extent()
    boxes = []
    for patch in ax.patches:
        if isinstance(patch, Rectangle) and patch.get_visible():
            box = Bbox.intersection(patch.get_window_extent(), frame)
            if box is not None and box.width > 0 and box.height > 0:
                boxes.append(box)
    return boxes


def _covers_data(box, points: np.ndarray, bars=(), margin: float = 1.0) -> bool:
    if any(_boxes_overlap(box, bar, tolerance=margin) for bar in bars):
        return True
    if not len(points):
        return False
    return bool(np.any((points[:, 0] > box.x0 + margin) & (points[:, 0] < box.x1 - margin)
                       & (points[:, 1] > box.y0 + margin) & (points[:, 1] < box.y1 - margin)))


def _describe(text) -> str:
    return repr(text.get_text().strip()[:40])


def figure_problems(
    fig: "matplotlib.figure.Figure",
    *,
    column_width_px: int = COLUMN_WIDTH_PX,
    min_font_pt: float = MIN_FONT_PT,
    dpi: float = FIGURE_DPI,
) -> list[str]:
    """What would make ``fig`` hard to read on the book's page, as a list of sentences (empty when nothing does).

    The figure is drawn as :func:`save_figure` saves it (PNG, tight bounding box, ``dpi``) and checked for:

    - an axis that holds data without an x or a y label (colorbars, hidden axes, axes without data and the hidden
      x axis of a twin, ``ax.twinx()``, are exempt);
    - a width above ``column_width_px``: the page would scale the figure down and shrink its text;
    - text smaller than ``min_font_pt`` CSS points at the size the page shows it (a font of ``s`` points saved at
      ``dpi`` is ``s * dpi / 96`` CSS points, since a CSS inch is 96 pixels);
    - two texts that overlap (tick labels, axis labels, titles, legends, annotations, colorbar labels);
    - a title, axis label or tick label of one panel that lies over another panel;
    - a legend, or a text placed in the axes (``ax.text``, ``ax.annotate``), that covers data: line vertices and
      the lines between them, scatter points, error bars and bars.

    Images and heatmaps (``imshow``, ``pcolormesh``) are not data in this sense: text on a heatmap is allowed.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure, drawn (it is not changed or closed).
    column_width_px : int, default :data:`COLUMN_WIDTH_PX`
        The widest figure allowed, in pixels, > 0.
    min_font_pt : float, default :data:`MIN_FONT_PT`
        The smallest text allowed, in CSS points at the displayed size, > 0.
    dpi : float, default :data:`FIGURE_DPI`
        The resolution the figure is saved at, pixels per inch, > 0.

    Returns
    -------
    list of str
        One sentence per problem, naming the panel (by its title) or the text.

    Raises
    ------
    TypeError
        If ``fig`` is not a matplotlib figure.
    ValueError
        If ``column_width_px``, ``min_font_pt`` or ``dpi`` is not a positive number.
    """
    from matplotlib.figure import Figure
    from matplotlib.legend import Legend

    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    for name, value in (("column_width_px", column_width_px), ("min_font_pt", min_font_pt), ("dpi", dpi)):
        if isinstance(value, bool) or not isinstance(value, Real) or not value > 0 or not math.isfinite(value):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    problems = []
    data_axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>" and ax.has_data()]
    for ax in data_axes:
        # A twin axis (ax.twinx()) hides its own x axis: only the axes that are drawn need labels.
        missing_x = ax.xaxis.get_visible() and not ax.get_xlabel()
        missing_y = ax.yaxis.get_visible() and not ax.get_ylabel()
        if missing_x or missing_y:
            problems.append(f"every axis needs an x and a y label (axis titled {ax.get_title()!r})")

    original_dpi = fig.get_dpi()
    try:
        png = _render_png(fig, dpi)
        width = _png_width(png)
        if width > column_width_px:
            problems.append(f"the figure is {width} px wide at {dpi:g} dpi, wider than the book's {column_width_px}-px "
                            f"column, which would shrink its text: make it at most {column_width_px / dpi:.1f} inches "
                            "wide (stack the panels, or split the figure)")
        fig.set_dpi(dpi)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()

        owned = []  # (text, the axes it belongs to or None, its kind)
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            owned += [(t, ax, "axis") for t in _axis_texts(ax) if _drawn(t)]
            owned += [(t, ax, "inside") for t in ax.texts if _drawn(t)]
        legends = [child for ax in fig.axes if ax.get_visible() for child in ax.get_children()
                   if isinstance(child, Legend) and child.get_visible()]
        legends += [legend for legend in fig.legends if legend.get_visible()]
        for legend in legends:
            owned += [(t, None, "legend") for t in [*legend.get_texts(), legend.get_title()] if _drawn(t)]
        owned += [(t, None, "figure") for t in fig.texts if _drawn(t)]

        smallest = min(((t.get_fontsize() * dpi / 96.0, t) for t, _, _ in owned), key=lambda pair: pair[0], default=None)
        if smallest is not None and smallest[0] < min_font_pt - 1e-9:
            small = [t for t, _, _ in owned if t.get_fontsize() * dpi / 96.0 < min_font_pt - 1e-9]
            problems.append(f"{len(small)} texts are smaller than {min_font_pt:g} pt on the page, e.g. "
                            f"{_describe(smallest[1])} at {smallest[0]:.1f} pt: use at least "
                            f"{min_font_pt * 96.0 / dpi:.1f}-point fonts")

        boxes = [(t, ax, kind, t.get_window_extent(renderer)) for t, ax, kind in owned]
        for i, (t1, _, _, b1) in enumerate(boxes):
            for t2, _, _, b2 in boxes[i + 1:]:
                if _boxes_overlap(b1, b2):
                    problems.append(f"text {_describe(t1)} overlaps text {_describe(t2)}")

        frames = [(ax, ax.get_window_extent(renderer)) for ax in fig.axes if ax.get_visible() and ax.axison]
        for t, owner, kind, box in boxes:
            if kind != "axis":
                continue
            for other, frame in frames:
                same_place = np.allclose(other.get_position().bounds, owner.get_position().bounds)
                if other is not owner and not same_place and _boxes_overlap(box, frame):
                    problems.append(f"text {_describe(t)} of the panel titled {owner.get_title()!r} lies over "
                                    f"the panel titled {other.get_title()!r}")

        points_by_axes = {ax: _data_points(ax) for ax in fig.axes if ax.get_visible()}
        bars_by_axes = {ax: _bar_boxes(ax) for ax in points_by_axes}
        all_points = [p for p in points_by_axes.values() if len(p)]
        every_point = np.vstack(all_points) if all_points else np.empty((0, 2))
        every_bar = [bar for bars in bars_by_axes.values() for bar in bars]
        for legend in legends:
            box = legend.get_window_extent(renderer)
            if _covers_data(box, every_point, every_bar):
                problems.append("a legend covers data: move it (loc=..., or outside the axes with bbox_to_anchor)")
        for t, owner, kind, box in boxes:
            if kind == "inside" and _covers_data(box, points_by_axes[owner], bars_by_axes[owner]):
                problems.append(f"text {_describe(t)} covers data in the panel titled {owner.get_title()!r}")
    finally:
        fig.set_dpi(original_dpi)
    return list(dict.fromkeys(problems))  # each problem once, in order


def save_figure(fig: "matplotlib.figure.Figure", path: str | Path) -> None:
    """Check that ``fig`` can be read on the page, save it as the PNG that a ``{figure}`` directive shows, and close it.

    The chapter's markdown places the figure with MyST's ``{figure}`` directive, naming the same path relative to the
    notebook, for example ``figures/01_distillation_basics/soft-targets.png``; both the book (MyST-NB) and JupyterLab
    (jupyterlab-myst) render it with its caption and number. The figure is saved at :data:`FIGURE_DPI` with a tight
    bounding box, and nothing is displayed in the cell's output, so the figure appears once, where the prose puts it.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure; it is always closed, also when it is refused.
    path : str or pathlib.Path
        Where to write it: a relative path ending in ``.png``, resolved against the working directory (the
        notebook's folder in JupyterLab, MyST-NB and papermill with ``--cwd``), or against the folder named by the
        environment variable ``KDNB_FIGURES_DIR`` when it is set. The test session sets it, so that chapters run
        by the tests (nbval executes them in ``notebooks/``) never overwrite the figures the built book shows, nor
        make Sphinx take every chapter as changed. Missing folders are created.

    Raises
    ------
    TypeError
        If ``fig`` is not a matplotlib figure or ``path`` is not a str or a Path.
    ValueError
        If ``path`` is absolute or does not end in ``.png``, or :func:`figure_problems` finds a problem (all of
        them are listed).
    """
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    try:
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a str or a pathlib.Path, got {type(path).__name__}")
        path = Path(path)
        if path.is_absolute() or path.suffix != ".png":
            raise ValueError(f"path must be a relative path ending in .png (the {{figure}} directive's path), got "
                             f"{str(path)!r}")
        problems = figure_problems(fig)
        if problems:
            raise ValueError(f"figure {str(path)!r} cannot be read on the page:\n- " + "\n- ".join(problems))
        root = os.environ.get("KDNB_FIGURES_DIR")
        target = Path(root) / path if root else path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_render_png(fig, FIGURE_DPI))
    finally:
        plt.close(fig)


class Quoted:
    """A number as the prose quotes it: its value and its format, shown as the formatted text alone.

    Its ``repr`` is the formatted text (``format(value, spec)``), so that an inline expression ``{eval}`...``` shows
    "97.2%" in MyST-NB and in jupyterlab-myst alike (both show an expression's plain-text representation).

    Parameters
    ----------
    value : float
        The number, real (bools are refused). NaN marks a number this run did not compute (a smaller profile
        leaves some settings out) and shows as "n/a", never as "nan%"; infinities show as "∞" and "−∞".
    spec : str
        A format specification of Python's mini-language, e.g. ``".1%"``, ``".3f"``, ``"g"``, ``","``.

    Raises
    ------
    TypeError
        If ``value`` is not a real number or ``spec`` is not a str.
    ValueError
        If ``spec`` is not a valid format specification for a float.
    """

    __slots__ = ("spec", "value")

    def __init__(self, value: float, spec: str):
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"value must be a real number, got {type(value).__name__}")
        if not isinstance(spec, str):
            raise TypeError(f"spec must be a format specification (str), got {type(spec).__name__}")
        try:
            format(float(value), spec)
        except ValueError as error:
            raise ValueError(f"spec {spec!r} is not a format specification for a number: {error}") from None
        self.value = float(value)
        self.spec = spec

    def __repr__(self) -> str:
        # "-0.0%" reads as a sign error in prose: a value that rounds to zero is shown without its sign.
        if math.isnan(self.value):
            return "n/a"
        if math.isinf(self.value):
            return "∞" if self.value > 0 else "−∞"
        text = format(self.value, self.spec)
        if text.startswith("-") and not any(ch in "123456789" for ch in text):
            text = text[1:]
        return text.replace("-", "−")  # a typographic minus, as in the equations

    __str__ = __repr__

    def __float__(self) -> float:
        return self.value


class Prose:
    """The numbers a chapter quotes in its prose, as attributes for MyST inline expressions.

    A code cell adds a number with its format, ``prose.add("teacher_accuracy", 0.9722, ".1%")``, and the markdown
    quotes it as ``{eval}`prose.teacher_accuracy```, which shows "97.2%" in the book and, after the cell has run, in
    JupyterLab. The book's configuration allows inline expressions of the form ``prose.<name>`` only.

    Raises
    ------
    AttributeError
        When reading a name that was never added: in the book build the expression fails, and so does the build.
    """

    def __init__(self):
        object.__setattr__(self, "_numbers", {})

    def add(self, name: str, value: float, spec: str) -> Quoted:
        """Add (or replace) the number ``name``, shown as ``format(value, spec)``.

        Parameters
        ----------
        name : str
            A Python identifier that does not start with an underscore, e.g. ``"teacher_accuracy"``.
        value : float
            The number (see :class:`Quoted`).
        spec : str
            Its format specification, e.g. ``".1%"``.

        Returns
        -------
        Quoted
            The quoted number.

        Raises
        ------
        TypeError
            If ``name`` is not a str, or ``value`` or ``spec`` is refused by :class:`Quoted`.
        ValueError
            If ``name`` is not an identifier, starts with an underscore or is ``"add"``.
        """
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if not name.isidentifier() or name.startswith("_") or name == "add":
            raise ValueError(f"name must be a Python identifier not starting with '_' (and not 'add'), got {name!r}")
        quoted = Quoted(value, spec)
        self._numbers[name] = quoted
        return quoted

    def __getattr__(self, name: str) -> Quoted:
        numbers = object.__getattribute__(self, "_numbers")
        if name in numbers:
            return numbers[name]
        known = ", ".join(sorted(numbers)) or "none yet"
        raise AttributeError(f"the prose quotes {name!r}, which no cell added with prose.add (added: {known})")

    def __setattr__(self, name, value):
        raise AttributeError("add numbers with prose.add(name, value, spec), which records their format")

    def __dir__(self):
        return sorted(object.__getattribute__(self, "_numbers"))

    def __repr__(self) -> str:
        numbers = object.__getattribute__(self, "_numbers")
        return "Prose(" + ", ".join(f"{k}={v!r}" for k, v in numbers.items()) + ")"


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
