"""The comparison report: `mnist-analysis compare` from selection to files on disk and in MLflow.

`compare_runs` selects and loads runs (`runs.py`), builds the `Comparison` (`comparison.py`),
draws its figures (`figures/compare.py`), writes `report.html` (`compare_html.py`), `runs.csv`
and `significance.csv`, and hands the folder to `publish.py`.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.comparison import (
    ALPHA,
    FINAL_COLUMNS,
    Comparison,
    build_comparison,
    choose_baseline,
)
from analysis.errors import AnalysisError
from analysis.selection import load_comparison_runs
from analysis.study import Study, load_study
from mnist_train import contract
from mnist_train.csv_safe import safe_frame

CURVE_KEYS = (contract.TEST_ACCURACY, contract.TRAIN_LOSS, contract.TEST_LOSS)
WRITES = ("report.html", "runs.csv", "significance.csv", "figures")  # all a report puts in --out


def write_report(
    c: Comparison,
    out_dir: str | Path,
    *,
    test_images: np.ndarray | None = None,
    title: str = "Comparison report",
    study: Study | None = None,
) -> Path:
    """Write report.html, runs.csv, significance.csv and figures/*.png into `out_dir`; a
    `study` (the runs are its trials) adds its own section.

    The PNGs repeat the report's figures as files, for the MLflow UI's image viewer and for
    documents. Returns the path of report.html.
    """
    # Drawing needs matplotlib and Jinja2; imported here so that computing a comparison does not.
    from analysis.compare_html import gallery, render_html

    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for earlier in (out / "figures").glob("*.png"):  # an earlier report's: not this one's
        earlier.unlink()
    safe_frame(runs_table(c)).to_csv(out / "runs.csv", index=False)
    safe_frame(significance_frame(c)).to_csv(out / "significance.csv", index=False)
    images = figures(c)
    if study is not None:
        images.update(study_figures(study))
    for name, encoded in images.items():
        (out / "figures" / f"{name}.png").write_bytes(base64.b64decode(encoded))
    html = render_html(c, images, gallery(c, test_images), title=title, study=study)
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def runs_table(c: Comparison) -> pd.DataFrame:
    """runs.csv: one row per run: id, name, varying params, its model of record's scores and
    `epoch`, the epochs it trained, status, baseline."""
    table = pd.DataFrame(
        {
            "run_id": c.run_ids,
            "run_name": [r.run_name for r in c.runs],
            "label": [c.labels[r] for r in c.run_ids],
            "baseline": [r == c.baseline_id for r in c.run_ids],
        }
    )
    for param in c.varying:
        table[param] = c.params[param].reindex(c.run_ids).to_numpy()
    finals = c.final.reindex(c.run_ids)
    for column in [*FINAL_COLUMNS, "epoch", "epochs"]:
        table[column] = finals[column].to_numpy()
    table[contract.NUM_PARAMS] = table[contract.NUM_PARAMS].astype("Int64")
    table["status"] = [r.status for r in c.runs]
    return table


def significance_frame(c: Comparison) -> pd.DataFrame:
    """significance.csv: each comparable run against the baseline."""
    columns = [
        "run_id",
        "run_name",
        "label",
        "baseline_id",
        "epoch",
        "n_test",
        "accuracy",
        "ci_low",
        "ci_high",
        "b_broke",
        "c_fixed",
        "churn",
        "pvalue",
        "p_holm",
        "significant",
    ]
    if c.significance is None:
        return pd.DataFrame(columns=columns)
    s = c.significance
    names = {r.run_id: r.run_name for r in c.runs}
    frame = pd.DataFrame(
        {
            "run_id": s.index,
            "run_name": [names[r] for r in s.index],
            "label": [c.labels[r] for r in s.index],
            "baseline_id": c.baseline_id,
            # the model of record whose stored predictions the test reads
            "epoch": c.final["epoch"].reindex(s.index).to_numpy(),
            "n_test": len(c.test_labels),
            "accuracy": s["accuracy"].to_numpy(),
            "ci_low": s["ci_low"].to_numpy(float),
            "ci_high": s["ci_high"].to_numpy(float),
            "b_broke": s["broke"].array,
            "c_fixed": s["fixed"].array,
            "churn": c.predictions.churn.reindex(s.index).to_numpy(),
            "pvalue": s["pvalue"].to_numpy(),
            "p_holm": s["p_holm"].to_numpy(),
        }
    )
    frame["significant"] = (frame["p_holm"] < ALPHA).where(frame["p_holm"].notna())
    return frame[columns]


def figures(c: Comparison) -> dict[str, str]:
    """Every figure of the report as base64 PNG, by name (absent when its data is missing)."""
    from analysis.figures.common import figure_to_base64

    # grids are laid out by hand: no tight trim (its extra draw costs seconds with many panels)
    return {
        name: figure_to_base64(figure, tight=not name.startswith("confusion"))
        for name, figure in figure_objects(c).items()
    }


def figure_objects(c: Comparison) -> dict:
    """Every figure of the report as a matplotlib Figure, by name."""
    from analysis.figures import compare as fc

    labels, settings = c.labels.to_dict(), c.settings.to_dict()
    shown = c.shown  # one line or panel per run: the best few when there are many
    out = {}
    if not c.history.empty:
        history = c.history[c.history["run_id"].isin(shown)]
        out["curves"] = (
            fc.CurveOverlayDisplay(
                history,
                {r: labels[r] for r in shown},
                {r: settings[r] for r in shown},
            )
            .plot(CURVE_KEYS, at_epoch=c.epoch)
            .figure_
        )
    at, final = (
        c.at_epoch[contract.TEST_ACCURACY],
        c.final[contract.TEST_ACCURACY].reindex(c.at_epoch.index),
    )
    if c.epoch and at.notna().any() and not np.allclose(at, final, equal_nan=True):
        out["at_epoch"] = (
            fc.EpochComparisonDisplay(
                c.at_epoch[contract.TEST_ACCURACY], c.final[contract.TEST_ACCURACY], labels, c.epoch
            )
            .plot()
            .figure_
        )
    if c.per_class is not None and len(c.per_class):
        heat = c.per_class.rename(index=labels)
        out["per_class"] = fc.PerClassHeatmapDisplay(heat).plot().figure_
    if c.confusions:
        grid = {labels[r]: c.confusions[r] for r in shown if r in c.confusions}
        out["confusion"] = fc.ConfusionGridDisplay(grid).plot().figure_
        base = c.confusions[c.baseline_id]
        diffs = {
            labels[r]: c.confusions[r] - base
            for r in shown
            if r in c.confusions and r != c.baseline_id
        }
        if diffs:
            out["confusion_diff"] = fc.ConfusionGridDisplay(diffs, kind="difference").plot().figure_
    cost = c.final[[contract.TRAIN_TIME]].copy()
    cost["accuracy"] = c.final[contract.TEST_ACCURACY]
    if c.significance is not None:
        # the interval is of the accuracy on the stored predictions, so plot that accuracy with it
        cost = cost.join(c.significance[["accuracy", "ci_low", "ci_high"]], rsuffix="_predictions")
        cost["accuracy"] = cost["accuracy_predictions"].fillna(cost["accuracy"])
    if cost[[contract.TRAIN_TIME, "accuracy"]].notna().all(axis=1).sum() >= 2:
        out["cost"] = fc.AccuracyCostDisplay(cost, labels, settings, annotate=shown).plot().figure_
    return out


def study_figures(study: Study) -> dict[str, str]:
    """The study section's figures as base64 PNG: history, importances, objective by parameter."""
    from analysis.figures.common import figure_to_base64

    return {
        name: figure_to_base64(figure, tight=name != "study_slices")
        for name, figure in study_figure_objects(study).items()
    }


def study_figure_objects(study: Study) -> dict:
    from analysis.figures import study as fs

    out = {"study_history": fs.OptimizationHistoryDisplay(study).plot().figure_}
    if study.importance:
        out["study_importance"] = fs.ImportanceDisplay(study.importance).plot().figure_
    if study.params and len(study.complete):
        out["study_slices"] = fs.SliceDisplay(study).plot().figure_
    return out


def matching_test_images(c: Comparison, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`images` if they are the test set the predictions were made on; AnalysisError otherwise."""
    index = c.test_index
    if index.min(initial=0) < 0 or index.max(initial=-1) >= len(images):
        raise AnalysisError(
            f"predictions refer to test image {index.max()} but the data dir holds "
            f"{len(images)} (wrong --data-dir?)"
        )
    if not np.array_equal(labels[index], c.test_labels):
        raise AnalysisError(
            "the data dir's test labels differ from the predictions' (wrong --data-dir?)"
        )
    return images


def compare_runs(
    *,
    out_dir: str | Path,
    experiments: Sequence[str] = (),
    run_ids: Sequence[str] = (),
    parent_run_id: str | None = None,
    filter_string: str | None = None,
    baseline: str | None = None,
    at_epoch: int | None = None,
    tracking_uri: str | None = None,
    data_dir: str | Path | None = None,
    log_to_mlflow: bool = True,
    cache_dir=None,
) -> tuple[Comparison, Path, str | None]:
    """Select, compare, write and (optionally) log.

    Returns (comparison, report path, id of the MLflow run that holds the report or None).
    """
    from analysis.images import load_test_set, resolve_data_dir
    from analysis.publish import check_out_folder, log_comparison_report, written_files
    from analysis.runs import connect

    if not (experiments or run_ids or parent_run_id or filter_string):
        raise AnalysisError("choose runs with --experiment, --runs, --parent or --filter")
    if at_epoch is not None and at_epoch < 1:
        raise AnalysisError(f"--at-epoch must be >= 1 (epochs count from 1), got {at_epoch}")
    check_out_folder(out_dir, WRITES)
    client = connect(tracking_uri)
    # Under `mlflow run` the run MLflow opened for this command receives the report; it is no
    # training run, so it is not compared either.
    active_run_id = os.environ.get("MLFLOW_RUN_ID") if log_to_mlflow and not parent_run_id else None
    runs, excluded, notes = load_comparison_runs(
        client,
        experiments=experiments,
        run_ids=run_ids,
        parent_run_id=parent_run_id,
        filter_string=filter_string,
        cache_dir=cache_dir,
        skip=(active_run_id,) if active_run_id else (),
    )
    if not runs:
        raise AnalysisError(
            "no comparable runs found"
            + (f" ({len(excluded)} could not be read: {excluded[0].reason})" if excluded else "")
        )
    if len(runs) < 2:
        raise AnalysisError(
            f"only one run found ({runs[0].label}, {runs[0].run_id}); need at least 2 to compare"
        )
    study = parent = None
    if parent_run_id:
        parent = client.get_run(parent_run_id)
        study = load_study(client, parent, cache_dir=cache_dir)
    # a study's baseline is its best trial on the objective: what every other trial is measured
    # against (its first trial is a random start)
    best = study.best() if study is not None else None
    preferred = str(best["run_id"]) if best is not None else None
    baseline_id = choose_baseline(runs, baseline, preferred)
    comparison = build_comparison(
        runs, baseline_id=baseline_id, at_epoch=at_epoch, excluded=excluded, notes=notes
    )
    test_images = None
    if comparison.flips:
        folder = resolve_data_dir(data_dir, next(r for r in runs if r.run_id == baseline_id))
        try:
            test_images = matching_test_images(comparison, *load_test_set(folder))
        except AnalysisError as err:
            notes = [*comparison.notes, f"flip gallery without images: {err}"]
            comparison = dataclasses.replace(comparison, notes=notes)
    if parent is not None:
        sweep_name = parent.info.run_name or parent_run_id[:8]
        kind = "Study" if study is not None else "Sweep"
        title = f"{kind} {sweep_name}: {len(runs)} runs compared"
    else:
        title = f"{len(runs)} runs compared"
    path = write_report(comparison, out_dir, test_images=test_images, title=title, study=study)
    logged = None
    if log_to_mlflow:
        logged = log_comparison_report(
            client,
            comparison,
            out_dir,
            files=written_files(out_dir, WRITES),
            parent_run_id=parent_run_id,
            active_run_id=active_run_id,
        )
    return comparison, path, logged
