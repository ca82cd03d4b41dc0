"""Hand-made runs for the comparison tests, logged to MLflow as the contract says.

Unlike `analysis_helpers.log_fake_run` these take the params, curves and exact predictions of
each run, so a test knows which images a run fixed or broke and which settings differ.
"""

from __future__ import annotations

import numpy as np
from analysis_helpers import fake_predictions, fixture_test_labels, log_contract_run

__all__ = [
    "fake_predictions",
    "fixture_test_labels",
    "log_run",
    "log_parent",
    "probs_for",
    "with_flips",
]

BASE_PARAMS = {
    "model": "mlp",
    "hidden_sizes": "100",
    "activation": "relu",
    "dropout": "0.0",
    "optimizer": "adam",
    "lr": "0.001",
    "batch_size": "128",
    "epochs": "4",
    "seed": "0",
    "normalize": "estimate",
    "num_params": "79510",
}


def probs_for(pred: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """float32 (N, 10) softmax-like rows whose argmax is `pred`."""
    rng = np.random.default_rng(seed)
    logits = rng.uniform(-2, 2, (len(pred), 10))
    logits[np.arange(len(pred)), pred] += 6.0  # beats any noise: argmax is exactly `pred`
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def with_flips(labels: np.ndarray, base_pred: np.ndarray, *, fix: int, brk: int) -> np.ndarray:
    """A copy of `base_pred` that fixes the first `fix` wrong images and breaks the first `brk`
    right."""
    pred = base_pred.copy()
    wrong = np.flatnonzero(base_pred != labels)
    right = np.flatnonzero(base_pred == labels)
    pred[wrong[:fix]] = labels[wrong[:fix]]
    pred[right[:brk]] = (labels[right[:brk]] + 1) % 10
    return pred


def curves(
    n_epochs: int, *, final_acc: float, overfit_from: int | None = None
) -> dict[str, list[float]]:
    """Per-epoch metrics; test loss turns up after epoch `overfit_from - 1` when given."""
    train_loss = [0.6 / e for e in range(1, n_epochs + 1)]
    test_loss = []
    for e in range(1, n_epochs + 1):
        if overfit_from is not None and e >= overfit_from:
            test_loss.append(test_loss[-1] + 0.05)
        else:
            test_loss.append(0.5 / e + 0.1)
    test_acc = [final_acc - 0.02 * (n_epochs - e) for e in range(1, n_epochs + 1)]
    train_acc = [min(0.999, a + 0.01 * e) for e, a in enumerate(test_acc, start=1)]
    return {
        "train_loss": train_loss,
        "test_loss": test_loss,
        "train_accuracy": train_acc,
        "test_accuracy": test_acc,
        "epoch_time_s": [1.0 + 0.1 * e for e in range(n_epochs)],
    }


def log_parent(
    tracking_uri: str,
    experiment: str,
    *,
    run_name: str = "sweep",
    start_time: int = 1_700_000_000_000,
) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=run_name, start_time=start_time)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def log_run(
    tracking_uri: str,
    experiment: str,
    *,
    run_name: str,
    params: dict | None = None,
    labels: np.ndarray,
    pred: np.ndarray | None,
    index: np.ndarray | None = None,
    n_epochs: int = 4,
    final_acc: float | None = None,
    overfit_from: int | None = None,
    train_time_s: float = 10.0,
    parent_run_id: str | None = None,
    start_time: int = 1_700_000_000_000,
) -> str:
    """Log one finished run; `pred=None` stores no predictions. Returns the run id."""
    tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    all_params = {**BASE_PARAMS, "name": run_name, "epochs": str(n_epochs), **(params or {})}
    if final_acc is None:
        final_acc = float(np.mean(pred == labels)) if pred is not None else 0.9
    epochs = curves(n_epochs, final_acc=final_acc, overfit_from=overfit_from)
    gap = epochs["train_accuracy"][-1] - epochs["test_accuracy"][-1]
    return log_contract_run(
        tracking_uri,
        experiment,
        run_name=run_name,
        params=all_params,
        epochs=epochs,
        n_steps=3 * n_epochs,
        final={"overfit_gap": (gap, n_epochs), "train_time_s": (train_time_s, n_epochs)},
        probs=probs_for(pred) if pred is not None else None,
        labels=labels,
        index=np.arange(len(labels)) if index is None else index,
        tags=tags,
        start_time=start_time,
        end_time=start_time + 60_000,
    )
