"""Plotting helpers: the style, and the checks in glue_figure and glue_value."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kdnb.core.plotting import glue_figure, glue_value, use_style  # noqa: E402


def test_use_style_sets_the_book_defaults():
    use_style()
    assert matplotlib.rcParams["savefig.bbox"] == "tight"


def test_glue_figure_requires_labelled_axes_and_a_caption():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    with pytest.raises(ValueError, match="every axis needs an x and a y label"):
        glue_figure("fig-x", fig, "caption")
    ax.set(xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match="caption must be a non-empty string"):
        glue_figure("fig-x", fig, "  ")
    glue_figure("fig-x", fig, "A caption.")  # outside a kernel: checks, then closes the figure
    assert not plt.fignum_exists(fig.number)


def test_glue_figure_accepts_a_twin_axis_with_its_own_y_label():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    ax.set(xlabel="x", ylabel="y")
    twin = ax.twinx()
    twin.plot([0, 1], [1, 0])
    with pytest.raises(ValueError, match="every axis needs"):
        glue_figure("fig-twin", fig, "A caption.")  # the twin's y axis is drawn and unlabelled
    twin.set_ylabel("other y")
    glue_figure("fig-twin", fig, "A caption.")  # its x axis is hidden: no x label needed


def test_glue_value_takes_numbers_only():
    glue_value("n", np.float32(0.5))
    with pytest.raises(TypeError, match="value must be a number"):
        glue_value("n", "0.5")


def test_log_ticks_labels_the_given_values_only():
    import matplotlib.pyplot as plt

    from kdnb.core.plotting import log_ticks

    fig, ax = plt.subplots()
    ax.plot([16, 512], [1, 2])
    log_ticks(ax, [16, 64, 256, 512])
    fig.canvas.draw()
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["16", "64", "256", "512"]
    assert all(t.get_text() == "" for t in ax.xaxis.get_minorticklabels())
    with pytest.raises(ValueError, match="positive"):
        log_ticks(ax, [0, 10])
    with pytest.raises(ValueError, match="axis"):
        log_ticks(ax, [10], axis="z")
    plt.close(fig)
