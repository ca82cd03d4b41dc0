"""`mnist-train` end to end: output, and one clear line for every kind of bad input."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import checks
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from mnist_train.cli import cli

QUICK = ["--max-train", "500", "--max-test", "100", "--set", "epochs=1", "--quiet"]


@pytest.fixture
def experiment(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: cli_test\nexperiment: cli-tests\nhidden_sizes: [16]\nbatch_size: 100\n")
    return path


def invoke(*args):
    return CliRunner().invoke(cli, ["run", *map(str, args)])


def running_runs():
    return MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()],
        "attributes.status = 'RUNNING'",
    )


def assert_one_line_error(result, message):
    checks.assert_one_line_error(result.output, result.exit_code, message)
    assert running_runs() == []


def test_run_prints_the_run_id(experiment, data_dir):
    result = invoke(experiment, "--data-dir", data_dir, *QUICK)
    assert result.exit_code == 0, result.output
    run = MlflowClient().get_run(result.output.strip().splitlines()[-1])
    assert run.info.status == "FINISHED" and run.info.run_name == "cli_test"
    assert run.data.params["max_train"] == "500"


def test_experiment_name_option(experiment, data_dir):
    result = invoke(experiment, "--data-dir", data_dir, "--experiment-name", "renamed", *QUICK)
    assert result.exit_code == 0, result.output
    run = MlflowClient().get_run(result.output.strip().splitlines()[-1])
    assert MlflowClient().get_experiment(run.info.experiment_id).name == "renamed"


def test_dry_run_logs_nothing(experiment, data_dir):
    before = len(MlflowClient().search_experiments())
    result = invoke(experiment, "--data-dir", data_dir, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run ok" in result.output and "total" in result.output
    assert len(MlflowClient().search_experiments()) == before


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--set", "colour=blue"], "unknown config key 'colour'"),
        (["--set", "epochs=many"], "epochs must be int"),
        (["--set", "lr=0"], "lr must be > 0"),
        (["--set", "batch_size=0"], "batch_size must be >= 1"),
        (["--set", "epochs=0"], "epochs must be >= 1"),
        (["--set", "dropout=1"], "dropout must be in [0, 1)"),
        (["--set", "model=resnet"], "model must be one of"),
        (["--set", "activation=swish"], "activation must be one of"),
        (["--set", "optimizer=lbfgs"], "optimizer must be one of"),
        (["--set", "lr"], "--set takes key=value"),
    ],
)
def test_bad_config_is_one_line(experiment, data_dir, overrides, message):
    assert_one_line_error(invoke(experiment, "--data-dir", data_dir, *overrides), message)


def test_missing_experiment_file(tmp_path, data_dir):
    assert_one_line_error(
        invoke(tmp_path / "nope.yaml", "--data-dir", data_dir), "experiment file not found"
    )


def _broken_data(data_dir, tmp_path, breaker):
    from mnist_train.data import load_split

    load_split(data_dir, train=False, download=False)  # unpack the fixture
    target = tmp_path / "broken"
    shutil.copytree(data_dir, target, ignore=shutil.ignore_patterns("*.gz"))
    breaker(target / "MNIST" / "raw")
    return target


@pytest.mark.parametrize(
    "breaker, message",
    [
        (
            lambda raw: (raw / "train-labels-idx1-ubyte").write_bytes(
                (raw / "train-labels-idx1-ubyte").read_bytes()[:100]
            ),
            "truncated",
        ),
        (
            lambda raw: (raw / "train-images-idx3-ubyte").write_bytes(b"\x00" * 64),
            "wrong magic number",
        ),
    ],
)
def test_damaged_data_is_one_line(experiment, data_dir, tmp_path, breaker, message):
    broken = _broken_data(data_dir, tmp_path, breaker)
    assert_one_line_error(invoke(experiment, "--data-dir", broken, *QUICK), message)


def test_absent_mnist_that_cannot_be_downloaded(experiment, tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    # nothing listens on the discard port: the download fails at once, whatever the network
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    result = invoke(experiment, "--data-dir", tmp_path / "empty", *QUICK)
    assert_one_line_error(result, "MNIST not found")
    assert "download failed" in result.output


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_checkpoints_marks_killed_and_says_how_to_resume(
    experiment, data_dir, signum, code
):
    """SIGTERM (kill) and SIGHUP (a closed terminal) stop a run as Ctrl-C does."""
    command = [
        sys.executable,
        "-m",
        "mnist_train",
        "run",
        str(experiment),
        "--data-dir",
        str(data_dir),
        "--set",
        "epochs=200",
        "--max-train",
        "3000",
        "--max-test",
        "100",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    deadline = time.time() + 120
    for line in process.stderr:  # not a terminal: one plain line per epoch
        if "epoch 1/200" in line or time.time() > deadline:
            break
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    message = stderr.strip().splitlines()[-1]
    assert "checkpoint saved" in message and "--resume" in message
    run_id = message.split("--resume ")[1].strip()
    assert stdout.strip() == run_id  # an interrupted run prints its id like a finished one
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "KILLED"
    assert [f.path for f in client.list_artifacts(run_id, "checkpoints")][
        0
    ] == "checkpoints/epoch_001.pt"


def test_unreachable_tracking_server_is_one_line(experiment, data_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    started = time.time()
    result = invoke(experiment, "--data-dir", data_dir, *QUICK)
    monkeypatch.undo()
    assert_one_line_error(result, "tracking server http://127.0.0.1:9 is unreachable")
    assert time.time() - started < 30


def test_a_file_store_works_too(experiment, data_dir, tmp_path, monkeypatch):
    store = tmp_path / "mlruns"
    env = {**os.environ, "MLFLOW_TRACKING_URI": str(store)}
    command = [
        sys.executable,
        "-m",
        "mnist_train",
        "run",
        str(experiment),
        "--data-dir",
        str(data_dir),
        *QUICK,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = MlflowClient(tracking_uri=str(store)).get_run(result.stdout.strip().splitlines()[-1])
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        (b"name: caf\xe9\n", [], "not UTF-8 text"),
        (b"name: big\nseed: 18446744073709551616\n", [], "seed must be in [0, 2**63)"),
        (
            b"name: drop\ndrop_last: true\n",
            ["--set", "batch_size=600"],
            "batch_size (600) is larger",
        ),
    ],
)
def test_inputs_that_once_printed_tracebacks_are_one_line(
    tmp_path, data_dir, text, overrides, message
):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    result = invoke(path, "--data-dir", data_dir, *QUICK, *overrides)
    assert_one_line_error(result, message)


def test_a_store_that_is_not_a_database_is_one_line(experiment, data_dir, tmp_path, monkeypatch):
    store = tmp_path / "notes.db"
    store.write_text("these are my notes, not a database\n" * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    result = invoke(experiment, "--data-dir", data_dir, *QUICK)
    monkeypatch.undo()
    assert_one_line_error(result, "cannot open the tracking store")


def test_a_truncated_checkpoint_on_resume_is_one_line(experiment, data_dir, tmp_path):
    import mlflow

    run_id = invoke(experiment, "--data-dir", data_dir, *QUICK).stdout.strip()
    client = MlflowClient()
    path = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="checkpoints/epoch_001.pt", dst_path=str(tmp_path)
        )
    )
    damaged = tmp_path / "torn" / "epoch_001.pt"  # an epoch whose points the store has
    damaged.parent.mkdir()
    damaged.write_bytes(path.read_bytes()[:1000])
    client.log_artifact(run_id, str(damaged), "checkpoints")
    result = invoke(
        experiment, "--data-dir", data_dir, *QUICK, "--set", "epochs=3", "--resume", run_id
    )
    assert_one_line_error(result, "epoch_001.pt of run")
    assert "is torn" in result.output


TELEMETRY_PROBE = """
import sys
import analysis.cli, mnist_train.cli
from mnist_train import process
assert "mlflow" not in sys.modules, "a command imports MLflow before its settings are made"
if sys.argv[1] == "configured":
    process.configure()
import mlflow.telemetry
print(mlflow.telemetry.get_telemetry_client() is None)
"""


@pytest.mark.parametrize(("how", "silent"), [("configured", True), ("as MLflow leaves it", False)])
def test_the_commands_send_mlflow_no_telemetry(how, silent, tmp_path):
    """MLflow 3 posts usage records to its maintainers' servers from every process that imports
    it (it stays quiet only in CI, as here): both commands settle their MLflow settings before
    anything imports it, and those turn telemetry off. The second case shows the probe sees it."""
    ci_markers = {"CI", "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL"}
    env = {k: v for k, v in os.environ.items() if k not in ci_markers}
    env.pop("MLFLOW_DISABLE_TELEMETRY", None)
    env["HOME"] = str(tmp_path)  # MLflow keeps an installation id under the home folder
    done = subprocess.run(
        [sys.executable, "-c", TELEMETRY_PROBE, how], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == str(silent)


@pytest.mark.parametrize(
    "uri, link",
    [
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000/#/experiments/4/runs/abc"),
        (
            "https://me:s3cret@mlflow.example.org/",
            "https://mlflow.example.org/#/experiments/4/runs/abc",
        ),
        ("http://[::1]:8080/mlflow/", "http://[::1]:8080/mlflow/#/experiments/4/runs/abc"),
        ("sqlite:///mlflow.db", None),
        ("postgresql://me:s3cret@db/mlflow", None),
    ],
)
def test_a_run_link_names_the_server_and_never_its_credentials(uri, link):
    from mnist_train.tracking import run_url

    assert run_url(uri, "4", "abc") == link
