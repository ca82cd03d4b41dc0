"""analysis.runs: selecting and loading runs from a tracking store, the artifact cache, bad
stores."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from analysis_helpers import fixture_test_labels, log_fake_run, log_foreign_run, unpacked_fixture

from analysis import runs
from analysis.images import load_test_set, resolve_data_dir
from analysis.runs import AnalysisError
from mnist_train import contract


@pytest.fixture(scope="module")
def store(tracking_uri):
    """Hand-made runs in two experiments of the session store."""
    finished = log_fake_run(tracking_uri, "runs-a", run_name="finished", n_epochs=3, seed=1)
    killed = log_fake_run(
        tracking_uri,
        "runs-a",
        run_name="runs-a-killed",
        n_epochs=2,
        seed=2,
        with_predictions=False,
        status="KILLED",
    )
    parent = log_foreign_run(tracking_uri, "runs-b")  # stands in for a sweep parent: no metrics
    children = [
        log_fake_run(
            tracking_uri,
            "runs-b",
            run_name=f"lr={lr}",
            seed=i,
            parent_run_id=parent,
            extra_tags={"lr": lr},
        ).run_id
        for i, lr in enumerate(["0.01", "0.001"])
    ]
    return {
        "uri": tracking_uri,
        "finished": finished,
        "killed": killed,
        "parent": parent,
        "children": children,
        "client": runs.connect(tracking_uri),
    }


def test_load_run_returns_the_contract_data(store, tmp_path):
    fake = store["finished"]
    run = runs.load_run(store["client"], fake.run_id, cache_dir=tmp_path)
    assert (
        run.run_name == "finished" and run.status == "FINISHED" and run.experiment_name == "runs-a"
    )
    assert run.params["epochs"] == "3"
    assert list(run.epochs.index) == [1, 2, 3]
    assert list(run.epochs.columns) == list(contract.EPOCH_METRICS)
    np.testing.assert_allclose(run.epochs["test_accuracy"], fake.epochs["test_accuracy"])
    assert list(run.batch_loss.index) == list(range(1, 3 * 4 + 1))
    np.testing.assert_array_equal(run.predictions.labels, fake.labels)
    np.testing.assert_array_equal(run.predictions.probs, fake.probs)
    np.testing.assert_array_equal(run.predictions.index, fake.index)
    assert run.predictions.probs.dtype == np.float32
    assert run.notices == []
    assert run.metrics["overfit_gap"] == pytest.approx(
        fake.epochs["train_accuracy"][-1] - fake.epochs["test_accuracy"][-1]
    )


def test_predictions_are_downloaded_once_and_then_read_from_the_cache(store, tmp_path):
    client = store["client"]
    run_id = store["finished"].run_id
    runs.load_run(client, run_id, cache_dir=tmp_path)
    cached = tmp_path / run_id / contract.PREDICTIONS_PATH
    assert cached.is_file()

    calls = []
    original = client.download_artifacts
    client.download_artifacts = lambda *a, **k: calls.append(a) or original(*a, **k)
    try:
        again = runs.load_run(client, run_id, cache_dir=tmp_path)
    finally:
        del client.download_artifacts
    assert calls == []
    np.testing.assert_array_equal(again.predictions.labels, store["finished"].labels)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_a_killed_run_without_predictions_is_loaded_with_a_notice(store, tmp_path):
    run = runs.load_run(store["client"], store["killed"].run_id, cache_dir=tmp_path)
    assert run.status == "KILLED" and run.predictions is None
    assert len(run.epochs) == 2
    assert any("predictions/test.npz" in n for n in run.notices)
    assert any("KILLED" in n for n in run.notices)
    assert not (tmp_path / run.run_id).exists()  # unfinished runs are not cached


def test_find_runs_by_experiment_parent_filter_and_ids(store):
    client = store["client"]
    by_experiment = runs.find_run_ids(client, experiments=["runs-a"])
    assert by_experiment == [store["finished"].run_id, store["killed"].run_id]
    assert runs.find_run_ids(client, parent_run_id=store["parent"]) == store["children"]
    assert (
        runs.find_run_ids(client, experiments=["runs-b"], filter_string="tags.lr = '0.01'")
        == store["children"][:1]
    )
    assert runs.find_run_ids(client, filter_string="attributes.run_name = 'runs-a-killed'") == [
        store["killed"].run_id
    ]
    union = runs.find_run_ids(client, experiments=["runs-a"], parent_run_id=store["parent"])
    assert union == store["children"] + by_experiment
    ids = [store["killed"].run_id, store["finished"].run_id]
    assert runs.find_run_ids(client, run_ids=ids) == ids
    loaded = [
        runs.load_run(client, i, with_predictions=False)
        for i in runs.find_run_ids(client, parent_run_id=store["parent"])
    ]
    assert [r.run_name for r in loaded] == ["lr=0.01", "lr=0.001"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"experiments": ["no-such-experiment"]}, "no experiment named 'no-such-experiment'"),
        ({"run_ids": ["0" * 32]}, "no run with id"),
        ({"filter_string": "attributes.run_name = 'nobody'"}, "no runs matched"),
        ({"filter_string": "this is not a filter"}, "run search failed"),
    ],
)
def test_find_runs_bad_selection(store, kwargs, message):
    with pytest.raises(AnalysisError, match=message):
        runs.find_run_ids(store["client"], **kwargs)


def test_runs_from_another_project_and_sweep_parents_are_refused(store, tracking_uri):
    foreign = log_foreign_run(tracking_uri, "runs-c")
    with pytest.raises(AnalysisError, match="is it an MNIST workbench run"):
        runs.load_run(store["client"], foreign)
    with pytest.raises(AnalysisError, match="sweep parent with 2 child runs"):
        runs.load_run(store["client"], store["parent"])


def test_missing_stores_are_refused_without_creating_them(tmp_path):
    db = tmp_path / "nothing.db"
    with pytest.raises(AnalysisError, match="does not exist"):
        runs.connect(f"sqlite:///{db}")
    assert not db.exists()
    with pytest.raises(AnalysisError, match="does not exist"):
        runs.connect(str(tmp_path / "no-mlruns"))


def test_an_unreachable_server_fails_within_seconds():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(AnalysisError, match="unreachable"):
        runs.connect(f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < contract.HTTP_PROBE_TIMEOUT_S + 2


def test_a_silent_server_fails_after_the_probe_timeout(monkeypatch):
    monkeypatch.setattr(contract, "HTTP_PROBE_TIMEOUT_S", 0.5)
    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        started = time.monotonic()
        with pytest.raises(AnalysisError, match="unreachable"):
            runs.connect(f"http://127.0.0.1:{server.getsockname()[1]}")
    assert time.monotonic() - started < 3


def test_load_test_set_reads_gzipped_and_plain_fixture_files(tmp_path):
    from analysis_helpers import FIXTURE_MNIST

    images, labels = load_test_set(FIXTURE_MNIST)  # .gz only
    assert images.shape == (500, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, fixture_test_labels())
    plain = unpacked_fixture(tmp_path / "mnist")
    for packed in (plain / "MNIST" / "raw").glob("*.gz"):
        packed.unlink()
    plain_images, _ = load_test_set(plain)
    np.testing.assert_array_equal(plain_images, images)
    with pytest.raises(AnalysisError, match="not found"):
        load_test_set(tmp_path / "empty")


def test_load_test_set_agrees_with_torchvision(tmp_path):
    from torchvision.datasets import MNIST

    plain = unpacked_fixture(tmp_path / "mnist")
    reference = MNIST(root=str(plain), train=False, download=False)
    images, labels = load_test_set(plain)
    np.testing.assert_array_equal(images, reference.data.numpy())
    np.testing.assert_array_equal(labels, reference.targets.numpy())


def test_data_dir_resolution_order(store, tmp_path, monkeypatch):
    run = runs.load_run(
        store["client"], store["finished"].run_id, cache_dir=tmp_path, with_predictions=False
    )
    monkeypatch.setenv("MNIST_DATA_DIR", "/from/env")
    assert resolve_data_dir("/from/option", run) == Path("/from/option")
    assert resolve_data_dir(None, run) == Path("/from/env")  # the run has no data-dir tag
    run.tags["mnist.data_dir"] = "/from/tag"
    assert resolve_data_dir(None, run) == Path("/from/tag")
    monkeypatch.delenv("MNIST_DATA_DIR")
    assert resolve_data_dir(None, None) == Path("data")


def test_cache_is_refreshed_when_a_finished_run_finishes_again(tracking_uri, tmp_path):
    """A resumed run ends with a new end time and new predictions; the cache must not hide them."""
    from mlflow import MlflowClient

    fake = log_fake_run(tracking_uri, "runs-resumed", run_name="resumed", seed=40)
    client = runs.connect(tracking_uri)
    first = runs.load_run(client, fake.run_id, cache_dir=tmp_path)
    mlflow_client = MlflowClient(tracking_uri)
    newer = np.roll(fake.probs, 1, axis=1)  # the "resumed" model predicts something else
    np.savez(tmp_path / "test.npz", labels=fake.labels, probs=newer, index=fake.index)
    mlflow_client.log_artifact(fake.run_id, str(tmp_path / "test.npz"), "predictions")
    mlflow_client.set_terminated(fake.run_id, "FINISHED", end_time=first.end_time + 60_000)

    again = runs.load_run(client, fake.run_id, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.predictions.probs, newer)


@pytest.mark.parametrize(
    "break_them, problem",
    [
        (lambda f: dict(probs=f.probs[:, :9]), r"inconsistent shapes.*\(N, 10\)"),
        (lambda f: dict(probs=np.where(np.arange(10) == 3, np.nan, f.probs)), "not finite"),
        (lambda f: dict(probs=f.probs * 2), "outside \\[0, 1\\]|do not sum to 1"),
        (lambda f: dict(probs=f.probs / 2), "do not sum to 1"),
        (lambda f: dict(labels=f.labels + 10), "labels outside 0-9"),
        (lambda f: dict(index=np.zeros_like(f.index)), "repeated positions"),
    ],
)
def test_wrong_predictions_leave_the_run_without_them_and_say_why(
    tracking_uri, tmp_path, break_them, problem
):
    """A wrong array is worse than a missing one: NaN probabilities once made a run look
    significantly worse than its own logged accuracy. The run keeps its curves."""
    from mlflow import MlflowClient

    fake = log_fake_run(
        tracking_uri, "runs-malformed", run_name="malformed", seed=41, with_predictions=False
    )
    arrays = {"labels": fake.labels, "probs": fake.probs, "index": fake.index, **break_them(fake)}
    np.savez(tmp_path / "test.npz", **arrays)
    MlflowClient(tracking_uri).log_artifact(fake.run_id, str(tmp_path / "test.npz"), "predictions")
    run = runs.load_run(runs.connect(tracking_uri), fake.run_id, cache_dir=tmp_path / "cache")
    assert run.predictions is None and len(run.epochs) > 0
    assert any(re.search(problem, notice) for notice in run.notices), run.notices
