"""Sweeps: one experiment file expanded into many runs, recorded as a parent run with nested children.

A sweep file is an experiment file with up to three extra sections:

    grid:      {lr: [0.01, 0.001]}          # cartesian product over the listed values
    variants:  [{name: layers=3, hidden_sizes: [100, 100]}, ...]   # named partial configs
    seeds:     [0, 1, 2]                    # replicates (or a count: `seeds: 5` is 0..4)

Every child is validated like a single config, and its name says what varies (`lr=0.01`,
`layers=3,seed=2`). Running a sweep opens one parent run, trains one nested child per config
(in this process, or in `workers` spawned processes), and ends with a summary table on the parent.
Rerunning a sweep reuses its latest parent: children that FINISHED with the same configuration
are skipped, children left KILLED or FAILED are resumed from their last checkpoint.

Besides `tracking.py` (one training run), this is the only module of `mnist_train` that talks to
MLflow: it owns the parent run and looks up earlier children.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import FIELDS, SWEEP_KEYS, ConfigError, ExperimentFile, RunConfig, build_config, coerce

FIXED_KEYS = ("name", "experiment")  # one per sweep: the parent's name, and where all runs live
SUMMARY_METRICS = ("train_accuracy", "test_accuracy", "overfit_gap", "train_time_s")

# tags on the parent run
TAG_SWEEP = "mnist.sweep"  # the sweep's name; marks a run as a sweep parent
TAG_CHILDREN, TAG_FAILED, TAG_SKIPPED = (
    "mnist.sweep.children",
    "mnist.sweep.failed",
    "mnist.sweep.skipped",
)
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI (markdown)


# ---------------------------------------------------------------------------------------------
# Expansion: experiment file -> list of children (pure, no MLflow)


@dataclass(frozen=True)
class Child:
    """One configuration of a sweep. `settings` holds what the sweep set for it, e.g. {"lr": 0.01}."""

    name: str
    config: RunConfig
    settings: dict[str, Any] = field(default_factory=dict)


def expand(experiment: ExperimentFile, overrides: dict[str, Any] | None = None) -> list[Child]:
    """Every child of a sweep file, in order variants x grid x seeds, validated.

    `overrides` (from `--set`, `--max-train`, ...) apply to every child; overriding a key the sweep
    varies is an error, and an overridden `name` names the parent only.
    """
    path = experiment.path
    overrides = dict(overrides or {})
    sections = experiment.sweep
    unknown = set(sections) - set(SWEEP_KEYS)
    if unknown:  # read_experiment only collects known sections; guard against misuse
        raise ConfigError(f"{path}: unknown sweep sections {sorted(unknown)}")
    base = {**experiment.base, **{k: v for k, v in overrides.items() if k != "name"}}
    build_config(base, source=str(path))  # a bad base is reported once, not per child

    variants = _read_variants(path, sections.get("variants"), base)
    grid = _read_grid(path, sections.get("grid"), base)
    seeds = _read_seeds(path, sections.get("seeds"), base)

    varied = {}  # key -> section that varies it, to report clashes
    for section, keys in (
        ("variants", {k for v in variants for k in v if k != "name"}),
        ("grid", set(grid)),
        ("seeds", {"seed"} if seeds else set()),
    ):
        for key in sorted(keys):
            if key in varied:
                raise ConfigError(f"{path}: {key} is varied by both {varied[key]} and {section}")
            varied[key] = section
    for key in overrides:
        if key in varied:
            raise ConfigError(f"{path}: cannot override {key}: the sweep varies it ({varied[key]})")

    children, names = [], set()
    grid_keys = list(grid)
    for variant in variants or [{}]:
        for values in itertools.product(*(grid[k] for k in grid_keys)):
            for seed in seeds or [None]:
                settings = {k: v for k, v in variant.items() if k != "name"}
                settings.update(zip(grid_keys, values))
                parts = [variant["name"]] if variant else []
                parts += [f"{k}={_format(v)}" for k, v in zip(grid_keys, values)]
                if seed is not None:
                    settings["seed"] = seed
                    parts.append(f"seed={seed}")
                name = ",".join(parts) or str(base.get("name", path.stem))
                if name in names:
                    raise ConfigError(f"{path}: two children would both be named {name!r}")
                names.add(name)
                config = build_config({**base, **settings, "name": name}, source=f"{path}: {name}")
                children.append(Child(name=name, config=config, settings=settings))
    return children


def varying_keys(children: Sequence[Child]) -> list[str]:
    """Config fields whose logged value differs between children, in field order."""
    params = [child.config.to_params() for child in children]
    return [k for k in FIELDS if k != "name" and len({p[k] for p in params}) > 1]


def _format(value: Any) -> str:
    """A value as it appears in names and parameters: `0.01`, `[200]`, `True`."""
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _check_key(path: Path, where: str, key: Any) -> None:
    if key not in FIELDS:
        raise ConfigError(
            f"{path}: {where}: unknown config key {key!r} (known keys: {', '.join(FIELDS)})"
        )
    if key in FIXED_KEYS:
        raise ConfigError(f"{path}: {where}: {key} cannot vary within a sweep")


def _check_value(path: Path, where: str, base: dict, key: str, value: Any) -> Any:
    """Coerce one swept value and check its range against the base config."""
    source = f"{path}: {where}"
    try:
        value = coerce(key, value)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    build_config({**base, key: value}, source=source)
    return value


def _read_grid(path: Path, grid: Any, base: dict) -> dict[str, list]:
    if grid is None:
        return {}
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: grid must map config keys to lists of values, got {grid!r}")
    out = {}
    for key, values in grid.items():
        _check_key(path, f"grid.{key}", key)
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{path}: grid.{key} must be a non-empty list of values, got {values!r}"
            )
        out[key] = [
            _check_value(path, f"grid.{key}[{i}]", base, key, v) for i, v in enumerate(values)
        ]
        if len(set(map(_format, out[key]))) < len(out[key]):
            raise ConfigError(f"{path}: grid.{key} lists a value twice")
    return out


def _read_variants(path: Path, variants: Any, base: dict) -> list[dict]:
    if variants is None:
        return []
    if not isinstance(variants, list) or not variants:
        raise ConfigError(
            f"{path}: variants must be a non-empty list of mappings, each with a name"
        )
    out, names = [], set()
    for i, variant in enumerate(variants):
        if not isinstance(variant, dict):
            raise ConfigError(
                f"{path}: variants[{i}] must be a mapping with a name, got {variant!r}"
            )
        name = variant.get("name")
        if not isinstance(name, str) or not name.strip() or "," in name:
            raise ConfigError(
                f"{path}: variants[{i}] needs a name (text without commas), got {name!r}"
            )
        if name in names:
            raise ConfigError(f"{path}: variants[{i}]: name {name!r} is used twice")
        names.add(name)
        where = f"variants[{i}] ({name})"
        checked = {"name": name}
        for key, value in variant.items():
            if key != "name":
                _check_key(path, f"{where}.{key}", key)
                checked[key] = _check_value(path, f"{where}.{key}", base, key, value)
        build_config(
            {**base, **{k: v for k, v in checked.items() if k != "name"}}, source=f"{path}: {where}"
        )
        out.append(checked)
    return out


def _read_seeds(path: Path, seeds: Any, base: dict) -> list[int]:
    if seeds is None:
        return []
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(
                f"{path}: seeds must be a positive count or a list of seeds, got {seeds}"
            )
        return list(range(seeds))
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(
            f"{path}: seeds must be a positive count or a non-empty list of seeds, got {seeds!r}"
        )
    out = [_check_value(path, f"seeds[{i}]", base, "seed", s) for i, s in enumerate(seeds)]
    if len(set(out)) < len(out):
        raise ConfigError(f"{path}: seeds lists a seed twice")
    return out


# ---------------------------------------------------------------------------------------------
# Execution: a parent run, one nested child per config, a summary at the end


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
    import mlflow
    from mlflow.tracking import MlflowClient

    from . import data
    from .tracking import check_tracking_server

    say = say or (lambda text: None if quiet else print(text, file=sys.stderr, flush=True))
    # Check the server and load (unpack, download) the data once, here: either problem is then one
    # error before any run opens, and parallel children never race to unpack the same files.
    check_tracking_server(os.environ.get("MLFLOW_TRACKING_URI", ""))
    data.load_mnist(data_dir)
    client = MlflowClient()
    if adopt_run_id:
        experiment_id = client.get_run(adopt_run_id).info.experiment_id
        experiment_name = client.get_experiment(experiment_id).name
        children = [
            dataclasses.replace(c, config=dataclasses.replace(c.config, experiment=experiment_name))
            for c in children
        ]
    else:
        # Creating the store and the experiment here, once, keeps parallel children from racing
        # to create the same tables and experiment.
        experiment_id = mlflow.set_experiment(children[0].config.experiment).experiment_id

    previous = {} if force else _earlier_children(client, experiment_id, sweep_name)
    parent_id = _open_parent(
        client, experiment_id, experiment, sweep_name, adopt_run_id, reuse=not force
    )

    outcomes, tasks = [], []
    line_output = workers > 1
    for child in children:
        action, run_id, status = _plan(client, child, previous)
        if action == "skip":
            note = (
                "already finished"
                if status == "FINISHED"
                else "diverged before (--force retrains it)"
            )
            outcomes.append(Outcome(child.name, run_id, status, "skip", note))
            continue
        outcome = Outcome(child.name, run_id, "PENDING", action)
        outcomes.append(outcome)
        tasks.append(
            (
                outcome,
                Task(child, experiment, Path(data_dir), parent_id, run_id, line_output, quiet),
            )
        )

    skipped = len(children) - len(tasks)
    say(
        f"sweep {sweep_name}: {len(children)} children ({skipped} done before, "
        f"{sum(o.action == 'resume' for o, _ in tasks)} to resume), parent run {parent_id}"
    )
    tracker = _Tally(len(children), skipped, sum(o.status == "FAILED" for o in outcomes), say)
    try:
        if workers > 1 and len(tasks) > 1:
            stopped = _run_parallel(tasks, workers, should_stop, tracker)
        else:
            stopped = _run_sequential(tasks, should_stop, tracker)
    except KeyboardInterrupt:  # a second Ctrl-C: children were already asked to stop
        client.set_terminated(parent_id, "KILLED")
        raise
    except BaseException as err:
        client.set_tag(
            parent_id,
            "failure_reason",
            f"the sweep itself failed: {type(err).__name__}: {err}"[:5000],
        )
        client.set_terminated(parent_id, "FAILED")
        raise

    result = SweepResult(parent_id, outcomes, stopped)
    _close_parent(client, parent_id, children, result)
    return result


def _earlier_children(client, experiment_id: str, sweep_name: str) -> dict[str, list]:
    """Children of earlier parents of this sweep, by run name, newest first."""
    parents = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_SWEEP}` = '{_quote(sweep_name)}'",
        max_results=1000,
    )
    found: dict[str, list] = {}
    for parent in parents:
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            max_results=10000,
        )
        for run in runs:
            found.setdefault(run.info.run_name, []).append(run)
    for runs in found.values():
        runs.sort(key=lambda r: r.info.start_time or 0, reverse=True)
    return found


def _plan(client, child: Child, previous: dict[str, list]) -> tuple[str, str | None, str]:
    """(action, run id, status): skip a finished (or diverged) twin, resume an interrupted one, or
    train a new child. Twins are earlier children with the same name and identical parameters."""
    expected = child.config.to_params()
    twins = [
        r
        for r in previous.get(child.name, [])
        if all(r.data.params.get(k) == v for k, v in expected.items())
    ]
    for run in twins:
        if run.info.status == "FINISHED":
            return "skip", run.info.run_id, "FINISHED"
    for run in twins:
        if run.data.tags.get("failure_reason", "").startswith("loss became"):
            return "skip", run.info.run_id, "FAILED"  # diverged: retraining would diverge again
        if run.info.status in ("KILLED", "FAILED") and client.list_artifacts(
            run.info.run_id, "checkpoints"
        ):
            return "resume", run.info.run_id, run.info.status
    return "train", None, ""


def _open_parent(
    client, experiment_id, experiment: ExperimentFile, sweep_name, adopt_run_id, reuse: bool
) -> str:
    from .tracking import git_commit

    tags = {
        TAG_SWEEP: sweep_name,
        "mlflow.runName": sweep_name,
        "mlflow.source.name": str(experiment.path),
    }
    commit = git_commit(experiment.path.resolve().parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    parent_id = adopt_run_id
    if parent_id is None and reuse:
        latest = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_SWEEP}` = '{_quote(sweep_name)}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if latest:
            parent_id = latest[0].info.run_id
            client.update_run(parent_id, status="RUNNING")
            if "failure_reason" in latest[0].data.tags:
                client.delete_tag(parent_id, "failure_reason")
    if parent_id is None:
        tags["mlflow.source.type"] = "LOCAL"
        parent_id = client.create_run(experiment_id, run_name=sweep_name, tags=tags).info.run_id
    else:
        for key, value in tags.items():
            client.set_tag(parent_id, key, value)
    client.log_text(parent_id, experiment.text, f"sweep/{experiment.path.name}")
    return parent_id


def _close_parent(client, parent_id: str, children: Sequence[Child], result: SweepResult) -> None:
    """Summary table (CSV artifact + markdown description), counts as tags, final status."""
    rows = summary_rows(client, children, result.outcomes)
    client.log_text(parent_id, to_csv(rows), "summary.csv")
    failed = len(result.failed)
    client.set_tag(parent_id, NOTE_TAG, to_markdown(rows, headline=_headline(result)))
    client.set_tag(parent_id, TAG_CHILDREN, str(len(result.outcomes)))
    client.set_tag(parent_id, TAG_FAILED, str(failed))
    client.set_tag(parent_id, TAG_SKIPPED, str(sum(o.action == "skip" for o in result.outcomes)))
    if result.stopped:
        status = "KILLED"
    elif failed:
        status = "FAILED"
        client.set_tag(
            parent_id, "failure_reason", f"{failed} of {len(result.outcomes)} children failed"
        )
    else:
        status = "FINISHED"
    client.set_terminated(parent_id, status)


def _headline(result: SweepResult) -> str:
    done = sum(o.status == "FINISHED" for o in result.outcomes)
    text = f"{done} of {len(result.outcomes)} children finished"
    if result.failed:
        text += f", {len(result.failed)} failed ({', '.join(o.name for o in result.failed)})"
    if result.stopped:
        text += "; interrupted: run the sweep again to finish it"
    return text + "."


def summary_rows(
    client, children: Sequence[Child], outcomes: Sequence[Outcome]
) -> list[dict[str, Any]]:
    """One row per child: name, run id, status, the varying parameters, final metrics."""
    keys = varying_keys(children)
    rows = []
    for child, outcome in zip(children, outcomes):
        row: dict[str, Any] = {
            "name": child.name,
            "run_id": outcome.run_id or "",
            "status": outcome.status,
        }
        params = child.config.to_params()
        row.update({k: params[k] for k in keys})
        metrics = client.get_run(outcome.run_id).data.metrics if outcome.run_id else {}
        row.update({k: metrics.get(k) for k in SUMMARY_METRICS})
        rows.append(row)
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(rows[0]) if rows else ["name"], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_markdown(rows: list[dict[str, Any]], *, headline: str = "") -> str:
    """A markdown table (the MLflow UI renders run descriptions as markdown)."""
    if not rows:
        return headline
    header = list(rows[0])

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.4f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row[k]) for k in header) + " |" for row in rows]
    return (headline + "\n\n" if headline else "") + "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return text.replace("'", "\\'")


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
        self.say(
            f"[{self.done}/{self.total} done, {self.failed} failed] {outcome.name} {outcome.status}{note}"
        )


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
    stop_event = context.Event()
    threads = max(1, (os.cpu_count() or 1) // workers)
    stopped = False
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(stop_event, threads)
    ) as pool:
        pending: dict[Future, Outcome] = {
            pool.submit(train_child, task): outcome for outcome, task in tasks
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


_WORKER_STOP = None  # set in each worker process by _init_worker: the sweep's shared stop event


def _init_worker(stop_event, threads: int) -> None:
    import torch

    from .tracking import quiet_mlflow_logs

    global _WORKER_STOP
    _WORKER_STOP = stop_event
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the sweep process, which stops us
    sys.stdout = sys.stderr  # stdout carries the sweep's run ids; MLflow prints run links there
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one line per epoch, no bars
    torch.set_num_threads(threads)  # N workers on N cores: oversubscribed threads only slow down
    quiet_mlflow_logs()


def train_child(task: Task, should_stop: Callable[[], bool] | None = None) -> Outcome:
    """Train (or resume) one child; never raises for the child's own failures."""
    import traceback

    from .data import DataError
    from .progress import Reporter
    from .tracking import TrainingStopped, prepare_run, run_training

    if should_stop is None:
        should_stop = _WORKER_STOP.is_set if _WORKER_STOP is not None else (lambda: False)
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
        if err.exit_code == 130:
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
