"""Running a sweep: one parent run, one nested child run per configuration, a summary at the end.

Children train in this process, or in `workers` spawned processes. Rerunning a sweep reuses its
latest parent: children that FINISHED with the same configuration are skipped, children left
KILLED or FAILED are resumed from their last checkpoint. The configurations come from
`sweep_plan.py`; the parent run's MLflow calls are in `sweep_tracking.py`, the children's in
`tracking.py` (through `runner.py`).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import contract
from .config import ConfigError, ExperimentFile
from .sweep_plan import Child, best_child, summary_rows, to_csv, to_markdown
from .sweep_tracking import EarlierRun, SweepStore
from .tracking import abandoned


@dataclass
class Outcome:
    """What happened to one child. `status` is the child run's MLflow status."""

    name: str
    run_id: str | None = None
    status: str = "PENDING"  # FINISHED | FAILED | KILLED, or PENDING when never started
    action: str = "train"  # train | resume | skip
    message: str = ""


@dataclass
class SweepResult:
    parent_run_id: str
    outcomes: list[Outcome]
    stopped: bool = False  # interrupted by the user; the rest resumes on the next run

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "FAILED"]


@dataclass(frozen=True)
class Task:
    """One child to train, as sent to a worker process (picklable)."""

    child: Child
    experiment: ExperimentFile
    data_dir: Path
    parent_run_id: str
    resume_run_id: str | None
    line_output: bool  # one line per epoch, never a progress bar (parallel children share stderr)
    quiet: bool
    stop_event: Any = None  # a manager's Event shared by the sweep's workers (parallel only)


def run_sweep(
    experiment: ExperimentFile,
    children: Sequence[Child],
    *,
    sweep_name: str,
    data_dir: Path,
    workers: int = 1,
    force: bool = False,
    adopt_run_id: str | None = None,
    quiet: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    say: Callable[[str], None] | None = None,
) -> SweepResult:
    """Train `children` under one parent run and return what happened to each.

    `adopt_run_id` makes an existing run the parent (the run `mlflow run` opened); otherwise the
    latest parent of the same name in the experiment is reused, or a new one created (`force`
    always creates a new parent and retrains every child).
    """
    from . import data
    from .tracking import check_tracking_server

    say = say or (lambda text: None if quiet else print(text, file=sys.stderr, flush=True))
    # Check the server and load (unpack, download) the data once, here: either problem is then one
    # error before any run opens, and parallel children never race to unpack the same files.
    check_tracking_server(os.environ.get("MLFLOW_TRACKING_URI", ""))
    data.load_mnist(data_dir)
    store = SweepStore()
    if adopt_run_id:
        experiment_id, experiment_name = store.experiment_of_run(adopt_run_id)
        children = [
            dataclasses.replace(c, config=dataclasses.replace(c.config, experiment=experiment_name))
            for c in children
        ]
    else:
        experiment_id = store.ensure_experiment(children[0].config.experiment)

    previous = {} if force else store.earlier_children(experiment_id, sweep_name)
    parent_id = store.open_parent(
        experiment_id, experiment, sweep_name, adopt_run_id, reuse=not force
    )

    outcomes, tasks = [], []
    line_output = workers > 1
    for child in children:
        action, run_id, status = _plan(store, child, previous.get(child.name, []))
        if action == "skip":
            if status == "FINISHED":
                note = "already finished"
            else:
                note = "diverged before (--force retrains it)"
            outcomes.append(Outcome(child.name, run_id, status, "skip", note))
            continue
        outcome = Outcome(child.name, run_id, "PENDING", action)
        outcomes.append(outcome)
        task = Task(child, experiment, Path(data_dir), parent_id, run_id, line_output, quiet)
        tasks.append((outcome, task))

    skipped = len(children) - len(tasks)
    say(
        f"sweep {sweep_name}: {len(children)} children ({skipped} done before, "
        f"{sum(o.action == 'resume' for o, _ in tasks)} to resume), parent run {parent_id}"
    )
    tally = _Tally(len(children), skipped, sum(o.status == "FAILED" for o in outcomes), say)
    try:
        if workers > 1 and len(tasks) > 1:
            stopped = _run_parallel(tasks, workers, should_stop, tally)
        else:
            stopped = _run_sequential(tasks, should_stop, tally)
    except KeyboardInterrupt:  # a second Ctrl-C: children were already asked to stop
        store.end_parent(parent_id, "KILLED")
        raise
    except BaseException as err:
        reason = f"the sweep itself failed: {type(err).__name__}: {err}"
        store.end_parent(parent_id, "FAILED", reason)
        raise

    result = SweepResult(parent_id, outcomes, stopped)
    _close_parent(store, parent_id, children, result)
    return result


def _plan(
    store: SweepStore, child: Child, same_name: list[EarlierRun]
) -> tuple[str, str | None, str]:
    """(action, run id, status): skip a finished (or diverged) twin, resume an interrupted one, or
    train a new child. Twins are earlier children with the same name and identical parameters."""
    expected = child.config.to_params()
    twins = [r for r in same_name if all(r.params.get(k) == v for k, v in expected.items())]
    for run in twins:
        if run.status == "FINISHED":
            return "skip", run.run_id, "FINISHED"
    for run in twins:
        if run.failure_reason.startswith(contract.DIVERGED_PREFIX):
            return "skip", run.run_id, "FAILED"  # diverged: retraining would diverge again
        gone = abandoned(run.tags) if run.status == "RUNNING" else None
        if run.status in ("KILLED", "FAILED") or gone:
            if store.has_checkpoints(run.run_id):
                return "resume", run.run_id, run.status
            if gone:
                store.abandon(run.run_id, gone)
    return "train", None, ""


def _close_parent(
    store: SweepStore, parent_id: str, children: Sequence[Child], result: SweepResult
) -> None:
    ended = [(o.run_id, o.status) for o in result.outcomes]
    metrics = store.final_metrics([o.run_id for o in result.outcomes if o.run_id])
    rows = summary_rows(children, ended, metrics)
    failed = len(result.failed)
    status, reason = "FINISHED", None
    if result.stopped:
        status = "KILLED"
    elif failed:
        status, reason = "FAILED", f"{failed} of {len(result.outcomes)} children failed"
    store.close_parent(
        parent_id,
        summary_csv=to_csv(rows),
        description=to_markdown(rows, headline=f"{_headline(result)} {best_child(rows)}".strip()),
        counts={
            contract.TAG_SWEEP_CHILDREN: len(result.outcomes),
            contract.TAG_SWEEP_FAILED: failed,
            contract.TAG_SWEEP_SKIPPED: sum(o.action == "skip" for o in result.outcomes),
        },
        status=status,
        reason=reason,
    )


def _headline(result: SweepResult) -> str:
    done = sum(o.status == "FINISHED" for o in result.outcomes)
    text = f"{done} of {len(result.outcomes)} children finished"
    if result.failed:
        text += f", {len(result.failed)} failed ({', '.join(o.name for o in result.failed)})"
    if result.stopped:
        text += "; interrupted: run the sweep again to finish it"
    return text + "."


class _Tally:
    """Overall progress: one line per child that ends, with counts so far."""

    def __init__(self, total: int, done: int, failed: int, say: Callable[[str], None]):
        self.total, self.done, self.failed, self.say = total, done, failed, say

    def ended(self, outcome: Outcome) -> None:
        if outcome.status == "PENDING":
            return
        self.done += outcome.status in ("FINISHED", "FAILED")
        self.failed += outcome.status == "FAILED"
        note = f": {outcome.message}" if outcome.message and outcome.status != "FINISHED" else ""
        counts = f"[{self.done}/{self.total} done, {self.failed} failed]"
        self.say(f"{counts} {outcome.name} {outcome.status}{note}")


def _run_sequential(tasks, should_stop, tally: _Tally) -> bool:
    for outcome, task in tasks:
        if should_stop():
            return True
        _record(outcome, train_child(task, should_stop))
        tally.ended(outcome)
        if outcome.status == "KILLED":
            return True
    return False


def _run_parallel(tasks, workers: int, should_stop, tally: _Tally) -> bool:
    """Children in `workers` spawned processes; a shared event asks them all to stop."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fork would copy MLflow's open connections
    threads = max(1, (os.cpu_count() or 1) // workers)
    stopped = False
    from multiprocessing.managers import SyncManager

    manager = SyncManager(ctx=context)
    manager.start(_watch_parent, (os.getpid(), False))  # it too must not outlive us
    with (
        manager,
        ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(threads,)
        ) as pool,
    ):
        stop_event = manager.Event()  # a proxy: it travels with each task to any worker
        pending: dict[Future, Outcome] = {
            pool.submit(train_child, dataclasses.replace(task, stop_event=stop_event)): outcome
            for outcome, task in tasks
        }
        while pending:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            if should_stop() and not stopped:
                stopped = True
                stop_event.set()
                for future in pending:
                    future.cancel()
            for future in done:
                outcome = pending.pop(future)
                if future.cancelled():
                    continue
                try:
                    _record(outcome, future.result())
                except Exception as err:  # the worker process died (killed, out of memory)
                    outcome.status, outcome.message = (
                        "FAILED",
                        f"worker process failed: {type(err).__name__}: {err}",
                    )
                tally.ended(outcome)
            for future in [f for f in pending if f.cancelled()]:
                pending.pop(future)
    return stopped or any(o.status == "KILLED" for o, _ in tasks)


def _record(outcome: Outcome, result: Outcome) -> None:
    outcome.run_id = result.run_id or outcome.run_id
    outcome.status, outcome.message = result.status, result.message


def _init_worker(threads: int) -> None:
    import torch

    from .tracking import quiet_mlflow_logs

    _watch_parent(os.getppid(), True)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the sweep process, which stops us
    sys.stdout = sys.stderr  # stdout carries the sweep's run ids; MLflow prints run links there
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one line per epoch, no bars
    torch.set_num_threads(threads)  # N workers on N cores: oversubscribed threads only slow down
    quiet_mlflow_logs()


def _watch_parent(parent: int, interrupt: bool) -> None:
    """A sweep's helper process must not outlive the sweep (kill -9 of the sweep would leave a
    worker training queued children, then idling): a watchdog thread ends this process once
    `parent` is gone, first interrupting its training (`interrupt`: the child run is marked
    KILLED, resumable from its last epoch checkpoint). Called in the process's main thread,
    the only one that may set signal handlers."""
    import threading

    if interrupt:
        signal.signal(signal.SIGUSR1, _interrupt)
    threading.Thread(target=_exit_with, args=(parent, interrupt), daemon=True).start()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # in the training loop: the run is marked KILLED


def _exit_with(parent: int, interrupt: bool) -> None:
    import time

    while os.getppid() == parent:
        time.sleep(1.0)
    if interrupt:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(30)  # time to mark the run; then go, whatever the pool's machinery is doing
    os._exit(1)


def _stop_flag(event: Any) -> Callable[[], bool]:
    """`event.is_set`, read as "stop" once the sweep's manager process is gone with the sweep."""
    if event is None:
        return lambda: False

    def stop_requested() -> bool:
        try:
            return event.is_set()
        except (OSError, EOFError):  # the sweep that owns us is gone: stop at this step
            return True

    return stop_requested


def train_child(task: Task, should_stop: Callable[[], bool] | None = None) -> Outcome:
    """Train (or resume) one child; never raises for the child's own failures."""
    import traceback

    from .data import DataError
    from .progress import Reporter
    from .runner import EXIT_INTERRUPTED, TrainingStopped, prepare_run, run_training

    if should_stop is None:
        should_stop = _stop_flag(task.stop_event)
    name = task.child.name
    if should_stop():  # queued in a worker before the sweep was stopped: leave it for the next run
        return Outcome(name, task.resume_run_id, "PENDING", message="not started")
    reporter = Reporter(enabled=not task.quiet, label=name)
    if task.line_output:
        reporter.interactive = False
    try:
        prepared = prepare_run(task.child.config, task.data_dir)
        run_id = run_training(
            prepared,
            experiment_file=task.experiment,
            resume_run_id=task.resume_run_id,
            parent_run_id=task.parent_run_id,
            reporter=reporter,
            should_stop=should_stop,
        )
        return Outcome(name, run_id, "FINISHED", message="")
    except TrainingStopped as err:
        if err.exit_code == EXIT_INTERRUPTED:
            return Outcome(
                name,
                err.run_id,
                "KILLED",
                message="interrupted; it resumes when the sweep runs again",
            )
        return Outcome(name, err.run_id, "FAILED", message=str(err))
    except (ConfigError, DataError) as err:
        return Outcome(name, task.resume_run_id, "FAILED", message=str(err))
    except Exception as err:  # a bug in one child must not take its siblings down; show where
        where = traceback.extract_tb(err.__traceback__)[-1]
        return Outcome(
            name,
            task.resume_run_id,
            "FAILED",
            message=f"{type(err).__name__}: {err} ({Path(where.filename).name}:{where.lineno})",
        )
