"""Predictions computed now for a run that stored none: the `--predict` fallback.

The model is rebuilt from the run's own configuration (kept in its checkpoints) and a state dict
loaded as tensors only: nothing read from the store is unpickled, so a checkpoint or model
planted in a shared store cannot run code here. The run's own test set is scored (its
`test_images`, e.g. the first 500 with `--max-test 500`), so the figure is comparable with the
run's. Everything else in the analysis reads stored predictions and never runs a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from analysis.artifacts import fetch_artifact
from analysis.errors import AnalysisError, first_line
from analysis.runs import Predictions, RunData
from mnist_train import contract

if TYPE_CHECKING:
    from mlflow import MlflowClient


def predict_from_checkpoint(
    client: MlflowClient,
    run: RunData,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 2000,
) -> tuple[Predictions, str]:
    """(predictions on the run's own test images, the checkpoint used).

    `images` uint8 (N, 28, 28) and `labels` int (N,) are the whole test set in torchvision's
    order; the first `test_images` (the run's param) are scored. The checkpoint is the one of
    `predictions_epoch` when logged, else the run's last finished epoch.
    """
    import torch

    from mnist_train import models
    from mnist_train.config import ConfigError, build_config

    name = _checkpoint_for(client, run)
    stored = run_artifact(client, run, f"{contract.CHECKPOINT_DIR}/{name}", cache_dir)
    try:
        state = torch.load(stored, weights_only=True)
        config = build_config(state["config"], source=f"checkpoint {name}")
        model = models.build_model(config)
        model.load_state_dict(state["model"])
    except ConfigError as err:
        raise AnalysisError(str(err)) from None
    except Exception as err:  # truncated, planted, or not a workbench checkpoint
        raise AnalysisError(
            f"checkpoint {name} of run {run.run_id} cannot be read ({first_line(err)})"
        ) from None
    try:
        mean = float(run.params["normalize_mean"])
        std = float(run.params["normalize_std"])
    except (KeyError, ValueError):
        raise AnalysisError(f"run {run.run_id} logged no normalize_mean/normalize_std") from None
    deployable = models.with_preprocessing(model, mean, std).eval()
    n = min(int(run.params.get("test_images", len(images))), len(images))
    x = torch.from_numpy(images[:n].reshape(n, -1).astype(np.float32) / 255)
    with torch.no_grad():
        probs = torch.cat(
            [torch.softmax(deployable(x[i : i + batch_size]), 1) for i in range(0, n, batch_size)]
        )
    predictions = Predictions(
        labels=np.asarray(labels[:n], np.int64),
        probs=probs.numpy().astype(np.float32),
        index=np.arange(n),
    )
    return predictions, name


def _checkpoint_for(client: MlflowClient, run: RunData) -> str:
    listed = [Path(f.path).name for f in client.list_artifacts(run.run_id, "checkpoints")]
    finished = sorted(n for n in listed if n.startswith("epoch_") and not n.endswith("_partial.pt"))
    if not finished:
        raise AnalysisError(
            f"run {run.run_id} has no finished-epoch checkpoint to predict with "
            "(it stopped in its first epoch)"
        )
    wanted = run.metrics.get(contract.PREDICTIONS_EPOCH)
    if wanted is not None and f"epoch_{int(wanted):03d}.pt" in finished:
        return f"epoch_{int(wanted):03d}.pt"
    return finished[-1]


def run_artifact(client: MlflowClient, run: RunData, path: str, cache_dir) -> Path:
    from analysis.runs import get_run

    found = fetch_artifact(client, get_run(client, run.run_id), path, cache_dir=cache_dir)
    if found is None:
        raise AnalysisError(f"run {run.run_id} has no {path}")
    return found
