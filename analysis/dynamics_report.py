"""The per-run report's dynamics sections, from the run's per-example records: the confusion
matrix at every epoch, test images whose prediction changed, forgetting events, and the
dataset-cartography map with its easy, ambiguous and hard-to-learn images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from analysis import dynamics, metrics

GALLERY = 20  # images per gallery


def add_dynamics_sections(
    add: Callable[[object, str, str, str], None],
    test_record: dict | None,
    train_record: dict | None,
    test_labels: np.ndarray | None,
    test_images: np.ndarray | None,
    train_images: np.ndarray | None,
) -> dict:
    """Draw every section whose data is at hand through `add(display, file, title, caption)`;
    returns the numbers for summary.json."""
    from analysis.figures.compare import ConfusionGridDisplay
    from analysis.figures.dynamics import CartographyDisplay, ImageGridDisplay

    summary: dict = {}
    if test_record is not None and test_labels is not None:
        probs, epochs = test_record["probs"], test_record["epochs"]
        matrices = {
            f"epoch {int(e)}": metrics.confusion_matrix(test_labels, p.argmax(1))
            for e, p in zip(epochs, probs)
        }
        add(
            ConfusionGridDisplay(matrices).plot(),
            "confusion_by_epoch.png",
            "Confusion matrix at every epoch",
            "Off-diagonal counts are mistakes; watch which ones training removes epoch by epoch.",
        )
        changes = dynamics.changed_predictions(probs)
        summary["changed_predictions"] = int(len(changes))
        if len(changes) and test_images is not None:
            shown = changes.head(GALLERY)
            index = test_record["index"][shown["position"]]
            add(
                ImageGridDisplay(
                    test_images[index],
                    [
                        f"#{i} e{e}: {b}→{a}"
                        for i, e, b, a in zip(
                            index, shown["epoch"], shown["before"], shown["after"]
                        )
                    ],
                ).plot(),
                "changed_predictions.png",
                f"Test images whose prediction changed ({len(changes)} changes)",
                "Test index, the epoch of the change, and the predicted digit before → after.",
            )
    if train_record is not None:
        correct, label_prob = train_record["correct"], train_record["label_prob"]
        forgetting = dynamics.forgetting(correct)
        table = dynamics.cartography(label_prob, correct)
        summary["forgetting_events"] = int(forgetting["forgetting_events"].sum())
        summary["never_learned"] = int(forgetting["never_learned"].sum())
        summary["cartography"] = table["region"].value_counts().to_dict()
        add(
            CartographyDisplay(table).plot(),
            "cartography.png",
            "Dataset cartography",
            "Each training image: how sure the model was of its label on average (up) and how "
            "much that swung between epochs (right); Swayamdipta et al. 2020.",
        )
        if train_images is not None:
            index = train_record["index"]
            galleries = [
                (
                    "most_forgotten.png",
                    "Most forgotten training images",
                    forgetting.sort_values("forgetting_events", ascending=False, kind="stable"),
                    lambda row: f"#{index[row]} {int(forgetting.forgetting_events[row])}x",
                    forgetting["forgetting_events"] > 0,
                ),
                (
                    "never_learned.png",
                    "Never learned",
                    forgetting,
                    lambda row: f"#{index[row]}",
                    forgetting["never_learned"],
                ),
                (
                    "easy_to_learn.png",
                    "Easy to learn (cartography)",
                    table.sort_values("confidence", ascending=False, kind="stable"),
                    lambda row: f"#{index[row]} {table.confidence[row]:.2f}",
                    table["region"] == "easy",
                ),
                (
                    "hard_to_learn.png",
                    "Hard to learn (cartography)",
                    table.sort_values("confidence", kind="stable"),
                    lambda row: f"#{index[row]} {table.confidence[row]:.2f}",
                    table["region"] == "hard",
                ),
                (
                    "ambiguous.png",
                    "Ambiguous (cartography)",
                    table.sort_values("variability", ascending=False, kind="stable"),
                    lambda row: f"#{index[row]} ±{table.variability[row]:.2f}",
                    table["region"] == "ambiguous",
                ),
            ]
            for file, title, ordered, caption, keep in galleries:
                ordered_index = ordered.index.to_numpy()
                rows = list(ordered_index[np.asarray(keep)[ordered_index]][:GALLERY])
                if rows:
                    add(
                        ImageGridDisplay(
                            train_images[index[rows]], [caption(r) for r in rows]
                        ).plot(),
                        file,
                        title,
                        "Training set index under each image.",
                    )
    return summary
