"""Hand-made runs logged to MLflow exactly as the contract (mnist_train/contract.py) says.

They let the analysis be tested without training anything: per-epoch metrics with step = epoch,
`batch_loss` per global step, `predictions/test.npz`, run name and tags.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIXTURE_MNIST = Path(__file__).parent / "fixtures" / "mnist"
STEPS_PER_EPOCH = 4


@dataclass
class FakeRun:
    run_id: str
    labels: np.ndarray  # int (N,)
    probs: np.ndarray  # float32 (N, 10)
    index: np.ndarray  # int (N,)
    epochs: dict  # metric name -> list of per-epoch values


def fixture_test_labels() -> np.ndarray:
    """Labels of the 500 fixture test images, read independently of the code under test."""
    with gzip.open(FIXTURE_MNIST / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=8).astype(np.int64)


def unpacked_fixture(dest: Path) -> Path:
    """A copy of the fixture data dir with the IDX files un-gzipped (as torchvision wants them)."""
    shutil.copytree(FIXTURE_MNIST, dest)
    for packed in (dest / "MNIST" / "raw").glob("*.gz"):
        with gzip.open(packed, "rb") as src, open(packed.with_suffix(""), "wb") as dst:
            shutil.copyfileobj(src, dst)
    return dest


def fake_predictions(labels: np.ndarray, *, accuracy: float, seed: int) -> np.ndarray:
    """float32 (N, 10) softmax-like rows whose argmax is right for about `accuracy` of the rows.

    Wrong rows prefer a fixed "look-alike" digit so that some confusion pairs are frequent.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    look_alike = np.array([6, 7, 3, 5, 9, 3, 0, 1, 3, 4])
    wrong = rng.random(n) > accuracy
    pred = labels.copy()
    random_other = (labels + rng.integers(1, 10, n)) % 10
    pred[wrong] = np.where(rng.random(n) < 0.6, look_alike[labels], random_other)[wrong]
    logits = rng.normal(0, 1, (n, 10))
    logits[np.arange(n), pred] += rng.uniform(2, 8, n)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def log_contract_run(
    tracking_uri: str,
    experiment: str,
    *,
    run_name: str,
    params: dict,
    epochs: dict,
    n_steps: int,
    final: dict,
    probs: np.ndarray | None,
    labels: np.ndarray,
    index: np.ndarray,
    tags: dict | None = None,
    status: str = "FINISHED",
    start_time: int | None = None,
    end_time: int | None = None,
) -> str:
    """The one way tests fake a run: the contract's metrics, params, tags and, unless `probs` is
    None, `predictions/test.npz`. `epochs`: metric -> per-epoch values (step = epoch from 1);
    `final`: end-of-run metrics; `batch_loss` gets `n_steps` points. Returns the run id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    tags = tags or {}
    run = client.create_run(experiment_id, run_name=run_name, start_time=start_time, tags=tags)
    run_id = run.info.run_id
    ts = start_time or 1_700_000_000_000  # metric timestamps; the run starts now unless told
    metrics = [Metric(k, v, ts + e, e + 1) for k, vs in epochs.items() for e, v in enumerate(vs)]
    metrics += [Metric("batch_loss", 2.3 * 0.9**s, ts + s, s) for s in range(1, n_steps + 1)]
    metrics += [Metric(k, v, ts, step) for k, (v, step) in final.items()]
    client.log_batch(
        run_id,
        metrics=metrics,
        params=[Param(k, str(v)) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    if probs is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "test.npz"
            np.savez(path, labels=np.asarray(labels, np.int64), probs=probs, index=index)
            client.log_artifact(run_id, str(path), "predictions")
    if status != "RUNNING":
        client.set_terminated(run_id, status=status, end_time=end_time)
    return run_id


def log_fake_run(
    tracking_uri: str,
    experiment: str,
    *,
    run_name: str = "fake_mlp",
    n_epochs: int = 4,
    labels: np.ndarray | None = None,
    accuracy: float = 0.9,
    seed: int = 0,
    with_predictions: bool = True,
    status: str = "FINISHED",
    data_dir: str | None = None,
    parent_run_id: str | None = None,
    extra_tags: dict | None = None,
) -> FakeRun:
    """A run whose test accuracy peaks at epoch 2 while train accuracy keeps rising, with
    predictions right for about `accuracy` of the images."""
    tags = {"mlflow.runName": run_name, **(extra_tags or {})}
    if data_dir is not None:
        tags["mnist.data_dir"] = data_dir
    if parent_run_id is not None:
        tags["mlflow.parentRunId"] = parent_run_id
    epochs = {
        "train_loss": [0.5 / e for e in range(1, n_epochs + 1)],
        "test_loss": [0.40, 0.30, 0.32, 0.36, 0.40, 0.45][:n_epochs],
        "train_accuracy": [0.85 + 0.03 * e for e in range(1, n_epochs + 1)],
        "test_accuracy": [0.86, 0.90, 0.89, 0.885, 0.88, 0.875][:n_epochs],
        "epoch_time_s": [1.5 + 0.1 * e for e in range(1, n_epochs + 1)],
    }
    params = {
        "model": "mlp",
        "hidden_sizes": "100",
        "activation": "relu",
        "lr": "0.001",
        "batch_size": "128",
        "epochs": str(n_epochs),
        "seed": str(seed),
    }
    final = {}
    if n_epochs:
        gap = epochs["train_accuracy"][-1] - epochs["test_accuracy"][-1]
        final = {"overfit_gap": (gap, 0), "train_time_s": (sum(epochs["epoch_time_s"]), 0)}
    labels = fixture_test_labels() if labels is None else np.asarray(labels, dtype=np.int64)
    probs = fake_predictions(labels, accuracy=accuracy, seed=seed)
    index = np.arange(len(labels))
    run_id = log_contract_run(
        tracking_uri,
        experiment,
        run_name=run_name,
        params=params,
        epochs=epochs,
        n_steps=n_epochs * STEPS_PER_EPOCH,
        final=final,
        probs=probs if with_predictions else None,
        labels=labels,
        index=index,
        tags=tags,
        status=status,
    )
    return FakeRun(run_id, labels, probs, index, epochs)


def log_foreign_run(tracking_uri: str, experiment: str) -> str:
    """A run from "another project": params and a metric that are not the workbench's."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_obj = client.get_experiment_by_name(experiment)
    experiment_id = (
        experiment_obj.experiment_id if experiment_obj else client.create_experiment(experiment)
    )
    run = client.create_run(experiment_id, run_name="xgboost_baseline")
    client.log_param(run.info.run_id, "max_depth", "6")
    client.log_metric(run.info.run_id, "rmse", 0.42, step=0)
    client.set_terminated(run.info.run_id)
    return run.info.run_id
