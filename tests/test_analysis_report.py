"""The per-run report and the `mnist-analysis run` command, end to end on runs in a SQLite store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import checks
import numpy as np
import pandas as pd
import pytest
from analysis_helpers import log_fake_run, log_foreign_run, unpacked_fixture
from click.testing import CliRunner

from analysis.cli import cli

XSS_NAME = "<script>alert(1)</script>"
FIGURES_WITH_IMAGES = {
    "learning_curves.png",
    "batch_loss.png",
    "confusion_matrix.png",
    "per_class_accuracy.png",
    "reliability.png",
    "dataset.png",
    "predictions.png",
    "confidence.png",
    "misclassified.png",
}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.scripts, self.title, self._in_title = [], 0, "", False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        self.scripts += tag == "script"
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


@pytest.fixture(scope="module")
def data_dir_copy(tmp_path_factory) -> Path:
    return unpacked_fixture(tmp_path_factory.mktemp("analysis-data") / "mnist")


@pytest.fixture(scope="module")
def xss_run(tracking_uri, data_dir_copy):
    return log_fake_run(
        tracking_uri, "report-tests", run_name=XSS_NAME, data_dir=str(data_dir_copy), seed=11
    )


def invoke(*args, cache_dir: Path):
    result = CliRunner().invoke(cli, [*args, "--cache-dir", str(cache_dir)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture(scope="module")
def xss_report(xss_run, tmp_path_factory):
    """The full report of `xss_run`, made once (with logging) for the tests that read it."""
    out = tmp_path_factory.mktemp("xss-report") / "report"
    result = invoke("run", xss_run.run_id, "--out", str(out), cache_dir=out.parent / "cache")
    assert result.exit_code == 0, result.output
    return out, result.output


def test_run_report_writes_every_file_and_logs_them(xss_run, xss_report, tracking_uri):
    from mlflow import MlflowClient

    out, output = xss_report
    assert "report.html" in output and "notice" not in output

    written = {p.name for p in out.iterdir()}
    assert (
        FIGURES_WITH_IMAGES
        | {"confusion_matrix.csv", "per_class.csv", "summary.json", "report.html"}
        <= written
    )

    # the numbers agree with the predictions that were logged
    labels, y_pred = xss_run.labels, xss_run.probs.argmax(axis=1)
    cm = pd.read_csv(out / "confusion_matrix.csv", index_col=0)
    assert cm.to_numpy().sum() == len(labels)
    assert np.trace(cm.to_numpy()) == (labels == y_pred).sum()
    per_class = pd.read_csv(out / "per_class.csv", index_col=0)
    np.testing.assert_allclose(
        per_class["accuracy"], [np.mean(y_pred[labels == d] == d) for d in range(10)], rtol=1e-5
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(np.mean(labels == y_pred))
    assert summary["overfit"]["final_accuracy_gap"] == pytest.approx(
        xss_run.epochs["train_accuracy"][-1] - xss_run.epochs["test_accuracy"][-1]
    )
    assert summary["overfit_gap"] == pytest.approx(summary["overfit"]["final_accuracy_gap"])
    assert (
        summary["overfit"]["best_epoch"] == 2
    )  # the fake curves have their lowest test loss there
    assert 0 <= summary["ece"] <= 1
    top = summary["most_confused_pairs"][0]
    assert top["count"] == max(
        np.sum((labels == t) & (y_pred == p)) for t in range(10) for p in range(10) if t != p
    )

    logged = {f.path for f in MlflowClient(tracking_uri).list_artifacts(xss_run.run_id, "analysis")}
    assert {f"analysis/{name}" for name in written} == logged
    note = MlflowClient(tracking_uri).get_run(xss_run.run_id).data.tags["mlflow.note.content"]
    assert "Diagnostics report: [analysis/report.html](#/experiments/" in note  # the UI links it


def test_report_html_is_self_contained_and_escapes_run_text(xss_report):
    out, _ = xss_report
    html = (out / "report.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(html)
    page.close()
    assert page.scripts == 0  # the run name did not become a script element
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and XSS_NAME not in html
    assert XSS_NAME in page.title
    assert len(page.images) == len(FIGURES_WITH_IMAGES)
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert "http://" not in html and "https://" not in html  # nothing to fetch: opens offline


def test_killed_run_without_predictions_gets_a_partial_report(tracking_uri, tmp_path):
    killed = log_fake_run(
        tracking_uri,
        "report-tests",
        run_name="killed",
        n_epochs=2,
        with_predictions=False,
        status="KILLED",
        seed=13,
    )
    out = tmp_path / "r"
    result = invoke(
        "run", killed.run_id, "--out", str(out), "--no-log", cache_dir=tmp_path / "cache"
    )
    assert result.exit_code == 0, result.output
    assert "notice:" in result.output and "predictions/test.npz" in result.output
    written = {p.name for p in out.iterdir()}
    assert {"learning_curves.png", "batch_loss.png", "summary.json", "report.html"} <= written
    assert "confusion_matrix.csv" not in written
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["status"] == "KILLED"
        and summary["accuracy"] is None
        and summary["epochs_logged"] == 2
    )


def test_missing_images_skip_only_the_galleries_and_no_log_logs_nothing(tracking_uri, tmp_path):
    from mlflow import MlflowClient

    fake = log_fake_run(tracking_uri, "report-tests", run_name="no-images", seed=12)
    out = tmp_path / "r"
    result = invoke(
        "run",
        fake.run_id,
        "--out",
        str(out),
        "--no-log",
        "--data-dir",
        str(tmp_path / "nowhere"),
        cache_dir=tmp_path / "cache",
    )
    assert result.exit_code == 0, result.output
    assert MlflowClient(tracking_uri).list_artifacts(fake.run_id, "analysis") == []
    notices = [line for line in result.output.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "test images unavailable" in notices[0]
    written = {p.name for p in out.iterdir()}
    assert {"confusion_matrix.png", "dataset.png", "per_class.csv"} <= written
    assert not written & {"predictions.png", "confidence.png", "misclassified.png"}


@pytest.mark.parametrize(
    "case", ["unknown-run", "foreign-run", "missing-store", "unreachable-server"]
)
def test_bad_input_is_one_line_and_a_nonzero_exit(case, tracking_uri, tmp_path):
    args = ["run"]
    if case == "unknown-run":
        args += ["0123456789abcdef0123456789abcdef"]
        expected = "no run with id"
    elif case == "foreign-run":
        args += [log_foreign_run(tracking_uri, "other-project")]
        expected = "is it an MNIST workbench run"
    elif case == "missing-store":
        args += ["0" * 32, "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]
        expected = "does not exist"
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args += ["0" * 32, "--tracking-uri", f"http://127.0.0.1:{port}"]
        expected = "unreachable"
    result = invoke(*args, "--out", str(tmp_path / "r"), cache_dir=tmp_path / "cache")
    checks.assert_one_line_error(result.output, result.exit_code, expected, code=1)
    assert not (tmp_path / "r").exists()


def test_python_dash_m_analysis_reports_errors_without_traceback(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'missing.db'}"}
    proc = subprocess.run(
        [sys.executable, "-m", "analysis", "run", "0" * 32],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().startswith("Error: tracking store") and "Traceback" not in proc.stderr
    )
    help_proc = subprocess.run(
        [sys.executable, "-m", "analysis", "--help"], capture_output=True, text=True, timeout=120
    )
    assert help_proc.returncode == 0 and "run" in help_proc.stdout


def test_report_on_a_trained_run(trained_runs, tracking_uri, data_dir, tmp_path):
    """A run trained by mnist_train on the fixture slice, images found through its data-dir tag."""
    from mlflow import MlflowClient

    run_id = trained_runs["mlp"]
    out = tmp_path / "trained"
    result = invoke("run", run_id, "--out", str(out), cache_dir=tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert "notice:" not in result.output  # images found via the run's mnist.data_dir tag
    assert FIGURES_WITH_IMAGES <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "summary.json").read_text())
    run = MlflowClient(tracking_uri).get_run(run_id)
    # the stored predictions reproduce the accuracy the training loop logged for its last epoch
    assert summary["accuracy"] == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-6)
    assert summary["epochs_logged"] == int(run.data.params["epochs"])
    assert summary["n_test"] == sum(pd.read_csv(out / "per_class.csv")["support"])


def test_runs_are_found_by_name_and_a_selection_gets_one_folder_each(tracking_uri, tmp_path):
    parent = log_foreign_run(tracking_uri, "report-sweep")  # a parent run carries no metrics
    children = [
        log_fake_run(
            tracking_uri,
            "report-sweep",
            run_name=f"lr={lr}",
            parent_run_id=parent,
            seed=20 + i,
            n_epochs=2,
        ).run_id
        for i, lr in enumerate(["0.1", "0.01"])
    ]
    cache = tmp_path / "cache"

    by_name = invoke(
        "run",
        "lr=0.01",
        "--out",
        str(tmp_path / "one"),
        "--no-log",
        "--data-dir",
        str(tmp_path / "nowhere"),
        cache_dir=cache,
    )
    assert by_name.exit_code == 0, by_name.output
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["run_id"] == children[1]

    sweep = invoke(
        "run",
        "--experiment",
        "report-sweep",
        "--out",
        str(tmp_path / "all"),
        "--no-log",
        "--data-dir",
        str(tmp_path / "nowhere"),
        cache_dir=cache,
    )
    assert sweep.exit_code == 0, sweep.output
    assert f"skipped run {parent}" in sweep.output  # the parent, with a reason, not a crash
    folders = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert folders == sorted([f"lr=0.1_{children[0][:8]}", f"lr=0.01_{children[1][:8]}"])
    for folder in (tmp_path / "all").iterdir():
        run_id = json.loads((folder / "summary.json").read_text())["run_id"]
        assert run_id in children and folder.name.endswith(run_id[:8])


def test_the_rebuilt_model_reproduces_the_stored_predictions(trained_runs, tracking_uri, data_dir):
    """--predict's fallback: the model rebuilt from the run's config and last checkpoint, fed the
    whole test set, scores the run's own test images and gives the stored probabilities."""
    from analysis import runs
    from analysis.images import load_test_set
    from analysis.inference import predict_from_checkpoint

    client = runs.connect(tracking_uri)
    run = runs.load_run(client, trained_runs["mlp"], cache_dir=data_dir.parent / "analysis-cache")
    images, labels = load_test_set(data_dir)
    predicted, used = predict_from_checkpoint(client, run, images, labels)
    assert used == "epoch_002.pt" and len(predicted) == len(run.predictions) < len(images)
    np.testing.assert_array_equal(predicted.index, run.predictions.index)
    np.testing.assert_array_equal(predicted.labels, run.predictions.labels)
    np.testing.assert_allclose(predicted.probs, run.predictions.probs, atol=1e-5)


def test_predict_without_a_logged_model_is_a_clean_error(tracking_uri, data_dir_copy, tmp_path):
    killed = log_fake_run(
        tracking_uri,
        "report-tests",
        run_name="killed-no-model",
        n_epochs=1,
        with_predictions=False,
        status="KILLED",
        seed=30,
    )
    result = invoke(
        "run",
        killed.run_id,
        "--predict",
        "--out",
        str(tmp_path / "r"),
        "--no-log",
        "--data-dir",
        str(data_dir_copy),
        cache_dir=tmp_path / "cache",
    )
    checks.assert_one_line_error(
        result.output, result.exit_code, "Error: run", "no finished-epoch checkpoint", code=1
    )


def test_a_file_store_path_is_read_too(tmp_path, monkeypatch):
    """A plain path is a valid tracking store; MLflow 3 only opens one when allowed."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = tmp_path / "mlruns"
    fake = log_fake_run(str(store), "file-store", run_name="in_a_file_store", n_epochs=2, seed=50)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    result = invoke(
        "run",
        fake.run_id,
        "--tracking-uri",
        str(store),
        "--out",
        str(tmp_path / "r"),
        "--data-dir",
        str(tmp_path / "nowhere"),
        cache_dir=tmp_path / "cache",
    )
    assert result.exit_code == 0, result.output
    assert (
        json.loads((tmp_path / "r" / "summary.json").read_text())["run_name"] == "in_a_file_store"
    )
    assert list(
        store.glob(f"*/{fake.run_id}/artifacts/analysis/report.html")
    )  # logged in the store


def test_an_unwritable_out_is_one_line(xss_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = invoke(
        "run",
        xss_run.run_id,
        "--out",
        str(blocker / "report"),
        "--no-log",
        cache_dir=tmp_path / "c",
    )
    checks.assert_one_line_error(
        result.output, result.exit_code, "Error: cannot write", "choose another --out", code=1
    )


def test_a_very_long_run_name_still_gets_its_folder(tracking_uri, tmp_path):
    long_name = "x" * 10_000
    run = log_fake_run(tracking_uri, "report-long", run_name=long_name, seed=40, n_epochs=1)
    other = log_fake_run(tracking_uri, "report-long", run_name="short", seed=41, n_epochs=1)
    result = invoke(
        "run",
        "--experiment",
        "report-long",
        "--out",
        str(tmp_path / "all"),
        "--no-log",
        "--data-dir",
        str(tmp_path / "nowhere"),
        cache_dir=tmp_path / "c",
    )
    assert result.exit_code == 0, result.output
    folders = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert folders == sorted(["x" * 80 + f"_{run.run_id[:8]}", f"short_{other.run_id[:8]}"])


def test_a_server_that_answers_health_but_fails_its_api_is_named_as_such(tmp_path, monkeypatch):
    """/health says 200, every API call 503: one line about the server, not "no run with id"."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class HalfAlive(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()
            self.wfile.write(b"OK" if self.path == "/health" else b"unavailable")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), HalfAlive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    from mnist_train import process

    for key, value in process.HTTP_LIMITS.items():  # as mnist-analysis sets them
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    started = time.time()
    uri = f"http://127.0.0.1:{server.server_port}"
    result = invoke(
        "run",
        "0" * 32,
        "--tracking-uri",
        uri,
        "--out",
        str(tmp_path / "r"),
        cache_dir=tmp_path / "c",
    )
    server.shutdown()
    assert result.exit_code == 1
    assert "failed to answer" in result.output and "no run with id" not in result.output
    assert time.time() - started < 60
