"""Per-example arrays that are wrong, not just unreadable (issue 21): `dynamics/train.npz` and
`predictions/test_by_epoch.npz` checked as `predictions/test.npz` is. A run whose array is wrong
is left out of what needs it, with a notice naming the run and the reason, and the commands go on
with the other runs; their numbers are checked against the good run's stored arrays."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import records
from analysis.errors import AnalysisError

# --------------------------------------------------------------------------- the checks (pure)


def fine_training_record(epochs=2, images=6) -> dict:
    rng = np.random.default_rng(0)
    label_prob = rng.random((epochs, images)).astype(np.float16)
    predicted = rng.integers(0, 10, (epochs, images)).astype(np.int8)
    return dict(
        correct=label_prob > 0.5,
        label_prob=label_prob,
        predicted=predicted,
        epochs=np.arange(1, epochs + 1),
        index=np.arange(images),
    )


def test_an_image_an_epoch_did_not_reach_may_have_no_label_probability():
    arrays = fine_training_record()
    arrays["label_prob"][1, 2], arrays["predicted"][1, 2] = np.nan, records.NOT_SEEN
    checked = records.training_record(arrays, logged_epochs=[1, 2], n_images=6, n_drawn=6)
    assert np.isnan(checked.label_prob[1, 2]) and checked.predicted[1, 2] == -1
    assert checked.label_prob.dtype == np.float32 and checked.correct.dtype == bool


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda a: a.pop("correct"), r"no correct array \(it holds epochs, index"),
        (lambda a: a.update(epochs=np.array(["1", "2"])), "epochs holds <U1, not numbers"),
        (lambda a: a.update(epochs=np.array([1.0, 2.5])), "not whole numbers"),
        (lambda a: a.update(correct=np.full((2, 6), 2)), "other than true and false"),
        (lambda a: a.update(index=np.arange(5)), r"disagree \(expected \(E, N\)"),
        (lambda a: a.update(epochs=np.array([2, 1])), "do not ascend from 1"),
        (lambda a: a.update(epochs=np.array([1, 3])), r"not the 2 epoch\(s\) the run logged"),
        (lambda a: a.update(index=np.arange(6) + 3), "2 positions beyond the run's 7 images"),
        (lambda a: a["predicted"].__setitem__((0, 0), 10), "predicted outside 0-9"),
        (lambda a: a["predicted"].__setitem__((0, 0), -1), "predicted is -1 .* for 1 "),
        (lambda a: a["label_prob"].__setitem__((0, 0), np.inf), "1 label_prob values are inf"),
        (lambda a: a["label_prob"].fill(np.nan), "NaN everywhere"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_the_training_record_check_says_what_is_wrong(change, reason):
    arrays = fine_training_record()
    change(arrays)
    with pytest.raises(AnalysisError, match=reason):
        records.training_record(arrays, logged_epochs=[1, 2], n_images=6, n_drawn=7)


def test_the_per_epoch_predictions_check_allows_float16_rounding_only():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (3, 50, 10))
    probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    arrays = dict(probs=probs.astype(np.float16), epochs=np.arange(1, 4), index=np.arange(50))
    checked = records.epoch_predictions(arrays, logged_epochs=[1, 2, 3], n_images=50)
    assert checked.probs.shape == (3, 50, 10) and checked.probs.dtype == np.float32
    arrays["probs"] = (probs * 0.99).astype(np.float16)  # 1% off: not rounding
    with pytest.raises(AnalysisError, match="150 rows of probs do not sum to 1"):
        records.epoch_predictions(arrays, logged_epochs=[1, 2, 3])
    arrays["probs"] = probs.astype(np.float16)
    with pytest.raises(AnalysisError, match="50 images, but the run's test_images param says 40"):
        records.epoch_predictions(arrays, logged_epochs=[1, 2, 3], n_images=40)
