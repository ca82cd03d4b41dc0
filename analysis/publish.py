"""Reports written back to MLflow: the one analysis module that writes to the tracking store.

A per-run report goes to its run under `analysis/`. A comparison goes to the sweep's parent run,
to the run `mlflow run` opened, or to a run of its own tagged `mnist.report=comparison`, so that
later comparisons skip it and the MLflow UI can filter for it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.errors import AnalysisError, first_line
from mnist_train import contract

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from analysis.comparison import Comparison

REPORT_HTML = "report.html"


def log_run_report(client: MlflowClient, run_id: str, files: Sequence[Path]) -> None:
    """Log every file of a per-run report to run `run_id` under `analysis/`."""
    from mlflow.exceptions import MlflowException

    try:
        for path in files:
            client.log_artifact(run_id, str(path), contract.ANALYSIS_DIR)
        _link_from_description(client, run_id, f"{contract.ANALYSIS_DIR}/{REPORT_HTML}")
    except (MlflowException, OSError) as err:
        raise AnalysisError(
            f"report written but not logged to run {run_id}: {first_line(err)}"
        ) from None


def check_out_folder(out_dir: str | Path, writes: Sequence[str]) -> None:
    """AnalysisError unless `out_dir` is new, empty or holds only what this report writes
    (`writes`: file and folder names): what the report logs to MLflow is exactly what it wrote,
    and a folder of other files (a home directory, the project root) is no place for it."""
    out = Path(out_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise AnalysisError(f"--out {out} is a file; give a folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in writes)
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise AnalysisError(
            f"--out {out} holds files this report does not write ({shown}); choose a new or "
            "empty folder"
        )


def written_files(out_dir: str | Path, writes: Sequence[str]) -> list[Path]:
    """The files of `writes` (names, folders included) under `out_dir`: what a report logs."""
    out = Path(out_dir)
    files = []
    for name in writes:
        path = out / name
        if path.is_dir():
            files += sorted(f for f in path.rglob("*") if f.is_file())
        elif path.is_file():
            files.append(path)
    return files


def _log_files(client: MlflowClient, run_id: str, out_dir: str | Path, files, root: str) -> None:
    """Each of `files` (under `out_dir`) to `root/<its folder under out_dir>` of run `run_id`."""
    out = Path(out_dir)
    for path in files:
        folder = path.parent.relative_to(out).as_posix()
        client.log_artifact(run_id, str(path), root if folder == "." else f"{root}/{folder}")


def _link_from_description(client: MlflowClient, run_id: str, artifact: str) -> None:
    """Add a line pointing at the report to the run's description (the UI's markdown note),
    keeping whatever the description said before."""
    run = client.get_run(run_id)
    note = run.data.tags.get(contract.TAG_NOTE, "")
    if artifact in note:
        return
    link = f"#/experiments/{run.info.experiment_id}/runs/{run_id}/artifacts/{artifact}"
    line = f"Diagnostics report: [{artifact}]({link}) (open it from the Artifacts tab)"
    client.set_tag(run_id, contract.TAG_NOTE, contract.fit_tag(f"{note}\n\n{line}".strip()))


def reports_experiment(client: MlflowClient, experiment_id: str) -> str:
    """The experiment that holds the report runs of experiment `experiment_id`: `<name> reports`,
    made on first use. Report runs are no training runs; kept apart, they never crowd or get
    sorted among the training runs in MLflow's runs table."""
    from mlflow.exceptions import MlflowException

    name = contract.REPORTS_EXPERIMENT.format(experiment=client.get_experiment(experiment_id).name)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # made meanwhile by another report
        return client.get_experiment_by_name(name).experiment_id


def log_comparison_report(
    client: MlflowClient,
    c: Comparison,
    out_dir: str | Path,
    *,
    files: Sequence[Path],
    parent_run_id: str | None = None,
    active_run_id: str | None = None,
) -> str:
    """Log the report's files to MLflow; returns the id of the run that holds them.

    A sweep's report goes to its parent run, next to the children it compares. Under `mlflow run`
    (`active_run_id`, from MLFLOW_RUN_ID) it goes to the run MLflow opened, which MLflow closes.
    Any other comparison gets a run of its own in the baseline's experiment.
    """
    if parent_run_id is not None:
        _log_files(client, parent_run_id, out_dir, files, contract.COMPARISON_DIR)
        client.set_tag(
            parent_run_id,
            contract.TAG_COMPARISON_REPORT,
            f"{contract.COMPARISON_DIR}/{REPORT_HTML}",
        )
        return parent_run_id
    if active_run_id is not None:
        _describe_report_run(client, active_run_id, c)
        _log_files(client, active_run_id, out_dir, files, contract.COMPARISON_DIR)
        return active_run_id
    baseline = next(r for r in c.runs if r.run_id == c.baseline_id)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    run = client.create_run(
        reports_experiment(client, baseline.experiment_id),
        run_name=f"compare-{len(c.runs)}-runs-{stamp}",
    )
    run_id = run.info.run_id
    try:
        _describe_report_run(client, run_id, c)
        _log_files(client, run_id, out_dir, files, contract.COMPARISON_DIR)
        client.set_terminated(run_id)
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    return run_id


def log_labels_report(
    client: MlflowClient, run_id: str, out_dir: str | Path, files: Sequence[Path]
) -> None:
    """The label-issue report's `files`, under `analysis/labels/` of the sweep's parent run."""
    artifact = f"{contract.ANALYSIS_DIR}/labels/{REPORT_HTML}"
    _log_files(client, run_id, out_dir, files, f"{contract.ANALYSIS_DIR}/labels")
    client.set_tag(run_id, contract.TAG_LABELS_REPORT, artifact)
    _link_from_description(client, run_id, artifact)


def _describe_report_run(client: MlflowClient, run_id: str, c: Comparison) -> None:
    tags = {
        contract.TAG_REPORT: "comparison",
        contract.TAG_BASELINE_RUN: c.baseline_id,
        contract.TAG_COMPARED_RUNS: contract.fit_tag(",".join(c.run_ids)),
        # the run's description in the MLflow UI: the findings, as a list
        contract.TAG_NOTE: contract.fit_tag("\n".join(f"- {s}" for s in c.findings)),
    }
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.log_param(run_id, "n_runs", str(len(c.runs)))
    client.log_param(run_id, "baseline", c.baseline_id)
    if c.epoch:
        client.log_param(run_id, "at_epoch", str(c.epoch))


def log_explorer(
    client: MlflowClient,
    path: Path,
    run_ids: list[str],
    *,
    parent_run_id: str | None,
    experiment_id: str,
) -> str:
    """Log the explorer page (as `contract.EXPLORER_PATH`): to the sweep's parent, next to the
    runs it shows, else to a run of its own tagged `mnist.report=explorer` (so later selections
    skip it); returns the id of the run holding it."""
    from mlflow.exceptions import MlflowException

    folder = str(Path(contract.EXPLORER_PATH).parent)
    try:
        if parent_run_id is not None:
            client.log_artifact(parent_run_id, str(path), folder)
            client.set_tag(parent_run_id, contract.TAG_EXPLORER, contract.EXPLORER_PATH)
            return parent_run_id
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        run = client.create_run(
            reports_experiment(client, experiment_id),
            run_name=f"explore-{len(run_ids)}-runs-{stamp}",
            tags={
                contract.TAG_REPORT: "explorer",
                contract.TAG_EXPLORER: contract.EXPLORER_PATH,
                contract.TAG_EXPLORED_RUNS: contract.fit_tag(",".join(run_ids)),
            },
        )
        try:
            client.log_artifact(run.info.run_id, str(path), folder)
            client.set_terminated(run.info.run_id)
        except Exception:
            client.set_terminated(run.info.run_id, status="FAILED")
            raise
        return run.info.run_id
    except (MlflowException, OSError) as err:
        raise AnalysisError(
            f"explorer written to {path} but not logged: {first_line(err)}"
        ) from None
