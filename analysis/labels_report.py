"""`mnist-analysis labels`: suspected label errors in the test and training sets, from stored runs.

Reads each selected run's `predictions/test.npz` and, where it has one, `dynamics/train.npz`;
computes `label_issues.test_set_ranking` / `train_set_issues`; writes `label_issues.csv` (every
test image ranked, with confident learning's `flagged`), `label_issues_train.csv` (the suspects
only), `report.html` with galleries; `publish.py` logs them. The more and
the stronger the runs (a seeds sweep, CNNs), the better the list: the report says how many it
rests on.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import label_issues
from analysis.artifacts import fetch_artifact
from analysis.errors import AnalysisError
from analysis.runs import RunData
from mnist_train import contract
from mnist_train.csv_safe import safe_frame

GALLERY = 40  # most suspect images shown per set
TABLE_ROWS = 100
WRITES = ("label_issues.csv", "label_issues_train.csv", "report.html")  # all it puts in --out


@dataclass(frozen=True)
class LabelsResult:
    path: Path  # report.html
    test: pd.DataFrame  # the flagged test images (label_issues.COLUMNS)
    train: pd.DataFrame
    ranking: pd.DataFrame  # every test image (label_issues.RANKING_COLUMNS)
    n_runs: int
    notes: list[str]


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
    path, ranking, train, more = labels_report(
        client, runs, out_dir, data_dir=data_dir, cache_dir=cache_dir
    )
    if parent_run_id:
        log_labels_report(client, parent_run_id, out_dir, written_files(out_dir, WRITES))
    skipped = [f"skipped {e.label}: {e.reason}" for e in excluded]
    n_runs = len([r for r in runs if r.predictions is not None])
    test = label_issues.flagged_rows(ranking)
    return LabelsResult(path, test, train, ranking, n_runs, [*notes, *more, *skipped])


def labels_report(
    client, runs: list[RunData], out_dir: str | Path, *, data_dir=None, cache_dir=None
) -> tuple[Path, pd.DataFrame, pd.DataFrame, list[str]]:
    """Write the label-issue report of `runs` into `out_dir`.

    Returns (report.html, the test-set ranking, the training-set suspects, notes).
    """
    from analysis import images as mnist_images
    from analysis.html import render

    notes: list[str] = []
    usable = [r for r in runs if r.predictions is not None]
    if len(usable) < len(runs):
        notes.append(f"{len(runs) - len(usable)} run(s) stored no test predictions: left out")
    if not usable:
        raise AnalysisError("none of the selected runs stored test predictions")
    # runs scored on the same test set as most of them
    common = Counter(tuple(r.predictions.index) for r in usable).most_common(1)[0][0]
    same = [r for r in usable if tuple(r.predictions.index) == common]
    if len(same) < len(usable):
        notes.append(f"{len(usable) - len(same)} run(s) scored another test set: left out")
    first = same[0].predictions
    ranking = label_issues.test_set_ranking(
        first.labels, np.stack([r.predictions.probs for r in same]), first.index
    )
    n_flagged = int(ranking["flagged"].sum())

    train, n_train_runs = _train_issues(client, same, cache_dir, notes, data_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safe_frame(ranking).to_csv(out / "label_issues.csv", index=False)
    safe_frame(train).to_csv(out / "label_issues_train.csv", index=False)

    folder = mnist_images.resolve_data_dir(data_dir, same[0])
    test_images = train_images = None
    try:
        test_images = mnist_images.load_test_set(folder)[0]
        from mnist_train import idx

        train_images = idx.read_split(folder, train=True)[0]
    except Exception as err:  # galleries without pictures; the tables stand on their own
        notes.append(f"images unavailable, galleries show numbers only: {err}")
    summary = (
        f"{n_flagged} suspected label errors among {len(first)} test images, flagged by "
        f"confident learning on the probabilities of {len(same)} run(s) averaged; every test "
        f"image is ranked by label quality in label_issues.csv. {len(train)} among the training "
        f"images, from {n_train_runs} run(s) with a per-example record."
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
            _section(
                "train",
                f"Training set: {len(train)} suspects",
                train,
                train_images,
                "Most suspect first; all of them in label_issues_train.csv.",
            ),
        ],
    )
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    return path, ranking, train, notes


def _train_issues(client, runs, cache_dir, notes, data_dir) -> tuple[pd.DataFrame, int]:
    records = []
    for run in runs:
        from analysis.runs import get_run

        path = fetch_artifact(
            client, get_run(client, run.run_id), contract.TRAIN_DYNAMICS_PATH, cache_dir=cache_dir
        )
        if path is not None:
            with np.load(path) as npz:
                records.append({key: npz[key] for key in npz.files})
    if not records:
        notes.append("no run has a per-example training record: no training-set list")
        return pd.DataFrame(columns=label_issues.COLUMNS), 0
    n = min(len(r["index"]) for r in records)
    last = min(3, min(len(r["epochs"]) for r in records))
    if "predicted" not in records[0]:
        notes.append("these runs' records predate the predicted digit: no training-set list")
        return pd.DataFrame(columns=label_issues.COLUMNS), 0
    labels = _train_labels(runs[0], n, data_dir)
    table = label_issues.train_set_issues(
        labels,
        np.stack([r["label_prob"][-last:, :n] for r in records]),
        np.stack([r["predicted"][-last:, :n] for r in records]),
        records[0]["index"][:n],
        last=last,
    )
    return table, len(records)


def _train_labels(run: RunData, n: int, data_dir) -> np.ndarray:
    from analysis import images as mnist_images

    return mnist_images.load_train_labels(mnist_images.resolve_data_dir(data_dir, run))[:n]


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
