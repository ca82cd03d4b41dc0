"""Per-example arrays read from the store, checked before anything uses them (pure: arrays and
plain values in, checked arrays or a one-line reason out).

Every per-example array the analysis reads passes here: `predictions/test.npz` and
`predictions/heldout.npz` (`runs.Predictions` calls `probs_problem` and `index_problem`),
`predictions/test_by_epoch.npz` (`epoch_predictions`) and `dynamics/train.npz`
(`training_record`). A wrong array is worse than a missing one: NaN probabilities once made a
run look significantly worse than its own logged accuracy, and an index that disagrees pairs
images with other images' numbers. Each check raises AnalysisError with the reason in a few
words; `runs.py` then leaves the array out of the run and says so, naming the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from analysis.errors import AnalysisError
from mnist_train.contract import N_CLASSES

BOUNDS_TOLERANCE = 1e-6  # probabilities may stray this far outside [0, 1] (float32 softmax)
SUM_TOLERANCE = 1e-3  # a float32 softmax row sums to 1 within this
# float16 keeps 11 significant bits: rounding each of a row's 10 probabilities moves its sum by
# at most half an ulp of 1 (2**-11); twice float16's eps leaves room four times that
FLOAT16_SUM_TOLERANCE = 2 * float(np.finfo(np.float16).eps)
NOT_SEEN = -1  # `predicted` of a training image an epoch did not reach (drop_last)
SHOWN = 5  # values a message lists


@dataclass(frozen=True)
class EpochPredictions:
    """`predictions/test_by_epoch.npz`, checked: `probs` float32 (E, N, 10), every epoch's softmax
    of every test image; `epochs` int64 (E,), the logged epochs ascending; `index` int64 (N,),
    positions in the torchvision test set (those of the run's `predictions/test.npz`)."""

    probs: np.ndarray
    epochs: np.ndarray
    index: np.ndarray


@dataclass(frozen=True)
class TrainingRecord:
    """`dynamics/train.npz`, checked: `correct` bool (E, N), whether each training image was
    predicted right while trained on; `label_prob` float32 (E, N), the probability its label got
    (NaN: the epoch did not reach the image); `predicted` int64 (E, N), the digit predicted
    (NOT_SEEN where `label_prob` is NaN; None in records that predate it); `epochs` int64 (E,);
    `index` int64 (N,), positions in the torchvision training set."""

    correct: np.ndarray
    label_prob: np.ndarray
    predicted: np.ndarray | None
    epochs: np.ndarray
    index: np.ndarray


def epoch_predictions(
    arrays: Mapping[str, np.ndarray],
    *,
    logged_epochs: Sequence[int],
    n_images: int | None = None,
    index: np.ndarray | None = None,
) -> EpochPredictions:
    """The arrays of a `predictions/test_by_epoch.npz` checked against the run: `logged_epochs`
    the epochs its metrics were logged at (none: not checked), `n_images` its `test_images`
    param (a run scores the first that many test images, so positions stay below it), `index`
    the index of its test predictions (each None when unknown). AnalysisError with the reason
    when they are not usable."""
    probs = _floats(arrays, "probs", 3)
    epochs, own_index = _ints(arrays, "epochs", 1), _ints(arrays, "index", 1)
    n = len(own_index)
    if probs.shape != (len(epochs), n, N_CLASSES):
        raise AnalysisError(
            f"probs {probs.shape}, epochs {epochs.shape} and index {own_index.shape} disagree "
            f"(expected (E, N, {N_CLASSES}), (E,), (N,))"
        )
    problem = (
        _epochs_problem(epochs, logged_epochs)
        or _count_problem(n, n_images, "test_images")
        or index_problem(own_index, limit=n_images)
        or probs_problem(probs, tolerance=FLOAT16_SUM_TOLERANCE)
    )
    if not problem and index is not None and not np.array_equal(own_index, index):
        differ = _differ(own_index, index)
        problem = f"index is not that of the run's test predictions ({differ})"
    if problem:
        raise AnalysisError(problem)
    return EpochPredictions(probs, epochs, own_index)


def training_record(
    arrays: Mapping[str, np.ndarray],
    *,
    logged_epochs: Sequence[int],
    n_images: int | None = None,
    n_drawn: int | None = None,
) -> TrainingRecord:
    """The arrays of a `dynamics/train.npz` checked against the run: `logged_epochs` as for
    `epoch_predictions`, `n_images` its `train_images` param, `n_drawn` the training images its
    index may reach (`train_images` + `val_images`; None: not checked). AnalysisError with the
    reason when they are not usable."""
    correct, label_prob = _bools(arrays, "correct", 2), _floats(arrays, "label_prob", 2)
    predicted = _ints(arrays, "predicted", 2) if "predicted" in arrays else None
    epochs, index = _ints(arrays, "epochs", 1), _ints(arrays, "index", 1)
    shape = (len(epochs), len(index))
    shapes = [a.shape for a in (correct, label_prob, predicted) if a is not None]
    if any(s != shape for s in shapes):
        raise AnalysisError(
            f"correct {correct.shape}, label_prob {label_prob.shape}"
            + (f", predicted {predicted.shape}" if predicted is not None else "")
            + f", epochs {epochs.shape} and index {index.shape} disagree (expected (E, N), (E,), "
            "(N,))"
        )
    problem = (
        _epochs_problem(epochs, logged_epochs)
        or _count_problem(len(index), n_images, "train_images")
        or index_problem(index, limit=n_drawn)
        or _label_prob_problem(label_prob, predicted)
    )
    if problem:
        raise AnalysisError(problem)
    return TrainingRecord(correct, label_prob, predicted, epochs, index)


# --------------------------------------------------------------------------- shared checks


def probs_problem(probs: np.ndarray, *, tolerance: float = SUM_TOLERANCE) -> str:
    """What is wrong with softmax rows `probs` float (..., 10), or "": every row finite, in
    [0, 1] and summing to 1 within `tolerance` (summed in float64)."""
    rows = np.asarray(probs, dtype=np.float64).reshape(-1, probs.shape[-1])
    if not len(rows):
        return "no rows"
    not_finite = ~np.isfinite(rows).all(axis=1)
    if not_finite.any():
        return f"{int(not_finite.sum())} rows of probs are not finite"
    if rows.min() < -BOUNDS_TOLERANCE or rows.max() > 1 + BOUNDS_TOLERANCE:
        return f"probs outside [0, 1] (from {rows.min():.3g} to {rows.max():.3g})"
    off = np.abs(rows.sum(axis=1) - 1) > tolerance
    if off.any():
        return f"{int(off.sum())} rows of probs do not sum to 1"
    return ""


def index_problem(index: np.ndarray, *, limit: int | None = None) -> str:
    """What is wrong with positions `index` int (N,), or "": distinct, not negative and, when
    `limit` is given, below it (the images the run drew from)."""
    if not len(index):
        return "no rows"
    if index.min() < 0 or len(np.unique(index)) != len(index):
        return "index holds negative or repeated positions"
    if limit is not None and index.max() >= limit:
        beyond = index[index >= limit]
        return (
            f"index holds {len(beyond)} positions beyond the run's {limit} images "
            f"(e.g. {_listed(beyond)})"
        )
    return ""


def _epochs_problem(epochs: np.ndarray, logged: Sequence[int]) -> str:
    """The record's epochs must ascend from 1 and be those the run logged metrics at."""
    if not len(epochs):
        return "no epochs"
    if epochs.min() < 1 or (np.diff(epochs) <= 0).any():
        return f"epochs {_listed(epochs)} do not ascend from 1"
    logged = np.asarray(logged, dtype=np.int64)
    if len(logged) and not np.array_equal(epochs, logged):
        return (
            f"epochs {_listed(epochs)} are not the {len(logged)} epoch(s) the run logged "
            f"({_listed(logged)})"
        )
    return ""


def _count_problem(n: int, param: int | None, name: str) -> str:
    if param is not None and n != param:
        return f"{n} images, but the run's {name} param says {param}"
    return ""


def _label_prob_problem(label_prob: np.ndarray, predicted: np.ndarray | None) -> str:
    """Label probabilities in [0, 1]; NaN only where the epoch did not reach the image, which
    `predicted` marks NOT_SEEN (records without it: NaN anywhere but everywhere)."""
    seen = ~np.isnan(label_prob)
    if not seen.any():
        return "label_prob is NaN everywhere"
    values = label_prob[seen]
    if not np.isfinite(values).all():
        return f"{int((~np.isfinite(values)).sum())} label_prob values are infinite"
    if values.min() < -BOUNDS_TOLERANCE or values.max() > 1 + BOUNDS_TOLERANCE:
        return f"label_prob outside [0, 1] (from {values.min():.3g} to {values.max():.3g})"
    if predicted is None:
        return ""
    if predicted.min() < NOT_SEEN or predicted.max() >= N_CLASSES:
        return f"predicted outside 0-{N_CLASSES - 1} (and {NOT_SEEN} for an image not seen)"
    nan_but_seen = ~seen & (predicted != NOT_SEEN)
    if nan_but_seen.any():
        return (
            f"label_prob is NaN for {int(nan_but_seen.sum())} (epoch, image) pairs that have a "
            "predicted digit"
        )
    unseen_with_prob = seen & (predicted == NOT_SEEN)
    if unseen_with_prob.any():
        return (
            f"predicted is {NOT_SEEN} (not seen) for {int(unseen_with_prob.sum())} (epoch, "
            "image) pairs that have a label probability"
        )
    return ""


# --------------------------------------------------------------------------- reading arrays


def _array(arrays: Mapping[str, np.ndarray], key: str, ndim: int) -> np.ndarray:
    """`arrays[key]`: present, numbers, `ndim` dimensions."""
    if key not in arrays:
        held = ", ".join(sorted(arrays)) or "nothing"
        raise AnalysisError(f"no {key} array (it holds {held})")
    array = np.asarray(arrays[key])
    if array.dtype.kind not in "biuf":
        raise AnalysisError(f"{key} holds {array.dtype}, not numbers")
    if array.ndim != ndim:
        raise AnalysisError(f"{key} has shape {array.shape}, not {ndim} dimension(s)")
    return array


def _floats(arrays: Mapping[str, np.ndarray], key: str, ndim: int) -> np.ndarray:
    return _array(arrays, key, ndim).astype(np.float32)


def _ints(arrays: Mapping[str, np.ndarray], key: str, ndim: int) -> np.ndarray:
    """int64: integers, or floats that hold whole numbers only."""
    array = _array(arrays, key, ndim)
    if array.dtype.kind == "f" and not (np.isfinite(array) & (array == np.round(array))).all():
        raise AnalysisError(f"{key} holds values that are not whole numbers")
    return array.astype(np.int64)


def _bools(arrays: Mapping[str, np.ndarray], key: str, ndim: int) -> np.ndarray:
    """bool: booleans, or numbers that are all 0 or 1."""
    array = _array(arrays, key, ndim)
    if array.dtype.kind != "b" and not np.isin(array, (0, 1)).all():
        raise AnalysisError(f"{key} holds values other than true and false")
    return array.astype(bool)


def _differ(index: np.ndarray, other: np.ndarray) -> str:
    if index.shape != other.shape:
        return f"{len(index)} positions against {len(other)}"
    return f"{int((index != other).sum())} of {len(index)} positions differ"


def _listed(values: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in np.asarray(values)[:SHOWN])
    return f"[{shown}{', ...' if len(values) > SHOWN else ''}]"
