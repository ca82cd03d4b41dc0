"""Figures of per-example training dynamics: the cartography map and captioned image grids
(Display objects, see `figures/common.py`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.figures.common import axes_or_new, new_figure

MAP_POINTS = 20_000  # a random sample beyond this: 60,000 dots draw slowly and say no more


class CartographyDisplay:
    """Dataset cartography: each training image's variability (x) against its mean confidence in
    its label (y), coloured by the share of epochs it was right. `table` from
    `dynamics.cartography`."""

    def __init__(self, table: pd.DataFrame):
        self.table = table

    def plot(self, ax=None, *, seed: int = 0) -> CartographyDisplay:
        shown = self.table
        if len(shown) > MAP_POINTS:
            shown = shown.sample(MAP_POINTS, random_state=seed)
        ax, self.figure_ = axes_or_new(ax, 6.5, 5)
        points = ax.scatter(
            shown["variability"],
            shown["confidence"],
            c=shown["correctness"],
            cmap="viridis",
            vmin=0,
            vmax=1,
            s=4,
            alpha=0.5,
            rasterized=True,
        )
        self.figure_.colorbar(points, ax=ax, label="share of epochs right")
        ax.set_xlabel("variability (std of the label's probability over epochs)")
        ax.set_ylabel("confidence (mean probability of the label)")
        ax.set_xlim(0, max(0.5, float(shown["variability"].max()) + 0.02))
        ax.set_ylim(0, 1)
        self.ax_ = ax
        return self


class ImageGridDisplay:
    """Images in a grid with a caption under each: uint8 (k, 28, 28) and k strings."""

    def __init__(self, images: np.ndarray, captions: list[str], *, n_cols: int = 10):
        self.images, self.captions, self.n_cols = images, captions, n_cols

    def plot(self, figure=None) -> ImageGridDisplay:
        k = len(self.captions)
        cols = max(1, min(self.n_cols, k))
        rows = max(1, -(-k // cols))
        figure = figure or new_figure(
            1.25 * cols + 0.2, 1.5 * rows + 0.2, left=0.1, right=0.1, top=0.1, bottom=0.1
        )
        axes = np.atleast_1d(figure.subplots(rows, cols)).ravel()
        for i, ax in enumerate(axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= k:
                ax.axis("off")
                continue
            ax.imshow(self.images[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xlabel(self.captions[i], fontsize=7)
        self.figure_, self.axes_ = figure, axes
        return self
