"""The MLflow project: parameters are config fields, commands reach the CLI, `mlflow run` works."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from mnist_train.cli import cli
from mnist_train.config import FIELDS

ROOT = Path(__file__).resolve().parent.parent
EXTRA = {
    "experiment": "the experiment file",
    "data_dir": "MNIST folder",
    "workers": "sweep processes",
    "storage": "sweep: the Optuna study database",
    "trials": "sweep: a search's trial count",
    "force": "sweep: a new study",
    "parent": "report: the sweep's parent run",
    "out": "report: output folder",
}


def spec():
    return yaml.safe_load((ROOT / "MLproject").read_text())


def test_every_parameter_is_a_config_field_or_a_documented_extra():
    entry_points = spec()["entry_points"]
    assert {"main", "sweep", "report"} <= set(entry_points)
    for name, entry in entry_points.items():
        params = entry["parameters"]
        unknown = set(params) - set(FIELDS) - set(EXTRA)
        assert not unknown, f"{name}: {unknown} are not RunConfig fields"
        for param in params:
            assert f"{{{param}}}" in entry["command"], f"{name}: {param} is not forwarded"
        program = (
            "python -m analysis compare"
            if name == "report"
            else "python -m mnist_train run {experiment}"
        )
        assert entry["command"].startswith(program)
    # main can override every field; `experiment` names the file (the MLflow experiment is
    # `mlflow run --experiment-name`)
    assert set(entry_points["main"]["parameters"]) == set(FIELDS) | {"data_dir"}
    assert yaml.safe_load((ROOT / "python_env.yaml").read_text())["python"]


@pytest.mark.parametrize(
    "entry, params",
    [
        (
            "main",
            {
                "lr": "0.01",
                "hidden_sizes": "[64, 32]",
                "max_train": "300",
                "experiment": "experiments/seed000_mlp.yaml",
            },
        ),
        (
            "sweep",
            {
                "experiment": "experiments/try_depth.yaml",
                "workers": "2",
                "trials": "",
                "force": "true",
                "max_train": "400",
                "validation": "100",
            },
        ),
    ],
)
def test_rendered_commands_parse_and_keep_unset_parameters_from_the_file(
    entry, params, data_dir, monkeypatch
):
    from mlflow.projects._project_spec import load_project

    command = (
        load_project(str(ROOT)).get_entry_point(entry).compute_command(params, storage_dir=None)
    )
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "mnist_train", "run"]
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(cli, [*argv[3:], "--dry-run", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "dry run ok: 300 train" in result.output  # main: 300 images; sweep: 400 - 100 held out
    if entry == "main":
        assert (
            "[64, 784]" in result.output and "[32, 64]" in result.output
        )  # hidden_sizes forwarded


def test_mlflow_run_main_records_a_parent_with_the_training_run_nested(data_dir, tracking_uri):
    inherited = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")
    }
    env = {
        **inherited,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MNIST_DATA_DIR": str(data_dir),
    }
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "run",
        str(ROOT),
        "-e",
        "main",
        "-P",
        "experiment=experiments/seed000_mlp.yaml",
        "-P",
        "max_train=500",
        "-P",
        "max_test=100",
        "-P",
        "epochs=1",
        "--env-manager",
        "local",
        "--experiment-name",
        "mlproject-tests",
    ]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient()
    experiment = client.get_experiment_by_name("mlproject-tests")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (child,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    assert parent.data.tags["mlflow.project.entryPoint"] == "main"
    assert child.info.run_name == "seed000_mlp"
    params = child.data.params
    assert (params["epochs"], params["max_train"], params["lr"], params["experiment"]) == (
        "1",
        "500",
        "0.001",
        "mlproject-tests",
    )
    assert [m.step for m in client.get_metric_history(child.info.run_id, "test_accuracy")] == [1]
    assert "summary.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
