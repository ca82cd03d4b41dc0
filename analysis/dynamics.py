"""How single images move during training and across runs (pure: arrays in, arrays or frames out).

- forgetting events (Toneva et al. 2019): a correct -> wrong transition between two consecutive
  epochs; an image never classified correctly is "never learned";
- dataset cartography (Swayamdipta et al. 2020): the mean probability given to an image's label
  over epochs (confidence), its standard deviation (variability, population std) and the share of
  epochs it was right (correctness);
- across runs: per-image accuracy over runs and the churn of a run against a baseline (the share
  of test predictions that differ), which can be large while the accuracies are equal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EASY_CONFIDENCE = 0.8  # cartography: mean label probability above which an image is easy ...
HARD_CONFIDENCE = 0.2  # ... and below which (when not ambiguous) it is hard to learn
# Ambiguous: the images whose label probability swung most, relative to the run. A fixed
# threshold (a std of 0.2) called 10-27% of the training set ambiguous after 3-5 epochs, since
# every image starts unlearned in epoch 1; the most variable 5% is a list worth reading, and
# the floor keeps a run whose probabilities barely move from having any.
AMBIGUOUS_SHARE = 0.05
AMBIGUOUS_FLOOR = 0.1


def _check_matrix(values, name: str, dtype) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if array.ndim != 2 or array.shape[0] < 1:
        raise ValueError(f"{name} must be (epochs, images), got shape {array.shape}")
    return array


def forgetting(correct) -> pd.DataFrame:
    """Per image (rows in column order of `correct`, bool (E, N)): `forgetting_events` (count of
    right -> wrong transitions between consecutive epochs), `first_learned` (first epoch right,
    1-based; 0 when never), `never_learned` and `epochs_correct`."""
    right = _check_matrix(correct, "correct", bool)
    events = np.count_nonzero(right[:-1] & ~right[1:], axis=0)
    learned = right.any(axis=0)
    first = np.where(learned, right.argmax(axis=0) + 1, 0)
    return pd.DataFrame(
        {
            "forgetting_events": events,
            "first_learned": first,
            "never_learned": ~learned,
            "epochs_correct": right.sum(axis=0),
        }
    )


def cartography(label_prob, correct) -> pd.DataFrame:
    """Per image: `confidence` (mean over epochs of the probability given to its label),
    `variability` (its population standard deviation), `correctness` (share of epochs right) and
    `region`: ambiguous (among the AMBIGUOUS_SHARE most variable, and at least AMBIGUOUS_FLOOR),
    else easy (confidence >= EASY_CONFIDENCE) or hard (<= HARD_CONFIDENCE), else "-". The
    variability threshold used is `attrs["ambiguous_from"]`. Epochs where an image was not seen
    (NaN) are left out of its statistics."""
    probs = _check_matrix(label_prob, "label_prob", np.float64)
    right = _check_matrix(correct, "correct", bool)
    if probs.shape != right.shape:
        raise ValueError(f"label_prob {probs.shape} and correct {right.shape} differ in shape")
    confidence = np.nanmean(probs, axis=0)
    variability = np.nanstd(probs, axis=0)
    threshold = max(AMBIGUOUS_FLOOR, float(np.nanquantile(variability, 1 - AMBIGUOUS_SHARE)))
    ambiguous = variability >= threshold
    region = np.full(len(confidence), "-", dtype=object)
    region[(confidence >= EASY_CONFIDENCE) & ~ambiguous] = "easy"
    region[(confidence <= HARD_CONFIDENCE) & ~ambiguous] = "hard"
    region[ambiguous] = "ambiguous"
    table = pd.DataFrame(
        {
            "confidence": confidence,
            "variability": variability,
            "correctness": right.mean(axis=0),
            "region": region,
        }
    )
    table.attrs["ambiguous_from"] = threshold
    return table


def regions_explained(table: pd.DataFrame) -> str:
    """One sentence on how `cartography` drew its regions and how many images each holds."""
    counts = table["region"].value_counts()
    n = len(table)

    def share(region: str) -> str:
        k = int(counts.get(region, 0))
        return f"{k:,} ({k / n:.1%})" if n else "0"

    return (
        f"Regions: ambiguous, the {AMBIGUOUS_SHARE:.0%} of images whose label probability "
        f"varied most (std ≥ {table.attrs.get('ambiguous_from', AMBIGUOUS_FLOOR):.2f}): "
        f"{share('ambiguous')}; otherwise easy, mean probability ≥ {EASY_CONFIDENCE}: "
        f"{share('easy')}; hard, ≤ {HARD_CONFIDENCE}: {share('hard')}."
    )


def changed_predictions(probs_by_epoch) -> pd.DataFrame:
    """Test images whose predicted digit changed between consecutive epochs: one row per change
    with `position` (row in the arrays), `epoch` (the later one, 1-based), `before`, `after`."""
    probs = np.asarray(probs_by_epoch)
    if probs.ndim != 3:
        raise ValueError(f"probs must be (epochs, images, classes), got shape {probs.shape}")
    predicted = probs.argmax(axis=2)
    epoch_idx, position = np.nonzero(predicted[1:] != predicted[:-1])
    return pd.DataFrame(
        {
            "position": position,
            "epoch": epoch_idx + 2,
            "before": predicted[epoch_idx, position],
            "after": predicted[epoch_idx + 1, position],
        }
    )


def per_image_accuracy(labels, predicted_by_run) -> np.ndarray:
    """float (N,): the share of runs (rows of `predicted_by_run`, (R, N)) right on each image."""
    predicted = _check_matrix(predicted_by_run, "predicted_by_run", np.int64)
    return (predicted == np.asarray(labels)[None, :]).mean(axis=0)


def churn(labels, baseline_pred, run_pred) -> dict[str, float]:
    """`churn`: the share of test predictions that differ between a run and the baseline;
    `accuracy_difference`: run minus baseline accuracy. Two runs can churn a lot at equal
    accuracy: they then fix and break different images."""
    labels, base, run = (np.asarray(a) for a in (labels, baseline_pred, run_pred))
    if not (labels.shape == base.shape == run.shape):
        raise ValueError("labels and both predictions must have the same shape")
    return {
        "churn": float(np.mean(base != run)),
        "accuracy_difference": float(np.mean(run == labels) - np.mean(base == labels)),
    }
