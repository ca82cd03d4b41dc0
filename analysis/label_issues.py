"""Suspected label errors, found from the runs a workbench already stores (pure functions).

Test set: confident learning (Northcutt et al. 2021) on the softmax probabilities averaged over
the selected runs, through cleanlab's `find_label_issues` (its default, prune by noise rate): a
held-out set scored by several independently trained models is the setting it was made for.
Training set, from K-fold cross-validation runs: the same ranking on out-of-sample probabilities,
each image scored by the models that held it out (`folds.assemble`). Training set otherwise: the
per-example training record keeps, per epoch, the probability each image's label got and the
digit predicted; an image whose label stays improbable and whose prediction settles on another
digit in most runs is suspect (in-sample: the models trained on these very images). Output
columns: `index` (torchvision position), `given`, `suggested`, `agreement` (the share of runs
whose own prediction is the suggested digit), `score` (label quality in [0, 1], lower is more
suspect); most suspect first.
The test-set ranking holds every image with a boolean `flagged` (confident learning's verdict):
a score ranks, but only the verdict says where the ranking stops being suspicious.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ["index", "given", "suggested", "agreement", "score"]
RANKING_COLUMNS = [*COLUMNS, "flagged"]
TRAIN_LABEL_PROB_BELOW = 0.2  # training set: mean label probability in the last epochs ...
TRAIN_AGREEMENT_FROM = 0.5  # ... and the share of runs predicting the same other digit


def test_set_ranking(labels, probs_by_run, index) -> pd.DataFrame:
    """Every one of N test images scored by R runs, most suspect label first (`ranking`)."""
    return ranking(labels, probs_by_run, index)


def ranking(labels, probs_by_run, index) -> pd.DataFrame:
    """Every one of N images scored by R runs that never trained on them (the test set, or the
    training set's held-out folds), most suspect label first.

    labels int (N,); probs_by_run float (R, N, 10), each row a softmax; index int (N,).
    Columns RANKING_COLUMNS: `score` is cleanlab's self-confidence of the averaged probabilities
    (the probability they give the given label), `flagged` whether `find_label_issues` (prune by
    noise rate) calls the label an error. Ties in score keep the torchvision order.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs_by_run, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[1:] != (len(labels), 10):
        raise ValueError(f"probs_by_run must be (runs, {len(labels)}, 10), got {probs.shape}")
    mean = probs.mean(axis=0)
    mean /= mean.sum(axis=1, keepdims=True)
    suggested = mean.argmax(axis=1)
    runs_predict = probs.argmax(axis=2)  # (R, N)
    table = pd.DataFrame(
        {
            "index": np.asarray(index, dtype=np.int64),
            "given": labels,
            "suggested": suggested,
            "agreement": (runs_predict == suggested[None, :]).mean(axis=0),
            "score": get_label_quality_scores(labels, mean),
            "flagged": find_label_issues(labels, mean),
        }
    )
    return table.sort_values(["score", "index"]).reset_index(drop=True)[RANKING_COLUMNS]


def test_set_issues(labels, probs_by_run, index) -> pd.DataFrame:
    """The flagged rows of `test_set_ranking`, in COLUMNS, most suspect first."""
    return flagged_rows(test_set_ranking(labels, probs_by_run, index))


def flagged_rows(ranking: pd.DataFrame) -> pd.DataFrame:
    """The rows of a ranking that confident learning flagged, in COLUMNS, order kept."""
    return ranking[ranking["flagged"].to_numpy(bool)].reset_index(drop=True)[COLUMNS]


def train_set_issues(labels, label_prob_by_run, predicted_by_run, index, *, last: int = 3):
    """Suspected label errors in the training set from R runs' per-example records.

    labels int (N,); label_prob_by_run float (R, E, N) and predicted_by_run int (R, E, N) (runs
    of different lengths: pass their last `last` epochs); index int (N,). An image is suspect
    when, over each run's last `last` epochs, its label's mean probability stays below
    TRAIN_LABEL_PROB_BELOW and at least TRAIN_AGREEMENT_FROM of the runs end predicting one
    same other digit. `score` is the mean label probability.
    """
    labels = np.asarray(labels, dtype=np.int64)
    prob = np.asarray(label_prob_by_run, dtype=np.float64)[:, -last:, :]
    predicted = np.asarray(predicted_by_run, dtype=np.int64)[:, -last:, :]
    if prob.ndim != 3 or prob.shape[2] != len(labels) or predicted.shape != prob.shape:
        raise ValueError("label_prob_by_run and predicted_by_run must be (runs, epochs, N)")
    score = np.nanmean(prob, axis=(0, 1))
    final = predicted[:, -1, :]  # each run's prediction at its last epoch
    votes = np.stack([(final == digit).sum(axis=0) for digit in range(10)])  # (10, N)
    votes[labels, np.arange(len(labels))] = -1  # the given label is no suggestion
    suggested = votes.argmax(axis=0)
    agreement = votes.max(axis=0) / final.shape[0]
    flagged = np.flatnonzero((score < TRAIN_LABEL_PROB_BELOW) & (agreement >= TRAIN_AGREEMENT_FROM))
    return _ranked(flagged, index, labels, suggested, agreement, score)


def _ranked(flagged, index, labels, suggested, agreement, score) -> pd.DataFrame:
    """The flagged rows in the output columns, most suspect (lowest score) first."""
    table = pd.DataFrame(
        {
            "index": np.asarray(index, dtype=np.int64)[flagged],
            "given": labels[flagged],
            "suggested": suggested[flagged],
            "agreement": agreement[flagged],
            "score": score[flagged],
        }
    )
    return table.sort_values(["score", "index"]).reset_index(drop=True)[COLUMNS]
