"""The comparison report across runs: `mnist-analysis compare`.

Reads runs through `analysis.runs`, computes a `Comparison` with `analysis.compare`,
`analysis.compare_findings` and `analysis.metrics`, and writes `report.html` (rendered by
`analysis.compare_html`: one offline file, images embedded as base64, no scripts, every
run-provided string escaped by Jinja2), `runs.csv` and `significance.csv`. The report is then logged to MLflow: to the sweep's parent run
when comparing a sweep, else to a run of its own tagged `mnist.report=comparison`.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import compare, metrics
from analysis.compare_findings import findings
from analysis.runs import AnalysisError, RunData

MAX_RUNS = 100
REPORT_TAG = "mnist.report"  # value "comparison" on runs that hold a comparison report
REPORT_ARTIFACT_DIR = "comparison"
EPOCH_TABLE_KEYS = ("test_accuracy", "train_accuracy", "test_loss", "train_loss")
LABEL_PARAMS = ("name",)  # the run name is shown as the label, it is not a setting
ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 1000
# Final metrics of the runs table: column -> True when larger is better.
FINAL_COLUMNS = {
    "test_accuracy": True,
    "test_loss": False,
    "train_accuracy": True,
    "train_loss": False,
    "overfit_gap": False,
    "train_time_s": False,
    "num_params": False,
}


@dataclass(frozen=True)
class Excluded:
    """A run left out of (part of) the comparison, and why."""

    run_id: str
    label: str
    reason: str


@dataclass
class Comparison:
    """Everything the report shows, computed once; figures and files are drawn from it."""

    runs: list[RunData]
    baseline_id: str
    labels: pd.Series  # run id -> display label
    settings: pd.Series  # run id -> varying params except the seed ("all runs" when none)
    params: pd.DataFrame  # runs x params (strings), label params dropped
    varying: list[str]
    history: pd.DataFrame  # long: run_id, key, step, value
    epoch: int | None  # the --at-epoch epoch
    at_epoch: pd.DataFrame  # run id x EPOCH_TABLE_KEYS at `epoch`
    final: pd.DataFrame  # run id x FINAL_COLUMNS
    groups: pd.DataFrame  # seed groups (compare.seed_groups)
    onsets: dict  # setting -> compare.OverfitOnset | None
    comparable: list[str]  # run ids whose predictions share the baseline's test set
    excluded: list[Excluded] = field(default_factory=list)  # left out entirely
    partial: list[Excluded] = field(default_factory=list)  # left out of the prediction parts
    notes: list[str] = field(default_factory=list)
    significance: pd.DataFrame | None = None
    confusions: dict = field(default_factory=dict)  # run id -> (10, 10) counts
    per_class: pd.DataFrame | None = None  # run id x digit
    flips: dict = field(default_factory=dict)  # run id -> compare.Flips
    confused_pairs: pd.DataFrame | None = None
    findings: list[str] = field(default_factory=list)
    test_index: np.ndarray | None = None  # the shared `index` array
    test_labels: np.ndarray | None = None
    predicted: dict = field(default_factory=dict)  # run id -> predicted digits (N,)

    @property
    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.runs]


# --------------------------------------------------------------------------- selecting runs


def load_comparison_runs(
    client,
    *,
    experiments: Sequence[str] = (),
    run_ids: Sequence[str] = (),
    parent_run_id: str | None = None,
    filter_string: str | None = None,
    cache_dir=None,
    skip: Sequence[str] = (),
) -> tuple[list[RunData], list[Excluded], list[str]]:
    """Load the selected runs; returns (runs, runs that could not be loaded, notes).

    Sweep parents and earlier comparison reports are skipped with a note: they are not training
    runs; ids in `skip` are dropped silently. Runs come back oldest first.
    """
    from analysis.runs import find_run_ids, get_run, load_run

    ids = find_run_ids(
        client,
        experiments=experiments,
        run_ids=run_ids,
        parent_run_id=parent_run_id,
        filter_string=filter_string,
    )
    ids = [i for i in ids if i not in skip]
    if (
        len(ids) > 2 * MAX_RUNS
    ):  # fail before loading them all; parents and reports may still drop out
        raise AnalysisError(
            f"{len(ids)} runs selected; compare at most {MAX_RUNS} (narrow it with --filter)"
        )
    runs, excluded, notes = [], [], []
    skipped_reports = skipped_parents = 0
    for run_id in ids:
        try:
            runs.append(load_run(client, run_id, cache_dir=cache_dir))
        except AnalysisError as err:
            run = get_run(client, run_id)
            if run.data.tags.get(REPORT_TAG):
                skipped_reports += 1
            elif "sweep parent" in str(err) and run_id not in run_ids:
                skipped_parents += 1
            else:
                excluded.append(Excluded(run_id, run.info.run_name or run_id[:8], str(err)))
    if skipped_reports:
        notes.append(f"skipped {skipped_reports} earlier comparison report run(s)")
    if skipped_parents:
        notes.append(f"skipped {skipped_parents} sweep parent run(s) (their children are compared)")
    runs.sort(key=lambda r: (r.start_time or 0, r.run_id))
    return runs, excluded, notes


def choose_baseline(runs: Sequence[RunData], requested: str | None) -> str:
    """The requested baseline (must be among the runs), else the earliest-started run with predictions.

    For a sweep the runs are its children, so this is the sweep's first child.
    """
    ids = [r.run_id for r in runs]
    if requested is not None:
        matches = [
            i for i in ids if i == requested or (len(requested) >= 6 and i.startswith(requested))
        ]
        if len(matches) != 1:
            raise AnalysisError(f"baseline {requested} is not among the {len(ids)} compared runs")
        return matches[0]
    ordered = sorted(runs, key=lambda r: (r.start_time or 0, r.run_id))
    with_predictions = [r for r in ordered if r.predictions is not None]
    return (with_predictions or ordered)[0].run_id


# --------------------------------------------------------------------------- computing


def _history_frame(runs: Sequence[RunData]) -> pd.DataFrame:
    parts = []
    for run in runs:
        if run.epochs.empty:
            continue
        long = (
            run.epochs.rename_axis("step")
            .reset_index()
            .melt(id_vars="step", var_name="key", value_name="value")
            .dropna()
        )
        long.insert(0, "run_id", run.run_id)
        parts.append(long)
    if not parts:
        return pd.DataFrame(columns=["run_id", "key", "step", "value"])
    return pd.concat(parts, ignore_index=True)


def _final_frame(runs: Sequence[RunData]) -> pd.DataFrame:
    rows = {}
    for run in runs:
        row = {}
        for key in FINAL_COLUMNS:
            if key == "num_params":
                value = run.params.get("num_params")
                row[key] = float(value) if value not in (None, "") else np.nan
            elif key in run.epochs.columns and run.epochs[key].notna().any():
                row[key] = float(run.epochs[key].dropna().iloc[-1])
            else:
                row[key] = float(run.metrics.get(key, np.nan))
        row["epochs"] = int(run.epochs.index.max()) if not run.epochs.empty else 0
        rows[run.run_id] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run_id")


def _mean_curves(history: pd.DataFrame, run_ids: Sequence[str], key: str) -> pd.Series:
    rows = history[(history["key"] == key) & history["run_id"].isin(run_ids)]
    return rows.groupby("step")["value"].mean()


def build_comparison(
    runs: Sequence[RunData],
    *,
    baseline_id: str,
    at_epoch: int | None = None,
    excluded: Sequence[Excluded] = (),
    notes: Sequence[str] = (),
) -> Comparison:
    """Compute every table of the report from loaded runs (no MLflow, no figures)."""
    if len(runs) < 2:
        raise AnalysisError(f"need at least 2 runs to compare, found {len(runs)}")
    if len(runs) > MAX_RUNS:
        raise AnalysisError(
            f"{len(runs)} runs selected; compare at most {MAX_RUNS} (narrow it with --filter)"
        )
    runs = list(runs)
    ids = [r.run_id for r in runs]
    if baseline_id not in ids:
        raise AnalysisError(f"baseline {baseline_id} is not among the compared runs")
    by_id = {r.run_id: r for r in runs}

    params = pd.DataFrame([r.params for r in runs], index=pd.Index(ids, name="run_id"))
    params = params.drop(columns=[c for c in LABEL_PARAMS if c in params.columns])
    params = params.reindex(columns=sorted(params.columns))
    varying = compare.varying_params(params)
    labels = compare.run_labels(params, {r.run_id: r.label for r in runs})
    groups_input = compare.seed_groups(params, pd.Series(0.0, index=ids))
    settings = pd.Series(
        {rid: row.setting for _, row in groups_input.iterrows() for rid in row.run_ids}
    )

    history = _history_frame(runs)
    final = _final_frame(runs)
    last_common = compare.last_common_epoch(history)
    epoch = at_epoch if at_epoch is not None else last_common
    max_epoch = int(history["step"].max()) if not history.empty else None
    all_notes = list(notes)
    if at_epoch is not None and max_epoch is not None and at_epoch > max_epoch:
        raise AnalysisError(f"--at-epoch {at_epoch} is beyond the last logged epoch ({max_epoch})")
    at_table = (
        compare.metrics_at_epoch(history, epoch, EPOCH_TABLE_KEYS)
        if epoch
        else pd.DataFrame(index=ids, columns=list(EPOCH_TABLE_KEYS), dtype=float)
    )
    short = at_table["test_accuracy"].isna()
    if epoch and short.any():
        all_notes.append(
            f"{int(short.sum())} run(s) logged no test accuracy at epoch {epoch}: "
            + ", ".join(labels[r] for r in at_table.index[short])
        )

    groups = compare.seed_groups(params, final["test_accuracy"])
    onsets = {}
    for _, group in groups.iterrows():
        members = list(group.run_ids)
        train = _mean_curves(history, members, "train_loss")
        test = _mean_curves(history, members, "test_loss")
        both = pd.concat({"train": train, "test": test}, axis=1).dropna()
        if len(both) >= 3:
            onsets[group.setting] = compare.overfit_onset(
                both.index.to_numpy(), both["train"], both["test"]
            )

    comparison = Comparison(
        runs=runs,
        baseline_id=baseline_id,
        labels=labels,
        settings=settings,
        params=params,
        varying=varying,
        history=history,
        epoch=epoch,
        at_epoch=at_table,
        final=final,
        groups=groups,
        onsets=onsets,
        comparable=[],
        excluded=list(excluded),
        notes=all_notes,
    )
    _compare_predictions(comparison, by_id)
    comparison.findings = findings(
        labels=labels,
        baseline_id=baseline_id,
        significance=comparison.significance,
        groups=groups,
        onsets=onsets,
        max_epoch=max_epoch,
        final_accuracy=final["test_accuracy"],
        at_epoch_accuracy=at_table["test_accuracy"] if epoch and epoch != max_epoch else None,
        epoch=epoch,
        overfit_gap=final["overfit_gap"],
        train_time=final["train_time_s"],
        confused_pairs=comparison.confused_pairs,
        alpha=ALPHA,
    )
    return comparison


def _compare_predictions(comparison: Comparison, by_id: dict[str, RunData]) -> None:
    """Fill the prediction-based parts for the runs that share the baseline's test set."""
    baseline = by_id[comparison.baseline_id]
    labels = comparison.labels
    if baseline.predictions is None:
        comparison.partial += [
            Excluded(r, labels[r], "baseline has no stored predictions") for r in by_id
        ]
        return
    reference = baseline.predictions
    correct, per_class, comparable = {}, {}, []
    for run_id, run in by_id.items():
        p = run.predictions
        if p is None:
            comparison.partial.append(
                Excluded(run_id, labels[run_id], "no stored predictions (predictions/test.npz)")
            )
            continue
        if len(p) != len(reference) or not np.array_equal(p.index, reference.index):
            comparison.partial.append(
                Excluded(
                    run_id,
                    labels[run_id],
                    f"different test set: {len(p)} images, not the baseline's {len(reference)} "
                    f"(index arrays differ)",
                )
            )
            continue
        if not np.array_equal(p.labels, reference.labels):
            comparison.partial.append(
                Excluded(run_id, labels[run_id], "test labels differ from the baseline's")
            )
            continue
        comparable.append(run_id)
        y_pred = p.y_pred
        comparison.predicted[run_id] = y_pred
        correct[run_id] = y_pred == reference.labels
        comparison.confusions[run_id] = metrics.confusion_matrix(reference.labels, y_pred)
        per_class[run_id] = metrics.per_class_accuracy(reference.labels, y_pred)
        comparison.flips[run_id] = compare.flips_against_baseline(
            reference.labels, baseline.predictions.y_pred, y_pred
        )
    comparison.comparable = comparable
    comparison.test_index = reference.index
    comparison.test_labels = reference.labels
    if len(comparable) < 2:
        comparison.notes.append(
            "fewer than two runs share the baseline's test set: no significance tests"
        )
    comparison.significance = compare.significance_table(
        correct, comparison.baseline_id, n_resamples=BOOTSTRAP_RESAMPLES
    )
    comparison.per_class = pd.DataFrame.from_dict(
        per_class, orient="index", columns=range(metrics.N_CLASSES)
    )
    comparison.confused_pairs = compare.confused_pairs_across_runs(comparison.confusions, top_k=10)


# --------------------------------------------------------------------------- tables for the files


def runs_table(c: Comparison) -> pd.DataFrame:
    """runs.csv: one row per run: id, name, varying params, final metrics, epochs, status, baseline."""
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
    for column in [*FINAL_COLUMNS, "epochs"]:
        table[column] = finals[column].to_numpy()
    table["num_params"] = table["num_params"].astype("Int64")
    table["status"] = [r.status for r in c.runs]
    return table


def significance_frame(c: Comparison) -> pd.DataFrame:
    """significance.csv: each comparable run against the baseline."""
    columns = [
        "run_id",
        "run_name",
        "label",
        "baseline_id",
        "n_test",
        "accuracy",
        "ci_low",
        "ci_high",
        "b_broke",
        "c_fixed",
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
            "n_test": len(c.test_labels),
            "accuracy": s["accuracy"].to_numpy(),
            "ci_low": s["ci_low"].to_numpy(float),
            "ci_high": s["ci_high"].to_numpy(float),
            "b_broke": s["broke"].array,
            "c_fixed": s["fixed"].array,
            "pvalue": s["pvalue"].to_numpy(),
            "p_holm": s["p_holm"].to_numpy(),
        }
    )
    frame["significant"] = (frame["p_holm"] < ALPHA).where(frame["p_holm"].notna())
    return frame[columns]


def write_report(
    c: Comparison,
    out_dir: str | Path,
    *,
    test_images: np.ndarray | None = None,
    title: str = "Comparison report",
) -> Path:
    """Write report.html, runs.csv, significance.csv and figures/*.png into `out_dir`.

    The PNGs repeat the report's figures as files, for the MLflow UI's image viewer and for
    documents. Returns the path of report.html.
    """
    # Drawing needs matplotlib and Jinja2; imported here so that computing a comparison does not.
    from analysis.compare_html import figures, gallery, render_html

    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    runs_table(c).to_csv(out / "runs.csv", index=False)
    significance_frame(c).to_csv(out / "significance.csv", index=False)
    images = figures(c)
    for name, encoded in images.items():
        (out / "figures" / f"{name}.png").write_bytes(base64.b64decode(encoded))
    html = render_html(c, images, gallery(c, test_images), title=title)
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- MLflow


def log_report(
    client,
    c: Comparison,
    out_dir: str | Path,
    *,
    parent_run_id: str | None = None,
    active_run_id: str | None = None,
) -> str:
    """Log the report's files to MLflow; returns the id of the run that holds them.

    A sweep's report goes to its parent run, next to the children it compares. Under `mlflow run`
    (`active_run_id`, from MLFLOW_RUN_ID) it goes to the run MLflow opened, which MLflow closes.
    Any other comparison gets a run of its own in the baseline's experiment. Report runs are tagged
    `mnist.report = comparison`, so later comparisons skip them and the MLflow UI can filter for them.
    """
    if parent_run_id is not None:
        client.log_artifacts(parent_run_id, str(out_dir), REPORT_ARTIFACT_DIR)
        client.set_tag(
            parent_run_id, "mnist.comparison_report", f"{REPORT_ARTIFACT_DIR}/report.html"
        )
        return parent_run_id
    if active_run_id is not None:
        _describe_report_run(client, active_run_id, c)
        client.log_artifacts(active_run_id, str(out_dir), REPORT_ARTIFACT_DIR)
        return active_run_id
    baseline = next(r for r in c.runs if r.run_id == c.baseline_id)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    run = client.create_run(baseline.experiment_id, run_name=f"compare-{len(c.runs)}-runs-{stamp}")
    run_id = run.info.run_id
    try:
        _describe_report_run(client, run_id, c)
        client.log_artifacts(run_id, str(out_dir), REPORT_ARTIFACT_DIR)
        client.set_terminated(run_id)
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    return run_id


def _describe_report_run(client, run_id: str, c: Comparison) -> None:
    tags = {
        REPORT_TAG: "comparison",
        "mnist.baseline_run_id": c.baseline_id,
        "mnist.compared_run_ids": ",".join(c.run_ids)[:4900],  # MLflow caps tag values at 5000
        # the run's description in the MLflow UI: the findings, as a list
        "mlflow.note.content": "\n".join(f"- {s}" for s in c.findings)[:4900],
    }
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.log_param(run_id, "n_runs", str(len(c.runs)))
    client.log_param(run_id, "baseline", c.baseline_id)
    if c.epoch:
        client.log_param(run_id, "at_epoch", str(c.epoch))


# --------------------------------------------------------------------------- entry point


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
    """Select, compare, write and (optionally) log; returns (comparison, report path, MLflow run id)."""
    from analysis.runs import connect, load_test_set, resolve_data_dir

    if not (experiments or run_ids or parent_run_id or filter_string):
        raise AnalysisError("choose runs with --experiment, --runs, --parent or --filter")
    if at_epoch is not None and at_epoch < 1:
        raise AnalysisError(f"--at-epoch must be >= 1 (epochs count from 1), got {at_epoch}")
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
    baseline_id = choose_baseline(runs, baseline)
    comparison = build_comparison(
        runs, baseline_id=baseline_id, at_epoch=at_epoch, excluded=excluded, notes=notes
    )
    test_images = None
    if comparison.flips:
        folder = resolve_data_dir(data_dir, next(r for r in runs if r.run_id == baseline_id))
        try:
            test_images = matching_test_images(comparison, *load_test_set(folder))
        except AnalysisError as err:
            comparison.notes.append(f"flip gallery without images: {err}")
    if parent_run_id:
        sweep_name = client.get_run(parent_run_id).info.run_name or parent_run_id[:8]
        title = f"Sweep {sweep_name}: {len(runs)} runs compared"
    else:
        title = f"{len(runs)} runs compared"
    path = write_report(comparison, out_dir, test_images=test_images, title=title)
    logged = None
    if log_to_mlflow:
        logged = log_report(
            client, comparison, out_dir, parent_run_id=parent_run_id, active_run_id=active_run_id
        )
    return comparison, path, logged
