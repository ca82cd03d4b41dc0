"""The per-run report: numbers as CSV/JSON, figures as PNG, one self-contained HTML page, and the
lot logged back to the run under `analysis/`.

`build_run_report` only reads a `RunData` (and optionally the test images) and writes files;
`publish.log_run_report` logs them to the run.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import metrics
from analysis.errors import AnalysisError
from analysis.records import EpochPredictions, TrainingRecord
from analysis.runs import RunData
from mnist_train import contract

TOP_PAIRS = 5  # most-confused pairs listed in the summary and drawn in the gallery
WRONG_ROWS = 15  # wrong predictions (with their top-3) listed in the HTML page
HIDDEN_TAGS = ("mlflow.log-model.history",)  # long JSON blobs that would swamp the tag table


@dataclass
class RunReport:
    """What `build_run_report` wrote: `files` in writing order (report.html last)."""

    out_dir: Path
    summary: dict
    files: list[Path] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    @property
    def html(self) -> Path:
        return self.out_dir / "report.html"


@dataclass
class _Figure:
    file: str
    title: str
    caption: str


class _Page:
    """The files and figures of a report as they are written into `out`."""

    def __init__(self, out: Path):
        self.out = out
        self.files: list[Path] = []
        self.figures: list[_Figure] = []
        self._undrawn: list[tuple[object, Path]] = []

    def add(self, display, name: str, heading: str, caption: str) -> None:
        """A figure of the page, drawn into its file by `draw` (all at once: in parallel)."""
        self._undrawn.append((display.figure_, self.out / name))
        self.files.append(self.out / name)
        self.figures.append(_Figure(name, heading, caption))

    def draw(self, *, parallel: bool = True) -> None:
        from analysis.figures.common import save_figures

        save_figures(self._undrawn, parallel=parallel)
        self._undrawn = []

    def csv(self, frame: pd.DataFrame, name: str, *, index: bool = True) -> None:
        self.files.append(_write_csv(frame, self.out / name, index=index))


def build_run_report(
    run: RunData,
    out_dir: str | Path,
    *,
    images: np.ndarray | None = None,
    train_labels: np.ndarray | None = None,
    notices: list[str] | None = None,
    records: tuple[EpochPredictions | None, TrainingRecord | None] = (None, None),
    train_images: np.ndarray | None = None,
) -> RunReport:
    """Write the report of `run` into `out_dir`.

    `images`: uint8 (M, 28, 28) MNIST test images indexed by the predictions' `index`, or None
    (the image galleries are then skipped). `train_labels`: int (M,) training labels for the
    dataset view, or None. `notices`: extra lines to show in the report, e.g. why
    images are missing. `records`: the run's per-example (test, training) records, checked
    (`runs.load_example_records`), or None each; `train_images` uint8 (M, 28, 28) for their
    galleries. Raises AnalysisError when the run has nothing to report on.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = RunReport(out, summary={}, notices=[*run.notices, *(notices or [])])
    page = _Page(out)
    dynamics = None
    if any(record is not None for record in records):
        # the dynamics sections are built and drawn by a helper on the other core meanwhile
        labels = run.predictions.labels if run.predictions is not None else None
        dynamics = _dynamics_alongside(out, records, labels, images, train_images, train_labels)
    summary = _run_header(run)
    summary["overfit"], summary["marked_epoch"] = _curve_sections(page, run)
    # the contract's end-of-run metric (last train minus last test accuracy)
    summary["overfit_gap"] = run.metrics.get(contract.OVERFIT_GAP)
    summary["final_epoch_metrics"] = (
        {k: _clean(v) for k, v in run.epochs.iloc[-1].items()} if len(run.epochs) else None
    )
    tables = {}
    if run.predictions is not None:
        tables = _prediction_sections(page, run, summary)
        _gallery_sections(page, run.predictions, images, train_labels)
    elif not len(run.epochs) and not len(run.batch_loss):
        raise AnalysisError(f"run {run.run_id} has nothing to report on")

    page.draw(parallel=dynamics is None)
    if dynamics is not None:
        summary["dynamics"], files, figures = dynamics()
        page.files += files
        page.figures += figures
    summary["notices"] = list(report.notices)
    report.summary = _clean(summary)
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(report.summary, indent=2) + "\n")
    report.files = [*page.files, summary_path]
    html = render_html(run, report.summary, page.figures, tables, out)
    report.html.write_text(html, encoding="utf-8")
    report.files.append(report.html)
    return report


def _dynamics_alongside(out: Path, records, labels, images, train_images, train_labels):
    """Start building and drawing the dynamics sections in a helper process; returns what waits
    for (their summary, their files, their figures)."""
    from analysis.dynamics_report import add_dynamics_sections
    from analysis.figures.common import alongside

    def sections() -> tuple[dict, list[Path], list[_Figure]]:
        page = _Page(out)
        summary = add_dynamics_sections(
            page.add, *records, labels, images, train_images, train_labels
        )
        page.draw(parallel=False)
        return summary, page.files, page.figures

    return alongside(sections)


def _curve_sections(page: _Page, run: RunData) -> tuple[dict | None, int | None]:
    """epochs.csv, the learning curves and the per-step loss; the overfitting summary (None
    without train and test accuracy curves) and the epoch the curves mark as best."""
    from analysis.figures import run as plots

    epochs = run.epochs
    overfit = None
    if {contract.TRAIN_ACCURACY, contract.TEST_ACCURACY} <= set(epochs.columns) and len(epochs):
        overfit = metrics.overfit_summary(epochs)
        page.csv(epochs.join(metrics.overfit_gap(epochs)), "epochs.csv")
    marked = None
    if len(epochs):
        curves = plots.LearningCurvesDisplay(epochs, title=f"{run.label} ({run.run_id[:8]})")
        marked = curves.plot().best_
        on_val = contract.VAL_LOSS in epochs and epochs[contract.VAL_LOSS].notna().any()
        page.add(
            curves,
            "learning_curves.png",
            "Learning curves",
            "Loss and accuracy per epoch on the training images (as trained)"
            + (", the validation images" if on_val else "")
            + " and the test images; the dotted line marks the epoch with the lowest "
            + (
                "validation loss."
                if on_val
                else "test loss (there is no validation split, so this choice reads the test "
                "set and flatters it)."
            ),
        )
    if len(run.batch_loss):
        page.add(
            plots.BatchLossDisplay(run.batch_loss).plot(),
            "batch_loss.png",
            "Loss per step",
            "Training loss of every optimisation step and its running mean.",
        )
    return overfit, marked


def _prediction_sections(page: _Page, run: RunData, summary: dict) -> dict:
    """The numbers of the stored predictions (the model of record's): CSVs, the confusion
    matrix, per-digit accuracy and calibration; `summary` gains them. Returns the tables."""
    from analysis.figures import run as plots

    pred = run.predictions
    y_true, y_pred, probs = pred.labels, pred.y_pred, pred.probs
    counts = metrics.confusion_matrix(y_true, y_pred)
    per_class = metrics.per_class_report(y_true, y_pred)
    confused = metrics.most_confused_pairs(y_true, y_pred, top_k=TOP_PAIRS)
    confidence = metrics.confidence_stats(y_true, probs)
    wrong = metrics.wrong_predictions(y_true, probs, index=pred.index)
    bins = metrics.reliability_bins(y_true, probs)
    ece = metrics.expected_calibration_error(y_true, probs)
    summary.update(
        {
            "n_test": int(len(pred)),
            "accuracy": metrics.accuracy(y_true, y_pred),
            "n_wrong": int(len(wrong)),
            "ece": ece,
            "most_confused_pairs": confused.to_dict(orient="records"),
            "confidence": confidence.to_dict(orient="index"),
            "worst_digit": int(per_class["accuracy"].idxmin()),
        }
    )
    cm_frame = pd.DataFrame(
        counts, index=pd.Index(range(10), name="true"), columns=[f"pred_{d}" for d in range(10)]
    )
    page.csv(cm_frame, "confusion_matrix.csv")
    page.csv(per_class, "per_class.csv")
    page.csv(wrong, "wrong_predictions.csv", index=False)
    page.csv(bins, "reliability_bins.csv", index=False)
    page.add(
        plots.ConfusionHeatmapDisplay(counts).plot(),
        "confusion_matrix.png",
        "Confusion matrix",
        "Rows are true digits, columns predictions; cells hold counts, shaded by the fraction of "
        "the true digit.",
    )
    page.add(
        plots.PerClassAccuracyDisplay(per_class["accuracy"].to_numpy(), summary["accuracy"]).plot(),
        "per_class_accuracy.png",
        "Accuracy per digit",
        "Share of each digit's test images classified correctly; the weakest digit is red.",
    )
    page.add(
        plots.ReliabilityDisplay(bins, ece).plot(),
        "reliability.png",
        "Calibration",
        "Accuracy against top-1 confidence per bin; a bar below its red confidence mark means "
        "over-confidence. Numbers are images per bin.",
    )
    return {
        "per_class": per_class,
        "confused": confused,
        "confidence": confidence,
        "wrong": wrong.head(WRONG_ROWS),
    }


def _gallery_sections(
    page: _Page, pred, images: np.ndarray | None, train_labels: np.ndarray | None
) -> None:
    """The data set view and, with the test images at hand, the image galleries."""
    from analysis.figures import gallery

    y_true, y_pred, probs = pred.labels, pred.y_pred, pred.probs
    if images is None:
        page.add(
            gallery.DatasetOverviewDisplay(y_true, train_labels=train_labels).plot(),
            "dataset.png",
            "Data set",
            "Images per digit in the test set.",
        )
        return
    page.add(
        gallery.DatasetOverviewDisplay(
            y_true, images[pred.index], train_labels=train_labels
        ).plot(),
        "dataset.png",
        "Data set",
        "Images per digit (as a share of the training and test sets when the training labels are "
        "at hand) and the first test image of each digit.",
    )
    page.add(
        gallery.PredictionGalleryDisplay.from_predictions(images, y_true, probs, pred.index),
        "predictions.png",
        "Prediction gallery",
        "The first 7 correct and first 3 wrong test predictions of the model of record.",
    )
    wrong = np.flatnonzero(y_pred != y_true)
    if not len(wrong):
        return
    first = int(wrong[0])
    page.add(
        gallery.ConfidenceDisplay(
            images[pred.index[first]],
            probs[first],
            y_true[first],
            y_pred[first],
            test_index=int(pred.index[first]),
        ).plot(),
        "confidence.png",
        "Confidence of a wrong prediction",
        "The first wrong prediction and the model's probability for every digit.",
    )
    page.add(
        gallery.MisclassificationGalleryDisplay.from_predictions(
            images, y_true, probs, pred.index, top_pairs=TOP_PAIRS
        ),
        "misclassified.png",
        "Misclassifications by digit pair",
        "Wrong predictions of the most frequent (true, predicted) pairs, with the model's "
        "confidence in its wrong answer.",
    )


# --------------------------------------------------------------------------- HTML


def render_html(
    run: RunData, summary: dict, figures: list[_Figure], tables: dict, out_dir: Path
) -> str:
    """The report page: one file, figures inlined as base64 PNG data URIs, every run-provided
    string (names, params, tags) escaped by Jinja2's autoescaping."""
    from analysis.html import render

    embedded = [
        {
            "title": f.title,
            "caption": f.caption,
            "file": f.file,
            "data_uri": "data:image/png;base64,"
            + base64.b64encode((out_dir / f.file).read_bytes()).decode(),
        }
        for f in figures
    ]
    tags = {k: v for k, v in sorted(run.tags.items()) if k not in HIDDEN_TAGS}
    return render(
        "report.html",
        run=run,
        summary=summary,
        figures=embedded,
        tables=tables,
        params=dict(sorted(run.params.items())),
        tags=tags,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


# --------------------------------------------------------------------------- helpers


def _run_header(run: RunData) -> dict:
    record = run.record
    return {
        "run_id": run.run_id,
        "run_name": run.run_name,
        "experiment": run.experiment_name,
        "status": run.status,
        "start_time": _iso(run.start_time),
        "end_time": _iso(run.end_time),
        "epochs_logged": int(len(run.epochs)),
        contract.TRAIN_TIME: run.metrics.get(contract.TRAIN_TIME),
        "params": dict(run.params),
        "n_test": None,
        # the model of record: the epoch whose weights and predictions the run stored (the best
        # one under early stopping), and that epoch's scores; every tile states these
        "model_of_record": {
            "epoch": record.epoch,
            "last_epoch": record.last_epoch,
            "described": record.described,
            "scores": dict(record.scores),
        },
        "predictions_epoch": record.epoch,
        "best_epoch": _int_or_none(run.metrics.get(contract.BEST_EPOCH)),
        "val_accuracy": record.get(contract.VAL_ACCURACY),
        "record_gap": (
            record.scores[contract.TRAIN_ACCURACY] - record.scores[contract.TEST_ACCURACY]
            if {contract.TRAIN_ACCURACY, contract.TEST_ACCURACY} <= set(record.scores)
            else None
        ),
        "n_wrong": None,
        "accuracy": None,
        "ece": None,
        "most_confused_pairs": None,
    }


def _iso(ms: int | None) -> str | None:
    return (
        None
        if ms is None
        else datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")
    )


def _write_csv(frame: pd.DataFrame, path: Path, *, index: bool = True) -> Path:
    frame.to_csv(path, index=index, float_format="%.6g")
    return path


def _int_or_none(value) -> int | None:
    return None if value is None else int(value)


def _clean(value):
    """JSON-ready copy: numpy scalars to Python, NaN/inf to None, tuple keys to strings."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
