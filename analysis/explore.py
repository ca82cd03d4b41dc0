"""`mnist-analysis explore`: every test image across the selected runs, in one offline page.

select (`selection.load_comparison_runs`, exactly as `compare`) -> compute a frozen
`ExplorerView` of plain arrays (`build_view`, pure) -> write `explorer.html`
(`templates/explorer.html`, arrays packed as base64 little-endian bytes, thumbnails as one PNG
sprite) -> publish it to the sweep's parent run, or to a report run of its own.

Everything the page filters and sorts on is computed here once, so the page only reads arrays;
the label-quality score and the `flagged` verdict are the `labels` command's ranking
(`label_issues.test_set_ranking`), so `#suspect=1` shows exactly the images it flags.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis import label_issues
from analysis.errors import AnalysisError
from analysis.runs import RunData
from mnist_train import contract

# tags, to move into mnist_train/contract.py with the other names (not this branch's file)
SPRITE_COLUMNS = 100  # thumbnails per sprite row: 10,000 test images make a 2800 x 2800 PNG
QUANTA = 255  # probabilities are stored as round(p * 255) in one byte: 0.4% steps


@dataclass(frozen=True)
class RunArrays:
    """One run as the view needs it: `probs` float32 (N, 10), the model of record's; `by_epoch`
    float (E, N, 10) and `epochs` int (E,) from `predictions/test_by_epoch.npz`, or None."""

    run_id: str
    label: str
    probs: np.ndarray
    by_epoch: np.ndarray | None = None
    epochs: np.ndarray | None = None


@dataclass(frozen=True)
class ExplorerView:
    """What the page shows, for N test images and R runs, in torchvision test-set order.

    Per image: `index` int (N,) position in the torchvision test set, `given` uint8 (N,),
    `agreement` float32 (N,) the share of runs predicting the most predicted digit, `margin`
    float32 (N,) the runs' mean probability of the given digit minus that of the likeliest
    other digit (negative: the runs prefer another digit), and the label ranking's `score`
    float32, `suggested` uint8 and `flagged` bool. Per run (tuples of R): `probs` uint8
    (N, 10) quantised, `predicted` uint8 (N,) taken before quantising, and when the run kept a
    per-epoch record `epochs` int (E,), `first_right` uint8 (N,) the first epoch whose
    prediction was the given digit (0: never), `flips` uint8 (N,) how often the prediction
    changed between consecutive epochs, `epoch_given` / `epoch_predicted` uint8 (E, N) the
    quantised probability of the given digit and of the run's final prediction at each epoch.
    """

    run_ids: tuple[str, ...]
    labels: tuple[str, ...]
    baseline: int  # position of the baseline run, for fixed / broken
    index: np.ndarray
    given: np.ndarray
    agreement: np.ndarray
    margin: np.ndarray
    score: np.ndarray
    suggested: np.ndarray
    flagged: np.ndarray
    probs: tuple[np.ndarray, ...]
    predicted: tuple[np.ndarray, ...]
    epochs: tuple[np.ndarray | None, ...]
    first_right: tuple[np.ndarray | None, ...]
    flips: tuple[np.ndarray | None, ...]
    epoch_given: tuple[np.ndarray | None, ...]
    epoch_predicted: tuple[np.ndarray | None, ...]

    def __len__(self) -> int:
        return len(self.index)


@dataclass(frozen=True)
class ExploreResult:
    view: ExplorerView
    path: Path  # explorer.html
    logged: str | None  # the MLflow run holding the page, None with --no-log
    notes: list[str]


# --------------------------------------------------------------------------- computing (pure)


def quantise(probs: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] as uint8 round(p * 255), same shape."""
    return np.rint(np.clip(np.asarray(probs, dtype=np.float32), 0, 1) * QUANTA).astype(np.uint8)


def build_view(runs: Sequence[RunArrays], given, index, *, baseline: int = 0) -> ExplorerView:
    """The explorer's arrays for `runs` scored on the same N test images.

    given int (N,); index int (N,). Every run's `probs` must be (N, 10) and its `by_epoch`, when
    present, (E, N, 10) with `epochs` (E,); anything else is a ValueError (a bug upstream:
    `explore_runs` checks the stored files before calling this).
    """
    given = np.asarray(given, dtype=np.int64)
    n = len(given)
    if not runs or not 0 <= baseline < len(runs):
        raise ValueError(f"need at least one run and a baseline among them, got {len(runs)}")
    for run in runs:
        if run.probs.shape != (n, contract.N_CLASSES):
            raise ValueError(f"run {run.run_id}: probs {run.probs.shape}, expected ({n}, 10)")
        if run.by_epoch is not None and run.by_epoch.shape[1:] != (n, contract.N_CLASSES):
            raise ValueError(
                f"run {run.run_id}: by_epoch {run.by_epoch.shape}, expected (E, {n}, 10)"
            )
    stacked = np.stack([np.asarray(r.probs, dtype=np.float32) for r in runs])  # (R, N, 10)
    predicted = stacked.argmax(axis=2)
    ranking = label_issues.test_set_ranking(given, stacked, index)
    ranked = ranking.set_index("index").reindex(np.asarray(index, dtype=np.int64))
    per_epoch = [_epoch_arrays(r, given, predicted[k]) for k, r in enumerate(runs)]
    return ExplorerView(
        run_ids=tuple(r.run_id for r in runs),
        labels=tuple(r.label for r in runs),
        baseline=baseline,
        index=np.asarray(index, dtype=np.int64),
        given=given.astype(np.uint8),
        agreement=_agreement(predicted),
        margin=_margin(stacked.mean(axis=0), given),
        score=ranked["score"].to_numpy(np.float32),
        suggested=ranked["suggested"].to_numpy(np.uint8),
        flagged=ranked["flagged"].to_numpy(bool),
        probs=tuple(quantise(p) for p in stacked),
        predicted=tuple(p.astype(np.uint8) for p in predicted),
        epochs=tuple(e[0] for e in per_epoch),
        first_right=tuple(e[1] for e in per_epoch),
        flips=tuple(e[2] for e in per_epoch),
        epoch_given=tuple(e[3] for e in per_epoch),
        epoch_predicted=tuple(e[4] for e in per_epoch),
    )


def _agreement(predicted: np.ndarray) -> np.ndarray:
    """predicted int (R, N) -> float32 (N,): share of runs predicting the most predicted digit."""
    votes = np.stack([(predicted == d).sum(axis=0) for d in range(contract.N_CLASSES)])
    return (votes.max(axis=0) / predicted.shape[0]).astype(np.float32)


def _margin(mean: np.ndarray, given: np.ndarray) -> np.ndarray:
    """mean float (N, 10), given int (N,) -> float32 (N,): p(given) - max p(other digit)."""
    rows = np.arange(len(given))
    others = mean.copy()
    others[rows, given] = -np.inf
    return (mean[rows, given] - others.max(axis=1)).astype(np.float32)


def _epoch_arrays(run: RunArrays, given: np.ndarray, final: np.ndarray) -> tuple:
    """(epochs, first_right, flips, epoch_given, epoch_predicted) of one run, Nones without a
    per-epoch record; `final` int (N,) is the run's prediction of record."""
    if run.by_epoch is None:
        return None, None, None, None, None
    probs = np.asarray(run.by_epoch, dtype=np.float32)
    epochs = np.asarray(run.epochs, dtype=np.int64)
    predicted = probs.argmax(axis=2)  # (E, N)
    right = predicted == given[None, :]
    # 1-based position of the first right epoch, 0 when none: argmax finds the first True
    first = np.where(right.any(axis=0), epochs[right.argmax(axis=0)], 0)
    flips = (predicted[1:] != predicted[:-1]).sum(axis=0)
    rows = np.arange(len(given))
    # one byte per image keeps the page small; an epoch or a flip count beyond 255 reads as 255
    return (
        epochs,
        np.minimum(first, 255).astype(np.uint8),
        np.minimum(flips, 255).astype(np.uint8),
        quantise(probs[:, rows, given]),
        quantise(probs[:, rows, final]),
    )


# --------------------------------------------------------------------------- selecting, loading


def explore_runs(
    *,
    out_dir: str | Path,
    experiments: Sequence[str] = (),
    run_ids: Sequence[str] = (),
    parent_run_id: str | None = None,
    filter_string: str | None = None,
    baseline: str | None = None,
    tracking_uri: str | None = None,
    data_dir: str | Path | None = None,
    cache_dir=None,
    log_to_mlflow: bool = True,
) -> ExploreResult:
    """Select runs as `compare` does, build the view, write explorer.html, log it."""
    from analysis.comparison import choose_baseline
    from analysis.publish import check_out_folder
    from analysis.runs import connect
    from analysis.selection import load_comparison_runs, predictions_missing, predictions_notes

    if not (experiments or run_ids or parent_run_id or filter_string):
        raise AnalysisError("choose runs with --experiment, --runs, --parent or --filter")
    check_out_folder(out_dir, (Path(contract.EXPLORER_PATH).name,))
    client = connect(tracking_uri)
    runs, excluded, notes = load_comparison_runs(
        client,
        experiments=experiments,
        run_ids=run_ids,
        parent_run_id=parent_run_id,
        filter_string=filter_string,
        cache_dir=cache_dir,
    )
    notes += [f"skipped {e.label}: {e.reason}" for e in excluded]
    with_predictions = [r for r in runs if r.predictions is not None]
    if not with_predictions:
        raise predictions_missing(runs)
    base = next(r for r in runs if r.run_id == choose_baseline(with_predictions, baseline))
    shared, more = _same_test_set(with_predictions, base)
    notes += more
    notes += predictions_notes(runs)
    arrays = [_run_arrays(client, r, cache_dir, notes) for r in shared]
    view = build_view(
        arrays, base.predictions.labels, base.predictions.index, baseline=shared.index(base)
    )
    sprite = sprite_png(_test_images(base, data_dir), view.index)
    title = f"{len(shared)} runs explored"
    if parent_run_id:
        parent = client.get_run(parent_run_id)
        title = f"Sweep {parent.info.run_name or parent_run_id[:8]}: {title}"
    path = write_explorer(view, out_dir, sprite=sprite, title=title, notes=notes)
    logged = None
    if log_to_mlflow:
        from analysis.publish import log_explorer

        logged = log_explorer(
            client,
            path,
            list(view.run_ids),
            parent_run_id=parent_run_id,
            experiment_id=base.experiment_id,
        )
    return ExploreResult(view, path, logged, notes)


def _same_test_set(runs: list[RunData], base: RunData) -> tuple[list[RunData], list[str]]:
    """The runs scored on the baseline's test images with its labels, and a note per other."""
    ref = base.predictions
    same, notes = [], []
    for run in runs:
        p = run.predictions
        if np.array_equal(p.index, ref.index) and np.array_equal(p.labels, ref.labels):
            same.append(run)
        else:
            notes.append(f"left out {run.label}: scored on other test images than the baseline")
    return same, notes


def _run_arrays(client, run: RunData, cache_dir, notes: list[str]) -> RunArrays:
    """A run's predictions and, when it kept a usable one, its per-epoch record (checked
    against its predictions by `runs.load_epoch_predictions`)."""
    from analysis.runs import load_epoch_predictions

    p = run.predictions
    record, problem = load_epoch_predictions(client, run, cache_dir=cache_dir)
    if problem:
        notes.append(f"{problem}: no per-epoch columns for it")
    elif record is None:
        notes.append(f"{run.label} kept no {contract.TEST_BY_EPOCH_PATH}: no per-epoch columns")
    if record is None:
        return RunArrays(run.run_id, run.label, p.probs)
    return RunArrays(run.run_id, run.label, p.probs, record.probs, record.epochs)


def _test_images(base: RunData, data_dir) -> np.ndarray:
    """The MNIST test images the baseline was scored on; AnalysisError without them, as the
    page is about images."""
    from analysis.images import load_test_set, matching_images, resolve_data_dir

    images, labels = load_test_set(resolve_data_dir(data_dir, base))
    matched, why = matching_images(base.predictions, images, labels)
    if matched is None:
        raise AnalysisError(f"explore needs the test images the runs were scored on: {why}")
    return matched


# --------------------------------------------------------------------------- writing


def sprite_png(images: np.ndarray, index: np.ndarray) -> bytes:
    """PNG bytes of the images `images[index]`, ink dark on white, SPRITE_COLUMNS to a row in
    view order (image k at column k % SPRITE_COLUMNS, row k // SPRITE_COLUMNS).

    One greyscale PNG is 1.7 MB for the 10,000 test images, a quarter of their raw bytes, and
    the browser decodes it natively; the page draws thumbnails and the large image from it.
    """
    from PIL import Image

    picked = 255 - np.asarray(images, dtype=np.uint8)[np.asarray(index)]
    n, h, w = picked.shape
    rows = -(-n // SPRITE_COLUMNS)
    padded = np.full((rows * SPRITE_COLUMNS, h, w), 255, dtype=np.uint8)
    padded[:n] = picked
    grid = padded.reshape(rows, SPRITE_COLUMNS, h, w).transpose(0, 2, 1, 3)
    buffer = io.BytesIO()
    Image.fromarray(grid.reshape(rows * h, SPRITE_COLUMNS * w), "L").save(buffer, "PNG")
    return buffer.getvalue()


def packed(array: np.ndarray | None) -> str | None:
    """A numeric array as base64 of its little-endian bytes (the page's typed arrays)."""
    if array is None:
        return None
    little = np.ascontiguousarray(array).astype(np.asarray(array).dtype.newbyteorder("<"))
    return base64.b64encode(little.tobytes()).decode("ascii")


def page_data(view: ExplorerView) -> dict:
    """The page's data: plain JSON values and packed arrays (uint8 unless said otherwise)."""
    runs = []
    for k, run_id in enumerate(view.run_ids):
        epochs = view.epochs[k]
        runs.append(
            {
                "id": run_id,
                "label": view.labels[k],
                "epochs": [] if epochs is None else [int(e) for e in epochs],
                "probs": packed(view.probs[k]),
                "pred": packed(view.predicted[k]),
                "first": packed(view.first_right[k]),
                "flips": packed(view.flips[k]),
                "epoch_given": packed(view.epoch_given[k]),
                "epoch_pred": packed(view.epoch_predicted[k]),
            }
        )
    return {
        "n": len(view),
        "baseline": view.baseline,
        "quanta": QUANTA,
        "sprite_columns": SPRITE_COLUMNS,
        "image_size": contract.IMAGE_SHAPE[0],
        "index": packed(view.index.astype(np.int32)),
        "given": packed(view.given),
        "suggested": packed(view.suggested),
        "flagged": packed(view.flagged.astype(np.uint8)),
        "score": packed(view.score.astype(np.float32)),
        "margin": packed(view.margin.astype(np.float32)),
        "agreement": packed(view.agreement.astype(np.float32)),
        "runs": runs,
    }


def write_explorer(
    view: ExplorerView, out_dir: str | Path, *, sprite: bytes, title: str, notes: Sequence[str]
) -> Path:
    """Write `out_dir/explorer.html`, one self-contained file; returns its path."""
    from analysis.html import render

    html = render(
        "explorer.html",
        title=title,
        generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        notes=list(notes),
        data=page_data(view),
        sprite=base64.b64encode(sprite).decode("ascii"),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / Path(contract.EXPLORER_PATH).name
    path.write_text(html, encoding="utf-8")
    return path
