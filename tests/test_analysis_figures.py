"""Figures and galleries contain what they claim, and galleries pick exactly the right images."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from analysis_helpers import fake_predictions, fixture_test_labels
from matplotlib.colors import to_hex

from analysis import metrics
from analysis.figures import common, gallery
from analysis.figures import run as plots


@pytest.fixture(scope="module")
def case():
    """Fixture test labels, fake predictions and stand-in images whose pixels encode their index."""
    labels = fixture_test_labels()
    probs = fake_predictions(labels, accuracy=0.85, seed=7)
    images = (
        np.arange(len(labels), dtype=np.int64)[:, None, None] % 256 * np.ones((1, 28, 28))
    ).astype(np.uint8)
    return labels, probs, probs.argmax(axis=1), images


def _color(text) -> str:
    return to_hex(text.get_color())


def test_misclassified_selection_is_exactly_the_images_of_each_pair(case):
    labels, _, y_pred, _ = case
    selected = gallery.select_misclassified(labels, y_pred, pairs=[(4, 9), (1, 7), (3, 3 + 1)])
    for (t, p), positions in selected.items():
        expected = [i for i in range(len(labels)) if labels[i] == t and y_pred[i] == p]
        assert positions.tolist() == expected
    counts = [len(v) for v in selected.values()]
    assert counts == sorted(counts, reverse=True)


def test_misclassified_selection_defaults_to_the_most_confused_pairs(case):
    labels, _, y_pred, _ = case
    selected = gallery.select_misclassified(labels, y_pred, top_pairs=3)
    top = metrics.most_confused_pairs(labels, y_pred, top_k=3)
    assert list(selected) == list(zip(top["true"], top["pred"]))
    assert [len(v) for v in selected.values()] == top["count"].tolist()
    with pytest.raises(ValueError, match="not a mistake"):
        gallery.select_misclassified(labels, y_pred, pairs=[(2, 2)])


def test_prediction_examples_are_the_first_right_then_first_wrong(case):
    labels, _, y_pred, _ = case
    chosen = gallery.select_prediction_examples(labels, y_pred)
    right = [i for i in range(len(labels)) if labels[i] == y_pred[i]][:7]
    wrong = [i for i in range(len(labels)) if labels[i] != y_pred[i]][:3]
    assert chosen.tolist() == right + wrong


def test_confusion_heatmap_annotations_are_the_counts(case):
    labels, _, y_pred, _ = case
    display = plots.ConfusionHeatmapDisplay.from_predictions(labels, y_pred)
    texts = [t for t in display.ax_.texts if t.get_text()]
    assert sum(int(t.get_text()) for t in texts) == len(labels)
    counts = pd.crosstab(pd.Series(labels), pd.Series(y_pred))  # independent of the code under test
    for t in texts:
        x, y = t.get_position()
        assert int(t.get_text()) == counts.loc[int(y), int(x)]
    assert (
        display.ax_.get_xlabel() == "Predicted digit" and display.ax_.get_ylabel() == "True digit"
    )


def test_per_class_bars_show_each_digits_accuracy(case):
    labels, _, y_pred, _ = case
    display = plots.PerClassAccuracyDisplay.from_predictions(labels, y_pred)
    heights = [bar.get_height() for bar in display.ax_.patches]
    expected = [100 * np.mean(y_pred[labels == d] == d) for d in range(10)]
    np.testing.assert_allclose(heights, expected)
    worst = int(np.argmin(expected))
    assert to_hex(display.ax_.patches[worst].get_facecolor()) == common.COLORS["wrong"]


def test_learning_curves_plot_the_logged_values_in_percent():
    epochs = pd.DataFrame(
        {
            "train_loss": [0.5, 0.3],
            "test_loss": [0.4, 0.35],
            "train_accuracy": [0.9, 0.95],
            "test_accuracy": [0.91, 0.93],
        },
        index=pd.Index([1, 2], name="epoch"),
    )
    display = plots.LearningCurvesDisplay(epochs).plot()
    ax_loss, ax_acc = display.axes_
    lines = {line.get_label(): line for line in ax_acc.lines}
    np.testing.assert_allclose(lines["Test accuracy"].get_ydata(), [91, 93])
    assert to_hex(lines["Train accuracy"].get_color()) == common.COLORS["train"]
    assert any("epoch 2" in line.get_label() for line in ax_loss.lines)  # lowest test loss marked
    assert any("no validation split" in line.get_label() for line in ax_loss.lines)


def test_learning_curves_draw_validation_and_mark_its_best_epoch_not_tests():
    epochs = pd.DataFrame(
        {
            "train_loss": [0.5, 0.3, 0.2],
            "val_loss": [0.45, 0.38, 0.40],  # lowest at epoch 2
            "test_loss": [0.44, 0.39, 0.36],  # lowest at epoch 3: not the one marked
            "train_accuracy": [0.9, 0.95, 0.97],
            "val_accuracy": [0.90, 0.92, 0.91],
            "test_accuracy": [0.91, 0.93, 0.94],
        },
        index=pd.Index([1, 2, 3], name="epoch"),
    )
    display = plots.LearningCurvesDisplay(epochs).plot()
    ax_loss, ax_acc = display.axes_
    lines = {line.get_label(): line for line in ax_acc.lines}
    np.testing.assert_allclose(lines["Validation accuracy"].get_ydata(), [90, 92, 91])
    assert to_hex(lines["Validation accuracy"].get_color()) == common.COLORS["validation"]
    assert display.best_ == 2
    marks = [line.get_label() for line in ax_loss.lines if "Lowest" in line.get_label()]
    assert marks == ["Lowest validation loss (epoch 2)"]


def test_prediction_gallery_titles_are_green_when_right_and_red_when_wrong(case):
    labels, probs, y_pred, images = case
    display = gallery.PredictionGalleryDisplay.from_predictions(
        images, labels, probs, np.arange(len(labels))
    )
    chosen = gallery.select_prediction_examples(labels, y_pred)
    assert len(display.axes_) == 10
    for ax, pos in zip(display.axes_, chosen):
        assert ax.get_title() == f"True: {labels[pos]}, Pred: {y_pred[pos]}"
        expected = common.COLORS["correct" if labels[pos] == y_pred[pos] else "wrong"]
        assert _color(ax.title) == expected
        shown = ax.images[0].get_array()
        assert shown.dtype == np.uint8 and shown[0, 0] == pos % 256  # raw pixels of the right image


def test_confidence_chart_highlights_true_and_predicted_digits(case):
    labels, probs, y_pred, images = case
    pos = int(np.flatnonzero(labels != y_pred)[0])
    display = gallery.ConfidenceDisplay(images[pos], probs[pos], labels[pos], y_pred[pos]).plot()
    bars = display.axes_[1].patches
    np.testing.assert_allclose([b.get_height() for b in bars], probs[pos], rtol=1e-6)
    assert to_hex(bars[labels[pos]].get_facecolor()) == common.COLORS["correct"]
    assert to_hex(bars[y_pred[pos]].get_facecolor()) == common.COLORS["wrong"]
    top3 = np.argsort(-probs[pos])[:3]
    assert [c for c, _ in display.top3()] == top3.tolist()
    assert f"digit {top3[0]}:" in display.axes_[1].texts[0].get_text()


def test_misclassification_gallery_rows_follow_the_selection(case):
    labels, probs, y_pred, images = case
    display = gallery.MisclassificationGalleryDisplay.from_predictions(
        images, labels, probs, np.arange(len(labels)), top_pairs=3, per_row=4
    )
    top = metrics.most_confused_pairs(labels, y_pred, top_k=3)
    assert len(display.groups) == 3
    for (t, p, shown, confidence, total), row in zip(display.groups, top.itertuples()):
        assert (t, p, total) == (row.true, row.pred, row.count)
        positions = np.flatnonzero((labels == t) & (y_pred == p))[:4]
        np.testing.assert_array_equal(shown[:, 0, 0], positions % 256)
        np.testing.assert_allclose(confidence, probs[positions, p])
    assert (
        display.axes_[0]
        .get_title(loc="left")
        .startswith(f"True {top['true'][0]} → Pred {top['pred'][0]}")
    )


def test_dataset_view_counts_and_first_images(case):
    labels, _, _, images = case
    display = gallery.DatasetOverviewDisplay(labels, images).plot()
    heights = [int(b.get_height()) for b in display.count_ax_.patches]
    assert heights == np.bincount(labels, minlength=10).tolist()
    for digit, ax in enumerate(display.image_axes_):
        assert ax.get_title() == f"Digit {digit}"
        first = int(np.flatnonzero(labels == digit)[0])
        assert ax.images[0].get_array()[0, 0] == first % 256


def test_reliability_diagram_shows_nonempty_bins(case):
    labels, probs, _, _ = case
    display = plots.ReliabilityDisplay.from_predictions(labels, probs, n_bins=10)
    bins = metrics.reliability_bins(labels, probs, n_bins=10)
    heights = [b.get_height() for b in display.ax_.patches]
    np.testing.assert_allclose(heights, bins.loc[bins["count"] > 0, "accuracy"])
    assert "ECE" in display.ax_.get_title()


def test_figures_save_as_png(tmp_path, case):
    labels, _, y_pred, _ = case
    path = common.save_figure(
        plots.ConfusionHeatmapDisplay.from_predictions(labels, y_pred).figure_,
        tmp_path / "sub" / "cm.png",
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _figures(case, count: int) -> list:
    labels, _, y_pred, _ = case
    return [
        plots.ConfusionHeatmapDisplay.from_predictions(labels, np.roll(y_pred, shift)).figure_
        for shift in range(count)
    ]


def test_figures_drawn_alongside_a_helper_equal_those_drawn_one_by_one(tmp_path, case):
    figures = _figures(case, common.PARALLEL_FROM + 2)
    alone = [common.save_figure(f, tmp_path / "alone" / f"{i}.png") for i, f in enumerate(figures)]
    jobs = [(f, tmp_path / "shared" / f"{i}.png") for i, f in enumerate(figures)]
    assert common.save_figures(jobs) == [path for _, path in jobs]
    for one, other in zip(alone, (path for _, path in jobs), strict=True):
        assert one.read_bytes() == other.read_bytes()
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == sorted(
        p.name for p in (tmp_path / "alone").iterdir()
    )  # no part files left


def test_what_a_helper_that_dies_took_is_drawn_here(tmp_path, case, monkeypatch):
    figures = _figures(case, common.PARALLEL_FROM + 1)
    parent, draw_from = os.getpid(), common._draw_from

    def dies_in_the_helper(jobs, paths, next_job):
        if os.getpid() != parent:
            with next_job.get_lock():
                next_job.value += 1  # takes a figure, then dies before drawing it
            os._exit(3)
        return draw_from(jobs, paths, next_job)

    monkeypatch.setattr(common, "_draw_from", dies_in_the_helper)
    jobs = [(f, tmp_path / f"{i}.png") for i, f in enumerate(figures)]
    common.save_figures(jobs)
    for figure, path in jobs:
        assert path.read_bytes() == common.save_figure(figure, tmp_path / "x.png").read_bytes()


def test_work_alongside_returns_what_the_helper_did_and_falls_back_here():
    parent = os.getpid()
    assert common.alongside(lambda: (os.getpid() != parent, list(range(5))))() == (
        True,
        [0, 1, 2, 3, 4],
    )

    def fails_in_the_helper():
        if os.getpid() != parent:
            raise RuntimeError("helper only")
        return "done here"

    assert common.alongside(fails_in_the_helper)() == "done here"

    def always_fails():
        raise ValueError("bad run")

    with pytest.raises(ValueError, match="bad run"):  # raised here, by the second try
        common.alongside(always_fails)()


def test_dataset_view_compares_train_and_test_shares(case):
    labels, _, _, images = case
    train = np.repeat(np.arange(10), np.arange(1, 11))  # digit d appears d + 1 times
    display = gallery.DatasetOverviewDisplay(labels, images, train_labels=train).plot()
    heights = [b.get_height() for b in display.count_ax_.patches]
    np.testing.assert_allclose(heights[:10], 100 * np.arange(1, 11) / 55)
    np.testing.assert_allclose(heights[10:], 100 * np.bincount(labels, minlength=10) / len(labels))
