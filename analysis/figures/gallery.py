"""Figures of test images: the dataset view, the prediction gallery, the confidence chart of one
wrong prediction, and the misclassification gallery grouped by (true, predicted) digit pair.

Images are MNIST test images as stored, uint8 (28, 28) pixels shown in grey from 0 to 255, never
the normalised inputs the model saw. Selection (which images) is kept apart from drawing, in plain
functions on label arrays, so it can be checked without drawing anything. Same Display conventions
as `analysis.plots`.
"""

from __future__ import annotations

import numpy as np

from analysis import metrics
from analysis.figures.common import COLORS, new_figure
from mnist_train.contract import N_CLASSES


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------- selection


def first_of_each_digit(labels) -> np.ndarray:
    """int (10,): position of the first image of each digit; -1 where a digit is absent."""
    labels = np.asarray(labels)
    return np.array(
        [np.flatnonzero(labels == d)[0] if (labels == d).any() else -1 for d in range(N_CLASSES)]
    )


def select_prediction_examples(
    y_true, y_pred, *, n_correct: int = 7, n_wrong: int = 3
) -> np.ndarray:
    """Positions of the first `n_correct` right and the first `n_wrong` wrong predictions, in that
    order (seed 000 section 5.2 walks the test set the same way). Fewer when there are not enough.
    """
    if n_correct < 0 or n_wrong < 0:
        raise ValueError(f"n_correct and n_wrong must be >= 0, got {n_correct}, {n_wrong}")
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    right = y_true == y_pred
    return np.concatenate([np.flatnonzero(right)[:n_correct], np.flatnonzero(~right)[:n_wrong]])


def select_misclassified(
    y_true, y_pred, *, pairs=None, top_pairs: int = 5
) -> dict[tuple[int, int], np.ndarray]:
    """Positions of the misclassified images of each (true, predicted) pair.

    `pairs`: the pairs wanted, e.g. [(4, 9), (7, 2)]; None means the `top_pairs` most frequent
    mistakes (`metrics.most_confused_pairs` order). Returns {(true, pred): int array of all the
    positions with that mistake, in test-set order}, most frequent pair first; a requested pair
    that never occurs maps to an empty array.
    """
    y_true, y_pred = metrics._check_labels(y_true, y_pred)
    if pairs is None:
        confused = metrics.most_confused_pairs(y_true, y_pred, top_k=top_pairs)
        pairs = list(zip(confused["true"], confused["pred"]))
    selected = {}
    for t, p in pairs:
        t, p = int(t), int(p)
        if t == p:
            raise ValueError(f"({t}, {p}) is not a mistake: true and predicted digit are equal")
        selected[(t, p)] = np.flatnonzero((y_true == t) & (y_pred == p))
    return dict(sorted(selected.items(), key=lambda kv: -len(kv[1])))


# --------------------------------------------------------------------------- dataset view


class DatasetOverviewDisplay:
    """Seed 000 section 3.3: images per digit (bars) and the first image of each digit.

    `labels` int (N,) of the split shown; `images` uint8 (N, 28, 28) or None (then only the counts
    are drawn); `train_labels` int (M,) or None: when given, the bars compare each digit's share
    (%) of the training and the test set, so an imbalance between them shows at a glance.
    """

    def __init__(self, labels, images=None, *, train_labels=None, split: str = "test"):
        self.labels = np.asarray(labels)
        self.images = images
        self.train_labels = None if train_labels is None else np.asarray(train_labels)
        self.split = split

    def plot(self, figure=None) -> DatasetOverviewDisplay:
        figure = figure or new_figure(
            12, 4.2, left=0.6, right=0.1, top=0.75, wspace=0.3, hspace=0.3
        )
        self.figure_ = figure
        counts = np.bincount(self.labels, minlength=N_CLASSES)
        has_images = self.images is not None
        grid = figure.add_gridspec(2, 7 if has_images else 1)
        ax = figure.add_subplot(grid[:, :2] if has_images else grid[:, 0])
        digits = np.arange(N_CLASSES)
        if self.train_labels is None:
            bars = ax.bar(digits, counts, color=COLORS["neutral"], edgecolor="black")
            ax.bar_label(bars, fontsize=8)
            ax.set_ylabel("Images")
            ax.set_title(
                f"Images per digit ({len(self.labels)} {self.split} images)", fontweight="bold"
            )
        else:
            train_counts = np.bincount(self.train_labels, minlength=N_CLASSES)
            shares = []
            for offset, split, c in ((-0.2, "train", train_counts), (0.2, self.split, counts)):
                shares.append(100 * c / c.sum())
                ax.bar(
                    digits + offset,
                    shares[-1],
                    width=0.4,
                    color=COLORS.get(split, COLORS["test"]),
                    edgecolor="black",
                    label=f"{split} ({c.sum()} images)",
                )
            ax.set_ylim(0, 1.5 * max(s.max() for s in shares))  # headroom for the legend
            ax.set_ylabel("Share of the split (%)")
            ax.set_title("Images per digit", fontweight="bold")
            ax.legend(fontsize=8, loc="upper left")
        ax.set_xticks(digits)
        ax.set_xlabel("Digit")
        self.count_ax_ = ax
        self.image_axes_ = []
        if has_images:
            for digit, pos in enumerate(first_of_each_digit(self.labels)):
                img_ax = figure.add_subplot(grid[digit // 5, 2 + digit % 5])
                if pos >= 0:
                    _show(img_ax, self.images[pos])
                img_ax.set_title(f"Digit {digit}", fontsize=10)
                self.image_axes_.append(img_ax)
            figure.suptitle(
                f"MNIST: images per digit and the first {self.split} image of each digit",
                fontweight="bold",
            )
        return self


# --------------------------------------------------------------------------- prediction gallery


class PredictionGalleryDisplay:
    """Seed 000 section 5.2: images titled "True: x, Pred: y", green when right, red when wrong,
    with the model's confidence in its prediction under each image.

    `images` uint8 (k, 28, 28); `y_true`, `y_pred` int (k,); `confidence` float (k,) in [0, 1].
    """

    def __init__(self, images, y_true, y_pred, confidence, *, n_cols: int = 5):
        self.images, self.y_true, self.y_pred = images, np.asarray(y_true), np.asarray(y_pred)
        self.confidence = np.asarray(confidence)
        self.n_cols = n_cols

    @classmethod
    def from_predictions(
        cls, images_by_index, y_true, probs, index, *, n_correct: int = 7, n_wrong: int = 3
    ) -> PredictionGalleryDisplay:
        """`images_by_index` uint8 (M, 28, 28) indexed by test-set position `index` (N,)."""
        y_pred = np.asarray(probs).argmax(axis=1)
        chosen = select_prediction_examples(y_true, y_pred, n_correct=n_correct, n_wrong=n_wrong)
        return cls(
            images_by_index[np.asarray(index)[chosen]],
            np.asarray(y_true)[chosen],
            y_pred[chosen],
            np.asarray(probs)[chosen, y_pred[chosen]],
        ).plot()

    def plot(self, figure=None) -> PredictionGalleryDisplay:
        k = len(self.y_true)
        n_rows = max(1, -(-k // self.n_cols))
        figure = figure or new_figure(
            2.4 * self.n_cols,
            2.9 * n_rows + 0.6,
            left=0.1,
            right=0.1,
            top=0.65,
            bottom=0.35,
            wspace=0.08,
            hspace=0.35,
        )
        self.figure_ = figure
        axes = np.atleast_1d(figure.subplots(n_rows, self.n_cols)).ravel()
        for i, ax in enumerate(axes):
            if i >= k:
                ax.axis("off")
                continue
            _show(ax, self.images[i])
            right = self.y_true[i] == self.y_pred[i]
            ax.set_title(
                f"True: {self.y_true[i]}, Pred: {self.y_pred[i]}",
                color=COLORS["correct" if right else "wrong"],
                fontweight="bold",
            )
            ax.set_xlabel(f"confidence {100 * self.confidence[i]:.1f}%", fontsize=9)
        self.axes_ = axes[:k]
        figure.suptitle("Prediction results (green: correct, red: wrong)", fontweight="bold")
        return self


# --------------------------------------------------------------------------- confidence chart


class ConfidenceDisplay:
    """Seed 000 section 5.3: one (wrong) prediction next to its softmax bar chart, the true digit's
    bar green and the predicted digit's red, with the top-3 probabilities written out.

    `image` uint8 (28, 28); `probs` float (10,); `true`, `pred` digits.
    """

    def __init__(self, image, probs, true: int, pred: int, *, test_index: int | None = None):
        self.image, self.probs = image, np.asarray(probs, dtype=float)
        self.true, self.pred, self.test_index = int(true), int(pred), test_index

    def top3(self) -> list[tuple[int, float]]:
        classes, p = metrics.top_k(self.probs[None, :], k=3)
        return [(int(c), float(q)) for c, q in zip(classes[0], p[0])]

    def plot(self, figure=None) -> ConfidenceDisplay:
        from matplotlib.patches import Patch

        figure = figure or new_figure(11, 3.8, left=0.2, top=0.6, wspace=0.12)
        self.figure_ = figure
        ax_img, ax_bar = figure.subplots(1, 2, width_ratios=[1, 2.2])
        _show(ax_img, self.image)
        wrong = self.true != self.pred
        where = f" (test image {self.test_index})" if self.test_index is not None else ""
        ax_img.set_title(
            f"{'Wrong' if wrong else 'Correct'} prediction{where}\n"
            f"True: {self.true}, Pred: {self.pred}",
            color=COLORS["wrong" if wrong else "correct"],
            fontweight="bold",
        )
        colors = [COLORS["neutral"]] * N_CLASSES
        colors[self.true] = COLORS["correct"]
        colors[self.pred] = COLORS["wrong"] if wrong else COLORS["correct"]
        ax_bar.bar(range(N_CLASSES), self.probs, color=colors, edgecolor="black")
        ax_bar.set_xticks(range(N_CLASSES))
        ax_bar.set_ylim(0, 1.05)
        ax_bar.set_xlabel("Digit class")
        ax_bar.set_ylabel("Probability")
        ax_bar.set_title("Model confidence by class", fontweight="bold")
        ax_bar.grid(axis="y", alpha=0.3)
        handles = [Patch(color=COLORS["correct"], label=f"True label ({self.true})")]
        if wrong:
            handles.append(Patch(color=COLORS["wrong"], label=f"Predicted ({self.pred})"))
        ax_bar.legend(handles=handles, loc="upper right")
        top3 = "\n".join(
            f"{rank}. digit {c}: {100 * p:.2f}%" for rank, (c, p) in enumerate(self.top3(), 1)
        )
        ax_bar.text(
            0.02,
            0.97,
            f"Top 3\n{top3}\ntrue digit: {100 * self.probs[self.true]:.2f}%",
            transform=ax_bar.transAxes,
            va="top",
            ha="left",
            fontsize=9,
            family="monospace",
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": COLORS["reference"]},
        )
        self.axes_ = (ax_img, ax_bar)
        return self


# --------------------------------------------------------------------------- misclassifications


class MisclassificationGalleryDisplay:
    """Wrong predictions grouped by (true, predicted) pair, one row per pair, most frequent first,
    the model's confidence in its wrong answer under each image.

    `groups`: list of (true, pred, images uint8 (k, 28, 28), confidence float (k,), total) where
    `total` is how many test images made that mistake (k <= total are shown).
    Each row is one axes holding the images side by side (far cheaper to draw than an axes per
    image, which matters for the report's time budget).
    """

    def __init__(self, groups, *, per_row: int = 8):
        self.groups = groups
        self.per_row = per_row

    @classmethod
    def from_predictions(
        cls,
        images_by_index,
        y_true,
        probs,
        index,
        *,
        pairs=None,
        top_pairs: int = 5,
        per_row: int = 8,
    ) -> MisclassificationGalleryDisplay:
        probs = np.asarray(probs)
        y_pred = probs.argmax(axis=1)
        groups = []
        for (t, p), positions in select_misclassified(
            y_true, y_pred, pairs=pairs, top_pairs=top_pairs
        ).items():
            shown = positions[:per_row]
            groups.append(
                (t, p, images_by_index[np.asarray(index)[shown]], probs[shown, p], len(positions))
            )
        return cls(groups, per_row=per_row).plot()

    def plot(self, figure=None) -> MisclassificationGalleryDisplay:
        n_rows = max(1, len(self.groups))
        figure = figure or new_figure(
            1.3 * self.per_row + 0.6,
            1.75 * n_rows + 1.0,
            left=0.3,
            right=0.3,
            top=1.0,
            bottom=0.1,
            hspace=0.35,
        )
        self.figure_ = figure
        axes = np.atleast_1d(figure.subplots(n_rows, 1))
        gap = 4  # pixels between images
        for ax, group in zip(axes, self.groups or [None]):
            ax.set_xticks([])
            ax.set_yticks([])
            if group is None:
                ax.axis("off")
                ax.text(0.5, 0.5, "No misclassified test images", ha="center", va="center")
                continue
            true, pred, images, confidence, total = group
            strip = np.full((28, self.per_row * (28 + gap) - gap), 255, dtype=np.uint8)
            for i, image in enumerate(images):
                strip[:, i * (28 + gap) : i * (28 + gap) + 28] = image
            ax.imshow(strip, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            for i, c in enumerate(confidence):
                ax.text(
                    i * (28 + gap) + 14,
                    31,
                    f"{100 * c:.0f}%",
                    ha="center",
                    va="top",
                    fontsize=8,
                    color=COLORS["wrong"],
                )
            ax.set_ylim(38, -0.5)
            shown = f"{len(images)} of {total}" if total > len(images) else f"{total}"
            ax.set_title(
                f"True {true} → Pred {pred}: {total} image(s), {shown} shown",
                loc="left",
                fontsize=10,
                fontweight="bold",
                color=COLORS["wrong"],
            )
            for spine in ax.spines.values():
                spine.set_visible(False)
        self.axes_ = axes
        figure.suptitle(
            "Misclassified test images by (true → predicted) digit, most frequent first;\n"
            "the model's confidence in its wrong answer under each image",
            fontweight="bold",
        )
        return self
