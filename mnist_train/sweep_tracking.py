"""MLflow for a sweep's parent run: open or reuse it, find earlier children, close it.

The children are ordinary training runs written by `tracking.py`; this module owns only what a
sweep adds around them, so that `sweep.py` (execution) never calls MLflow itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import contract
from .config import ExperimentFile
from .tracking import git_commit, open_store


@dataclass(frozen=True)
class EarlierRun:
    """A child of an earlier run of the same sweep, as far as planning needs it."""

    run_id: str
    status: str
    params: dict[str, str]
    failure_reason: str
    tags: dict[str, str]


def sweep_filter(sweep_name: str) -> str:
    """An MLflow search for the parents of `sweep_name`. MLflow's filter language has no escape
    for quotes: a name holding one is matched in the other kind of quotes, and a name holding both
    by LIKE with `_` for each quote (callers keep exact matches only)."""
    if "'" not in sweep_name:
        return f"tags.`{contract.TAG_SWEEP}` = '{sweep_name}'"
    if '"' not in sweep_name:
        return f'tags.`{contract.TAG_SWEEP}` = "{sweep_name}"'
    pattern = sweep_name.replace("'", "_").replace('"', "_")
    return f"tags.`{contract.TAG_SWEEP}` LIKE '{pattern}'"


def _same_sweep(runs: list, sweep_name: str) -> list:
    return [r for r in runs if r.data.tags.get(contract.TAG_SWEEP) == sweep_name]


class SweepStore:
    """The tracking store, as a sweep uses it."""

    def __init__(self) -> None:
        from mlflow.tracking import MlflowClient

        open_store()
        self.client = MlflowClient()

    def experiment_of_run(self, run_id: str) -> tuple[str, str]:
        """(experiment id, experiment name) of an existing run (the one `mlflow run` opened)."""
        experiment_id = self.client.get_run(run_id).info.experiment_id
        return experiment_id, self.client.get_experiment(experiment_id).name

    def ensure_experiment(self, name: str) -> str:
        """The experiment's id, creating it (and a new store's tables) now, once: parallel
        children would otherwise race to create the same tables and experiment."""
        import mlflow

        return mlflow.set_experiment(name).experiment_id

    def earlier_children(self, experiment_id: str, sweep_name: str) -> dict[str, list[EarlierRun]]:
        """Children of earlier parents of this sweep, by run name, newest first."""
        parents = _same_sweep(
            self.client.search_runs(
                [experiment_id],
                filter_string=sweep_filter(sweep_name),
                max_results=contract.MAX_RUNS,
            ),
            sweep_name,
        )
        found: dict[str, list] = {}
        for parent in parents:
            runs = self.client.search_runs(
                [experiment_id],
                filter_string=f"tags.`{contract.TAG_PARENT}` = '{parent.info.run_id}'",
                max_results=contract.MAX_RUNS,
            )
            for run in runs:
                found.setdefault(run.info.run_name, []).append(run)
        out = {}
        for name, runs in found.items():
            runs.sort(key=lambda r: r.info.start_time or 0, reverse=True)
            out[name] = [
                EarlierRun(
                    run.info.run_id,
                    run.info.status,
                    dict(run.data.params),
                    run.data.tags.get(contract.TAG_FAILURE_REASON, ""),
                    dict(run.data.tags),
                )
                for run in runs
            ]
        return out

    def abandon(self, run_id: str, why: str) -> None:
        """End a child whose owner died before its first checkpoint: it is retrained anew."""
        self.client.set_tag(run_id, contract.TAG_FAILURE_REASON, f"abandoned: {why}"[:5000])
        self.client.set_terminated(run_id, "KILLED")

    def has_checkpoints(self, run_id: str) -> bool:
        return bool(self.client.list_artifacts(run_id, contract.CHECKPOINT_DIR))

    def open_parent(
        self,
        experiment_id: str,
        experiment: ExperimentFile,
        sweep_name: str,
        adopt_run_id: str | None,
        *,
        reuse: bool,
    ) -> str:
        """The parent's run id: `adopt_run_id`, else the latest parent of this sweep (when
        `reuse`), else a new run. It is left RUNNING, tagged, with the sweep file attached."""
        tags = {
            contract.TAG_SWEEP: sweep_name,
            "mlflow.runName": sweep_name,
            "mlflow.source.name": str(experiment.path),
        }
        commit = git_commit(experiment.path.resolve().parent)
        if commit:
            tags["mlflow.source.git.commit"] = commit
        parent_id = adopt_run_id
        if parent_id is None and reuse:
            latest = _same_sweep(
                self.client.search_runs(
                    [experiment_id],
                    filter_string=sweep_filter(sweep_name),
                    order_by=["attributes.start_time DESC"],
                    max_results=contract.MAX_RUNS,
                ),
                sweep_name,
            )[:1]
            if latest:
                parent_id = latest[0].info.run_id
                self.client.update_run(parent_id, status="RUNNING")
                if contract.TAG_FAILURE_REASON in latest[0].data.tags:
                    self.client.delete_tag(parent_id, contract.TAG_FAILURE_REASON)
        if parent_id is None:
            tags["mlflow.source.type"] = "LOCAL"
            run = self.client.create_run(experiment_id, run_name=sweep_name, tags=tags)
            parent_id = run.info.run_id
        else:
            for key, value in tags.items():
                self.client.set_tag(parent_id, key, value)
        self.client.log_text(parent_id, experiment.text, f"sweep/{experiment.path.name}")
        return parent_id

    def final_metrics(self, run_ids: list[str]) -> dict[str, dict[str, float]]:
        return {run_id: dict(self.client.get_run(run_id).data.metrics) for run_id in run_ids}

    def close_parent(
        self,
        parent_id: str,
        *,
        summary_csv: str,
        description: str,
        counts: dict[str, int],
        status: str,
        reason: str | None = None,
    ) -> None:
        """Summary table (CSV artifact + markdown description), counts as tags, final status."""
        self.client.log_text(parent_id, summary_csv, "summary.csv")
        self.client.set_tag(parent_id, contract.TAG_NOTE, description)
        for tag, count in counts.items():
            self.client.set_tag(parent_id, tag, str(count))
        self.end_parent(parent_id, status, reason)

    def end_parent(self, parent_id: str, status: str, reason: str | None = None) -> None:
        if reason is not None:
            self.client.set_tag(parent_id, contract.TAG_FAILURE_REASON, reason[:5000])
        self.client.set_terminated(parent_id, status)
