"""One model of record, one score: for early-stopped runs every view states the accuracy of the
epoch whose weights and predictions were kept, and says which epoch that is.

Trained once (a two-point grid of runs that stop early, their best epoch before their last),
then read back through every view: the terminal, the sweep summary and description, the Optuna
objective, the registered version, the logged model, the comparison's CSVs and the per-run
report."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import TINY
from mlflow.tracking import MlflowClient

from analysis.cli import cli as analysis_cli
from mnist_train.cli import cli as train_cli
from mnist_train.tracking import logged_model_id

# SGD at lr 2.0 overshoots after the first epochs on the fixture slice: validation loss stops
# improving and patience 1 stops the run one epoch after its best
EARLY = {**TINY, "validation": 200, "epochs": 8, "early_stopping_patience": 1, "optimizer": "sgd"}


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("record")
    head = "".join(f"{key}: {value}\n" for key, value in EARLY.items())
    path = folder / "early.yaml"
    path.write_text(f"name: early\nexperiment: model-of-record\n{head}grid:\n  lr: [2.0, 1.5]\n")
    storage = f"sqlite:///{folder / 'optuna.db'}"
    result = CliRunner().invoke(
        train_cli,
        ["run", str(path), "--data-dir", str(data_dir), "--storage", storage]
        + ["--register", "early-champion"],
    )
    assert result.exit_code == 0, result.output
    ids = [line for line in result.stdout.splitlines() if len(line) == 32]
    client = MlflowClient()
    children = {i: client.get_run(i) for i in ids[1:]}
    return {
        "parent": ids[0],
        "children": children,
        "stderr": result.stderr,
        "storage": storage,
        "folder": folder,
    }


def scores(run) -> dict:
    """The run's own record of its model of record: epoch and scores."""
    m = run.data.metrics
    return {
        "epoch": int(m["predictions_epoch"]),
        "val": m["model/val_accuracy"],
        "test": m["model/test_accuracy"],
    }


def test_the_runs_stop_early_and_log_their_best_epoch_as_the_model_of_record(study):
    client = MlflowClient()
    for run_id, run in study["children"].items():
        record = scores(run)
        stopped = int(run.data.metrics["stopped_epoch"])
        assert record["epoch"] == int(run.data.metrics["best_epoch"]) < stopped
        at = {
            key: [
                m.value for m in client.get_metric_history(run_id, key) if m.step == record["epoch"]
            ]
            for key in ("val_accuracy", "test_accuracy")
        }
        assert at == {"val_accuracy": [record["val"]], "test_accuracy": [record["test"]]}
        # the runs table's own test_accuracy is the last epoch's: a different number here
        last = [m for m in client.get_metric_history(run_id, "test_accuracy") if m.step == stopped]
        assert run.data.metrics["test_accuracy"] == last[0].value


def test_the_terminal_names_the_epoch_and_states_its_scores(study):
    lines = [line for line in study["stderr"].splitlines() if "model of record" in line]
    assert len(lines) == len(study["children"])
    for run in study["children"].values():
        record = scores(run)
        expected = (
            f"model of record: epoch {record['epoch']} (best val_loss; stopped early after epoch "
            f"{int(run.data.metrics['stopped_epoch'])} of 8"
        )
        stated = f"val_acc {record['val']:.4f}  test_loss"
        matching = [x for x in lines if expected in x and stated in x]
        assert len(matching) == 1, (expected, stated, lines)
        assert f"test_acc {record['test']:.4f}" in matching[0]
    assert "val_loss" in study["stderr"].split("epoch 1/8", 1)[1].splitlines()[0]


def test_the_summary_description_objective_and_champion_state_the_same(study, tmp_path):
    client = MlflowClient()
    parent = client.get_run(study["parent"])
    path = client.download_artifacts(study["parent"], "summary.csv", str(tmp_path))
    summary = pd.read_csv(path).set_index("run_id")
    description = parent.data.tags["mlflow.note.content"]
    trials = optuna.load_study(
        study_name=parent.data.tags["mnist.study"], storage=study["storage"]
    ).trials
    values = {t.user_attrs["mlflow_run_id"]: t.value for t in trials}
    for run_id, run in study["children"].items():
        record = scores(run)
        row = summary.loc[run_id]
        assert (row["val_accuracy"], row["test_accuracy"]) == (record["val"], record["test"])
        assert row["predictions_epoch"] == record["epoch"]
        assert f"{record['test']:.4f}" in description
        assert values[run_id] == record["val"]  # the objective is val_accuracy
    best_id = max(study["children"], key=lambda r: scores(study["children"][r])["val"])
    best = scores(study["children"][best_id])
    version = client.get_model_version_by_alias("early-champion", "champion")
    assert version.tags["run_id"] == best_id and version.tags["epoch"] == str(best["epoch"])
    assert version.tags["test_accuracy"] == f"{best['test']:.4f}"
    assert f"epoch {best['epoch']}" in version.description
    assert f"test_accuracy {best['test']:.4f}" in version.description


def test_the_logged_model_carries_the_same_scores(study):
    client = MlflowClient()
    for run_id, run in study["children"].items():
        record = scores(run)
        model = client.get_logged_model(logged_model_id(client, run_id))
        linked = {(m.key, m.dataset_name): (m.value, m.step) for m in model.metrics}
        assert linked[("val_accuracy", "mnist-validation")] == (record["val"], record["epoch"])
        assert linked[("test_accuracy", "mnist-test")] == (record["test"], record["epoch"])
        # a trial's model is named after its study and trial number: one column apart on the page
        assert model.name == f"early-T{int(run.data.tags['mnist.trial.number']):03d}"


def test_the_comparison_and_the_run_report_state_the_same(study, tmp_path):
    out = tmp_path / "compare"
    result = CliRunner().invoke(
        analysis_cli, ["compare", "--parent", study["parent"], "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    runs = pd.read_csv(out / "runs.csv").set_index("run_id")
    significance = pd.read_csv(out / "significance.csv").set_index("run_id")
    for run_id, run in study["children"].items():
        record = scores(run)
        row = runs.loc[run_id]
        assert (row["val_accuracy"], row["test_accuracy"]) == (record["val"], record["test"])
        assert row["epoch"] == record["epoch"] and row["epochs"] > record["epoch"]
        # the significance test reads the stored predictions: the same model, the same score
        assert significance.loc[run_id, "accuracy"] == pytest.approx(record["test"], abs=1e-9)
        assert significance.loc[run_id, "epoch"] == record["epoch"]

        report = tmp_path / run_id
        result = CliRunner().invoke(analysis_cli, ["run", run_id, "--out", str(report)])
        assert result.exit_code == 0, result.output
        summary = json.loads((report / "summary.json").read_text())
        assert summary["model_of_record"]["epoch"] == record["epoch"]
        assert summary["val_accuracy"] == record["val"]
        assert summary["accuracy"] == pytest.approx(record["test"], abs=1e-9)
        html = (report / "report.html").read_text()
        described = f"epoch {record['epoch']} of {int(run.data.metrics['stopped_epoch'])}"
        assert f"validation accuracy, {described}" in html
        assert f"{100 * record['val']:.2f}%" in html
        # the report marks its best epoch on validation, never on test, and says so
        val_loss = {m.step: m.value for m in MlflowClient().get_metric_history(run_id, "val_loss")}
        assert summary["marked_epoch"] == min(val_loss, key=val_loss.get)
        assert "epoch with the lowest validation loss" in html and "lowest test loss" not in html
        assert '<nav class="toc">' in html and 'href="#learning_curves.png"' in html
        assert "given label → digit predicted" in html  # the training-image galleries


def test_stored_predictions_are_the_model_of_records(study, tmp_path):
    client = MlflowClient()
    for run_id, run in study["children"].items():
        path = client.download_artifacts(run_id, "predictions/test.npz", str(tmp_path / run_id))
        with np.load(path) as npz:
            accuracy = float((npz["probs"].argmax(1) == npz["labels"]).mean())
        assert accuracy == pytest.approx(scores(run)["test"], abs=1e-9)
