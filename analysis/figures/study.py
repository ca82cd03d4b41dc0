"""Figures of a study (Display objects, see `figures/common.py`): the optimisation history, the
parameter importances, and the objective against each parameter (a slice view)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.figures.common import COLORS, axes_or_new, new_figure
from analysis.study import Study, best_so_far, is_log_scaled, ranked_importance, slice_columns

STATE_MARKERS = {"PRUNED": ("x", COLORS["reference"]), "FAIL": ("v", COLORS["wrong"])}


class OptimizationHistoryDisplay:
    """The objective of every complete trial by trial number, the best so far as a step line,
    and pruned or failed trials as marks along the bottom (they have no objective)."""

    def __init__(self, study: Study):
        self.study = study

    def plot(self, ax=None) -> OptimizationHistoryDisplay:
        study = self.study
        ax, self.figure_ = axes_or_new(ax, 9.5, 4, left=0.8, right=1.7)
        trials = study.trials.sort_values("trial")
        values = pd.to_numeric(trials[study.objective], errors="coerce").where(
            trials["state"] == "COMPLETE"
        )
        numbers = trials["trial"].to_numpy()
        done = values.notna().to_numpy()
        ax.scatter(numbers[done], values[done], color=COLORS["train"], s=22, label="complete")
        running = best_so_far(values.to_numpy(), study.direction)
        ax.step(numbers, running, where="post", color=COLORS["test"], label="best so far")
        low = float(np.nanmin(values)) if done.any() else 0.0
        for state, (marker, colour) in STATE_MARKERS.items():
            picked = (trials["state"] == state).to_numpy()
            if picked.any():
                ax.scatter(
                    numbers[picked],
                    np.full(picked.sum(), low),
                    marker=marker,
                    color=colour,
                    label=f"{state.lower()} ({picked.sum()})",
                )
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{study.objective} ({study.direction}d)")
        ax.set_title("Optimisation history", fontweight="bold")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))  # off the points
        self.ax_ = ax
        return self


class ImportanceDisplay:
    """Horizontal bars of each parameter's importance (fANOVA, summing to 1), largest on top."""

    def __init__(self, importance: dict[str, float]):
        self.ranked = ranked_importance(importance)

    def plot(self, ax=None) -> ImportanceDisplay:
        ax, self.figure_ = axes_or_new(ax, 6, 0.8 + 0.4 * len(self.ranked), left=1.4)
        names = [name for name, _ in self.ranked][::-1]
        values = [value for _, value in self.ranked][::-1]
        ax.barh(names, values, color=COLORS["train"])
        for y, value in enumerate(values):
            ax.text(value, y, f" {value:.2f}", va="center", fontsize="small")
        ax.set_xlim(0, max(values, default=1) * 1.2)
        ax.set_xlabel("importance (fANOVA)")
        ax.set_title("Parameter importances", fontweight="bold")
        self.ax_ = ax
        return self


class SliceDisplay:
    """The objective of each complete trial against each parameter, one panel per parameter:
    numbers on a linear or (across more than two decades) log axis, anything else as categories
    in the order first seen. The best trial is ringed."""

    def __init__(self, study: Study, *, columns: int = 3):
        self.study, self.columns = study, columns

    def plot(self, figure=None) -> SliceDisplay:
        from matplotlib.ticker import MaxNLocator, NullFormatter

        study = self.study
        columns = slice_columns(study)
        params = list(columns.columns)
        rows = max(1, math.ceil(len(params) / self.columns))
        cols = min(self.columns, max(1, len(params)))
        figure = figure or new_figure(3.6 * cols, 2.8 * rows, left=0.7, hspace=0.6, wspace=0.35)
        axes = np.atleast_1d(figure.subplots(rows, cols, squeeze=False).ravel())
        done = study.complete
        objective = done[study.objective].astype(float)
        best = study.best()
        for ax, param in zip(axes, params):
            column = columns[param]
            numeric = pd.to_numeric(column, errors="coerce")
            if numeric.notna().all() and len(column):
                x = numeric.to_numpy()
                if is_log_scaled(column):
                    ax.set_xscale("log")
                    ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only
                elif np.all(np.mod(x, 1) == 0):
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            else:
                categories = list(dict.fromkeys(column.astype(str)))
                x = np.array([categories.index(v) for v in column.astype(str)], dtype=float)
                ax.set_xticks(range(len(categories)), categories, fontsize="small", rotation=30)
            ax.scatter(x, objective, color=COLORS["train"], s=16)
            if best is not None:
                at = list(done["trial"]).index(best["trial"])
                ax.scatter(
                    [x[at]],
                    [objective.iloc[at]],
                    s=90,
                    facecolors="none",
                    edgecolors=COLORS["correct"],
                    linewidths=1.5,
                )
            ax.set_xlabel(param)
            ax.set_ylabel(study.objective, fontsize="small")
        for ax in axes[len(params) :]:
            ax.set_visible(False)
        figure.suptitle("Objective against each parameter (complete trials)", fontweight="bold")
        self.figure_, self.axes_ = figure, axes
        return self
