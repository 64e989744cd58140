"""Plotting helpers: the style, the readability checks of save_figure, and the numbers quoted in the prose."""

import math
import os
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kdnb.core.plotting import Prose, Quoted, figure_problems, save_figure, use_style  # noqa: E402


def labelled(fig_size=(6.4, 4.0), **plot):
    fig, ax = plt.subplots(figsize=fig_size)
    ax.plot([0, 1], [0, 1], **plot)
    ax.set(xlabel="x", ylabel="y")
    return fig, ax


def test_use_style_sets_the_book_defaults():
    use_style()
    assert matplotlib.rcParams["savefig.bbox"] == "tight"
    assert matplotlib.rcParams["savefig.dpi"] == 100


def test_save_figure_writes_a_png_of_the_checked_figure_and_closes_it(tmp_path, monkeypatch):
    use_style()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KDNB_FIGURES_DIR", raising=False)
    fig, _ = labelled()
    save_figure(fig, "figures/ch/plot.png")
    png = (tmp_path / "figures" / "ch" / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(png[16:20], "big")
    assert 500 < width <= 800  # 6.4 inches at 100 dpi, tight bounding box
    assert not plt.fignum_exists(fig.number)


def test_save_figure_writes_under_kdnb_figures_dir_when_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDNB_FIGURES_DIR", str(tmp_path / "elsewhere"))
    fig, _ = labelled()
    save_figure(fig, "figures/ch/plot.png")
    assert (tmp_path / "elsewhere" / "figures" / "ch" / "plot.png").is_file()
    assert not (tmp_path / "figures").exists()


def test_the_test_session_keeps_chapter_figures_out_of_the_book():
    """nbval runs the chapters in notebooks/: their smoke figures must not replace the book's (nor make `make book`
    after `make test` re-execute every chapter, since the figures are dependencies of the pages)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    figures = Path(os.environ["KDNB_FIGURES_DIR"]).resolve()
    assert root / "notebooks" not in [figures, *figures.parents]


def test_save_figure_refuses_bad_paths_and_closes_the_figure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad in ["/tmp/x.png", "figures/x.svg", "x"]:
        fig, _ = labelled()
        with pytest.raises(ValueError, match="relative path ending in .png"):
            save_figure(fig, bad)
        assert not plt.fignum_exists(fig.number)
    fig, _ = labelled()
    with pytest.raises(TypeError, match="path must be a str"):
        save_figure(fig, 3)
    with pytest.raises(TypeError, match="fig must be a matplotlib Figure"):
        save_figure("fig", "x.png")


def test_unlabelled_axes_are_refused():
    use_style()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    assert any("every axis needs an x and a y label" in p for p in figure_problems(fig))
    ax.set(xlabel="x", ylabel="y")
    twin = ax.twinx()
    twin.plot([0, 1], [1, 0])
    assert any("every axis needs" in p for p in figure_problems(fig))  # the twin's y axis is drawn, unlabelled
    twin.set_ylabel("other y")
    assert figure_problems(fig) == []  # its x axis is hidden: no x label needed
    plt.close(fig)


def test_a_figure_wider_than_the_column_is_refused():
    use_style()
    fig, _ = labelled(fig_size=(11, 4))
    problems = figure_problems(fig)
    assert any("wider than the book's 780-px column" in p for p in problems)
    assert figure_problems(fig, column_width_px=1200) == []
    plt.close(fig)


def test_small_text_is_refused_at_the_displayed_size():
    use_style()
    fig, ax = labelled()
    ax.tick_params(labelsize=7)
    assert any("smaller than 9 pt" in p for p in figure_problems(fig))
    ax.tick_params(labelsize=9)  # 9 pt at 100 dpi is 9.4 CSS points
    assert figure_problems(fig) == []
    assert any("smaller than 9 pt" in p for p in figure_problems(fig, dpi=72))  # the same fonts, saved smaller
    plt.close(fig)


def test_overlapping_texts_are_refused():
    use_style()
    fig, ax = labelled()
    ax.text(0.2, 0.9, "first label")
    ax.text(0.21, 0.9, "second label")
    assert any("overlaps text" in p for p in figure_problems(fig))
    plt.close(fig)


def test_a_label_over_the_next_panel_is_refused():
    use_style()
    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 4))
    for ax in (left, right):
        ax.plot([0, 1], [0, 1])
        ax.set(xlabel="x", ylabel="y")
    right.yaxis.set_label_coords(-0.8, 0.5)  # pushed over the left panel
    assert any("lies over the panel" in p for p in figure_problems(fig))
    right.yaxis.set_label_coords(-0.12, 0.5)
    assert not any("lies over the panel" in p for p in figure_problems(fig))
    plt.close(fig)


def test_a_legend_or_annotation_on_data_is_refused():
    use_style()
    fig, ax = labelled(label="the line")
    ax.legend(loc="center")  # the diagonal goes through the centre
    assert any("legend covers data" in p for p in figure_problems(fig))
    ax.legend(loc="upper left")
    assert figure_problems(fig) == []
    ax.annotate("on the line", (0.5, 0.5))
    assert any("covers data" in p for p in figure_problems(fig))
    plt.close(fig)

    fig, ax = plt.subplots()
    ax.bar([0, 1, 2], [3, 3, 3], label="bars")
    ax.set(xlabel="class", ylabel="count", ylim=(0, 3.3))
    ax.legend(loc="center")
    assert any("legend covers data" in p for p in figure_problems(fig))
    plt.close(fig)


@pytest.mark.parametrize("kwargs", [{"column_width_px": 0}, {"min_font_pt": -1}, {"dpi": float("nan")},
                                    {"dpi": True}])
def test_figure_problems_validates_its_limits(kwargs):
    fig, _ = labelled()
    with pytest.raises(ValueError, match="must be a positive number"):
        figure_problems(fig, **kwargs)
    plt.close(fig)


def test_quoted_numbers_show_their_format_without_quotes():
    assert repr(Quoted(0.97222, ".1%")) == "97.2%"
    assert str(Quoted(-1.5, ".2f")) == "−1.50"  # a typographic minus
    assert repr(Quoted(-0.0001, ".2f")) == "0.00"  # no sign on a value that rounds to zero
    assert repr(Quoted(float("nan"), ".1%")) == "n/a"  # a number this profile did not compute, never "nan%"
    assert repr(Quoted(float("-inf"), ".2f")) == "−∞" and math.isnan(float(Quoted(float("nan"), "g")))
    assert float(Quoted(np.float32(0.5), "g")) == 0.5
    with pytest.raises(TypeError, match="value must be a real number"):
        Quoted("0.5", "g")
    with pytest.raises(TypeError, match="value must be a real number"):
        Quoted(True, "g")
    with pytest.raises(ValueError, match="not a format specification"):
        Quoted(0.5, ".1q")


def test_prose_names_the_numbers_of_the_text():
    prose = Prose()
    prose.add("teacher_accuracy", 0.97222, ".1%")
    assert repr(prose.teacher_accuracy) == "97.2%"
    assert "teacher_accuracy" in dir(prose)
    with pytest.raises(AttributeError, match="no cell added with prose.add .added: teacher_accuracy"):
        prose.student_accuracy  # noqa: B018
    with pytest.raises(AttributeError, match="add numbers with prose.add"):
        prose.x = 1
    for bad in ["teacher-accuracy", "_private", "add", "1st"]:
        with pytest.raises(ValueError, match="must be a Python identifier"):
            prose.add(bad, 1.0, "g")
    with pytest.raises(TypeError, match="name must be a str"):
        prose.add(3, 1.0, "g")


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
