"""`mnist-analysis labels` on a K-fold cross-validation study: the training set ranked on
out-of-sample probabilities (each image by the model that held it out), exactly cleanlab's
ranking of the assembled arrays; folds that overlap, miss images or did not finish refused in
one line; the assembly's own rules on hand-made folds."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_helpers import FIXTURE_MNIST, fake_predictions, fixture_test_labels
from checks import assert_one_line_error
from click.testing import CliRunner
from conftest import TINY

from analysis import folds
from analysis.cli import cli as analysis_cli
from analysis.errors import AnalysisError
from mnist_train import contract, idx
from mnist_train.cli import cli as train_cli

CV_YAML = "name: cv_tiny\nexperiment: cv-labels\nfolds: 3\n" + "".join(
    f"{key}: {value}\n" for key, value in TINY.items()
)


def labels(*args):
    return CliRunner().invoke(analysis_cli, ["labels", *map(str, args)])


@pytest.fixture(scope="module")
def cv_study(data_dir, tmp_path_factory):
    """(parent run id, fold run ids) of a 3-fold study of the tiny MLP on 1,000 fixture images."""
    path = tmp_path_factory.mktemp("cv") / "cv_tiny.yaml"
    path.write_text(CV_YAML)
    result = CliRunner().invoke(train_cli, ["run", str(path), "--data-dir", str(data_dir), "-q"])
    assert result.exit_code == 0, result.output
    parent, *children = result.stdout.split()
    assert len(children) == 3
    return parent, children


def stored_heldout(run_ids, tmp_path):
    """Every fold run's predictions/heldout.npz straight from MLflow, concatenated."""
    from mlflow import MlflowClient

    parts = []
    for run_id in run_ids:
        folder = tmp_path / run_id
        folder.mkdir()
        path = MlflowClient().download_artifacts(
            run_id, contract.HELDOUT_PREDICTIONS_PATH, str(folder)
        )
        with np.load(path) as npz:
            parts.append({key: npz[key] for key in ("labels", "probs", "index")})
    return {key: np.concatenate([p[key] for p in parts]) for key in ("labels", "probs", "index")}


def test_a_cv_study_ranks_every_training_image_out_of_sample_as_cleanlab_does(
    cv_study, data_dir, tmp_path
):
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    parent, children = cv_study
    out = tmp_path / "labels"
    result = labels("--parent", parent, "--out", out, "--data-dir", data_dir)
    assert result.exit_code == 0, result.output
    assert "training set: all 1000 ranked, out-of-sample, 3-fold cross-validation" in result.output

    # the folds hold every one of the 1,000 training images exactly once
    held = stored_heldout(children, tmp_path)
    assert sorted(held["index"]) == list(range(TINY["max_train"]))
    train_labels = idx.read_split(data_dir, train=True)[1]
    np.testing.assert_array_equal(held["labels"], train_labels[held["index"]])

    # cleanlab, called directly on the assembled arrays, gives the same ranking and verdicts
    order = np.argsort(held["index"])
    given, probs = held["labels"][order], held["probs"][order].astype(np.float64)
    probs /= probs.sum(1, keepdims=True)
    expected = pd.DataFrame(
        {
            "index": held["index"][order],
            "score": get_label_quality_scores(given, probs),
            "flagged": find_label_issues(given, probs),
        }
    ).sort_values(["score", "index"])
    ranked = pd.read_csv(out / "label_issues_train.csv")
    assert list(ranked.columns) == ["index", "given", "suggested", "agreement", "score", "flagged"]
    np.testing.assert_array_equal(ranked["index"], expected["index"])
    np.testing.assert_allclose(ranked["score"], expected["score"], rtol=1e-9)
    np.testing.assert_array_equal(ranked["flagged"], expected["flagged"])
    np.testing.assert_array_equal(ranked["given"], train_labels[ranked["index"]])
    assert (ranked["agreement"] == 1.0).all()  # one model holds each image out
    assert 0 < ranked["flagged"].sum() < len(ranked)

    html = (out / "report.html").read_text()
    flagged = int(ranked["flagged"].sum())
    assert f"Training set: {flagged} flagged of 1000 ranked (out-of-sample, 3-fold" in html
    test = pd.read_csv(out / "label_issues.csv")  # the test set keeps its own ranking
    assert len(test) == TINY["max_test"]
    assert f"{int(test['flagged'].sum())} test and {flagged} training images" in result.output


def test_runs_without_folds_say_their_training_list_is_in_sample(trained_runs, data_dir, tmp_path):
    result = labels(
        "--runs", ",".join(trained_runs.values()), "--out", tmp_path / "o", "--data-dir", data_dir
    )
    assert result.exit_code == 0, result.output
    assert "training set: in-sample, from models that trained on these images" in result.output
    assert (
        "(in-sample, from models that trained on these images)"
        in (tmp_path / "o" / "report.html").read_text()
    )


def test_a_missing_fold_is_one_line_naming_it(cv_study, data_dir, tmp_path):
    _, children = cv_study
    result = labels(
        "--runs", ",".join(children[:2]), "--out", tmp_path / "o", "--data-dir", data_dir
    )
    assert_one_line_error(
        result.output, result.exit_code, "fold 2 of 3 has no run among those selected"
    )


# --- hand-made fold runs for what a real study does not do -------------------------------------


def log_fold_run(experiment, fold, index, *, n_images, k=2, status="FINISHED", probs=None):
    """A finished-looking fold run holding out `index` (of `n_images` fixture training images)."""
    from analysis_helpers import log_contract_run
    from mlflow import MlflowClient

    test_labels = fixture_test_labels()
    train_labels = idx.read_split(FIXTURE_MNIST, train=True)[1]
    index = np.asarray(index, dtype=np.int64)
    run_id = log_contract_run(
        None,
        experiment,
        run_name=f"fold={fold}",
        params={
            "model": "mlp",
            "seed": "0",
            "cv_folds": str(k),
            "cv_fold": str(fold),
            "train_images": str(n_images - len(index)),
            "val_images": str(len(index)),
        },
        epochs={"test_accuracy": [0.9]},
        n_steps=1,
        final={},
        probs=fake_predictions(test_labels, accuracy=0.9, seed=fold),
        labels=test_labels,
        index=np.arange(len(test_labels)),
        status=status,
    )
    held_labels = train_labels[index]
    if probs is None:
        probs = fake_predictions(held_labels, accuracy=0.9, seed=10 + fold)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "heldout.npz"
        np.savez(path, labels=held_labels, probs=probs, index=index)
        MlflowClient().log_artifact(run_id, str(path), "predictions")
    return run_id


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("overlap", "folds overlap: fold 0 (fold=0 ("),
        ("gap", "the 2 folds do not cover the training set: 2 of the 20 training images are in"),
        ("running", ") is RUNNING: unfinished; run the study's command again"),
        ("nan", "predictions/heldout.npz: predictions are not usable: 1 rows of probs are not"),
        ("twice", "fold 1 of 2 is held out by 2 runs"),
    ],
)
def test_folds_that_do_not_partition_or_did_not_finish_are_one_line(
    case, message, data_dir, tmp_path
):
    experiment = f"cv-bad-{case}"
    first, second = np.arange(0, 10), np.arange(10, 20)
    status, probs = "FINISHED", None
    if case == "overlap":
        second = np.arange(8, 20)
    elif case == "gap":
        second = np.arange(12, 20)
    elif case == "running":
        status = "RUNNING"
    elif case == "nan":
        probs = fake_predictions(np.zeros(10, np.int64), accuracy=1, seed=0)
        probs[3] = np.nan
    ids = [log_fold_run(experiment, 0, first, n_images=20)]
    ids.append(log_fold_run(experiment, 1, second, n_images=20, status=status, probs=probs))
    if case == "twice":
        ids.append(log_fold_run(experiment, 1, second, n_images=20))
    result = labels("--experiment", experiment, "--out", tmp_path / "o", "--data-dir", data_dir)
    assert_one_line_error(result.output, result.exit_code, message)
    if case in ("running", "overlap"):
        assert f"({ids[1][:8]})" in result.output  # the run, named


# --- the assembly itself (pure) ------------------------------------------------------------------


def held_out(fold, index, *, k=2, seed="0", n_images=6, labels=None, winner=None):
    index = np.asarray(index)
    labels = np.zeros(len(index), np.int64) if labels is None else np.asarray(labels)
    probs = np.full((len(index), 10), 0.01)
    probs[:, winner if winner is not None else 0] = 0.91
    return folds.HeldOut(
        run=f"seed={seed},fold={fold} (abcdef01)",
        folds=k,
        fold=fold,
        replicate=(("seed", seed),),
        n_images=n_images,
        labels=labels,
        probs=probs,
        index=index,
    )


def test_replicates_are_stacked_image_by_image():
    parts = [
        held_out(0, [4, 0, 2]),
        held_out(1, [1, 3, 5]),
        held_out(1, [0, 1, 2], seed="1", winner=7),
        held_out(0, [3, 4, 5], seed="1"),
    ]
    assembled = folds.assemble(parts)
    np.testing.assert_array_equal(assembled.index, np.arange(6))
    assert assembled.probs.shape == (2, 6, 10) and assembled.folds == (2, 2)
    # seed 1's fold 1 (images 0-2) reads 7; its fold 0 and all of seed 0 read 0
    assert assembled.probs[1, :3, 7].tolist() == [0.91] * 3
    assert assembled.probs[0, :, 0].tolist() == [0.91] * 6
    assert assembled.basis == "out-of-sample, 2-fold cross-validation"


def test_replicates_must_cover_the_same_images_with_the_same_labels():
    with pytest.raises(AnalysisError, match="cover different training images"):
        folds.assemble(
            [
                held_out(0, [0, 1, 2]),
                held_out(1, [3, 4, 5]),
                held_out(0, [0, 1], seed="1", n_images=4),
                held_out(1, [2, 3], seed="1", n_images=4),
            ]
        )
    with pytest.raises(
        AnalysisError, match=r"disagree on the labels of 1 training images \(e\.g\. #2"
    ):
        folds.assemble(
            [
                held_out(0, [0, 1, 2]),
                held_out(1, [3, 4, 5]),
                held_out(0, [0, 1, 2], seed="1", labels=[0, 0, 3]),
                held_out(1, [3, 4, 5], seed="1"),
            ]
        )


def test_a_missing_fold_of_one_replicate_is_named_with_what_tells_it_apart():
    with pytest.raises(AnalysisError, match=r"fold 1 of 2 \(seed=1\) has no run"):
        folds.assemble([held_out(0, [0, 1, 2]), held_out(1, [3, 4, 5]), held_out(0, [0], seed="1")])
    with pytest.raises(AnalysisError, match="positions lie beyond them"):
        folds.assemble([held_out(0, [0, 1, 2]), held_out(1, [3, 4, 5, 9])])
