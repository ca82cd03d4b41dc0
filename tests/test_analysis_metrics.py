"""analysis.metrics against scikit-learn and against cases small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from analysis_helpers import fake_predictions
from sklearn import metrics as skm

from analysis import metrics

# Hand case: 6 images. Digit 0: 2 right. Digit 1: 1 right, 1 -> 7. Digit 7: 1 -> 1, 1 -> 1.
HAND_TRUE = np.array([0, 0, 1, 1, 7, 7])
HAND_PRED = np.array([0, 0, 1, 7, 1, 1])


@pytest.fixture(scope="module")
def random_case():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 10, 2000)
    probs = fake_predictions(y_true, accuracy=0.8, seed=4)
    return y_true, probs, probs.argmax(axis=1)


def test_confusion_matrix_matches_sklearn(random_case):
    y_true, _, y_pred = random_case
    expected = skm.confusion_matrix(y_true, y_pred, labels=range(10))
    np.testing.assert_array_equal(metrics.confusion_matrix(y_true, y_pred), expected)
    normalized = metrics.confusion_matrix(y_true, y_pred, normalize="true")
    np.testing.assert_allclose(
        normalized, skm.confusion_matrix(y_true, y_pred, labels=range(10), normalize="true")
    )
    np.testing.assert_allclose(normalized.sum(axis=1), 1.0)


def test_confusion_matrix_by_hand_keeps_all_ten_digits():
    counts = metrics.confusion_matrix(HAND_TRUE, HAND_PRED)
    assert counts.shape == (10, 10)
    assert counts[0, 0] == 2 and counts[1, 1] == 1 and counts[1, 7] == 1 and counts[7, 1] == 2
    assert counts.sum() == 6
    rates = metrics.confusion_matrix(HAND_TRUE, HAND_PRED, normalize="true")
    assert rates[1, 7] == 0.5 and rates[7, 7] == 0.0
    assert rates[3].sum() == 0  # digit 3 absent: a zero row, not NaN


def test_per_class_accuracy_by_hand():
    acc = metrics.per_class_accuracy(HAND_TRUE, HAND_PRED)
    assert acc[0] == 1.0 and acc[1] == 0.5 and acc[7] == 0.0
    assert np.isnan(acc[2])  # no test image of digit 2


def test_per_class_report_matches_sklearn(random_case):
    y_true, _, y_pred = random_case
    report = metrics.per_class_report(y_true, y_pred)
    assert list(report.index) == list(range(10))
    p, r, f, s = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=range(10), zero_division=0
    )
    np.testing.assert_allclose(report["precision"], p)
    np.testing.assert_allclose(report["recall"], r)
    np.testing.assert_allclose(report["f1"], f)
    np.testing.assert_array_equal(report["support"], s)
    np.testing.assert_allclose(report["accuracy"], report["recall"])
    assert report["correct"].sum() == (y_true == y_pred).sum()
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))


def test_most_confused_pairs_by_hand():
    pairs = metrics.most_confused_pairs(HAND_TRUE, HAND_PRED)
    assert list(zip(pairs["true"], pairs["pred"], pairs["count"])) == [(7, 1, 2), (1, 7, 1)]
    assert pairs["rate"].tolist() == [1.0, 0.5]
    assert len(metrics.most_confused_pairs(HAND_TRUE, HAND_PRED, top_k=1)) == 1
    assert metrics.most_confused_pairs(HAND_TRUE, HAND_TRUE).empty


def test_most_confused_pairs_are_the_largest_off_diagonal_cells(random_case):
    y_true, _, y_pred = random_case
    counts = skm.confusion_matrix(y_true, y_pred, labels=range(10))
    np.fill_diagonal(counts, 0)
    pairs = metrics.most_confused_pairs(y_true, y_pred, top_k=5)
    assert pairs["count"].tolist() == sorted(counts.ravel(), reverse=True)[:5]
    for t, p, c in zip(pairs["true"], pairs["pred"], pairs["count"]):
        assert counts[t, p] == c


def test_top_k_and_wrong_predictions_by_hand():
    probs = np.array(
        [
            [0.7, 0.2, 0.1, 0, 0, 0, 0, 0, 0, 0],  # true 0, right
            [0.1, 0.3, 0.0, 0, 0, 0, 0, 0.6, 0, 0],  # true 1, predicted 7
            [0.0, 0.9, 0.0, 0, 0, 0, 0, 0.05, 0.05, 0],  # true 7, predicted 1
        ]
    )
    classes, p = metrics.top_k(probs, k=3)
    assert classes[1].tolist() == [7, 1, 0] and p[1].tolist() == [0.6, 0.3, 0.1]
    wrong = metrics.wrong_predictions([0, 1, 7], probs, index=np.array([10, 11, 12]))
    assert wrong["index"].tolist() == [12, 11]  # most confident mistake first
    first = wrong.iloc[0]
    assert (first["true"], first["pred"], first["confidence"], first["p_true"]) == (7, 1, 0.9, 0.05)
    assert [first["top1"], first["top2"], first["top3"]] == [1, 7, 8]


def test_confidence_stats_by_hand():
    probs = np.zeros((4, 10))
    probs[0, 3], probs[0, 4] = 0.9, 0.1  # true 3, right, 0.9
    probs[1, 3], probs[1, 5] = 0.7, 0.3  # true 3, right, 0.7
    probs[2, 5], probs[2, 3] = 0.6, 0.4  # true 3, wrong, 0.6
    probs[3, 0] = 1.0  # true 0, right, 1.0
    stats = metrics.confidence_stats([3, 3, 3, 0], probs)
    assert stats.loc["correct", "count"] == 3 and stats.loc["wrong", "count"] == 1
    assert stats.loc["correct", "mean"] == pytest.approx((0.9 + 0.7 + 1.0) / 3)
    assert stats.loc["wrong", "max"] == pytest.approx(0.6)
    assert stats.loc["all", "min"] == pytest.approx(0.6)


def test_reliability_bins_and_ece_by_hand():
    # two images at confidence 0.95 (one right), two at 0.55 (both right)
    probs = np.zeros((4, 10))
    probs[:2, 0], probs[:2, 1] = 0.95, 0.05
    probs[2:, 2], probs[2:, 3] = 0.55, 0.45
    y_true = [0, 1, 2, 2]
    bins = metrics.reliability_bins(y_true, probs, n_bins=10)
    assert bins["count"].sum() == 4
    high, mid = bins.iloc[9], bins.iloc[5]
    assert (high["count"], high["accuracy"], high["confidence"]) == (2, 0.5, pytest.approx(0.95))
    assert (mid["count"], mid["accuracy"], mid["confidence"]) == (2, 1.0, pytest.approx(0.55))
    # ECE = 0.5 * |0.5 - 0.95| + 0.5 * |1.0 - 0.55|
    assert metrics.expected_calibration_error(y_true, probs, n_bins=10) == pytest.approx(0.45)


def test_confidence_of_one_lands_in_the_last_bin():
    probs = np.eye(10)[[4]]
    bins = metrics.reliability_bins([4], probs, n_bins=5)
    assert bins["count"].tolist() == [0, 0, 0, 0, 1]
    assert metrics.expected_calibration_error([4], probs) == 0.0


def test_ece_matches_a_direct_computation(random_case):
    y_true, probs, y_pred = random_case
    conf = probs.max(axis=1).astype(float)
    right = y_pred == y_true
    ece = 0.0
    for lo, hi in zip(np.linspace(0, 1, 16)[:-1], np.linspace(0, 1, 16)[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
    assert metrics.expected_calibration_error(y_true, probs) == pytest.approx(ece)


def _epochs(train_acc, test_acc, train_loss, test_loss):
    return pd.DataFrame(
        {
            "train_accuracy": train_acc,
            "test_accuracy": test_acc,
            "train_loss": train_loss,
            "test_loss": test_loss,
        },
        index=pd.Index(range(1, len(train_acc) + 1), name="epoch"),
    )


def test_overfit_gap_and_summary_when_the_gap_widens():
    epochs = _epochs(
        [0.90, 0.95, 0.97, 0.99],
        [0.89, 0.93, 0.92, 0.91],
        [0.30, 0.15, 0.08, 0.03],
        [0.32, 0.22, 0.25, 0.30],
    )
    gaps = metrics.overfit_gap(epochs)
    np.testing.assert_allclose(gaps["accuracy_gap"], [0.01, 0.02, 0.05, 0.08])
    np.testing.assert_allclose(gaps["loss_gap"], [-0.02, -0.07, -0.17, -0.27])
    summary = metrics.overfit_summary(epochs)
    assert summary["best_epoch"] == 2 and summary["best_test_loss"] == pytest.approx(0.22)
    assert summary["peak_accuracy_epoch"] == 2 and summary["peak_test_accuracy"] == pytest.approx(
        0.93
    )
    assert summary["final_accuracy_gap"] == pytest.approx(0.08)
    assert summary["gap_widening"] is True


def test_no_widening_while_test_accuracy_still_improves_or_the_gap_shrinks():
    improving = _epochs([0.90, 0.95, 0.97], [0.89, 0.93, 0.95], [0.3, 0.2, 0.1], [0.3, 0.25, 0.2])
    assert metrics.overfit_summary(improving)["gap_widening"] is False
    shrinking = _epochs(
        [0.90, 0.97, 0.96, 0.95],
        [0.89, 0.93, 0.93, 0.93],
        [0.3, 0.1, 0.1, 0.1],
        [0.3, 0.2, 0.2, 0.2],
    )
    assert metrics.overfit_summary(shrinking)["gap_widening"] is False


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: metrics.confusion_matrix([0, 1], [0]), "differ in length"),
        (lambda: metrics.confusion_matrix([0, 10], [0, 1]), "outside 0..9"),
        (lambda: metrics.confusion_matrix([0.0, 1.0], [0, 1]), "integer"),
        (lambda: metrics.confusion_matrix([0, 1], [0, 1], normalize="all"), "normalize"),
        (lambda: metrics.confusion_matrix([], []), "empty"),
        (lambda: metrics.most_confused_pairs([0], [0], top_k=0), "top_k"),
        (lambda: metrics.reliability_bins([0], np.ones((1, 9)) / 9), r"shape \(N, 10\)"),
        (lambda: metrics.reliability_bins([0], np.full((1, 10), 0.1), n_bins=0), "n_bins"),
        (lambda: metrics.top_k(np.full((1, 10), 0.1), k=11), "k must be"),
        (lambda: metrics.overfit_summary(pd.DataFrame({"train_loss": [1.0]})), "lacks column"),
    ],
)
def test_bad_arguments_raise_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
