"""The per-run report's dynamics sections, from the run's per-example records (checked by
`records.py` as they were read): the confusion matrix at every epoch, test images whose
prediction changed, forgetting events, and the dataset-cartography map with its easy, ambiguous
and hard-to-learn images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from analysis import dynamics, metrics
from analysis.records import EpochPredictions, TrainingRecord

GALLERY = 20  # images per gallery
Add = Callable[[object, str, str, str], None]  # add(display, file, title, caption)


def add_dynamics_sections(
    add: Add,
    test_record: EpochPredictions | None,
    train_record: TrainingRecord | None,
    test_labels: np.ndarray | None,
    test_images: np.ndarray | None,
    train_images: np.ndarray | None,
    train_labels: np.ndarray | None = None,
) -> dict:
    """Draw every section whose data is at hand through `add(display, file, title, caption)`;
    returns the numbers for summary.json. `train_labels`: int, the training set's labels by
    torchvision position (the galleries' given labels)."""
    summary: dict = {}
    if test_record is not None and test_labels is not None:
        summary.update(_test_sections(add, test_record, test_labels, test_images))
    if train_record is not None:
        summary.update(_train_sections(add, train_record, train_images, train_labels))
    return summary


def _test_sections(
    add: Add, record: EpochPredictions, labels: np.ndarray, images: np.ndarray | None
) -> dict:
    from analysis.figures.compare import ConfusionGridDisplay
    from analysis.figures.dynamics import ImageGridDisplay

    probs, epochs = record.probs, record.epochs
    matrices = {
        f"epoch {int(e)}": metrics.confusion_matrix(labels, p.argmax(1))
        for e, p in zip(epochs, probs)
    }
    add(
        ConfusionGridDisplay(matrices).plot(),
        "confusion_by_epoch.png",
        "Confusion matrix at every epoch",
        "Off-diagonal counts are mistakes; watch which ones training removes epoch by epoch.",
    )
    changes = dynamics.changed_predictions(probs)
    if len(changes) and images is not None:
        shown = changes.head(GALLERY)
        index = record.index[shown["position"]]
        captions = [
            f"#{i} e{e}: {b}→{a}"
            for i, e, b, a in zip(index, shown["epoch"], shown["before"], shown["after"])
        ]
        add(
            ImageGridDisplay(images[index], captions).plot(),
            "changed_predictions.png",
            f"Test images whose prediction changed ({len(changes)} changes)",
            "Test index, the epoch of the change, and the predicted digit before → after.",
        )
    return {"changed_predictions": int(len(changes))}


def _train_sections(
    add: Add,
    record: TrainingRecord,
    images: np.ndarray | None,
    labels: np.ndarray | None,
) -> dict:
    from analysis.figures.dynamics import CartographyDisplay

    correct, label_prob = record.correct, record.label_prob
    forgetting = dynamics.forgetting(correct)
    table = dynamics.cartography(label_prob, correct)
    counts = table["region"].value_counts()
    add(
        CartographyDisplay(table).plot(),
        "cartography.png",
        "Dataset cartography",
        "Each training image: how sure the model was of its label on average (up) and how "
        "much that swung between epochs (right); Swayamdipta et al. 2020. "
        + dynamics.regions_explained(table),
    )
    if images is not None:
        _train_galleries(add, record, forgetting, table, images, labels)
    return {
        "forgetting_events": int(forgetting["forgetting_events"].sum()),
        "never_learned": int(forgetting["never_learned"].sum()),
        "cartography": counts.to_dict(),
    }


def _train_galleries(
    add: Add,
    record: TrainingRecord,
    forgetting: pd.DataFrame,
    table: pd.DataFrame,
    images: np.ndarray,
    labels: np.ndarray | None,
) -> None:
    """Galleries of training images, each ranked so that its first images are the clearest
    cases, captioned with the index, the given label and the digit predicted in the last
    epoch (`given→predicted`), and the number the ranking reads."""
    from analysis.figures.dynamics import ImageGridDisplay

    index = record.index
    last = record.predicted[-1] if record.predicted is not None else None
    confidence, variability = table["confidence"], table["variability"]

    def caption(row: int, number: str) -> str:
        given = f" {labels[index[row]]}" if labels is not None else ""
        guess = f"→{last[row]}" if last is not None and last[row] >= 0 else ""
        return f"#{index[row]}{given}{guess} {number}"

    # most forgotten: most forgetting events first; among equals, the least confident
    forgotten = pd.DataFrame(
        {"events": forgetting["forgetting_events"], "confidence": confidence}
    ).sort_values(["events", "confidence"], ascending=[False, True], kind="stable")
    galleries = [
        (
            "most_forgotten.png",
            "Most forgotten training images",
            forgotten.index[forgotten["events"] > 0],
            lambda r: caption(r, f"{int(forgetting.forgetting_events[r])}x"),
            "ranked by forgetting events (right, then wrong a later epoch), the least confident "
            "first among equals",
        ),
        (
            "never_learned.png",
            "Never learned",
            confidence[forgetting["never_learned"]].sort_values(kind="stable").index,
            lambda r: caption(r, f"p={confidence[r]:.2f}"),
            "never right in any epoch, ranked by how low the label's mean probability stayed",
        ),
        (
            "easy_to_learn.png",
            "Easy to learn (cartography)",
            confidence[table["region"] == "easy"].sort_values(ascending=False).index,
            lambda r: caption(r, f"p={confidence[r]:.2f}"),
            "the most confident first",
        ),
        (
            "hard_to_learn.png",
            "Hard to learn (cartography)",
            confidence[table["region"] == "hard"].sort_values(kind="stable").index,
            lambda r: caption(r, f"p={confidence[r]:.2f}"),
            "the least confident first: often mislabelled or unusual images",
        ),
        (
            "ambiguous.png",
            "Ambiguous (cartography)",
            variability[table["region"] == "ambiguous"].sort_values(ascending=False).index,
            lambda r: caption(r, f"±{variability[r]:.2f}"),
            "the label's probability swung most between epochs",
        ),
    ]
    for file, title, ranked, make_caption, how in galleries:
        rows = [int(r) for r in ranked[:GALLERY]]
        if rows:
            add(
                ImageGridDisplay(images[index[rows]], [make_caption(r) for r in rows]).plot(),
                file,
                f"{title} ({len(ranked)})",
                f"Under each image: training-set index, given label → digit predicted in the "
                f"last epoch, and the number it is ranked by; {how}.",
            )
