"""What a run is and records besides its metrics: the prepared inputs (`Prepared`), parameters,
tags, datasets and the per-example artifacts assembled at its end. Plain data for `tracking.py`
to write; `runner.py` decides when."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__, contract, data, models
from .config import ExperimentFile, RunConfig
from .tracking import DatasetInput, RunLog, git_commit
from .train import Tensors


@dataclass
class Prepared:
    """Everything a run needs, built before the MLflow run opens."""

    config: RunConfig
    tensors: Tensors
    test_index: np.ndarray  # int64 (N_test,) positions in the torchvision test set
    train_split: data.Split  # the images trained on (validation images excluded)
    test_split: data.Split
    data_dir: Path
    device: torch.device
    val_split: data.Split | None = None  # the last `validation` training images, held out


def run_params(prepared: Prepared, model: torch.nn.Module) -> dict[str, str]:
    """Every config field that applies to the run, flat, plus what the data and the model turned
    out to be."""
    tensors = prepared.tensors
    params = prepared.config.applied_params()
    params.update(
        normalize_mean=f"{tensors.mean:.6g}",
        normalize_std=f"{tensors.std:.6g}",
        num_params=str(models.count_parameters(model)),
        train_images=str(len(prepared.train_split)),
        test_images=str(len(prepared.test_split)),
    )
    params[contract.VAL_IMAGES] = str(len(prepared.val_split) if prepared.val_split else 0)
    return params


def datasets(prepared: Prepared) -> list[DatasetInput]:
    raw = str(prepared.data_dir / "MNIST" / "raw")
    splits = {contract.TRAIN: prepared.train_split, contract.TEST: prepared.test_split}
    if prepared.val_split is not None:
        splits[contract.VALIDATION] = prepared.val_split
    return [
        DatasetInput(
            name=contract.DATASET_NAMES[which],
            context=contract.DATASET_CONTEXTS[which],
            split=which,
            features=split.images.reshape(len(split), -1).numpy(),
            targets=split.labels.numpy(),
            source=raw,
        )
        for which, split in splits.items()
    ]


def run_tags(prepared: Prepared, experiment_file: ExperimentFile | None) -> dict[str, str]:
    tags = {
        contract.TAG_DATA_DIR: str(prepared.data_dir),
        contract.TAG_DEVICE: str(prepared.device),
        contract.TAG_TORCH_VERSION: torch.__version__,
        contract.TAG_WORKBENCH_VERSION: __version__,
        "mlflow.source.type": "LOCAL",
    }
    if prepared.device.type == "cuda":
        tags[contract.TAG_GPU_NAME] = torch.cuda.get_device_name(prepared.device)
    where = Path.cwd()
    if experiment_file is not None:
        tags["mlflow.source.name"] = str(experiment_file.path)
        where = experiment_file.path.resolve().parent
    commit = git_commit(where) or git_commit(Path(__file__).resolve().parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def log_per_example_records(
    log: RunLog, last_epoch: int, n_train: int, test_index: np.ndarray
) -> None:
    """The contract's per-example artifacts, assembled from the run's per-epoch records (those
    of an earlier, interrupted session included): float16 keeps them at ~200 kB an epoch for
    10,000 test images and ~180 kB for 60,000 training images."""
    epochs = np.arange(1, last_epoch + 1)
    records = [log.load_epoch_record(epoch) for epoch in epochs]
    if any(r is None for r in records):
        # an epoch trained while the tracking server was away, on another machine: the run is
        # whole without these optional artifacts, and says why they are missing
        missing = [int(e) for e, r in zip(epochs, records) if r is None]
        log.set_tag(contract.TAG_PER_EXAMPLE_RECORD, f"incomplete: no record of epochs {missing}")
        return
    log.log_arrays(
        contract.TEST_BY_EPOCH_PATH,
        probs=np.stack([r["test_probs"] for r in records]),
        epochs=epochs,
        index=test_index,
    )
    log.log_arrays(
        contract.TRAIN_DYNAMICS_PATH,
        correct=np.stack([r["correct"] for r in records]),
        label_prob=np.stack([r["label_prob"] for r in records]),
        predicted=np.stack([r["predicted"] for r in records]),
        epochs=epochs,
        index=np.arange(n_train, dtype=np.int64),
    )
