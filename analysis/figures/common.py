"""What every figure shares: colours, pyplot-free figures with fixed margins, PNG encoding.

Every figure of the package is a Display object in the manner of scikit-learn's
`ConfusionMatrixDisplay`: the constructor stores computed data, `plot(ax=None)` (or
`plot(figure=None)` for multi-panel figures) draws into what it is given, or a new figure, and
returns self with `figure_` set; `from_*` class methods compute then plot. Figures are built on
`matplotlib.figure.Figure` directly, never through pyplot, so nothing depends on a GUI backend or
on pyplot's global figure list (reports run headless, in tests and on servers).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# One meaning, one colour, in every figure and in the HTML report.
COLORS = {
    "train": "#1f77b4",  # blue
    "test": "#ff7f0e",  # orange
    "correct": "#2ca02c",  # green: right predictions, the true class
    "wrong": "#d62728",  # red: wrong predictions, the predicted class
    "neutral": "#9ecae1",  # light blue: everything else
    "reference": "#7f7f7f",  # grey: ideal lines, averages
}
DPI = 100


def new_figure(
    width: float,
    height: float,
    *,
    left: float = 0.75,
    right: float = 0.25,
    top: float = 0.45,
    bottom: float = 0.6,
    wspace: float = 0.25,
    hspace: float = 0.3,
):
    """A pyplot-free Figure of `width` x `height` inches with fixed margins (in inches).

    Margins are set by hand rather than by matplotlib's constrained or tight layout: those measure
    every text on every draw and took half the drawing time of a report (its budget is 5 s).
    `wspace`/`hspace` are fractions of the mean axes width/height, as in `subplots_adjust`.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    figure.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=bottom / height,
        wspace=wspace,
        hspace=hspace,
    )
    return figure


def save_figure(figure, path: str | Path) -> Path:
    """Write `figure` as PNG to `path` (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI)
    return path


def axes_or_new(ax, width: float, height: float, **margins):
    if ax is None:
        ax = new_figure(width, height, **margins).subplots()
    return ax, ax.figure


def figure_to_base64(figure, *, dpi: int = 90, tight: bool = True) -> str:
    """PNG of `figure` as a base64 string (for `<img src="data:image/png;base64,...">`).

    `tight=False` skips the extra draw that trimming the margins costs, for figures laid out by
    hand.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def image_to_base64(pixels: np.ndarray, *, scale: int = 2) -> str:
    """PNG of one uint8 grey image (H, W), enlarged `scale` times without smoothing, as base64."""
    from matplotlib.image import imsave

    big = np.kron(np.asarray(pixels, dtype=np.uint8), np.ones((scale, scale), dtype=np.uint8))
    buffer = io.BytesIO()
    imsave(buffer, big, cmap="gray_r", vmin=0, vmax=255, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def setting_colors(settings: Sequence[str]) -> dict[str, tuple]:
    """One colour per distinct setting (runs that differ only by seed share a colour)."""
    from matplotlib import colormaps

    unique = list(dict.fromkeys(settings))
    cmap = colormaps["tab10" if len(unique) <= 10 else "tab20" if len(unique) <= 20 else "turbo"]
    n = max(len(unique) - 1, 1)
    return {s: cmap(i) if len(unique) <= 20 else cmap(i / n) for i, s in enumerate(unique)}
