"""Diagnostics of one classifier on the MNIST test set: pure functions on arrays.

Conventions follow `sklearn.metrics`: `(y_true, y_pred, *, options)` or `(y_true, probs, *,
options)`, inputs checked up front with a ValueError that says what is wrong. `y_true` and `y_pred`
are int arrays (N,) of digits 0-9; `probs` is float (N, 10) of softmax outputs (rows sum to 1).
Epoch histories are DataFrames indexed by epoch with the contract's columns (`train_accuracy`,
`test_accuracy`, `train_loss`, `test_loss`). Nothing here imports MLflow or matplotlib.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mnist_train import contract

N_CLASSES = 10
DEFAULT_BINS = (
    15  # reliability bins; 15 equal-width bins is the common choice in the ECE literature
)


# --------------------------------------------------------------------------- validation


def _check_labels(y_true, y_pred, *, n_classes: int = N_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_pred.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-D, got shapes {y_true.shape} and {y_pred.shape}"
        )
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred differ in length: {len(y_true)} != {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("y_true is empty")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"{name} holds labels outside 0..{n_classes - 1}")
    return y_true.astype(np.int64), y_pred.astype(np.int64)


def _check_probs(y_true, probs, *, n_classes: int = N_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise ValueError(f"probs must have shape (N, {n_classes}), got {probs.shape}")
    y_true, _ = _check_labels(y_true, np.zeros(len(probs), dtype=np.int64), n_classes=n_classes)
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
        raise ValueError("probs must be finite probabilities in [0, 1]")
    return y_true, probs


def _check_epochs(epochs: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in epochs.columns]
    if missing:
        raise ValueError(f"epoch history lacks column(s) {missing}; has {list(epochs.columns)}")


# --------------------------------------------------------------------------- predictions


def accuracy(y_true, y_pred) -> float:
    """Fraction of correct predictions, in [0, 1]."""
    y_true, y_pred = _check_labels(y_true, y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else 0.0


def confusion_matrix(
    y_true, y_pred, *, normalize: str | None = None, n_classes: int = N_CLASSES
) -> np.ndarray:
    """(n_classes, n_classes) matrix, rows = true digit, columns = predicted digit.

    `normalize=None` gives int64 counts; `"true"` divides each row by its support (a row of a digit
    absent from y_true stays 0), so the diagonal is the per-class recall.
    """
    if normalize not in (None, "true"):
        raise ValueError(f"normalize must be None or 'true', got {normalize!r}")
    y_true, y_pred = _check_labels(y_true, y_pred, n_classes=n_classes)
    # numpy, not scikit-learn: the same counts (tests check), without its ~1 s import
    pairs = y_true.astype(np.int64) * n_classes + y_pred.astype(np.int64)
    counts = np.bincount(pairs, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    if normalize is None:
        return counts.astype(np.int64)
    support = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)


def per_class_accuracy(y_true, y_pred, *, n_classes: int = N_CLASSES) -> np.ndarray:
    """float (n_classes,): fraction of each true digit predicted correctly; NaN for absent
    digits."""
    counts = confusion_matrix(y_true, y_pred, n_classes=n_classes)
    support = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(counts) / support, np.nan)


def per_class_report(y_true, y_pred, *, n_classes: int = N_CLASSES) -> pd.DataFrame:
    """One row per digit: `support`, `correct`, `accuracy`, `precision`, `recall`, `f1`.

    `accuracy` is the per-class accuracy of seed 000's "Try 3" (equal to recall); precision of a
    digit never predicted is reported as 0, as scikit-learn's `zero_division=0` does.
    """
    y_true, y_pred = _check_labels(y_true, y_pred, n_classes=n_classes)
    labels = np.arange(n_classes)
    counts = confusion_matrix(y_true, y_pred, n_classes=n_classes)
    correct, support, predicted = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)
    precision = _ratio(correct, predicted)
    recall = _ratio(correct, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    frame = pd.DataFrame(
        {
            "support": support.astype(np.int64),
            "correct": np.diag(counts).astype(np.int64),
            "accuracy": per_class_accuracy(y_true, y_pred, n_classes=n_classes),
            "precision": precision,
            "recall": recall,
            "f1": f1,
        },
        index=pd.Index(labels, name="digit"),
    )
    return frame


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    out = np.zeros(len(denominator), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def most_confused_pairs(
    y_true, y_pred, *, top_k: int = 5, n_classes: int = N_CLASSES
) -> pd.DataFrame:
    """The `top_k` most frequent mistakes as rows `true`, `pred`, `count`, `rate`.

    `rate` is the fraction of the true digit's test images that went to `pred`. Sorted by count
    (descending), ties by true then predicted digit; pairs that never occur are left out.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    counts = confusion_matrix(y_true, y_pred, n_classes=n_classes)
    support = counts.sum(axis=1)
    rows = [
        (t, p, int(counts[t, p]), counts[t, p] / support[t])
        for t in range(n_classes)
        for p in range(n_classes)
        if t != p and counts[t, p] > 0
    ]
    frame = pd.DataFrame(rows, columns=["true", "pred", "count", "rate"])
    frame = frame.sort_values(
        ["count", "true", "pred"], ascending=[False, True, True], kind="stable"
    )
    return frame.head(top_k).reset_index(drop=True)


# --------------------------------------------------------------------------- confidence


def top_k(probs, *, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(classes int64 (N, k), probabilities float (N, k)), most probable first; ties keep class
    order."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be 2-D (N, n_classes), got shape {probs.shape}")
    if not 1 <= k <= probs.shape[1]:
        raise ValueError(f"k must be in 1..{probs.shape[1]}, got {k}")
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(probs, order, axis=1)


def confidence_stats(y_true, probs) -> pd.DataFrame:
    """Top-1 probability of right and wrong predictions.

    Rows `correct`, `wrong`, `all`; columns `count`, `mean`, `median`, `min`, `max` (probabilities
    in [0, 1]; NaN for an empty group). A well-behaved model is much less sure when it is wrong.
    """
    y_true, probs = _check_probs(y_true, probs)
    confidence = probs.max(axis=1)
    right = probs.argmax(axis=1) == y_true
    rows = {}
    for name, mask in (("correct", right), ("wrong", ~right), ("all", np.ones_like(right))):
        values = confidence[mask]
        rows[name] = {
            "count": int(mask.sum()),
            "mean": values.mean() if len(values) else np.nan,
            "median": np.median(values) if len(values) else np.nan,
            "min": values.min() if len(values) else np.nan,
            "max": values.max() if len(values) else np.nan,
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def wrong_predictions(y_true, probs, *, index=None, k: int = 3) -> pd.DataFrame:
    """Every wrong prediction with its top-`k` classes, as seed 000 section 5.3 prints for one.

    Columns: `position` (row in the inputs), `index` (test-set position; = position when `index` is
    None), `true`, `pred`, `confidence` (probability of `pred`), `p_true` (probability given to the
    true digit), then `top1`..`topk` and `p_top1`..`p_topk`. Sorted by confidence, most sure first:
    confident mistakes are the interesting ones.
    """
    y_true, probs = _check_probs(y_true, probs)
    index = np.arange(len(y_true)) if index is None else np.asarray(index)
    if index.shape != y_true.shape:
        raise ValueError(f"index must have shape {y_true.shape}, got {index.shape}")
    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    classes, top_p = top_k(probs[wrong], k=k)
    frame = pd.DataFrame(
        {
            "position": wrong,
            "index": index[wrong].astype(np.int64),
            "true": y_true[wrong],
            "pred": y_pred[wrong],
            "confidence": probs[wrong, y_pred[wrong]],
            "p_true": probs[wrong, y_true[wrong]],
        }
    )
    for j in range(k):
        frame[f"top{j + 1}"] = classes[:, j]
    for j in range(k):
        frame[f"p_top{j + 1}"] = top_p[:, j]
    return frame.sort_values(["confidence", "position"], ascending=[False, True]).reset_index(
        drop=True
    )


# --------------------------------------------------------------------------- calibration


def reliability_bins(y_true, probs, *, n_bins: int = DEFAULT_BINS) -> pd.DataFrame:
    """Top-1 calibration in `n_bins` equal-width confidence bins (lower, upper].

    Columns: `lower`, `upper`, `count`, `confidence` (mean top-1 probability in the bin),
    `accuracy` (fraction correct in the bin); empty bins have count 0 and NaN means.
    (`sklearn.calibration.calibration_curve` only handles the binary case.)
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y_true, probs = _check_probs(y_true, probs)
    confidence = probs.max(axis=1)
    right = (probs.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed bins so that a confidence of exactly 1.0 lands in the last bin
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=n_bins) / count
        mean_acc = np.bincount(which, weights=right, minlength=n_bins) / count
    return pd.DataFrame(
        {
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count.astype(np.int64),
            "confidence": mean_conf,
            "accuracy": mean_acc,
        }
    )


def expected_calibration_error(y_true, probs, *, n_bins: int = DEFAULT_BINS) -> float:
    """ECE: sum over bins of (bin share of samples) * |accuracy - confidence|, in [0, 1]."""
    bins = reliability_bins(y_true, probs, n_bins=n_bins)
    filled = bins[bins["count"] > 0]
    weights = filled["count"] / filled["count"].sum()
    return float((weights * (filled["accuracy"] - filled["confidence"]).abs()).sum())


# --------------------------------------------------------------------------- learning curves


def overfit_gap(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per epoch: `accuracy_gap` = train_accuracy - test_accuracy and `loss_gap` = train_loss -
    test_loss (both train minus test, so overfitting shows as a positive accuracy gap and a negative
    loss gap). Columns whose inputs were not logged are left out; indexed like `epochs`.
    """
    gaps = pd.DataFrame(index=epochs.index)
    if {contract.TRAIN_ACCURACY, contract.TEST_ACCURACY} <= set(epochs.columns):
        gaps["accuracy_gap"] = epochs[contract.TRAIN_ACCURACY] - epochs[contract.TEST_ACCURACY]
    if {contract.TRAIN_LOSS, contract.TEST_LOSS} <= set(epochs.columns):
        gaps["loss_gap"] = epochs[contract.TRAIN_LOSS] - epochs[contract.TEST_LOSS]
    if gaps.columns.empty:
        raise ValueError(
            f"epoch history has neither accuracy nor loss pairs; has {list(epochs.columns)}"
        )
    return gaps


def overfit_summary(epochs: pd.DataFrame) -> dict:
    """The overfitting story of one run in plain numbers.

    - `final_accuracy_gap`, `final_loss_gap`: the gaps at the last epoch (train minus test).
    - `best_epoch`, `best_test_loss`: the epoch with the lowest test loss (first on ties), i.e. the
      checkpoint worth keeping.
    - `peak_accuracy_epoch`, `peak_test_accuracy`: where test accuracy stopped improving.
    - `gap_widening`: True when there is at least one epoch after that peak and the accuracy gap
      grows at every epoch after it (and ends larger): the model keeps fitting the training set
      while test accuracy no longer gains. False otherwise (also while test accuracy still rises).
    """
    _check_epochs(epochs, (contract.TRAIN_ACCURACY, contract.TEST_ACCURACY))
    if epochs.empty:
        raise ValueError("epoch history is empty")
    gaps = overfit_gap(epochs)
    acc_gap = gaps["accuracy_gap"]
    peak_epoch = int(epochs[contract.TEST_ACCURACY].idxmax())
    after_peak = acc_gap.loc[peak_epoch:]
    widening = bool(len(after_peak) > 1 and (np.diff(after_peak.to_numpy()) > 0).all())
    summary = {
        "epochs": int(len(epochs)),
        "final_accuracy_gap": float(acc_gap.iloc[-1]),
        "final_loss_gap": float(gaps["loss_gap"].iloc[-1]) if "loss_gap" in gaps else None,
        "best_epoch": None,
        "best_test_loss": None,
        "peak_accuracy_epoch": peak_epoch,
        "peak_test_accuracy": float(epochs[contract.TEST_ACCURACY].max()),
        "gap_widening": widening,
    }
    if contract.TEST_LOSS in epochs.columns:
        summary["best_epoch"] = int(epochs[contract.TEST_LOSS].idxmin())
        summary["best_test_loss"] = float(epochs[contract.TEST_LOSS].min())
    return summary
