"""Running a sweep or search: one Optuna study, one MLflow parent run, one nested run per trial.

The command creates the study (or joins it: a rerun, or the same command on another machine with
the same `--storage`), then trains its trials here or in `workers` long-lived processes
(`study_worker.py`), then writes the parent's summary from the study: a table of every trial,
the best one on the objective, parameter importances for a search. The study's plan is
`study.py`; the parent run's MLflow calls are in `study_tracking.py`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import contract
from .config import ConfigError
from .study import StudyError, StudyPlan, mask, open_storage, open_study, retried_number
from .study_grid import Child, best_child, summary_rows, to_csv, to_markdown
from .study_tracking import StudyStore
from .study_worker import Job, run_workers, work

RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
SETTLED = tuple(RUN_STATUS)  # trial states no worker will change
REGISTERED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_. -]{0,99}")
DESCRIPTION_LIMIT = contract.TAG_VALUE_LIMIT - 100  # room for the notes MLflow adds


@dataclass
class Outcome:
    """Where one trial (with its retries) stands. `status` is its MLflow run's status, or
    PENDING when it has not run to an end; `state` is the Optuna trial's."""

    name: str
    run_id: str | None = None
    status: str = "PENDING"
    state: str = "WAITING"
    number: int = -1
    value: float | None = None
    child: Child | None = None  # its configuration, once known (a search samples it late)
    reason: str = ""  # why it failed, when it did


@dataclass
class StudyResult:
    parent_run_id: str
    outcomes: list[Outcome]
    stopped: bool = False  # interrupted by the user; the rest resumes on the next run
    study_name: str = ""
    done_before: int = 0  # trials finished before this command started
    best: Outcome | None = None

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.state == "FAIL"]

    @property
    def unfinished(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.state in ("WAITING", "RUNNING")]


def run_study(
    plan: StudyPlan,
    *,
    data_dir: Path,
    storage_url: str,
    workers: int = 1,
    force: bool = False,
    trials: int | None = None,
    adopt_run_id: str | None = None,
    register: str | None = None,
    quiet: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    say: Callable[[str], None] | None = None,
) -> StudyResult:
    """Create or join the study of `plan`, train trials until none is left, summarise."""
    from . import data
    from .tracking import check_tracking_server, current_tracking_uri

    say = say or (lambda text: None if quiet else print(text, file=sys.stderr, flush=True))
    plan = _checked(plan, register, trials)
    check_tracking_server(current_tracking_uri())
    data.load_mnist(data_dir)  # download once, here, before workers race to
    storage = open_storage(storage_url)
    store = StudyStore()
    plan, experiment_id = _filed(store, plan, adopt_run_id)

    def create_parent(study_name: str) -> str:
        tags = {
            contract.TAG_STUDY: study_name,
            contract.TAG_STUDY_STORAGE: mask(storage_url),
            contract.TAG_STUDY_OBJECTIVE: f"{plan.objective} {plan.direction}",
        }
        return store.open_parent(
            experiment_id, plan.experiment, plan.sweep_name, adopt_run_id, tags
        )

    study, parent_id = open_study(
        plan,
        storage,
        force=force,
        trials=trials,
        create_parent=create_parent,
        say=say,
        should_stop=should_stop,
    )
    before = _outcomes(plan, study)
    done_before = sum(o.state in ("COMPLETE", "PRUNED") for o in before)
    if all(o.state in SETTLED for o in before):
        # nothing left to train: the parent stays as it was (no new start, no stretched end)
        result = StudyResult(
            parent_id, before, False, study.study_name, done_before, _best(before, plan)
        )
        say(f"study {study.study_name} is complete ({_counts(before)}): nothing to train")
        if adopt_run_id and adopt_run_id != parent_id:
            store.point_to_parent(adopt_run_id, study.study_name, parent_id)
        if register and result.best:
            _register_best(store, plan, result, register, say)
        say(_closing_line(store, plan, result))
        return result
    try:
        store.resume_parent(parent_id)
    except Exception as err:  # MlflowException: RESOURCE_DOES_NOT_EXIST
        raise StudyError(
            f"study {study.study_name} in {mask(storage_url)} belongs to parent run {parent_id}, "
            "which this tracking store does not have (another MLFLOW_TRACKING_URI?); use the "
            "study's tracking server, or --force for a new study"
        ) from err
    if adopt_run_id and adopt_run_id != parent_id:
        store.point_to_parent(adopt_run_id, study.study_name, parent_id)
    say(
        f"study {study.study_name}: {len(before)} trials ({done_before} done before), "
        f"objective {plan.objective} ({plan.direction}), storage {mask(storage_url)}, "
        f"parent run {parent_id}"
    )
    workers = _worker_count(workers, before, say)
    job = Job(plan, storage_url, study.study_name, parent_id, Path(data_dir), workers > 1, quiet)
    try:
        if workers > 1:
            finished = run_workers(job, workers, should_stop)
        else:
            finished = work(job, should_stop, say, shared_writer=True)
    except KeyboardInterrupt:  # a second Ctrl-C: trials were already asked to stop
        store.end_parent(parent_id, "KILLED")
        raise
    except BaseException as err:
        store.end_parent(
            parent_id, "FAILED", f"the study itself failed: {type(err).__name__}: {err}"
        )
        raise
    outcomes = _outcomes(plan, study)
    # also when every worker ran out of trials: spawned workers stop on a lost server too
    _stop_if_store_lost(outcomes, study.study_name)
    result = StudyResult(
        parent_id, outcomes, not finished, study.study_name, done_before, _best(outcomes, plan)
    )
    _close_parent(store, plan, study, result)
    if register and result.best and not result.unfinished:
        _register_best(store, plan, result, register, say)
    say(_closing_line(store, plan, result))
    return result


def _register_best(
    store: StudyStore, plan: StudyPlan, result: StudyResult, name: str, say: Callable
) -> None:
    best = result.best
    version = store.register(
        best.run_id,
        name,
        why=f"Trial {best.number} of study {result.study_name}, the best on {plan.objective} "
        f"({best.value:.4f}).",
        tags={
            contract.TAG_STUDY: result.study_name,
            contract.TAG_TRIAL_NUMBER: str(best.number),
        },
    )
    say(f"registered trial {best.number} as {name} version {version} (@champion)")


class StoreLost(Exception):
    """The tracking server went away mid-study: the trials it interrupted are queued again and
    their checkpoints kept on this machine; the command ends with EXIT_STORE_LOST."""


def _stop_if_store_lost(outcomes: list[Outcome], study_name: str) -> None:
    from .tracking import current_tracking_uri, pending_checkpoints, store_is_gone

    if not store_is_gone():
        return
    kept = sorted(
        str(path)
        for o in outcomes
        if o.run_id and o.state != "COMPLETE"
        for path in pending_checkpoints(o.run_id).glob("epoch_*.pt")
    )
    where = f"; kept on this machine: {', '.join(kept[:3])}" if kept else ""
    raise StoreLost(
        f"the tracking server {current_tracking_uri()} stopped answering during study "
        f"{study_name}; its interrupted trials are queued again{where}. Run the same command "
        "once the server is back: they resume where they stopped"
    )


def _checked(plan: StudyPlan, register: str | None, trials: int | None) -> StudyPlan:
    """The plan with `--trials` applied, after checking `--register` and `--trials` apply:
    before any trial trains, not after the whole study ran."""
    if register is not None and not REGISTERED_NAME.fullmatch(register):
        raise ConfigError(
            f"--register {register!r}: a registered model's name is 1 to 100 letters, digits, "
            "spaces, '_', '-' or '.', starting with a letter or digit"
        )
    if register and contract.measured_on(plan.objective) == contract.TEST:
        raise ConfigError(
            "--register needs a validation split to choose the champion on (set validation)"
        )
    if trials is not None and plan.spec is not None and plan.spec.sampler != "grid":
        return replace(plan, spec=replace(plan.spec, trials=trials))
    if trials is not None:
        raise ConfigError("--trials is for a search (a search: section with sampler tpe/random)")
    return plan


def _worker_count(asked: int, outcomes: list[Outcome], say: Callable[[str], None]) -> int:
    """`asked` workers, but no more than the trials left to train nor than the cores: each
    worker is a process holding its own copy of MNIST (about 0.8 GB) and a core."""
    left = sum(o.state not in SETTLED for o in outcomes)
    cores = os.cpu_count() or 1
    workers = max(1, min(asked, left, cores))
    if workers < asked:
        say(f"{workers} worker(s), not {asked}: {left} trial(s) left on {cores} core(s)")
    return workers


def _counts(outcomes: list[Outcome]) -> str:
    states = [o.state.lower() for o in outcomes]
    return ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))


def _closing_line(store: StudyStore, plan: StudyPlan, result: StudyResult) -> str:
    """The study's last words: its best trial so far on the objective, that trial's model of
    record, and where to look next."""
    where = (
        f"parent run {result.parent_run_id}; report: mnist-analysis compare --parent "
        f"{result.parent_run_id}"
    )
    best = result.best
    if best is None:
        return f"study {result.study_name}: no trial has a {plan.objective} yet; {where}"
    scores = store.final_metrics([best.run_id])[best.run_id] if best.run_id else {}
    test = scores.get(contract.TEST_ACCURACY)
    epoch = scores.get(contract.PREDICTIONS_EPOCH)
    stated = f"{plan.objective} {best.value:.4f}"
    if test is not None and plan.objective != contract.TEST_ACCURACY:
        stated += f", test_accuracy {test:.4f}"
    if epoch is not None:
        stated += f" (epoch {int(epoch)})"
    return f"study {result.study_name}: best trial {best.number} ({best.name}): {stated}; {where}"


def _filed(store: StudyStore, plan: StudyPlan, adopt_run_id: str | None) -> tuple[StudyPlan, str]:
    """The plan filed where its runs go, and that experiment's id: the experiment of the run
    `mlflow run` opened (`adopt_run_id`), else the file's."""
    if not adopt_run_id:
        return plan, store.ensure_experiment(plan.experiment_name)
    experiment_id, experiment_name = store.experiment_of_run(adopt_run_id)
    plan = replace(plan, base={**plan.base, "experiment": experiment_name})
    children = tuple(_in_experiment(c, experiment_name) for c in plan.children)
    return replace(plan, children=children), experiment_id


def _in_experiment(child: Child, experiment: str) -> Child:
    return replace(child, config=replace(child.config, experiment=experiment))


def _outcomes(plan: StudyPlan, study: Any) -> list[Outcome]:
    """One outcome per trial slot: a retried trial is replaced by its latest retry."""
    latest: dict[int, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        retried = retried_number(trial)
        slot = trial.number if retried is None else retried
        latest[slot] = trial
    out = []
    for slot, trial in sorted(latest.items()):
        state = trial.state.name
        child = None
        if trial.params or plan.spec is None:
            child = plan.config_for(slot, trial.params, trial.user_attrs)
        name = child.name if child else f"trial {slot:03d} (not sampled yet)"
        out.append(
            Outcome(
                name,
                trial.user_attrs.get(contract.TRIAL_RUN_ID_ATTR),
                RUN_STATUS.get(state, "PENDING"),
                state,
                slot,
                trial.value if state == "COMPLETE" else None,
                child,
                trial.user_attrs.get(contract.TRIAL_FAILURE_ATTR, "") if state == "FAIL" else "",
            )
        )
    return out


def _best(outcomes: list[Outcome], plan: StudyPlan) -> Outcome | None:
    done = [o for o in outcomes if o.value is not None]
    if not done:
        return None
    pick = max if plan.direction == "maximize" else min
    return pick(done, key=lambda o: o.value)


def _close_parent(store: StudyStore, plan: StudyPlan, study: Any, result: StudyResult) -> None:
    """Summary table, best trial and importances on the parent; FINISHED once every trial is
    settled, KILLED when this command was stopped, else left RUNNING for the other machines."""
    known = [(o, o.child) for o in result.outcomes if o.child is not None]
    metrics = store.final_metrics([o.run_id for o, _ in known if o.run_id])
    rows = summary_rows([c for _, c in known], [(o.run_id, o.status) for o, _ in known], metrics)
    for i, (outcome, _) in enumerate(known):
        rows[i] = {"trial": outcome.number, "state": outcome.state, **rows[i]}
        rows[i][plan.objective] = outcome.value
        if result.failed:
            rows[i]["failure_reason"] = outcome.reason
    files = {contract.STUDY_TRIALS_PATH: to_csv(rows)}
    importance = _importance(study, plan)
    if importance:
        files[contract.STUDY_IMPORTANCE_PATH] = json.dumps(importance, indent=1)
    failed = len(result.failed)
    status, reason = "FINISHED", None
    if result.stopped:
        status = "KILLED"
    elif result.unfinished:
        status = None  # another machine is still training trials of this study
    elif failed:
        status, reason = "FAILED", f"{failed} of {len(result.outcomes)} trials failed"
    tags = {}
    if result.best:
        tags[contract.TAG_BEST_TRIAL] = str(result.best.number)
    store.close_parent(
        result.parent_run_id,
        summary_csv=to_csv(rows),
        description=_description(rows, _headline(result, plan, rows), plan),
        counts={
            contract.TAG_SWEEP_CHILDREN: len(result.outcomes),
            contract.TAG_SWEEP_FAILED: failed,
            contract.TAG_SWEEP_SKIPPED: result.done_before,
        },
        status=status,
        reason=reason,
        files=files,
        tags=tags,
    )


def _description(rows: list[dict], headline: str, plan: StudyPlan) -> str:
    """The summary as markdown within MLflow's 8,000 characters for a run description: a
    search's trial names repeat its parameter columns and are left out; a long table keeps its
    best rows on the objective (summary.csv has every trial)."""
    if plan.spec is not None:
        rows = [{k: v for k, v in row.items() if k != "name"} for row in rows]
    text = to_markdown(rows, headline=headline)
    if len(text) <= DESCRIPTION_LIMIT:
        return text
    scored = [r for r in rows if r.get(plan.objective) is not None]
    scored.sort(key=lambda r: r[plan.objective], reverse=plan.direction == "maximize")
    for keep in range(min(len(scored), 50), 0, -1):
        note = f"{headline}\n\nThe best {keep} of {len(rows)} trials on {plan.objective}; "
        text = to_markdown(scored[:keep], headline=note + "summary.csv has them all.")
        if len(text) <= DESCRIPTION_LIMIT:
            return text
    return headline[:DESCRIPTION_LIMIT]


def _importance(study: Any, plan: StudyPlan) -> dict[str, float]:
    """Parameter importances (fANOVA) over the complete trials of a search with two or more
    parameters; empty when too few trials finished to say."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if plan.spec is None or len(plan.spec.params) < 2 or len(complete) < 4:
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (ValueError, RuntimeError):  # e.g. every complete trial has the same value
        return {}


def _headline(result: StudyResult, plan: StudyPlan, rows: list[dict]) -> str:
    done = sum(o.state == "COMPLETE" for o in result.outcomes)
    pruned = sum(o.state == "PRUNED" for o in result.outcomes)
    text = f"Study {result.study_name}: {done} of {len(result.outcomes)} trials complete"
    if pruned:
        text += f", {pruned} pruned"
    if result.failed:
        failed = "; ".join(f"{o.name}: {o.reason}" if o.reason else o.name for o in result.failed)
        text += f", {len(result.failed)} failed ({failed[:2000]})"
    if result.stopped:
        text += "; interrupted: run the command again to finish it"
    elif result.unfinished:
        text += f"; {len(result.unfinished)} still queued or running elsewhere"
    text += "."
    if plan.spec is not None and result.best:
        best = result.best
        row = next((r for r in rows if r["trial"] == best.number), {})
        test, epoch = row.get(contract.TEST_ACCURACY), row.get(contract.PREDICTIONS_EPOCH)
        text += f" Best trial on {plan.objective}: {best.number} ({best.name}, {best.value:.4f}"
        text += f"; test accuracy {test:.4f}" if test is not None else ""
        text += f", epoch {epoch})." if epoch is not None else ")."
    else:
        text += " " + best_child(rows)
    return text.strip()


__all__ = ["Outcome", "StudyError", "StudyResult", "run_study"]
