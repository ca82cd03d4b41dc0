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
# the only declared parameters: MLflow logs a declared one even when it is not given
DECLARED = {
    "experiment": "the experiment file",
    "workers": "sweep processes",
    "force": "sweep: a new study",
    "parent": "report: the sweep's parent run",
    "out": "report: output folder",
}


def spec():
    return yaml.safe_load((ROOT / "MLproject").read_text())


def test_few_parameters_are_declared_and_each_is_forwarded():
    entry_points = spec()["entry_points"]
    assert {"main", "sweep", "report"} <= set(entry_points)
    for name, entry in entry_points.items():
        params = entry["parameters"]
        assert set(params) <= set(DECLARED), f"{name}: {set(params) - set(DECLARED)}"
        for param, declared in params.items():
            assert f"{{{param}}}" in entry["command"], f"{name}: {param} is not forwarded"
            assert declared.get("default", "x") != "", f"{name}: {param} would be logged as ''"
        program = (
            "python -m analysis compare"
            if name == "report"
            else "python -m mnist_train run {experiment}"
        )
        assert entry["command"].startswith(program)
    assert yaml.safe_load((ROOT / "python_env.yaml").read_text())["python"]


def test_every_config_field_is_accepted_as_an_undeclared_parameter(data_dir, monkeypatch):
    """What `mlflow run -P key=value` appends for an undeclared key: `--key value`."""
    from mlflow.projects._project_spec import load_project

    entry = load_project(str(ROOT)).get_entry_point("main")
    values = {field: "bogus-value" for field in FIELDS}
    command = entry.compute_command({"experiment": "experiments/seed000_mlp.yaml", **values}, None)
    argv = shlex.split(command)
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(cli, [*argv[3:], "--dry-run", "--data-dir", str(data_dir)])
    # every field reached the config: the first one checked is refused for its value, not as an
    # unknown option
    assert result.exit_code != 0 and "no such option" not in result.output, result.output
    unknown = CliRunner().invoke(
        cli, ["run", "experiments/seed000_mlp.yaml", "--lrr", "0.1", "--dry-run"]
    )
    assert unknown.exit_code != 0 and "no such option or config field: --lrr" in unknown.output


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
    # the wrapper run logs the parameters given, and no empty ones
    assert parent.data.params == {
        "experiment": "experiments/seed000_mlp.yaml",
        "max_train": "500",
        "max_test": "100",
        "epochs": "1",
    }
    assert "summary.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_mlflow_run_sweep_joins_the_study_mnist_train_ran_and_finds_nothing_to_do(
    data_dir, tracking_uri, tmp_path
):
    """The study's fingerprint is what it tries, not where its runs are filed: `mlflow run`
    (another experiment) continues the study `mnist-train run` made, and a complete study is
    said to be complete, its parent left as it was."""
    from conftest import TINY

    head = "".join(f"{key}: {value}\n" for key, value in {**TINY, "validation": 100}.items())
    sweep = tmp_path / "shared.yaml"
    sweep.write_text(f"name: shared\nexperiment: shared-a\n{head}grid:\n  lr: [0.01, 0.1]\n")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = CliRunner().invoke(
        cli, ["run", str(sweep), "--data-dir", str(data_dir), "--storage", storage]
    )
    assert first.exit_code == 0, first.output
    client = MlflowClient()
    parent = client.get_run(first.stdout.split()[0])

    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")
        },
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MNIST_DATA_DIR": str(data_dir),
        "MNIST_STUDY_STORAGE": storage,
    }
    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "-e", "sweep"]
    command += ["-P", f"experiment={sweep}", "--env-manager", "local"]
    command += ["--experiment-name", "shared-b"]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "study shared is complete (2 complete): nothing to train" in done.stderr
    assert f"report: mnist-analysis compare --parent {parent.info.run_id}" in done.stderr
    assert client.get_run(parent.info.run_id).info.end_time == parent.info.end_time
    (wrapper,) = client.search_runs([client.get_experiment_by_name("shared-b").experiment_id])
    assert wrapper.data.params == {"experiment": str(sweep), "workers": "1", "force": "false"}
    assert parent.info.run_id in wrapper.data.tags["mlflow.note.content"]
