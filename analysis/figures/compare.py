"""Figures of the comparison report: overlaid curves, accuracy at an epoch, per-class heatmap,
confusion grids, accuracy against cost (Display objects, see `figures/common.py`).

The figures are sized by the number of runs so a 100-run report stays legible, and they avoid
per-cell text beyond a few runs, which is what makes large grids slow to draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.figures.common import (
    annotated_heatmap,
    axes_or_new,
    new_figure,
    setting_colors,
    spread_annotations,
)
from mnist_train import contract

ANNOTATE_UP_TO = 8  # runs; above this, grids are drawn without numbers in the cells
LEGEND_TEXT_CHARS = 40  # a longer setting is shown by its run's label instead
LEGEND_UP_TO = 12  # settings; above this, the legend moves outside the axes in small type


def _legend(ax, n_entries: int, *, outside=None) -> None:
    """The legend of `ax`: inside it when short; else (or when `outside`, the axes to put it
    beside, is given) to the right of `outside`, clear of every panel and its curves."""
    if outside is None and n_entries <= LEGEND_UP_TO:
        ax.legend(fontsize="small")
        return
    handles, texts = ax.get_legend_handles_labels()
    (outside or ax).legend(
        handles,
        texts,
        fontsize="small" if n_entries <= LEGEND_UP_TO else "x-small",
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        ncol=1 + n_entries // 40,
        borderaxespad=0,
    )


class CurveOverlayDisplay:
    """Per-epoch curves of many runs overlaid, one panel per metric.

    history: long table (`run_id`, `key`, `step`, `value`); labels / settings: run id -> text.
    """

    def __init__(
        self, history: pd.DataFrame, labels: Mapping[str, str], settings: Mapping[str, str]
    ):
        self.history = history
        self.labels = labels
        self.settings = settings

    def _legend_text(self, run_id: str) -> str:
        """The run's setting; the run's own label when that reads shorter (e.g. its run name)."""
        setting = self.settings[run_id]
        replicates = sum(1 for s in self.settings.values() if s == setting)
        if replicates > 1 or len(setting) <= LEGEND_TEXT_CHARS:
            return setting
        return self.labels[run_id]

    def plot(
        self,
        keys: Sequence[str] = (contract.TEST_ACCURACY, contract.TRAIN_LOSS, contract.TEST_LOSS),
        *,
        at_epoch: int | None = None,
        figure=None,
    ) -> CurveOverlayDisplay:
        own = figure is None  # lay out only a figure of our own
        fig = figure or new_figure(5.2 * len(keys), 3.8)
        axes = fig.subplots(1, len(keys), squeeze=False)
        colors = setting_colors([self.settings[r] for r in self.labels])
        by_key = {k: g for k, g in self.history.groupby("key")}
        shown: set[str] = set()
        for ax, key in zip(axes[0], keys):
            frame = by_key.get(key)
            if frame is not None:
                for run_id, rows in frame.groupby("run_id", sort=False):
                    setting = self.settings[run_id]
                    rows = rows.sort_values("step")
                    label = (
                        self._legend_text(run_id)
                        if (setting not in shown and ax is axes[0][0])
                        else None
                    )
                    if label is not None:
                        shown.add(setting)
                    ax.plot(
                        rows["step"],
                        rows["value"],
                        marker="o",
                        markersize=3,
                        linewidth=1.2,
                        color=colors[setting],
                        alpha=0.85,
                        label=label,
                    )
            if at_epoch is not None:
                ax.axvline(at_epoch, color="grey", linestyle="--", linewidth=1)
            ax.set_title(key)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
        if shown:
            # beside the last panel: inside a panel the legend hides curves, and beside the first
            # it lies over the second
            _legend(axes[0][0], len(shown), outside=axes[0][-1])
        if own:
            fig.tight_layout()
        self.figure_, self.axes_ = fig, axes[0]
        return self


class EpochComparisonDisplay:
    """Test accuracy of each run at a chosen epoch (open) and at its last epoch (filled)."""

    def __init__(
        self, at_epoch: pd.Series, final: pd.Series, labels: Mapping[str, str], epoch: int
    ):
        self.at_epoch, self.final, self.labels, self.epoch = at_epoch, final, labels, epoch

    def plot(self, ax=None) -> EpochComparisonDisplay:
        order = list(self.final.sort_values().index)
        y = np.arange(len(order))
        own = ax is None  # lay out only a figure of our own
        ax, fig = axes_or_new(ax, 7, 0.9 + 0.28 * len(order))
        ax.scatter(
            self.at_epoch.reindex(order),
            y,
            facecolors="none",
            edgecolors="C0",
            label=f"epoch {self.epoch}",
        )
        ax.scatter(self.final.reindex(order), y, color="C1", label="last epoch")
        ax.set_yticks(y, [self.labels[r] for r in order], fontsize="small")
        ax.set_xlabel("test accuracy")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
        if own:
            fig.tight_layout()
        self.figure_, self.ax_ = fig, ax
        return self


class PerClassHeatmapDisplay:
    """Runs x digits heatmap of per-class accuracy (DataFrame indexed by run label, columns 0-9)."""

    def __init__(self, per_class: pd.DataFrame):
        self.per_class = per_class

    def plot(self, ax=None) -> PerClassHeatmapDisplay:
        n = len(self.per_class)
        own = ax is None  # lay out only a figure of our own
        ax, fig = axes_or_new(ax, 8, 1.2 + 0.32 * n)
        values = self.per_class.to_numpy(dtype=float)
        annotated_heatmap(
            ax,
            values,
            annot=np.vectorize(lambda v: f"{v:.3f}")(values) if n <= 30 else None,
            cmap="viridis",
            cbar_label="accuracy",
            xticklabels=list(self.per_class.columns),
            yticklabels=list(self.per_class.index),
            fontsize=7,
        )
        ax.set_xlabel("true digit")
        ax.set_ylabel("")
        ax.tick_params(axis="y", labelsize="small")
        if own:
            fig.tight_layout()
        self.figure_, self.ax_ = fig, ax
        return self


class ConfusionGridDisplay:
    """Confusion matrices side by side (`kind="counts"`) or their differences from the baseline
    (`kind="difference"`: numbers are run minus baseline; colour is red where the run is worse,
    i.e. fewer right on the diagonal or more of a mistake off it).

    matrices: label -> (10, 10) array, in display order.
    """

    def __init__(self, matrices: Mapping[str, np.ndarray], *, kind: str = "counts"):
        if kind not in ("counts", "difference"):
            raise ValueError(f"kind must be 'counts' or 'difference', got {kind!r}")
        self.matrices, self.kind = matrices, kind

    def plot(self, *, columns: int = 5, figure=None) -> ConfusionGridDisplay:
        from matplotlib.colors import PowerNorm, TwoSlopeNorm

        n = len(self.matrices)
        cols = min(columns, n)
        rows = -(-n // cols)
        # Shared axes with tick labels on the outer panels only, and no layout engine: with dozens
        # of panels, per-panel tick text and constrained layout are what make this figure slow.
        fig = figure or new_figure(2.3 * cols + 1.2, 2.4 * rows + 0.5)
        axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
        fig.subplots_adjust(
            left=0.8 / (2.3 * cols + 1.2),
            right=1 - 1.1 / (2.3 * cols + 1.2),
            bottom=0.45 / (2.4 * rows + 0.5),
            top=1 - 0.3 / (2.4 * rows + 0.5),
            wspace=0.12,
            hspace=0.3,
        )
        stack = np.stack(list(self.matrices.values()))
        if self.kind == "counts":
            norm = PowerNorm(gamma=0.3, vmin=0, vmax=max(stack.max(), 1))
            cmap = "Blues"
        else:
            limit = max(np.abs(stack).max(), 1)
            norm = TwoSlopeNorm(vcenter=0, vmin=-limit, vmax=limit)
            cmap = "RdBu_r"
        annotate = n <= ANNOTATE_UP_TO
        for ax, (label, matrix) in zip(axes.flat, self.matrices.items()):
            shown = matrix
            if self.kind == "difference":
                # colour by harm: fewer right on the diagonal and more mistakes off it are both red
                shown = matrix.copy()
                np.fill_diagonal(shown, -np.diag(matrix))
            image = ax.imshow(shown, cmap=cmap, norm=norm)
            ax.set_title(label, fontsize="small")
            if annotate:
                for (t, p), value in np.ndenumerate(matrix):
                    if value != 0 and (self.kind == "difference" or t != p):
                        ax.text(
                            p,
                            t,
                            f"{value:+d}" if self.kind == "difference" else str(value),
                            ha="center",
                            va="center",
                            fontsize=5,
                        )
        axes[0, 0].set_xticks(range(10))
        axes[0, 0].set_yticks(range(10))
        for ax in axes.flat:
            ax.tick_params(labelsize=6, length=2)
            ax.label_outer()
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        fig.supxlabel("predicted digit", fontsize="small")
        fig.supylabel("true digit", fontsize="small")
        cax = fig.add_axes([1 - 0.9 / (2.3 * cols + 1.2), 0.25, 0.15 / (2.3 * cols + 1.2), 0.5])
        fig.colorbar(
            image, cax=cax, label="count" if self.kind == "counts" else "red: worse, blue: better"
        )
        self.figure_, self.axes_ = fig, axes
        return self


class AccuracyCostDisplay:
    """Final test accuracy (with its bootstrap interval, when known) against training time."""

    def __init__(
        self,
        table: pd.DataFrame,
        labels: Mapping[str, str],
        settings: Mapping[str, str],
        *,
        annotate: Sequence[str] | None = None,
    ):
        # table: index run id, columns `accuracy`, `train_time_s`, optional `ci_low`, `ci_high`;
        # annotate: the run ids whose points are labelled, in priority order (default: up to 20)
        self.table, self.labels, self.settings = table, labels, settings
        self.annotate = annotate

    def plot(self, ax=None) -> AccuracyCostDisplay:
        table = self.table.dropna(subset=["accuracy", contract.TRAIN_TIME])
        own = ax is None  # lay out only a figure of our own
        ax, fig = axes_or_new(ax, 7, 4.5)
        colors = setting_colors([self.settings[r] for r in self.labels])
        named = self.annotate
        if named is None:
            named = list(table.index) if len(table) <= 20 else []
        texts = []
        for run_id in named:
            if run_id in table.index:
                row = table.loc[run_id]
                texts.append(
                    ax.annotate(
                        self.labels[run_id],
                        (row.train_time_s, row.accuracy),
                        fontsize=7,
                        xytext=(4, 3),
                        textcoords="offset points",
                    )
                )
        for run_id, row in table.iterrows():
            color = colors[self.settings[run_id]]
            if {"ci_low", "ci_high"} <= set(table.columns) and np.isfinite(
                row.get("ci_low", np.nan)
            ):
                ax.errorbar(
                    row.train_time_s,
                    row.accuracy,
                    yerr=[
                        [max(row.accuracy - row.ci_low, 0)],
                        [max(row.ci_high - row.accuracy, 0)],
                    ],
                    fmt="o",
                    color=color,
                    capsize=2,
                    markersize=5,
                )
            else:
                ax.plot(row.train_time_s, row.accuracy, "o", color=color)
        # Runs nothing else beats on both axes: the ones worth their cost.
        ordered = table.sort_values([contract.TRAIN_TIME, "accuracy"], ascending=[True, False])
        front = ordered[ordered["accuracy"] >= ordered["accuracy"].cummax()]
        ax.step(
            front[contract.TRAIN_TIME],
            front["accuracy"],
            where="post",
            color="grey",
            linewidth=1,
            linestyle=":",
            label="best accuracy for the time",
        )
        ax.set_xlabel("training time (s)")
        ax.set_ylabel("test accuracy (model of record)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
        if own:
            fig.tight_layout()
        spread_annotations(ax, texts)
        self.figure_, self.ax_ = fig, ax
        return self
