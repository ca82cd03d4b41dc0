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
        """One axes holding the grid as one mosaic image, captions as text under each cell:
        an axes per image cost ~0.25 s a grid, most of a report's drawing time."""
        k = len(self.captions)
        cols = max(1, min(self.n_cols, k))
        rows = max(1, -(-k // cols))
        figure = figure or new_figure(
            1.25 * cols + 0.2, 1.5 * rows + 0.2, left=0.1, right=0.1, top=0.1, bottom=0.1
        )
        side, gap_x, gap_y = 28, 8, 14  # pixels: a cell, the space between, the caption's row
        mosaic = np.full((rows * (side + gap_y), cols * (side + gap_x)), np.nan, dtype=np.float32)
        for i in range(k):
            top, left = (i // cols) * (side + gap_y), (i % cols) * (side + gap_x)
            mosaic[top : top + side, left : left + side] = self.images[i]
        ax = figure.add_axes((0, 0, 1, 1))
        ax.set_axis_off()
        cmap = matplotlib_gray()
        ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=255, interpolation="nearest", aspect="auto")
        for i, caption in enumerate(self.captions):
            x = (i % cols) * (side + gap_x) + side / 2 - 0.5
            y = (i // cols) * (side + gap_y) + side + 1
            ax.text(x, y, caption, fontsize=7, ha="center", va="top")
        self.figure_, self.axes_ = figure, ax
        return self


def matplotlib_gray():
    """Grey for pixels; white where the mosaic has none (NaN)."""
    import matplotlib

    cmap = matplotlib.colormaps["gray"].copy()
    cmap.set_bad("white")
    return cmap
