"""MNIST images for the reports' galleries, read with numpy from `<data_dir>/MNIST/raw/`.

Read through `mnist_train.idx` rather than torchvision: importing torchvision alone costs ~2.5 s,
and the analysis needs only the raw pixels. Nothing is downloaded here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from analysis.errors import AnalysisError
from mnist_train import contract, idx

if TYPE_CHECKING:
    from analysis.runs import Predictions, RunData


def resolve_data_dir(data_dir: str | Path | None, run: RunData | None = None) -> Path:
    """`--data-dir`, else the run's `mnist.data_dir` tag, else $MNIST_DATA_DIR, else ./data."""
    if data_dir:
        return Path(data_dir)
    if run is not None and run.tags.get(contract.TAG_DATA_DIR):
        return Path(run.tags[contract.TAG_DATA_DIR])
    return contract.default_data_dir()


def load_test_set(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST test images uint8 (N, 28, 28) and labels int64 (N,) from `<data_dir>/MNIST/raw/`.

    Missing or damaged files are an AnalysisError.
    """
    try:
        return idx.read_split(data_dir, train=False)
    except idx.IdxError as err:
        raise AnalysisError(f"{err} (pass --data-dir or set MNIST_DATA_DIR)") from None


def load_train_labels(data_dir: str | Path) -> np.ndarray:
    """MNIST training labels int64 (60000,) from `<data_dir>/MNIST/raw/` (for the dataset view)."""
    raw = Path(data_dir) / "MNIST" / "raw"
    try:
        return idx.read(raw, idx.FILES[True][1], idx.LABELS_MAGIC).astype(np.int64)
    except idx.IdxError as err:
        raise AnalysisError(f"{err} (pass --data-dir or set MNIST_DATA_DIR)") from None


def load_train_images(data_dir: str | Path) -> np.ndarray:
    """MNIST training images uint8 (60000, 28, 28), for the training-dynamics galleries."""
    try:
        return idx.read_split(data_dir, train=True)[0]
    except idx.IdxError as err:
        raise AnalysisError(f"{err} (pass --data-dir or set MNIST_DATA_DIR)") from None


def test_images_for(
    run: RunData, data_dir: str | Path | None
) -> tuple[tuple[np.ndarray, np.ndarray] | None, list[str]]:
    """((images, labels) or None, notices) of the test set `run` was scored on."""
    try:
        return load_test_set(resolve_data_dir(data_dir, run)), []
    except AnalysisError as err:
        return None, [f"test images unavailable, image galleries skipped: {err}"]


def train_labels_for(run: RunData, data_dir: str | Path | None) -> np.ndarray | None:
    """Training labels for the dataset view, or None: a nicety, so its absence is not reported."""
    try:
        return load_train_labels(resolve_data_dir(data_dir, run))
    except AnalysisError:
        return None


def matching_images(
    predictions: Predictions, images: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray | None, str | None]:
    """(the test images, None) if they are the ones the predictions were made on, else (None,
    why)."""
    index = predictions.index
    if index.max(initial=-1) >= len(images) or index.min(initial=0) < 0:
        return None, (
            f"predictions refer to test image {index.max()} but the data dir holds "
            f"{len(images)}; image galleries skipped (wrong --data-dir?)"
        )
    if not (labels[index] == predictions.labels).all():
        return None, (
            "the labels of the test images in the data dir differ from the stored "
            "predictions' labels; image galleries skipped (wrong --data-dir?)"
        )
    return images, None
