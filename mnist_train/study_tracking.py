"""MLflow for a study's parent run and what it reads of its trial runs.

The trials are ordinary training runs written by `tracking.py`; this module owns only what a
study adds around them, so that `study_run.py` and `study_worker.py` never call MLflow themselves.
"""

from __future__ import annotations

from . import contract
from .config import ExperimentFile
from .store import open_store
from .tracking import git_commit, logged_model_id, pending_checkpoints


def model_of_record(metrics: dict[str, float]) -> dict[str, float]:
    """A run's latest metrics (MLflow's `run.data.metrics`) with every score replaced by its
    model of record's (`model/val_accuracy` -> `val_accuracy`, ...): what the training process
    computed and logged once at its end, so no metric history is read."""
    out = {k: v for k, v in metrics.items() if not k.startswith(contract.RECORD_PREFIX)}
    for score in contract.SCORES:
        out.pop(score, None)  # a last epoch's value is not the model's
        if contract.record_key(score) in metrics:
            out[score] = metrics[contract.record_key(score)]
    return out


class StudyStore:
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
        """The experiment's id, creating it (and a new store's tables) now, once: workers would
        otherwise race to create the same tables and experiment. Another machine creating it at
        the same moment is fine: the second attempt finds it."""
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            return mlflow.set_experiment(name).experiment_id
        except MlflowException:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def abandon(self, run_id: str, why: str) -> None:
        """End a child whose owner died before its first checkpoint: it is retrained anew."""
        self.client.set_tag(
            run_id, contract.TAG_FAILURE_REASON, contract.fit_tag(f"abandoned: {why}")
        )
        self.client.set_terminated(run_id, "KILLED")

    def has_checkpoints(self, run_id: str) -> bool:
        """Whether the run can resume: a checkpoint in the store, or one kept on this machine
        while the tracking server was away."""
        if any(pending_checkpoints(run_id).glob("epoch_*.pt")):
            return True
        return bool(self.client.list_artifacts(run_id, contract.CHECKPOINT_DIR))

    def open_parent(
        self,
        experiment_id: str,
        experiment: ExperimentFile,
        sweep_name: str,
        adopt_run_id: str | None,
        study_tags: dict[str, str],
    ) -> str:
        """The parent's run id: `adopt_run_id`, else a new run. It is left RUNNING, tagged with
        the study (`study_tags`), with the sweep file attached."""
        tags = {
            **study_tags,
            contract.TAG_SWEEP: sweep_name,
            "mlflow.runName": sweep_name,
            "mlflow.source.name": str(experiment.path),
        }
        commit = git_commit(experiment.path.resolve().parent)
        if commit:
            tags["mlflow.source.git.commit"] = commit
        parent_id = adopt_run_id
        if parent_id is None:
            tags["mlflow.source.type"] = "LOCAL"
            run = self.client.create_run(experiment_id, run_name=sweep_name, tags=tags)
            parent_id = run.info.run_id
        else:
            for key, value in tags.items():
                self.client.set_tag(parent_id, key, value)
        self.client.log_text(parent_id, experiment.text, f"sweep/{experiment.path.name}")
        return parent_id

    def resume_parent(self, parent_id: str) -> None:
        """A study continued (rerun, or joined from another machine): its parent runs again."""
        run = self.client.get_run(parent_id)
        if run.info.status != "RUNNING":
            self.client.update_run(parent_id, status="RUNNING")
        if contract.TAG_FAILURE_REASON in run.data.tags:
            self.client.delete_tag(parent_id, contract.TAG_FAILURE_REASON)

    def point_to_parent(self, run_id: str, study_name: str, parent_id: str) -> None:
        """The run `mlflow run` opened, for a command that continued an existing study: its
        description says where the study's trials are recorded."""
        experiment_id = self.client.get_run(parent_id).info.experiment_id
        link = f"#/experiments/{experiment_id}/runs/{parent_id}"
        self.client.set_tag(run_id, contract.TAG_STUDY, study_name)
        self.client.set_tag(
            run_id,
            contract.TAG_NOTE,
            f"Continued study {study_name}; its trials are recorded under its parent run "
            f"[{parent_id}]({link}).",
        )

    def run_status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def objective(self, run_id: str, key: str) -> float | None:
        """A finished run's value of `key` for its model of record (`model/<key>`), or the final
        metric `key` (train_time_s, ...): for a trial trained but never told (its worker died)."""
        return model_of_record(self.client.get_run(run_id).data.metrics).get(key)

    def set_trial_state(self, run_id: str, state: str) -> None:
        self.client.set_tag(run_id, contract.TAG_TRIAL_STATE, state)

    def register(
        self, run_id: str, name: str, *, why: str, tags: dict[str, str], alias: str = "champion"
    ) -> int:
        """Register the run's logged model (its model of record) as a new version of `name`,
        aliased `alias`; the version's description says `why` it was chosen and states the
        model's scores and epoch, its tags hold them (with `tags`) for the Models page."""
        import mlflow

        metrics = self.client.get_run(run_id).data.metrics
        scores = model_of_record(metrics)
        epoch = int(metrics.get(contract.PREDICTIONS_EPOCH, 0))
        stated = {k: f"{scores[k]:.4f}" for k in contract.SCORES if k in scores}
        model_id = logged_model_id(self.client, run_id)
        version = mlflow.register_model(contract.MODEL_URI.format(model_id=model_id), name)
        described = ", ".join(f"{k} {v}" for k, v in stated.items() if not k.startswith("train"))
        self.client.update_model_version(
            name,
            version.version,
            description=f"{why} Model of record: epoch {epoch} of run {run_id}; {described}.",
        )
        for key, value in {**tags, **stated, "epoch": str(epoch), "run_id": run_id}.items():
            self.client.set_model_version_tag(name, version.version, key, value)
        self.client.set_registered_model_alias(name, alias, version.version)
        return int(version.version)

    def final_metrics(self, run_ids: list[str]) -> dict[str, dict[str, float]]:
        """Each run's final metrics, its scores those of its model of record (see
        `model_of_record`)."""
        return {
            run_id: model_of_record(self.client.get_run(run_id).data.metrics) for run_id in run_ids
        }

    def close_parent(
        self,
        parent_id: str,
        *,
        summary_csv: str,
        description: str,
        counts: dict[str, int],
        status: str | None,
        reason: str | None = None,
        files: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Summary table (CSV artifact + markdown description), counts and `tags`, other text
        `files`, then the final status (None: leave it RUNNING, other machines still work)."""
        self.client.log_text(parent_id, summary_csv, "summary.csv")
        for path, text in (files or {}).items():
            self.client.log_text(parent_id, text, path)
        for tag, value in (tags or {}).items():
            self.client.set_tag(parent_id, tag, value)
        self.client.set_tag(parent_id, contract.TAG_NOTE, description)
        for tag, count in counts.items():
            self.client.set_tag(parent_id, tag, str(count))
        if status is not None:
            self.end_parent(parent_id, status, reason)

    def end_parent(self, parent_id: str, status: str, reason: str | None = None) -> None:
        if reason is not None:
            self.client.set_tag(parent_id, contract.TAG_FAILURE_REASON, contract.fit_tag(reason))
        self.client.set_terminated(parent_id, status)
