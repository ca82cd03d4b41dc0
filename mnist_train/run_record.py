"""What a run is and records besides its metrics: the prepared inputs (`Prepared`), parameters,
tags and datasets. Plain data for `tracking.py` to write; `runner.py` decides when."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__, contract, data, models
from .config import ExperimentFile, RunConfig
from .tracking import DatasetInput, git_commit
from .train import Tensors


@dataclass
class Prepared:
    """Everything a run needs, built before the MLflow run opens."""

    config: RunConfig
    tensors: Tensors
    test_index: np.ndarray  # int64 (N_test,) positions in the torchvision test set
    train_index: np.ndarray  # int64 (N_train,) positions of `train_split` in the training set
    train_split: data.Split  # the images trained on (validation images excluded)
    test_split: data.Split
    data_dir: Path
    device: torch.device
    val_split: data.Split | None = None  # held out: the last `validation` images, or a fold
    val_index: np.ndarray | None = None  # int64, positions of `val_split` in the training set


def run_params(prepared: Prepared, model: torch.nn.Module) -> dict[str, str]:
    """Every config field that applies to the run, flat, plus what the data and the model turned
    out to be."""
    tensors = prepared.tensors
    params = prepared.config.applied_params()
    params.update(
        {
            contract.NORMALIZE_MEAN: f"{tensors.mean:.6g}",
            contract.NORMALIZE_STD: f"{tensors.std:.6g}",
            contract.NUM_PARAMS: str(models.count_parameters(model)),
            contract.TRAIN_IMAGES: str(len(prepared.train_split)),
            contract.TEST_IMAGES: str(len(prepared.test_split)),
            contract.VAL_IMAGES: str(len(prepared.val_split) if prepared.val_split else 0),
        }
    )
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
