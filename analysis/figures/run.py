"""Figures of one run's numbers: learning curves, batch loss, confusion matrix, per-class accuracy,
reliability diagram (Display objects, see `figures/common.py`; matplotlib is imported
inside the plotting methods only)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import metrics
from analysis.figures.common import COLORS, annotated_heatmap, axes_or_new, new_figure
from mnist_train import contract

# --------------------------------------------------------------------------- learning curves


class LearningCurvesDisplay:
    """Loss per epoch, and accuracy per epoch, on the training, validation and test images.

    `epochs`: DataFrame indexed by epoch with any of train_loss, val_loss, test_loss,
    train_accuracy, val_accuracy, test_accuracy (accuracies as fractions; drawn in percent). The
    epoch with the lowest validation loss is marked in both panels (`best_`); without validation
    curves, the lowest test loss, and the label says that this choice reads the test set.
    """

    def __init__(self, epochs: pd.DataFrame, *, title: str = ""):
        self.epochs = epochs
        self.title = title

    def plot(self, axes=None) -> LearningCurvesDisplay:
        """Draw into a pair of axes (loss, accuracy), or a new 11 x 4 in figure."""
        if axes is None:
            axes = new_figure(11, 4.2, top=0.75, wspace=0.2).subplots(1, 2)
        ax_loss, ax_acc = axes
        self.axes_, self.figure_ = axes, ax_loss.figure
        epochs = self.epochs
        x = epochs.index.to_numpy()
        for split, prefix, marker in (
            ("train", "train", "o"),
            ("validation", "val", "s"),
            ("test", "test", "^"),
        ):
            for ax, kind, scale in ((ax_loss, "loss", 1), (ax_acc, "accuracy", 100)):
                key = f"{prefix}_{kind}"
                if key in epochs and epochs[key].notna().any():
                    ax.plot(
                        x,
                        scale * epochs[key],
                        marker=marker,
                        lw=2,
                        color=COLORS[split],
                        label=f"{split.capitalize()} {kind}",
                    )
        self.best_ = None
        for key, what in (
            (contract.VAL_LOSS, "Lowest validation loss"),
            (contract.TEST_LOSS, "Lowest test loss (no validation split)"),
        ):
            if key in epochs and epochs[key].notna().any():
                self.best_ = int(epochs[key].idxmin())
                for ax in axes:
                    ax.axvline(
                        self.best_,
                        color=COLORS["reference"],
                        ls=":",
                        lw=1.5,
                        label=f"{what} (epoch {self.best_})",
                    )
                break
        for ax, name, unit in (
            (ax_loss, "Loss", "Cross-entropy loss"),
            (ax_acc, "Accuracy", "Accuracy (%)"),
        ):
            ax.set_title(f"{name} per epoch", fontweight="bold")
            ax.set_xlabel("Epoch")
            ax.set_ylabel(unit)
            ax.set_xticks(x if len(x) <= 20 else x[:: max(1, len(x) // 10)])
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        if self.title:
            self.figure_.suptitle(self.title)
        return self


class BatchLossDisplay:
    """Loss of every optimisation step (faint) and its running mean, against the global step."""

    def __init__(self, batch_loss: pd.Series, *, title: str = ""):
        self.batch_loss = batch_loss
        self.title = title

    def plot(self, ax=None) -> BatchLossDisplay:
        ax, self.figure_ = axes_or_new(ax, 8, 3.5)
        self.ax_ = ax
        steps, loss = self.batch_loss.index.to_numpy(), self.batch_loss.to_numpy()
        window = len(loss) // 50  # ~50 independent points along the smoothed curve
        ax.plot(
            steps,
            loss,
            color=COLORS["train"],
            alpha=0.25 if window > 1 else 1,
            lw=1,
            label="Batch loss",
        )
        if window > 1:
            smooth = pd.Series(loss).rolling(window, min_periods=1).mean()
            ax.plot(
                steps, smooth, color=COLORS["train"], lw=2, label=f"Running mean ({window} steps)"
            )
        ax.set_title(self.title or "Training loss per optimisation step", fontweight="bold")
        ax.set_xlabel("Optimisation step")
        ax.set_ylabel("Cross-entropy loss")
        ax.grid(True, alpha=0.3)
        ax.legend()
        return self


# --------------------------------------------------------------------------- confusion matrix


class ConfusionHeatmapDisplay:
    """Confusion matrix as a heatmap: cells coloured by the fraction of the true digit
    (so that the rare mistakes stay visible next to the large diagonal), annotated with counts.
    Cells with a zero count carry no annotation.

    `counts`: int (10, 10), rows = true digit, columns = predicted digit.
    """

    def __init__(self, counts: np.ndarray, *, title: str = ""):
        self.counts = np.asarray(counts)
        self.title = title

    @classmethod
    def from_predictions(
        cls, y_true, y_pred, *, ax=None, title: str = ""
    ) -> ConfusionHeatmapDisplay:
        return cls(metrics.confusion_matrix(y_true, y_pred), title=title).plot(ax=ax)

    def plot(self, ax=None) -> ConfusionHeatmapDisplay:
        ax, self.figure_ = axes_or_new(ax, 7, 6, left=0.6, right=0.1)
        self.ax_ = ax
        counts = self.counts
        support = counts.sum(axis=1, keepdims=True)
        rate = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
        annotated_heatmap(
            ax,
            rate,
            annot=np.where(counts > 0, counts.astype(str), ""),
            cmap="Blues",
            vmin=0,
            vmax=1,
            square=True,
            linewidth=0.5,
            cbar_label="Fraction of the true digit",
        )
        n, correct = int(counts.sum()), int(np.trace(counts))
        ax.set_title(
            self.title
            or f"Confusion matrix ({n} test images, accuracy {100 * correct / max(n, 1):.2f}%)",
            fontweight="bold",
        )
        ax.set_xlabel("Predicted digit")
        ax.set_ylabel("True digit")
        ax.tick_params(axis="y", rotation=0)
        return self


# --------------------------------------------------------------------------- per-class accuracy


class PerClassAccuracyDisplay:
    """Bar per digit of the fraction of its test images predicted correctly (seed 000 "Try 3").

    `accuracy`: float (10,), NaN for digits absent from the test set; `overall`: fraction.
    The weakest digit is drawn in the "wrong" colour; the overall accuracy is a reference line.
    """

    def __init__(self, accuracy: np.ndarray, overall: float, *, title: str = ""):
        self.accuracy = np.asarray(accuracy, dtype=float)
        self.overall = overall
        self.title = title

    @classmethod
    def from_predictions(
        cls, y_true, y_pred, *, ax=None, title: str = ""
    ) -> PerClassAccuracyDisplay:
        return cls(
            metrics.per_class_accuracy(y_true, y_pred),
            metrics.accuracy(y_true, y_pred),
            title=title,
        ).plot(ax=ax)

    def plot(self, ax=None) -> PerClassAccuracyDisplay:
        ax, self.figure_ = axes_or_new(ax, 7, 4)
        self.ax_ = ax
        acc = 100 * self.accuracy
        colors = [COLORS["neutral"]] * len(acc)
        if np.isfinite(acc).any():
            colors[int(np.nanargmin(acc))] = COLORS["wrong"]
        digits = np.arange(len(acc))
        bars = ax.bar(digits, np.nan_to_num(acc), color=colors, edgecolor="black")
        ax.bar_label(
            bars, labels=[f"{a:.1f}" if np.isfinite(a) else "n/a" for a in acc], fontsize=8
        )
        ax.axhline(
            100 * self.overall,
            color=COLORS["reference"],
            ls="--",
            label=f"Overall {100 * self.overall:.2f}%",
        )
        low = np.nanmin(acc) if np.isfinite(acc).any() else 0
        ax.set_ylim(max(0, low - 10), 101)
        ax.set_xticks(digits)
        ax.set_title(self.title or "Accuracy per digit", fontweight="bold")
        ax.set_xlabel("True digit")
        ax.set_ylabel("Correctly classified (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="lower right")
        return self


# --------------------------------------------------------------------------- calibration


class ReliabilityDisplay:
    """Reliability diagram: accuracy against mean top-1 confidence per confidence bin.

    `bins`: the DataFrame of `metrics.reliability_bins`; `ece`: expected calibration error in
    [0, 1]. A bar below its red confidence mark is an over-confident bin; sample counts are printed
    on the bars.
    """

    def __init__(self, bins: pd.DataFrame, ece: float, *, title: str = ""):
        self.bins = bins
        self.ece = ece
        self.title = title

    @classmethod
    def from_predictions(
        cls, y_true, probs, *, n_bins: int = metrics.DEFAULT_BINS, ax=None, title: str = ""
    ) -> ReliabilityDisplay:
        bins = metrics.reliability_bins(y_true, probs, n_bins=n_bins)
        return cls(
            bins, metrics.expected_calibration_error(y_true, probs, n_bins=n_bins), title=title
        ).plot(ax=ax)

    def plot(self, ax=None) -> ReliabilityDisplay:
        ax, self.figure_ = axes_or_new(ax, 5.5, 5)
        self.ax_ = ax
        bins = self.bins[self.bins["count"] > 0]
        width = (self.bins["upper"] - self.bins["lower"]).iloc[0]
        centers = (bins["lower"] + bins["upper"]) / 2
        ax.bar(
            centers,
            bins["accuracy"],
            width=width,
            color=COLORS["neutral"],
            edgecolor="black",
            label="Accuracy in bin",
        )
        ax.plot(
            centers,
            bins["confidence"],
            ls="none",
            marker="_",
            markersize=14,
            mew=2.5,
            color=COLORS["wrong"],
            label="Mean confidence in bin",
        )
        for x, y, n in zip(centers, bins["accuracy"], bins["count"]):
            ax.text(
                x, min(y, 0.97) + 0.01, str(n), ha="center", va="bottom", fontsize=7, rotation=90
            )
        ax.plot([0, 1], [0, 1], ls="--", color=COLORS["reference"], label="Perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_title(
            self.title or f"Reliability diagram (ECE {100 * self.ece:.2f}%)", fontweight="bold"
        )
        ax.set_xlabel("Top-1 confidence")
        ax.set_ylabel("Accuracy")
        ax.legend(loc="upper left", fontsize=8)
        return self
