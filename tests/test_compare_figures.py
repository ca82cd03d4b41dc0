"""Comparison figures draw exactly the numbers they are given (as the per-run figures are
tested)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from analysis.figures import compare as fc
from analysis.figures.common import setting_colors


def history() -> pd.DataFrame:
    rows = []
    values = {"a": [0.90, 0.92, 0.93], "b": [0.88, 0.91, 0.95], "c": [0.89, 0.90, 0.94]}
    for run_id, accs in values.items():
        for step, acc in enumerate(accs, start=1):
            rows.append((run_id, "test_accuracy", step, acc))
            rows.append((run_id, "train_loss", step, 1 - acc))
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])


def test_curve_overlay_draws_each_run_and_colours_by_setting():
    labels = {"a": "lr=0.1,seed=0", "b": "lr=0.1,seed=1", "c": "lr=0.01"}
    settings = {"a": "lr=0.1", "b": "lr=0.1", "c": "lr=0.01"}
    display = fc.CurveOverlayDisplay(history(), labels, settings).plot(
        ["test_accuracy", "train_loss"], at_epoch=2
    )
    ax_acc, ax_loss = display.axes_
    curves = [line for line in ax_acc.lines if len(line.get_xdata()) == 3]
    assert [list(line.get_ydata()) for line in curves] == [
        [0.90, 0.92, 0.93],
        [0.88, 0.91, 0.95],
        [0.89, 0.90, 0.94],
    ]
    colors = setting_colors(list(settings.values()))
    assert curves[0].get_color() == curves[1].get_color() == colors["lr=0.1"]  # seeds share one
    assert curves[2].get_color() == colors["lr=0.01"]
    # the legend stands beside the last panel, over none of the curves
    assert ax_acc.get_legend() is None
    assert [t.get_text() for t in ax_loss.get_legend().get_texts()] == ["lr=0.1", "lr=0.01"]
    marker = [line for line in ax_loss.lines if list(line.get_xdata()) == [2, 2]]
    assert marker, "the --at-epoch line is drawn"
    assert ax_acc.get_title() == "test_accuracy" and ax_loss.get_xlabel() == "epoch"


def test_epoch_comparison_orders_runs_by_final_accuracy():
    at = pd.Series({"a": 0.91, "b": 0.93, "c": 0.90})
    final = pd.Series({"a": 0.95, "b": 0.94, "c": 0.96})
    display = fc.EpochComparisonDisplay(at, final, {"a": "A", "b": "B", "c": "C"}, 2).plot()
    opened, filled = display.ax_.collections
    order = ["b", "a", "c"]  # by final accuracy, ascending
    np.testing.assert_allclose(opened.get_offsets()[:, 0], at[order])
    np.testing.assert_allclose(filled.get_offsets()[:, 0], final[order])
    assert [t.get_text() for t in display.ax_.get_yticklabels()] == ["B", "A", "C"]


def test_per_class_heatmap_cells_hold_the_accuracies():
    per_class = pd.DataFrame(
        np.linspace(0.8, 0.99, 20).reshape(2, 10), index=["run A", "run B"], columns=range(10)
    )
    display = fc.PerClassHeatmapDisplay(per_class).plot()
    mesh = display.ax_.collections[0]
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(2, 10), per_class.to_numpy())
    texts = [float(t.get_text()) for t in display.ax_.texts]
    np.testing.assert_allclose(texts, per_class.to_numpy().ravel(), atol=5e-4)
    assert [t.get_text() for t in display.ax_.get_yticklabels()] == ["run A", "run B"]


def is_red(rgba) -> bool:
    r, _, b, _ = rgba
    return r > b + 0.1


def is_blue(rgba) -> bool:
    r, _, b, _ = rgba
    return b > r + 0.1


def test_difference_grid_is_red_where_the_run_is_worse():
    diff = np.zeros((10, 10), dtype=int)
    diff[3, 3] = -4  # fewer 3s right: worse
    diff[3, 5] = +4  # more 3s read as 5: worse
    diff[7, 7] = +4  # more 7s right: better
    diff[7, 1] = -4  # fewer 7s read as 1: better
    display = fc.ConfusionGridDisplay({"run": diff}, kind="difference").plot()
    image = display.axes_[0, 0].images[0]
    rgba = image.cmap(image.norm(image.get_array()))
    assert is_red(rgba[3, 3]) and is_red(rgba[3, 5])
    assert is_blue(rgba[7, 7]) and is_blue(rgba[7, 1])
    texts = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
        for t in display.axes_[0, 0].texts
    }
    assert texts == {(3, 3): "-4", (3, 5): "+4", (7, 7): "+4", (7, 1): "-4"}  # the raw differences


def test_count_grid_shows_each_run_and_annotates_mistakes_only():
    counts = np.diag(np.full(10, 50))
    counts[4, 9] = 7
    display = fc.ConfusionGridDisplay({"A": counts, "B": counts.T}).plot()
    assert [ax.get_title() for ax in display.axes_.flat if ax.get_visible()] == ["A", "B"]
    np.testing.assert_array_equal(display.axes_[0, 0].images[0].get_array(), counts)
    assert [t.get_text() for t in display.axes_[0, 0].texts] == ["7"]


def test_bad_grid_kind_is_a_value_error():
    with pytest.raises(ValueError, match="kind must be"):
        fc.ConfusionGridDisplay({}, kind="ratio")


def test_accuracy_cost_points_sit_at_time_and_accuracy():
    table = pd.DataFrame(
        {"accuracy": [0.97, 0.92], "train_time_s": [12.0, 3.0]}, index=["mlp", "softmax"]
    )
    settings = {"mlp": "mlp", "softmax": "softmax"}
    display = fc.AccuracyCostDisplay(table, {"mlp": "MLP", "softmax": "S"}, settings).plot()
    points = {
        (float(line.get_xdata()[0]), float(line.get_ydata()[0])): line.get_color()
        for line in display.ax_.lines
        if len(line.get_xdata()) == 1
    }
    colors = setting_colors(["mlp", "softmax"])
    assert to_rgba(points[(12.0, 0.97)]) == to_rgba(colors["mlp"])
    assert to_rgba(points[(3.0, 0.92)]) == to_rgba(colors["softmax"])


def test_the_overlap_check_sees_text_drawn_over_text():
    """The check the 30-trial readability test relies on: it must fail on what it guards."""
    from analysis.figures.common import new_figure, overlapping_texts

    ax = new_figure(4, 3).subplots()
    ax.text(0.5, 0.5, "first words")
    ax.text(0.5, 0.5, "second words")
    assert ("first words", "second words") in overlapping_texts(ax.figure)
    crowded = new_figure(4, 3).subplots()
    crowded.set_xticks(range(30), [f"a long tick label {i}" for i in range(30)])
    assert len(overlapping_texts(crowded.figure)) > 20
    clean = new_figure(4, 3).subplots()
    clean.set_xlim(0.5, 2.5)  # ticks at 0 and 3 exist but are not drawn
    clean.set_xticks(range(4), ["0", "1", "2", "3"])
    assert overlapping_texts(clean.figure) == []
