"""Predictions computed now from a run's logged model: the `--predict` fallback for runs that
stored none. Everything else in the analysis reads stored predictions and never runs a model."""

from __future__ import annotations

import numpy as np

from analysis.errors import AnalysisError, first_line
from analysis.runs import Predictions
from mnist_train import contract


def predict_with_logged_model(
    run_id: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    tracking_uri: str | None = None,
    batch_size: int = 2000,
) -> Predictions:
    """Predictions of the run's logged model (`runs:/<id>/model`) on the given test images.

    `images` uint8 (N, 28, 28) in test-set order, `labels` int (N,). The logged model takes float32
    (N, 784) pixels in [0, 1] (its normalisation is built in) and returns logits.
    Only used when a run stored no predictions and the user asked for `--predict`.
    """
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.exceptions import MlflowException

    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pytorch.load_model(
            contract.MODEL_URI.format(run_id=run_id), map_location="cpu"
        )
    except (MlflowException, OSError) as err:
        raise AnalysisError(
            f"run {run_id} has no loadable logged model: {first_line(err)}"
        ) from None
    model.eval()
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            chunks.append(torch.softmax(model(x[start : start + batch_size]), dim=1))
    probs = torch.cat(chunks).numpy().astype(np.float32)
    return Predictions(
        labels=np.asarray(labels, np.int64), probs=probs, index=np.arange(len(labels))
    )
