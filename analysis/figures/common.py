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
import os
import pickle
import select
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

# One meaning, one colour, in every figure and in the HTML report.
COLORS = {
    "train": "#1f77b4",  # blue
    "test": "#ff7f0e",  # orange
    "validation": "#9467bd",  # purple
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
    _draw(figure, path)
    return path


T = TypeVar("T")
PARALLEL_FROM = 4  # figures: fewer are not worth a second process
HELPER_TIMEOUT_S = 300.0  # a helper silent this long is killed and its figures drawn here


def alongside(work: Callable[[], T]) -> Callable[[], T]:
    """Start `work` (which returns something picklable) in a helper process, a forked copy of
    this one, so that it runs on the other core while this process goes on; returns what waits
    for its result. Where the OS cannot fork, or the helper fails or falls silent for
    `HELPER_TIMEOUT_S`, the waiting runs `work` here instead (so its errors are raised here)."""
    if not hasattr(os, "fork"):
        return work
    readable, writable = os.pipe()

    def send() -> None:
        os.close(readable)
        payload = pickle.dumps(work())
        with os.fdopen(writable, "wb") as pipe:
            pipe.write(payload)

    helper = _fork(send)
    os.close(writable)

    def result() -> T:
        payload = _read_all(readable, time.monotonic() + HELPER_TIMEOUT_S)
        if payload is None:  # silent past the deadline
            _helper_finished(helper, timeout=0)
        elif _helper_finished(helper) and payload:
            return pickle.loads(payload)
        return work()

    return result


def _fork(child: Callable[[], None]) -> int:
    """A forked helper that runs `child` and leaves (status 0, else 1) without this process's
    exit handlers; its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child()
            code = 0
        finally:
            os._exit(code)
    return pid


def _read_all(fd: int, deadline: float) -> bytes | None:
    """Everything written to pipe `fd` until its writer closes it, or None past `deadline`."""
    chunks = []
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while True:
            ready, _, _ = select.select([pipe], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                return None
            chunk = pipe.read(1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def save_figures(jobs: Sequence[tuple[object, Path]], *, parallel: bool = True) -> list[Path]:
    """Write each `(figure, path)` of `jobs` as `save_figure` does; their paths, in order.

    Drawing and PNG encoding are most of a report's time, and one figure is drawn on one core:
    where the OS can fork, a helper process (a copy of this one, figures included) draws
    alongside this one, each taking the next undrawn figure. Each file is written whole
    (renamed into place) so a helper that dies leaves none half-written, and whatever it did
    not finish is drawn here. `parallel=False` draws them all here (another helper is busy).
    """
    paths = [Path(path) for _, path in jobs]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    if not parallel or len(jobs) < PARALLEL_FROM or not hasattr(os, "fork"):
        for figure, path in zip((figure for figure, _ in jobs), paths, strict=True):
            _draw(figure, path)
        return paths
    import multiprocessing

    _draw(jobs[0][0], paths[0])  # here first: the first PNG imports what encoding needs
    next_job = multiprocessing.get_context("fork").Value("i", 1)
    helper = _fork(lambda: _draw_from(jobs, paths, next_job))
    drawn = _draw_from(jobs, paths, next_job)
    if not _helper_finished(helper):
        for index in range(1, len(jobs)):
            if index not in drawn:
                _draw(jobs[index][0], paths[index])
    return paths


def _draw(figure, path: Path) -> None:
    """`figure` as PNG at `path`, written whole. Deflated at level 1, not PIL's 6: a seed-MLP
    report's 17 PNGs were 14% larger (921 against 809 kB) and 0.1 s quicker to write."""
    part = path.with_name(f".{path.name}.part")
    figure.savefig(part, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    os.replace(part, path)


def _draw_from(jobs, paths: list[Path], next_job) -> set[int]:
    """Draw the next undrawn figure until none is left; the indexes drawn."""
    drawn = set()
    while True:
        with next_job.get_lock():
            index = next_job.value
            next_job.value += 1
        if index >= len(jobs):
            return drawn
        _draw(jobs[index][0], paths[index])
        drawn.add(index)


def _helper_finished(pid: int, timeout: float = HELPER_TIMEOUT_S) -> bool:
    """Wait for the helper; True if it did all it took on (else it is gone now)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


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


def annotated_heatmap(
    ax,
    values: np.ndarray,
    *,
    annot: np.ndarray | None,
    cmap: str,
    vmin: float | None = None,
    vmax: float | None = None,
    cbar_label: str = "",
    xticklabels: Sequence = (),
    yticklabels: Sequence = (),
    fontsize: float = 9,
    square: bool = False,
    linewidth: float = 0.0,
):
    """A heatmap of `values` (rows top to bottom) with the text `annot` in each cell (empty
    strings leave a cell blank) and a colour bar; the mesh is `ax.collections[0]`.

    Drawn with matplotlib alone: seaborn's heatmap did the same and cost a second of imports.
    Text is white on dark cells and black on light ones.
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    values = np.asarray(values, dtype=np.float64)
    rows, cols = values.shape
    norm = Normalize(
        vmin=np.nanmin(values) if vmin is None else vmin,
        vmax=np.nanmax(values) if vmax is None else vmax,
    )
    mesh = ax.pcolormesh(
        values,
        cmap=cmap,
        norm=norm,
        edgecolors="white" if linewidth else "face",
        linewidth=linewidth,
    )
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)  # row 0 at the top, as a matrix is read
    if square:
        ax.set_aspect("equal")
    ax.set_xticks(np.arange(cols) + 0.5, [str(t) for t in xticklabels] or range(cols))
    ax.set_yticks(np.arange(rows) + 0.5, [str(t) for t in yticklabels] or range(rows))
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    colour_map = colormaps[cmap]
    if annot is not None:
        for (r, c), text in np.ndenumerate(np.asarray(annot, dtype=object)):
            if text == "" or text is None:
                continue
            red, green, blue, _ = colour_map(norm(values[r, c]))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            ax.text(
                c + 0.5,
                r + 0.5,
                str(text),
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if dark else "black",
            )
    colorbar = ax.figure.colorbar(mesh, ax=ax)
    if cbar_label:
        colorbar.set_label(cbar_label)
    return mesh


def _texts(figure):
    """The visible, non-empty texts of `figure` with their drawn boxes (pixels), after a draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    hidden = _undrawn_tick_labels(figure)
    found = []
    for text in figure.findobj(Text):
        if (
            text.get_visible()
            and text.get_text().strip()
            and _shown(text)
            and id(text) not in hidden
        ):
            found.append((text, text.get_window_extent(renderer)))
    return found


def _undrawn_tick_labels(figure) -> set[int]:
    """Ids of tick labels outside their axis' view: matplotlib keeps but does not draw them."""
    hidden = set()
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            span = (high - low) * 1e-9
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                if not low - span <= tick.get_loc() <= high + span:
                    hidden.update({id(tick.label1), id(tick.label2)})
    return hidden


def _shown(text) -> bool:
    """A text is drawn only when its axes (if any) is visible too."""
    axes = text.axes
    return axes is None or axes.get_visible()


def overlapping_texts(figure, *, tolerance: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of texts of `figure` (titles, tick labels, legend entries, annotations, cell
    numbers) whose drawn boxes overlap by more than `tolerance` pixels either way: what makes a
    figure unreadable. Empty for a clean figure."""
    placed = _texts(figure)
    pairs = []
    for i, (a, box_a) in enumerate(placed):
        for b, box_b in placed[i + 1 :]:
            width = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
            height = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
            if width > tolerance and height > tolerance:
                pairs.append((a.get_text(), b.get_text()))
    return pairs


def spread_annotations(ax, texts: Sequence) -> None:
    """Move annotations (offset-point `ax.annotate` texts, in priority order) down until none
    overlaps an earlier one: labels of nearby points stay readable."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(ax.figure).get_renderer()
    placed = []
    for text in texts:
        for _ in range(30):
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            x, y = text.xyann
            text.xyann = (x, y - box.height * 72 / ax.figure.dpi - 1)
        placed.append(text.get_window_extent(renderer))
