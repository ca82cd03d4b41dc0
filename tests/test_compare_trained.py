"""`mnist-analysis compare` on two runs really trained on the fixture slice
(conftest.trained_runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.cli import cli


def test_compare_real_runs_end_to_end(trained_runs, data_dir, tracking_uri, tmp_path):
    from click.testing import CliRunner
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    mlp, softmax = trained_runs["mlp"], trained_runs["softmax"]
    out = tmp_path / "report"
    result = CliRunner().invoke(
        cli,
        [
            "compare",
            "--runs",
            mlp,
            "--runs",
            softmax,
            "--baseline",
            softmax,
            "--out",
            str(out),
            "--data-dir",
            str(data_dir),
        ],
    )
    assert result.exit_code == 0, result.output

    runs = pd.read_csv(out / "runs.csv").set_index("run_id")
    for run_id in (mlp, softmax):
        metrics = client.get_run(run_id).data.metrics
        assert runs.at[run_id, "test_accuracy"] == np.float64(metrics["test_accuracy"])
        assert runs.at[run_id, "train_time_s"] == np.float64(metrics["train_time_s"])
    assert {"model", "optimizer", "lr"} <= set(runs.columns)

    # McNemar's discordant counts from the stored predictions, read back independently
    correct = {}
    for run_id in (mlp, softmax):
        path = client.download_artifacts(run_id, "predictions/test.npz", str(tmp_path / run_id))
        with np.load(Path(path)) as npz:
            correct[run_id] = npz["probs"].argmax(axis=1) == npz["labels"]
    sig = pd.read_csv(out / "significance.csv").set_index("run_id")
    assert sig.at[mlp, "b_broke"] == np.sum(correct[softmax] & ~correct[mlp])
    assert sig.at[mlp, "c_fixed"] == np.sum(~correct[softmax] & correct[mlp])
    assert sig.at[mlp, "accuracy"] == correct[mlp].mean()

    html = (out / "report.html").read_text(encoding="utf-8")
    assert "fixture_mlp" in html and "fixture_softmax (baseline)" in html
    assert (
        html.count("data:image/png;base64,") > 6
    )  # figures and flip tiles from the fixture images
