"""Forgetting, cartography, churn and suspected label errors: hand-made and synthetic cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import dynamics, label_issues


def test_forgetting_counts_right_to_wrong_transitions():
    correct = np.array(
        [
            [1, 0, 1, 0],  # image 0: forgotten twice
            [0, 0, 0, 0],  # image 1: never learned
            [1, 1, 1, 1],  # image 2: learned at once, kept
            [0, 0, 1, 1],  # image 3: learned at epoch 3
        ],
        dtype=bool,
    ).T  # (epochs, images)
    table = dynamics.forgetting(correct)
    assert table["forgetting_events"].tolist() == [2, 0, 0, 0]
    assert table["never_learned"].tolist() == [False, True, False, False]
    assert table["first_learned"].tolist() == [1, 0, 1, 3]
    assert table["epochs_correct"].tolist() == [2, 0, 4, 2]


def test_cartography_matches_a_direct_numpy_computation():
    rng = np.random.default_rng(0)
    probs = rng.random((6, 50))
    probs[:, 0] = 0.95  # easy
    probs[:, 1] = 0.05  # hard
    probs[:, 2] = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]  # ambiguous
    correct = probs > 0.5
    table = dynamics.cartography(probs, correct)
    np.testing.assert_allclose(table["confidence"], probs.mean(axis=0))
    np.testing.assert_allclose(table["variability"], probs.std(axis=0, ddof=0))
    np.testing.assert_allclose(table["correctness"], correct.mean(axis=0))
    assert table["region"][:3].tolist() == ["easy", "hard", "ambiguous"]


def test_cartography_calls_a_minority_ambiguous_and_says_how():
    """Every image starts unlearned, so after a few epochs most label probabilities swing; the
    ambiguous region is the most variable share, not every image over a fixed swing."""
    rng = np.random.default_rng(1)
    rising = np.linspace(0.05, 0.95, 4)[:, None] + rng.normal(0, 0.1, (4, 2000))
    probs = np.clip(rising, 0, 1)
    table = dynamics.cartography(probs, probs > 0.5)
    share = (table["region"] == "ambiguous").mean()
    assert 0 < share <= dynamics.AMBIGUOUS_SHARE + 1e-3
    assert (probs.std(axis=0) >= 0.2).mean() > 0.9  # the old fixed threshold: nearly all
    threshold = table.attrs["ambiguous_from"]
    assert table.loc[table["region"] == "ambiguous", "variability"].min() >= threshold
    assert f"std ≥ {threshold:.2f}" in dynamics.regions_explained(table)


def test_changed_predictions_and_churn():
    probs = np.zeros((3, 4, 10))
    probs[:, :, 1] = 1.0
    probs[1, 2, 1], probs[1, 2, 7] = 0.0, 1.0  # image 2 reads 7 at epoch 2 only
    changes = dynamics.changed_predictions(probs)
    assert changes.to_dict("records") == [
        {"position": 2, "epoch": 2, "before": 1, "after": 7},
        {"position": 2, "epoch": 3, "before": 7, "after": 1},
    ]
    labels = np.array([0, 1, 2, 3])
    base, run = np.array([0, 1, 9, 9]), np.array([9, 9, 2, 3])  # both 50% right, all different
    assert dynamics.churn(labels, base, run) == {"churn": 1.0, "accuracy_difference": 0.0}
    np.testing.assert_allclose(dynamics.per_image_accuracy(labels, [base, run]), [0.5] * 4)


def synthetic(n=3000, flip=0.05, seed=0):
    """10 Gaussian blobs, 5% of the labels flipped; 3 "runs": cross-validated probabilities of
    logistic regressions trained on the noisy labels with different folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_predict

    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 10, n)
    centers = rng.normal(0, 4, (10, 8))
    x = centers[truth] + rng.normal(0, 1.6, (n, 8))
    given = truth.copy()
    flipped = rng.choice(n, int(flip * n), replace=False)
    given[flipped] = (truth[flipped] + rng.integers(1, 10, len(flipped))) % 10
    runs = [
        cross_val_predict(
            LogisticRegression(max_iter=500),
            x,
            given,
            cv=KFold(5, shuffle=True, random_state=r),
            method="predict_proba",
        )
        for r in range(3)
    ]
    return given, truth, np.stack(runs), set(flipped.tolist())


def test_label_issues_find_flipped_labels_with_known_precision_and_recall():
    given, truth, probs, flipped = synthetic()
    table = label_issues.test_set_issues(given, probs, np.arange(len(given)))
    assert list(table.columns) == ["index", "given", "suggested", "agreement", "score"]
    found = set(table["index"].tolist())
    precision = len(found & flipped) / len(found)
    recall = len(found & flipped) / len(flipped)
    # measured: 132 flagged, precision 0.93, recall 0.82 (150 flipped of 3000)
    assert precision > 0.75 and recall > 0.75, (precision, recall)
    assert table["score"].is_monotonic_increasing  # most suspect first
    right_suggestion = (table["suggested"] == truth[table["index"]]).mean()
    assert right_suggestion > 0.8
    assert ((table["agreement"] >= 0) & (table["agreement"] <= 1)).all()


def test_the_test_set_ranking_holds_every_image_and_the_flagged_ones_on_top():
    given, _, probs, flipped = synthetic()
    ranking = label_issues.test_set_ranking(given, probs, np.arange(len(given)) + 7)
    assert list(ranking.columns) == [*label_issues.COLUMNS, "flagged"]
    assert sorted(ranking["index"]) == list(range(7, len(given) + 7))
    assert ranking["score"].is_monotonic_increasing
    # the verdict is the same as the suspects' list, and a flipped label ranks high
    issues = label_issues.test_set_issues(given, probs, np.arange(len(given)) + 7)
    pd.testing.assert_frame_equal(label_issues.flagged_rows(ranking), issues)
    top = ranking.head(len(flipped))
    assert (top["index"] - 7).isin(flipped).mean() > 0.75


def test_training_set_issues_from_per_example_records():
    labels = np.array([3, 3, 5, 5])
    prob = np.full((2, 3, 4), 0.9)  # 2 runs, 3 epochs, 4 images
    prob[:, :, 1] = 0.05  # image 1 never gets its label
    predicted = np.tile(labels, (2, 3, 1))
    predicted[:, :, 1] = 8  # ... and both runs read it as an 8
    table = label_issues.train_set_issues(labels, prob, predicted, np.array([10, 11, 12, 13]))
    assert table.to_dict("records") == [
        {"index": 11, "given": 3, "suggested": 8, "agreement": 1.0, "score": pytest.approx(0.05)}
    ]


def test_bad_shapes_are_value_errors():
    with pytest.raises(ValueError, match="must be"):
        label_issues.test_set_issues([0, 1], np.zeros((2, 3, 10)), [0, 1])
    with pytest.raises(ValueError, match="epochs, images"):
        dynamics.forgetting(np.zeros(3, bool))
    assert isinstance(dynamics.forgetting(np.zeros((1, 2), bool)), pd.DataFrame)


def test_labels_command_writes_the_csv_and_a_report(trained_runs, data_dir, tmp_path):
    from click.testing import CliRunner

    from analysis.cli import cli

    out = tmp_path / "labels"
    result = CliRunner().invoke(
        cli,
        [
            "labels",
            "--runs",
            ",".join(trained_runs.values()),
            "--out",
            str(out),
            "--data-dir",
            str(data_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert result.exit_code == 0, result.output
    test = pd.read_csv(out / "label_issues.csv")
    assert list(test.columns) == ["index", "given", "suggested", "agreement", "score", "flagged"]
    # every test image the runs scored is ranked, most suspect first
    stored = np.load(trained_runs_predictions(trained_runs["mlp"], tmp_path))
    assert sorted(test["index"]) == sorted(stored["index"].tolist())
    assert test["score"].is_monotonic_increasing
    assert test["flagged"].dtype == bool and 0 < test["flagged"].sum() < len(test)
    flagged = test[test["flagged"]]
    assert (flagged["given"] != flagged["suggested"]).all()
    train = pd.read_csv(out / "label_issues_train.csv")
    assert list(train.columns) == ["index", "given", "suggested", "agreement", "score"]
    html = (out / "report.html").read_text()
    assert "Based on 2 run(s)" in html and "Training set:" in html
    assert f"Test set: {len(flagged)} flagged of {len(test)} ranked" in html
    assert (
        f"{len(flagged)} test and {len(train)} training images suspected, from 2 run(s)"
        in result.output
    )


def trained_runs_predictions(run_id: str, tmp_path):
    """The run's stored predictions/test.npz, downloaded straight from MLflow."""
    from mlflow import MlflowClient

    return MlflowClient().download_artifacts(run_id, "predictions/test.npz", str(tmp_path))


def test_the_run_report_shows_how_images_moved_during_training(trained_runs, data_dir, tmp_path):
    import json

    from click.testing import CliRunner

    from analysis.cli import cli

    out = tmp_path / "report"
    result = CliRunner().invoke(
        cli,
        [
            "run",
            trained_runs["mlp"],
            "--out",
            str(out),
            "--no-log",
            "--data-dir",
            str(data_dir),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("confusion_by_epoch.png", "cartography.png", "never_learned.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())["dynamics"]
    assert summary["forgetting_events"] >= 0 and summary["never_learned"] > 0
    assert sum(summary["cartography"].values()) == 1000  # every training image placed
    html = (out / "report.html").read_text()
    assert "Dataset cartography" in html and "Confusion matrix at every epoch" in html


def test_the_comparison_reports_churn_next_to_the_accuracy_difference(tracking_uri, tmp_path):
    from compare_helpers import fixture_test_labels, log_run

    from analysis.compare_report import compare_runs

    labels = fixture_test_labels()
    base = labels.copy()
    base[:50] = (labels[:50] + 1) % 10  # 90% right
    other = labels.copy()
    other[50:100] = (labels[50:100] + 1) % 10  # also 90% right, wrong on other images
    a = log_run(tracking_uri, "churn", run_name="a", labels=labels, pred=base, start_time=1)
    b = log_run(tracking_uri, "churn", run_name="b", labels=labels, pred=other, start_time=2)
    comparison, path, _ = compare_runs(
        out_dir=tmp_path / "c", run_ids=[a, b], baseline=a, log_to_mlflow=False
    )
    sig = pd.read_csv(path.parent / "significance.csv").set_index("run_name")
    assert sig.loc["b", "churn"] == pytest.approx(100 / len(labels))
    assert sig.loc["a", "churn"] == 0
    sentence = next(s for s in comparison.findings if "changes" in s)
    assert sentence.startswith(f"b changes {100 * 100 / len(labels):.2f}% of the baseline")
    assert "differs by +0.00" in sentence
    # per-image accuracy across runs: 100 images split the two runs, none is wrong in both
    np.testing.assert_allclose(
        comparison.predictions.per_image_accuracy,
        ((base == labels).astype(float) + (other == labels)) / 2,
    )
    n = len(labels)
    expected = f"Of the {n} test images, 0 are wrong in every one of the 2 runs, {n - 100} right"
    assert any(s.startswith(expected) for s in comparison.findings)
