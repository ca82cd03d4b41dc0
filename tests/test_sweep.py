"""Sweep files: expansion and validation, parent and nested children, parallel workers on one
SQLite store, idempotent reruns, and exact resumption of an interrupted child."""

import csv
import io
import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY, tiny_config, train_run
from mlflow.tracking import MlflowClient

from mnist_train.cli import cli
from mnist_train.config import ConfigError, read_experiment
from mnist_train.study import default_storage, make_plan
from mnist_train.study_grid import expand, varying_keys
from mnist_train.study_run import run_study

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
EPOCH_METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "epoch_time_s")
TINY_YAML = "".join(
    f"{key}: {value}\n" for key, value in TINY.items()
)  # 10 steps per epoch, 2 epochs
STEPS = TINY["epochs"] * TINY["max_train"] // TINY["batch_size"]


def sweep_file(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return read_experiment(path)


def invoke(*args):
    return CliRunner().invoke(cli, ["run", *map(str, args)])


def children_of(parent_id):
    client = MlflowClient()
    experiment_id = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {run.info.run_name: run for run in runs}


def history(run_id, key):
    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


def download(run_id, path, tmp_path):
    import mlflow

    return mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=path, dst_path=str(tmp_path)
    )


# --- expansion and validation (no MLflow, no training) ----------------------------------------


def test_grid_times_seeds_gives_every_combination_named_by_what_varies(tmp_path):
    experiment = sweep_file(
        tmp_path,
        "name: s\ngrid:\n  lr: [0.01, 0.0001]\n  hidden_sizes: [[50], [200]]\nseeds: [0, 3]\n",
    )
    children = expand(experiment)
    assert len(children) == 8
    assert children[0].name == "lr=0.01,hidden_sizes=[50],seed=0"
    assert children[-1].name == "lr=0.0001,hidden_sizes=[200],seed=3"
    assert len({c.name for c in children}) == 8
    last = children[-1].config
    assert (last.lr, last.hidden_sizes, last.seed, last.name) == (
        0.0001,
        (200,),
        3,
        children[-1].name,
    )
    assert varying_keys(children) == ["hidden_sizes", "lr", "seed"]


def test_variants_combine_with_grid_and_keep_the_base(tmp_path):
    experiment = sweep_file(
        tmp_path,
        "name: depth\nepochs: 5\nvariants:\n  - name: layers=2\n  - name: layers=3\n    "
        "hidden_sizes: [100, 100]\n"
        "grid:\n  activation: [relu, tanh]\n",
    )
    children = expand(experiment, {"max_train": 500})
    assert [c.name for c in children] == [
        "layers=2,activation=relu",
        "layers=2,activation=tanh",
        "layers=3,activation=relu",
        "layers=3,activation=tanh",
    ]
    assert children[2].config.hidden_sizes == (100, 100) and children[0].config.hidden_sizes == (
        100,
    )
    assert {c.config.epochs for c in children} == {5} and {
        c.config.max_train for c in children
    } == {500}
    assert children[3].settings == {"hidden_sizes": (100, 100), "activation": "tanh"}


def test_seed_count_means_seeds_from_zero(tmp_path):
    children = expand(sweep_file(tmp_path, "name: s\nseeds: 3\n"))
    assert [c.config.seed for c in children] == [0, 1, 2] and children[1].name == "seed=1"


@pytest.mark.parametrize(
    "path, count, varying",
    [
        ("try_lr.yaml", 3, "lr"),
        ("try_hidden.yaml", 3, "hidden_sizes"),
        ("try_epochs.yaml", 3, "epochs"),
        ("try_depth.yaml", 3, "hidden_sizes"),
        ("try_activation.yaml", 3, "activation"),
        ("try_dropout.yaml", 3, "dropout"),
        ("seeds_mlp.yaml", 5, "seed"),
    ],
)
def test_every_experiment_file_of_seed_000_expands(path, count, varying):
    children = expand(read_experiment(EXPERIMENTS / path))
    assert len(children) >= count and varying_keys(children) == [varying]
    assert len({c.config.experiment for c in children}) == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("grid:\n  lr: [0.1, -1]\n", "grid.lr[1]: lr must be > 0, got -1.0"),
        ("grid:\n  lr: 0.1\n", "grid.lr must be a non-empty list"),
        (
            "grid:\n  learning_rate: [0.1]\n",
            "grid.learning_rate: unknown config key 'learning_rate'",
        ),
        (
            "grid:\n  activation: [relu, gelu]\n",
            "grid.activation[1]: activation must be one of relu, tanh, sigmoid",
        ),
        ("grid:\n  name: [a, b]\n", "grid.name: name cannot vary within a sweep"),
        ("variants:\n  - hidden_sizes: [10]\n", "variants[0] needs a name"),
        (
            "variants:\n  - name: a\n  - name: b\n    dropout: 1.5\n",
            "variants[1] (b).dropout: dropout must be in [0, 1), got 1.5",
        ),
        ("variants:\n  - name: a\n  - name: a\n", "variants[1]: name 'a' is used twice"),
        ("seeds: [1, 1]\n", "seeds lists a seed twice"),
        ("seeds: [0, x]\n", "seeds[1]: seed must be int"),
        ("seeds: 3\ngrid:\n  seed: [1, 2]\n", "seed is varied by both grid and seeds"),
        ("lr: -3\ngrid:\n  epochs: [1, 2]\n", "lr must be > 0"),
    ],
)
def test_validation_errors_name_the_file_and_the_entry(tmp_path, text, message):
    experiment = sweep_file(tmp_path, text, name="try_bad.yaml")
    with pytest.raises(ConfigError) as caught:
        expand(experiment)
    assert str(caught.value).startswith(f"{tmp_path / 'try_bad.yaml'}: ")
    assert message in str(caught.value)


def test_overriding_a_swept_key_is_an_error_but_others_apply(tmp_path):
    experiment = sweep_file(tmp_path, "grid:\n  lr: [0.1, 0.01]\n")
    with pytest.raises(ConfigError, match="cannot override lr: the sweep varies it"):
        expand(experiment, {"lr": 0.5})
    assert {c.config.epochs for c in expand(experiment, {"epochs": 7})} == {7}


def test_cli_reports_a_bad_sweep_in_one_line(tmp_path):
    path = tmp_path / "try_bad.yaml"
    path.write_text("grid:\n  lr: [0.1, -1]\n")
    result = invoke(path)
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {path}: grid.lr[1]: lr must be > 0, got -1.0"


# --- running sweeps on the fixture -------------------------------------------------------------


def test_sweep_records_parent_children_and_summary_reruns_idempotently_and_force_retrains(
    tmp_path, data_dir
):
    path = tmp_path / "try_hidden.yaml"
    path.write_text(
        f"name: try_hidden\nexperiment: sweep-seq\n{TINY_YAML}grid:\n  hidden_sizes: [[8], [16]]\n"
    )
    result = invoke(path, "--data-dir", data_dir, "--quiet")
    assert result.exit_code == 0, result.output
    parent_id, *child_ids = result.stdout.split()
    client = MlflowClient()
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "try_hidden"
    assert (
        parent.data.tags["mnist.sweep.children"] == "2"
        and parent.data.tags["mnist.sweep.failed"] == "0"
    )
    assert {a.path for a in client.list_artifacts(parent_id, "sweep")} == {"sweep/try_hidden.yaml"}

    children = children_of(parent_id)
    assert set(children) == {"hidden_sizes=[8]", "hidden_sizes=[16]"}
    assert {run.info.run_id for run in children.values()} == set(child_ids)
    assert all(run.info.status == "FINISHED" for run in children.values())

    summary = list(
        csv.DictReader(io.StringIO(Path(download(parent_id, "summary.csv", tmp_path)).read_text()))
    )
    assert [row["name"] for row in summary] == ["hidden_sizes=[8]", "hidden_sizes=[16]"]
    for row in summary:
        child = children[row["name"]]
        assert (
            row["run_id"] == child.info.run_id
            and row["hidden_sizes"] == child.data.params["hidden_sizes"]
        )
        # the model of record's scores (here the last epoch's) and which epoch that is
        for key in ("train_accuracy", "test_accuracy"):
            assert float(row[key]) == pytest.approx(child.data.metrics[f"model/{key}"])
        assert float(row["train_time_s"]) == pytest.approx(child.data.metrics["train_time_s"])
        assert int(row["predictions_epoch"]) == child.data.metrics["predictions_epoch"]
    note = parent.data.tags["mlflow.note.content"]
    assert "2 of 2 trials complete" in note and all(run_id in note for run_id in child_ids)

    ended = client.get_run(parent_id).info.end_time
    again = invoke(path, "--data-dir", data_dir)
    assert again.exit_code == 0, again.output
    assert again.stdout.split() == result.stdout.split()  # same parent, same children
    assert "is complete (2 complete): nothing to train" in again.stderr
    assert set(children_of(parent_id)) == set(children)
    assert client.get_run(parent_id).info.end_time == ended  # not reopened, not stretched

    forced = invoke(path, "--data-dir", data_dir, "--quiet", "--force")
    assert forced.exit_code == 0, forced.output
    new_parent, *new_children = forced.stdout.split()
    assert (
        new_parent != parent_id
        and len(new_children) == 2
        and not set(new_children) & set(child_ids)
    )


def test_two_workers_finish_every_child_with_complete_histories(tmp_path, data_dir):
    path = tmp_path / "try_activation.yaml"
    path.write_text(
        f"name: parallel\nexperiment: sweep-parallel\n{TINY_YAML}grid:\n  activation: [relu, "
        "tanh]\n"
    )
    result = invoke(path, "--data-dir", data_dir, "--workers", "2", "--quiet")
    assert result.exit_code == 0, result.output
    parent_id, *child_ids = result.stdout.split()
    children = children_of(parent_id)
    assert len(children) == 2 and {run.info.run_id for run in children.values()} == set(child_ids)
    for run in children.values():
        assert run.info.status == "FINISHED", run.data.tags.get("failure_reason")
        assert [step for step, _ in history(run.info.run_id, "batch_loss")] == list(
            range(1, STEPS + 1)
        )
        for key in EPOCH_METRICS:
            assert [step for step, _ in history(run.info.run_id, key)] == list(
                range(1, TINY["epochs"] + 1)
            )
        assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"mnist-train", "mnist-test"}
    assert MlflowClient().get_run(parent_id).info.status == "FINISHED"


def test_a_failed_child_does_not_stop_its_siblings(tmp_path, data_dir):
    path = tmp_path / "try_sgd.yaml"
    path.write_text(
        f"name: diverging\nexperiment: sweep-failures\noptimizer: sgd\n{TINY_YAML}grid:\n  lr: "
        "[1000000.0, 0.1]\n"
    )
    result = invoke(path, "--data-dir", data_dir, "--quiet")
    assert result.exit_code == 1
    assert "1 of 2 trials failed: lr=1000000.0" in result.output
    parent_id = result.stdout.split()[0]
    parent = MlflowClient().get_run(parent_id)
    assert parent.info.status == "FAILED" and parent.data.tags["mnist.sweep.failed"] == "1"
    statuses = {name: run.info.status for name, run in children_of(parent_id).items()}
    assert statuses == {"lr=1000000.0": "FAILED", "lr=0.1": "FINISHED"}


def test_an_interrupted_child_resumes_on_the_next_run_and_ends_as_if_never_stopped(
    tmp_path, data_dir
):
    path = tmp_path / "try_dropout.yaml"
    path.write_text(
        f"name: resumable\nexperiment: sweep-resume\nhidden_sizes: [16]\n{TINY_YAML}grid:\n  "
        "dropout: [0.2, 0.0]\n"
    )
    experiment = read_experiment(path)
    calls = itertools.count()
    stopped = run_study(
        make_plan(experiment, {}),
        data_dir=data_dir,
        storage_url=default_storage(os.environ["MLFLOW_TRACKING_URI"]),
        quiet=True,
        should_stop=lambda: next(calls) > 14,  # inside the first child's second epoch
    )
    assert stopped.stopped and [o.state for o in stopped.outcomes] == ["WAITING", "WAITING"]
    killed_id = stopped.outcomes[0].run_id
    client = MlflowClient()
    assert client.get_run(stopped.parent_run_id).info.status == "KILLED"
    assert "checkpoints/epoch_002_partial.pt" in {
        a.path for a in client.list_artifacts(killed_id, "checkpoints")
    }

    result = invoke(path, "--data-dir", data_dir, "--quiet")
    assert result.exit_code == 0, result.output
    parent_id, first_id, second_id = result.stdout.split()
    assert (parent_id, first_id) == (
        stopped.parent_run_id,
        killed_id,
    )  # same parent, same child run
    assert set(children_of(parent_id)) == {"dropout=0.2", "dropout=0.0"}
    assert client.get_run(killed_id).info.status == "FINISHED"
    assert [step for step, _ in history(killed_id, "batch_loss")] == list(range(1, STEPS + 1))

    reference = train_run(
        tiny_config(name="uninterrupted", hidden_sizes=[16], dropout=0.2), data_dir
    )
    resumed = np.load(download(killed_id, "predictions/test.npz", tmp_path / "resumed"))
    expected = np.load(download(reference, "predictions/test.npz", tmp_path / "reference"))
    assert np.array_equal(resumed["probs"], expected["probs"])
    state = torch.load(
        download(killed_id, "checkpoints/epoch_002.pt", tmp_path / "resumed"), weights_only=False
    )
    want = torch.load(
        download(reference, "checkpoints/epoch_002.pt", tmp_path / "reference"), weights_only=False
    )
    assert state["model"].keys() == want["model"].keys()
    assert all(torch.equal(state["model"][k], want["model"][k]) for k in want["model"])


@pytest.fixture
def http_tracking(tmp_path, monkeypatch):
    """A throwaway `mlflow server` on 127.0.0.1 with its own SQLite store, as the tracking URI."""
    import mlflow
    from mlflow_server import free_port, start_server

    port = free_port()
    server = start_server(tmp_path, port)
    uri = f"http://127.0.0.1:{port}"
    try:
        previous = mlflow.get_tracking_uri()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        yield uri
        mlflow.set_tracking_uri(previous)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.skipif(
    not os.environ.get("MNIST_TEST_HTTP_SERVER"),
    reason="starts an mlflow server (~60 s); set MNIST_TEST_HTTP_SERVER=1",
)
def test_the_same_sweep_runs_against_an_http_tracking_server(
    tmp_path, data_dir, http_tracking, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the study storage defaults to ./optuna.db with an http store
    path = tmp_path / "try_http.yaml"
    path.write_text(
        f"name: over_http\nexperiment: sweep-http\n{TINY_YAML}grid:\n  lr: [0.01, 0.001]\n"
    )
    result = invoke(path, "--data-dir", data_dir, "--workers", "2", "--quiet")
    assert result.exit_code == 0, result.output
    parent_id, *child_ids = result.stdout.split()
    children = children_of(parent_id)
    assert {run.info.run_id for run in children.values()} == set(child_ids) and len(child_ids) == 2
    for run in children.values():
        assert run.info.status == "FINISHED"
        assert len(history(run.info.run_id, "batch_loss")) == STEPS
    assert "summary.csv" in {a.path for a in MlflowClient().list_artifacts(parent_id)}
