"""A study worker: pull trials from the study until none is left, train each as an MLflow run.

A worker is long-lived: it loads MNIST and imports torch and MLflow once, then takes trial after
trial. It takes only queued trials (atomically, so no trial runs twice), records a heartbeat for
the one it trains, and between trials fails the trials of workers that went silent, which queues
them again with their MLflow run: the next worker to take one resumes that run from its last
checkpoint. A worker with nothing to take waits while other workers' trials run (one of them may
die and need retrying), then stops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import contract, process
from .config import ConfigError
from .study import StudyPlan, open_storage, requeue
from .study_grid import format_value
from .tracking import current_tracking_uri
from .tracking_writer import start_shared_writer, stop_shared_writer

POLL_S = 2.0


@dataclass(frozen=True)
class Job:
    """What a worker needs (picklable: it travels to spawned worker processes)."""

    plan: StudyPlan
    storage_url: str
    study_name: str
    parent_run_id: str
    data_dir: Path
    line_output: bool  # one line per epoch, never a progress bar (workers share stderr)
    quiet: bool


def sampler_for(plan: StudyPlan) -> Any:
    import optuna

    if plan.spec is not None and plan.spec.sampler == "tpe":
        # constant_liar: trials running in parallel count as bad guesses, so workers spread out
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True)
    return optuna.samplers.RandomSampler()  # queued grids never ask the sampler


def pruner_for(plan: StudyPlan) -> Any:
    import optuna

    name = plan.spec.pruner if plan.spec else "none"
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def work(
    job: Job,
    should_stop: Callable[[], bool],
    say: Callable[[str], None],
    *,
    shared_writer: bool = False,
) -> bool:
    """Run trials until the study has none left; False when stopped before that.

    `shared_writer`: the only worker on this machine has its runs' metrics written by one
    helper process on the other core while it trains (with more workers, every core trains)."""
    import optuna

    from .study_tracking import StudyStore

    storage = open_storage(job.storage_url)
    study = optuna.load_study(
        study_name=job.study_name,
        storage=storage,
        sampler=sampler_for(job.plan),
        pruner=pruner_for(job.plan),
    )
    study_id = storage.get_study_id_from_name(job.study_name)
    kept = _Kept(StudyStore(), {})  # one store client and MNIST prepared once, per worker
    if shared_writer:
        start_shared_writer(current_tracking_uri())
    try:
        return _work(job, study, storage, study_id, kept, should_stop, say)
    finally:
        stop_shared_writer()


def _work(job, study, storage, study_id, kept, should_stop, say) -> bool:
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    while not should_stop():
        fail_stale_trials(study)
        trial = _claim(study, storage, study_id, job.storage_url)
        if trial is None:
            running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return True
            time.sleep(POLL_S)  # a running trial may yet fail and come back to the queue
            continue
        state = run_trial(job, study, storage, trial, should_stop, kept)
        _tally(storage, study_id, say)
        if state in ("INTERRUPTED", "LOST"):  # stopped, or the tracking server went away
            return False
    return False


def _claim(study: Any, storage: Any, study_id: int, url: str) -> Any:
    """The first queued trial this worker manages to mark RUNNING, or None.

    PostgreSQL and MySQL lock the trial's row while it changes state, so two workers never take
    the same trial. SQLite has no row locks: workers on one SQLite file (one machine) take turns
    through a file lock beside it.
    """
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    with _sqlite_turn(url):
        for waiting in storage.get_all_trials(
            study_id, deepcopy=False, states=(TrialState.WAITING,)
        ):
            # the storage API takes a trial's id, which Optuna exposes only as `_trial_id`
            trial_id = waiting._trial_id
            try:
                if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    storage.record_heartbeat(trial_id)
                    # The study reads its storage through Optuna's cache, which learns of a trial
                    # claimed on the raw storage only when it reads the trials again: without
                    # this, a sampler that reads no trials (random) cannot set the trial's
                    # parameters (a KeyError inside Optuna's _CachedStorage.set_trial_param).
                    study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                    return optuna.Trial(study, trial_id)
            except UpdateFinishedTrialError:
                continue
    return None


@contextlib.contextmanager
def _sqlite_turn(url: str) -> Iterator[None]:
    if not url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(url[len("sqlite:///") :] + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _tally(storage: Any, study_id: int, say: Callable[[str], None]) -> None:
    from optuna.trial import TrialState

    trials = storage.get_all_trials(study_id, deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    say(
        f"  [study: {count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned, "
        f"{count[TrialState.RUNNING]} running, {count[TrialState.WAITING]} queued, "
        f"{count[TrialState.FAIL]} failed]"
    )


@dataclass
class _Kept:
    """What a worker keeps between trials."""

    store: Any  # StudyStore
    inputs: dict  # prepare_run's cache


class _Heartbeat:
    """Records the trial's heartbeat in the study storage while it trains."""

    def __init__(self, storage: Any, trial_id: int):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, trial_id), daemon=True)

    def _beat(self, storage: Any, trial_id: int) -> None:
        while not self._stop.wait(contract.STUDY_HEARTBEAT_S):
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # the storage is away for a moment: the next beat tries again
                pass

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _tell_study(
    job: Job, study: Any, storage: Any, trial: Any, state: str, value: float | None, message: str
) -> None:
    """Tell the study how `trial` ended: COMPLETE (with its value), PRUNED, FAIL (its reason
    kept as a trial attribute: a trial may fail before its run exists), INTERRUPTED or LOST
    (failed now and queued again, to resume the same run from what it kept)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    if state == "FAIL" and message:
        try:
            trial.set_user_attr(contract.TRIAL_FAILURE_ATTR, message[:1000])
        except Exception:  # the storage is away: the reason is still printed
            pass
    try:
        if state in ("INTERRUPTED", "LOST"):
            study.tell(trial, state=TrialState.FAIL)
            requeue(study, storage.get_trial(trial._trial_id))
        elif state == "COMPLETE":
            study.tell(trial, value)
        else:
            study.tell(trial, state=TrialState[state])
    except (ValueError, UpdateFinishedTrialError) as err:
        # failed as stale meanwhile (this worker was silent past the grace period) and queued
        # again: the retry finds the run finished and records it
        _say(job, f"trial {trial.number}: the study no longer expected it ({err})")


def run_trial(
    job: Job,
    study: Any,
    storage: Any,
    trial: Any,
    should_stop: Callable[[], bool],
    kept: _Kept,
) -> str:
    """Train one trial (or resume its run) and tell the study how it ended; returns the state:
    COMPLETE, PRUNED, FAIL, INTERRUPTED (failed now, queued again to resume) or LOST (the
    tracking server went away: queued again likewise)."""
    from .data import DataError
    from .progress import Reporter
    from .runner import (
        EXIT_ENDED,
        EXIT_INTERRUPTED,
        EXIT_STORE_LOST,
        EndRun,
        TrainingStopped,
        prepare_run,
        run_training,
    )
    from .tracking import store_is_gone

    plan, store = job.plan, kept.store
    frozen = storage.get_trial(trial._trial_id)
    number = frozen.number
    run_id = frozen.user_attrs.get(contract.TRIAL_RUN_ID_ATTR)

    def tell(state: str, value: float | None = None, message: str = "") -> str:
        _tell_study(job, study, storage, trial, state, value, message)
        if run_id and state != "LOST":  # the tracking server is gone: nothing to tag there
            store.set_trial_state(run_id, state)
        shown = f" {plan.objective} {value:.4f}" if value is not None else ""
        note = f": {message}" if message else ""
        _say(job, f"trial {number} {state}{shown}{note}")
        return state

    with _Heartbeat(storage, trial._trial_id):
        try:
            child = plan.config_for(number, _suggest(trial, plan), frozen.user_attrs)
            if run_id and store.run_status(run_id) == "FINISHED":  # trained, never told
                value = store.objective(run_id, plan.objective)
                if value is None:  # a run recorded before its scores were logged as model/*
                    return tell("FAIL", message=f"run {run_id} logged no model/{plan.objective}")
                return tell("COMPLETE", value)
            if run_id and not store.has_checkpoints(run_id):  # died before its first epoch
                store.abandon(run_id, "its worker stopped before the first checkpoint")
                run_id = None
            prepared = prepare_run(child.config, job.data_dir, cache=kept.inputs)
            _say(job, f"trial {number}: {tried(child)}" + (f" (run {run_id})" if run_id else ""))
            reporter = Reporter(enabled=not job.quiet, label=f"trial {number}")
            if job.line_output:
                reporter.interactive = False

            def started(new_id: str) -> None:
                nonlocal run_id
                run_id = new_id
                trial.set_user_attr(contract.TRIAL_RUN_ID_ATTR, new_id)

            def epoch_done(record: Any) -> None:
                if plan.spec is None or plan.spec.pruner == "none":
                    return
                trial.report(record.metrics()[plan.objective], record.epoch)
                if trial.should_prune():
                    raise EndRun(f"pruned after epoch {record.epoch}")

            result = run_training(
                prepared,
                experiment_file=job.plan.experiment,
                resume_run_id=run_id,
                parent_run_id=job.parent_run_id,
                reporter=reporter,
                should_stop=should_stop,
                tags={
                    contract.TAG_STUDY: job.study_name,
                    contract.TAG_TRIAL_NUMBER: str(number),
                    contract.TAG_TRIAL_STATE: "RUNNING",
                },
                on_start=started,
                on_epoch=epoch_done,
                take_over=True,
            )
            value = result.value(plan.objective)  # the model of record's, as it was computed
            if value is None:
                return tell("FAIL", message=f"run {run_id} logged no {plan.objective}")
            return tell("COMPLETE", value)
        except TrainingStopped as err:
            if err.exit_code == EXIT_ENDED:
                return tell("PRUNED", message=str(err))
            if err.exit_code == EXIT_INTERRUPTED:
                return tell("INTERRUPTED", message="it resumes when the study runs again")
            if err.exit_code == EXIT_STORE_LOST:  # queued again, to resume from what was kept
                return tell("LOST", message=str(err))
            return tell("FAIL", message=str(err))
        except (ConfigError, DataError) as err:
            return tell("LOST" if store_is_gone() else "FAIL", message=str(err))
        except Exception as err:  # a bug in one trial must not stop the study; show where
            if store_is_gone():  # the tracking server went away before or between runs
                return tell("LOST", message=f"the tracking server stopped answering ({err})")
            where = traceback.extract_tb(err.__traceback__)[-1]
            text = f"{type(err).__name__}: {err} ({Path(where.filename).name}:{where.lineno})"
            return tell("FAIL", message=text)


def tried(child: Any) -> str:
    """What a trial tries, as `lr=0.00045 hidden_size=900 ...` (its settings; its name when it
    varies nothing)."""
    if not child.settings:
        return child.name

    def shown(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else format_value(value)

    return " ".join(f"{k}={shown(v)}" for k, v in child.settings.items())


def _suggest(trial: Any, plan: StudyPlan) -> dict[str, Any]:
    """The trial's parameter values: queued ones as stored, the rest chosen by the sampler."""
    if plan.spec is None:
        return dict(trial.params)
    values = {}
    for p in plan.spec.params:
        if p.kind == "categorical":
            values[p.name] = trial.suggest_categorical(p.name, list(p.labels))
        elif p.kind == "int":
            values[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return values


def _say(job: Job, text: str) -> None:
    if not job.quiet:
        print(text, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------- worker processes


def worker_main(job: Job, stop_event: Any, parent_pid: int, threads: int) -> None:
    """Entry point of a spawned worker: Ctrl-C reaches the command, which sets `stop_event`."""
    process.pause_collection()  # until its first trial trains
    import torch

    from .tracking import quiet_mlflow_logs
    from .warmup import warm_up_in_background

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout = sys.stderr  # the command's stdout carries run ids only
    torch.set_num_threads(threads)  # the process's settings came with it from the command
    warm_up_in_background()
    quiet_mlflow_logs()
    orphaned = threading.Event()
    threading.Thread(target=_watch, args=(parent_pid, orphaned), daemon=True).start()

    def should_stop() -> bool:
        return stop_event.is_set() or orphaned.is_set()

    def say(text: str) -> None:
        _say(job, text)

    try:
        work(job, should_stop, say)
    except ConfigError as err:
        print(f"Error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


def _watch(parent_pid: int, orphaned: threading.Event) -> None:
    """A worker must not outlive its command (kill -9 of the command): stop at the next step,
    which ends the trial's run KILLED with a checkpoint and queues the trial again."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    orphaned.set()
    time.sleep(60)
    os._exit(1)


def run_workers(job: Job, workers: int, should_stop: Callable[[], bool]) -> bool:
    """`workers` spawned processes on the study; True when the study ran out of trials."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fork would copy open connections
    stop_event = context.Event()
    threads = max(1, (os.cpu_count() or 1) // workers)
    processes = [
        context.Process(
            target=worker_main,
            args=(job, stop_event, os.getpid(), threads),
            name=f"study-worker-{i}",
        )
        for i in range(workers)
    ]
    for worker in processes:
        worker.start()
    stopped = False
    while any(p.is_alive() for p in processes):
        if should_stop() and not stopped:
            stopped = True
            stop_event.set()
        for worker in processes:
            worker.join(timeout=0.25)
    return not stopped
