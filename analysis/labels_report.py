"""`mnist-analysis labels`: suspected label errors in the test and training sets, from stored runs.

Test set: each selected run's `predictions/test.npz`, every test image ranked by confident
learning (`label_issues.test_set_ranking`). Training set: when the selection holds K-fold
cross-validation runs, their `predictions/heldout.npz` are assembled into out-of-sample
probabilities for every training image (`folds.assemble`: each image exactly once per set of
folds) and ranked the same way; otherwise the runs' `dynamics/train.npz` give an in-sample list
(`label_issues.train_set_issues`), from models that trained on those very images, which flags
mostly their own mistakes. The report and the command say which of the two it is. Writes
`label_issues.csv` (every test image, with confident learning's `flagged`),
`label_issues_train.csv` (every training image the same way, or the in-sample suspects only) and
`report.html` with galleries; `publish.py` logs them. The more and the stronger the runs (a seeds
sweep, CNNs), the better the list: the report says how many it rests on.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import folds, label_issues
from analysis.comparison import Excluded
from analysis.errors import AnalysisError
from analysis.runs import RunData, int_param
from mnist_train import contract
from mnist_train.csv_safe import safe_frame

GALLERY = 40  # most suspect images shown per set
TABLE_ROWS = 100
WRITES = ("label_issues.csv", "label_issues_train.csv", "report.html")  # all it puts in --out
# what the training-set list rests on without cross-validation runs (with them,
# `folds.Assembled.basis`: "out-of-sample, 5-fold cross-validation")
IN_SAMPLE = "in-sample, from models that trained on these images"


@dataclass(frozen=True)
class TrainingSet:
    """The training-set part of the report. `table`: every training image ranked
    (label_issues.RANKING_COLUMNS) when `out_of_sample`, else the in-sample suspects only
    (label_issues.COLUMNS); `basis`: which probabilities it rests on; `n_runs`: how many runs."""

    table: pd.DataFrame
    basis: str
    out_of_sample: bool
    n_runs: int

    @property
    def flagged(self) -> pd.DataFrame:
        """The suspects, in label_issues.COLUMNS, most suspect first."""
        return label_issues.flagged_rows(self.table) if self.out_of_sample else self.table


@dataclass(frozen=True)
class LabelsResult:
    path: Path  # report.html
    test: pd.DataFrame  # the flagged test images (label_issues.COLUMNS)
    train: pd.DataFrame  # the suspected training images (label_issues.COLUMNS)
    ranking: pd.DataFrame  # every test image (label_issues.RANKING_COLUMNS)
    n_runs: int
    notes: list[str]
    training: TrainingSet  # the training-set ranking and what it rests on


def run_labels(
    tracking_uri: str | None,
    out_dir: str | Path,
    *,
    experiments=(),
    run_ids=(),
    parent_run_id: str | None = None,
    filter_string: str | None = None,
    data_dir=None,
    cache_dir=None,
) -> LabelsResult:
    """Select runs as `compare` does, write the report, log it to a sweep's parent."""
    from analysis.publish import check_out_folder, log_labels_report, written_files
    from analysis.runs import connect
    from analysis.selection import load_comparison_runs

    check_out_folder(out_dir, WRITES)
    client = connect(tracking_uri)
    runs, excluded, notes = load_comparison_runs(
        client,
        experiments=experiments,
        run_ids=run_ids,
        parent_run_id=parent_run_id,
        filter_string=filter_string,
        cache_dir=cache_dir,
    )
    path, ranking, training, more = labels_report(
        client, runs, out_dir, data_dir=data_dir, cache_dir=cache_dir, excluded=excluded
    )
    if parent_run_id:
        log_labels_report(client, parent_run_id, out_dir, written_files(out_dir, WRITES))
    skipped = [f"skipped {e.label}: {e.reason}" for e in excluded]
    n_runs = len([r for r in runs if r.predictions is not None])
    test = label_issues.flagged_rows(ranking)
    notes = [*notes, *more, *skipped]
    return LabelsResult(path, test, training.flagged, ranking, n_runs, notes, training)


def labels_report(
    client,
    runs: list[RunData],
    out_dir: str | Path,
    *,
    data_dir=None,
    cache_dir=None,
    excluded: list[Excluded] | tuple = (),
) -> tuple[Path, pd.DataFrame, TrainingSet, list[str]]:
    """Write the label-issue report of `runs` into `out_dir` (`excluded`: selected runs that
    could not be loaded, which a cross-validation must not be missing).

    Returns (report.html, the test-set ranking, the training set's, notes).
    """
    from analysis import images as mnist_images
    from analysis.html import render
    from analysis.selection import predictions_missing, predictions_notes

    usable = [r for r in runs if r.predictions is not None]
    if not usable:
        raise predictions_missing(runs)
    notes = predictions_notes(runs)
    # runs scored on the same test set as most of them
    common = Counter(tuple(r.predictions.index) for r in usable).most_common(1)[0][0]
    same = [r for r in usable if tuple(r.predictions.index) == common]
    if len(same) < len(usable):
        notes.append(f"{len(usable) - len(same)} run(s) scored another test set: left out")
    first = same[0].predictions
    ranking = label_issues.test_set_ranking(
        first.labels, np.stack([r.predictions.probs for r in same]), first.index
    )
    training = _training_set(client, runs, same, excluded, cache_dir, notes, data_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safe_frame(ranking).to_csv(out / "label_issues.csv", index=False)
    safe_frame(training.table).to_csv(out / "label_issues_train.csv", index=False)

    folder = mnist_images.resolve_data_dir(data_dir, same[0])
    test_images = train_images = None
    try:
        test_images = mnist_images.load_test_set(folder)[0]
        from mnist_train import idx

        train_images = idx.read_split(folder, train=True)[0]
    except Exception as err:  # galleries without pictures; the tables stand on their own
        notes.append(f"images unavailable, galleries show numbers only: {err}")
    n_flagged = int(ranking["flagged"].sum())
    summary = (
        f"{n_flagged} suspected label errors among {len(first)} test images, flagged by "
        f"confident learning on the probabilities of {len(same)} run(s) averaged; every test "
        f"image is ranked by label quality in label_issues.csv. {_training_summary(training)}"
    )
    html = render(
        "labels.html",
        title="Suspected label errors",
        n_runs=len(same),
        experiments=sorted({r.experiment_name for r in same}),
        generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        summary=summary,
        notes=notes,
        sections=[
            _section(
                "test",
                f"Test set: {n_flagged} flagged of {len(ranking)} ranked",
                ranking,
                test_images,
                f"The top of the ranking of all {len(ranking)} test images, lowest label "
                "quality first; flagged ones (confident learning's verdict) are marked. The "
                "whole ranking is in label_issues.csv.",
            ),
            _training_section(training, train_images),
        ],
    )
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    return path, ranking, training, notes


def _training_set(client, runs, same, excluded, cache_dir, notes, data_dir) -> TrainingSet:
    """Out of sample from the selection's cross-validation runs when it holds any, else the
    in-sample list from the test-set runs' per-example records."""
    fold_runs = [r for r in runs if _folds_of(r.params)]
    if not fold_runs:
        table, n_runs = _train_issues(client, same, cache_dir, notes, data_dir)
        return TrainingSet(table, IN_SAMPLE, False, n_runs)
    if len(fold_runs) < len(runs):
        notes.append(
            f"{len(runs) - len(fold_runs)} run(s) without cross-validation folds: left out of "
            "the training-set ranking, which rests on held-out folds only"
        )
    assembled = _assemble_folds(client, fold_runs, excluded, cache_dir)
    table = label_issues.ranking(assembled.labels, assembled.probs, assembled.index)
    return TrainingSet(table, assembled.basis, True, len(fold_runs))


def _assemble_folds(client, fold_runs: list[RunData], excluded, cache_dir) -> folds.Assembled:
    """The fold runs' held-out predictions as every training image's out-of-sample
    probabilities; AnalysisError naming a fold run that is unfinished, unreadable or stored
    none, or folds that do not partition the training set."""
    from analysis.runs import get_run, load_heldout_predictions

    for left_out in excluded:
        if _folds_of(get_run(client, left_out.run_id).data.params):
            raise AnalysisError(
                f"fold run {left_out.label} ({left_out.run_id[:8]}) cannot be read "
                f"({left_out.reason}); every fold must have finished"
            )
    held = []
    for run in fold_runs:
        name = f"{run.label} ({run.run_id[:8]})"
        if run.status != "FINISHED":
            raise AnalysisError(
                f"fold run {name} is {run.status}: unfinished; run the study's command again "
                "to finish it before ranking the training set"
            )
        try:
            predictions = load_heldout_predictions(client, run.run_id, cache_dir=cache_dir)
        except AnalysisError as err:
            raise AnalysisError(
                f"fold run {name}: {contract.HELDOUT_PREDICTIONS_PATH}: {err}"
            ) from None
        if predictions is None:
            raise AnalysisError(f"fold run {name} stored no {contract.HELDOUT_PREDICTIONS_PATH}")
        held.append(
            folds.HeldOut(
                run=name,
                folds=_folds_of(run.params),
                fold=int_param(run.params, contract.CV_FOLD_PARAM) or 0,
                replicate=tuple(
                    sorted(
                        (k, v) for k, v in run.params.items() if k not in contract.PER_FOLD_PARAMS
                    )
                ),
                n_images=_n_training_images(run.params),
                labels=predictions.labels,
                probs=predictions.probs,
                index=predictions.index,
            )
        )
    return folds.assemble(held)


def _folds_of(params: dict[str, str]) -> int:
    """K of a cross-validation run, else 0."""
    return max(int_param(params, contract.CV_FOLDS_PARAM) or 0, 0)


def _n_training_images(params: dict[str, str]) -> int | None:
    """The images a fold run's folds divide: those it trained on and those it held out."""
    trained = int_param(params, contract.TRAIN_IMAGES)
    held = int_param(params, contract.VAL_IMAGES)
    return None if trained is None or held is None else trained + held


def _training_summary(training: TrainingSet) -> str:
    if training.out_of_sample:
        n = len(training.table)
        return (
            f"Training set ({training.basis}): {len(training.flagged)} of {n} images flagged "
            f"by confident learning on the probabilities of the models that held each one out "
            f"({training.n_runs} fold runs); every training image is ranked in "
            "label_issues_train.csv."
        )
    return (
        f"Training set ({training.basis}): {len(training.table)} suspects from "
        f"{training.n_runs} run(s) with a per-example record; such models flag mostly their own "
        "mistakes: a cross-validation study (folds: K) ranks every training image out of sample."
    )


def _training_section(training: TrainingSet, images) -> dict:
    if training.out_of_sample:
        n = len(training.table)
        return _section(
            "train",
            f"Training set: {len(training.flagged)} flagged of {n} ranked ({training.basis})",
            training.table,
            images,
            f"The top of the ranking of all {n} training images, lowest label quality first, "
            "each scored by the model(s) that held it out; flagged ones (confident learning's "
            "verdict) are marked. The whole ranking is in label_issues_train.csv.",
        )
    return _section(
        "train",
        f"Training set: {len(training.table)} suspects ({training.basis})",
        training.table,
        images,
        "Most suspect first; all of them in label_issues_train.csv.",
    )


def _train_issues(client, runs, cache_dir, notes, data_dir) -> tuple[pd.DataFrame, int]:
    """The in-sample suspects from the runs' training records (`runs.load_training_record`:
    checked, a run whose record is not usable is left out with a note), on the training images
    all of them recorded."""
    from analysis.runs import load_training_record

    kept, predate = [], 0
    for run in runs:
        record, problem = load_training_record(client, run, cache_dir=cache_dir)
        if problem:
            notes.append(f"{problem}; the training-set list rests on the other runs")
        elif record is not None and record.predicted is None:
            predate += 1
        elif record is not None:
            kept.append(record)
    if predate:
        notes.append(f"{predate} run(s) kept records that predate the predicted digit: left out")
    empty = pd.DataFrame(columns=label_issues.COLUMNS)
    if not kept:
        notes.append("no run has a usable per-example training record: no training-set list")
        return empty, 0
    index = functools.reduce(np.intersect1d, [r.index for r in kept])
    if not len(index):
        notes.append("the runs' training records share no image: no training-set list")
        return empty, 0
    if any(len(r.index) > len(index) for r in kept):
        notes.append(f"the training-set list holds the {len(index)} images every record covers")
    columns = [_positions(r.index, index) for r in kept]
    last = min(3, min(len(r.epochs) for r in kept))
    table = label_issues.train_set_issues(
        _train_labels(runs[0], index, data_dir),
        np.stack([r.label_prob[-last:][:, c] for r, c in zip(kept, columns)]),
        np.stack([r.predicted[-last:][:, c] for r, c in zip(kept, columns)]),
        index,
        last=last,
    )
    return table, len(kept)


def _positions(held: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Where each of `wanted` stands in `held` (distinct positions, all of `wanted` among them)."""
    order = np.argsort(held)
    return order[np.searchsorted(held, wanted, sorter=order)]


def _train_labels(run: RunData, index: np.ndarray, data_dir) -> np.ndarray:
    """The given labels of the training images at `index` (torchvision positions)."""
    from analysis import images as mnist_images

    folder = mnist_images.resolve_data_dir(data_dir, run)
    labels = mnist_images.load_train_labels(folder)
    if index.max() >= len(labels):
        raise AnalysisError(
            f"the training labels in {folder} are {len(labels)}, the runs' records reach "
            f"position {int(index.max())}: pass the --data-dir they were trained on"
        )
    return labels[index]


def _section(key, title, table, images, caption) -> dict:
    """A gallery and a table of the first rows of `table`; rows without a `flagged` column are
    all suspects."""
    from analysis.figures.common import image_to_base64

    head = table.head(max(GALLERY, TABLE_ROWS)).copy()
    if "flagged" not in head:
        head["flagged"] = True
    tiles = [
        {
            "index": int(row.index),
            "given": int(row.given),
            "suggested": int(row.suggested),
            "agreement": float(row.agreement),
            "flagged": bool(row.flagged),
            "image": image_to_base64(images[int(row.index)], scale=3)
            if images is not None
            else None,
        }
        for row in head.head(GALLERY).itertuples()
    ]
    return {
        "id": key,
        "title": title,
        "caption": f"{caption} A tile reads #index: given label → suggested label, and the "
        "share of runs predicting the suggestion.",
        "tiles": tiles,
        "rows": head.head(TABLE_ROWS).to_dict("records"),
    }
