"""`mnist-train`: run experiment files and record them in MLflow.

Errors the user can cause end in one line on stderr and a non-zero exit; the created run ids go to
stdout, one per line, so scripts can capture them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import click

from . import contract, process
from .config import (
    ConfigError,
    ExperimentFile,
    RunConfig,
    build_config,
    parse_overrides,
    read_experiment,
    resolve,
)
from .contract import default_data_dir, default_tracking_uri
from .data import DataError
from .search_space import MAX_TRIALS
from .study import StudyPlan, make_plan
from .study_grid import Child
from .warmup import warm_up_in_background

# Closing the terminal (SIGHUP) or `kill` (SIGTERM) must leave a run as Ctrl-C does: stopped at a
# step boundary with a checkpoint, marked KILLED, resumable.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopFlag:
    """Set by the first stop signal; the training loop stops at the next step boundary."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    def set(self, signum: int = signal.SIGINT) -> None:
        self.signum = self.signum or signum
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()

    def exit_code(self, default: int) -> int:
        """The shell's convention: 128 + the signal (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)."""
        return 128 + self.signum if self.signum else default


@contextmanager
def stop_on_signals():
    """First SIGINT/SIGTERM/SIGHUP asks training to stop cleanly; a second SIGINT stops at once."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.set(signum)
        try:
            print(
                "\nstopping after this step (Ctrl-C again to stop at once)...",
                file=sys.stderr,
                flush=True,
            )
        except OSError:  # the terminal is gone (SIGHUP): stop all the same
            pass

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class OptionalInt(click.ParamType):
    """A count from 1 to MAX_TRIALS, or nothing (`--trials=` keeps the file's). A bad one is one
    line, as every mistake a user can make: not click's usage text."""

    name = "N"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int) or not str(value).strip():
            return value or None
        flag = param.opts[0] if param is not None else "value"
        try:
            number = int(value)
        except ValueError:
            raise click.ClickException(f"{flag} {value!r} is not a whole number") from None
        if not 1 <= number <= MAX_TRIALS:
            raise click.ClickException(f"{flag} {number} is not a count from 1 to {MAX_TRIALS}")
        return number


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mnist-workbench")
def cli() -> None:
    """Train MNIST classifiers and track them in MLflow (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db)."""
    process.configure()  # also when the group is invoked without `main` (tests, other programs)


# `mlflow run -P key=value` appends `--key value` to the command for every parameter the MLproject
# does not declare; the MLproject declares almost none, so that MLflow logs on its run only the
# parameters given (a declared one is logged with its default, empty or not).
@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("experiment_file", type=click.Path(path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config field (repeatable); an empty VALUE keeps the file's.",
)
@click.option(
    "--data-dir",
    type=click.Path(),
    default=None,
    help="Folder holding MNIST/raw/ [env MNIST_DATA_DIR, default ./data].",
)
@click.option(
    "--experiment-name",
    default=None,
    help="MLflow experiment to record in [default: the file's `experiment`].",
)
@click.option(
    "--max-train", type=int, default=None, help="Use only the first N training images (quick runs)."
)
@click.option(
    "--max-test", type=int, default=None, help="Use only the first N test images (quick runs)."
)
@click.option(
    "--resume",
    "resume_run_id",
    default=None,
    metavar="RUN_ID",
    help="Continue this run from its last checkpoint.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Sweeps: N long-lived worker processes, each pulling trials until the study is done.",
)
@click.option(
    "--storage",
    default=None,
    metavar="URL",
    help="Sweeps: the Optuna study database, e.g. postgresql://USER:PASSWORD@HOST/DB; the same "
    "command on several machines with the same storage splits one study "
    f"[env {contract.STUDY_STORAGE_ENV}, default optuna.db beside a SQLite mlflow.db].",
)
@click.option(
    "--trials",
    type=OptionalInt(),
    default=None,
    help="Searches: run N trials in all (overrides the file's trials; can only grow a study).",
)
@click.option(
    "--register",
    default=None,
    metavar="NAME",
    help="Sweeps: register the best trial's model as NAME in the Model Registry, alias champion.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Sweeps: start a new study (and parent run) instead of continuing the latest one.",
)
@click.option(
    "--force-study",
    "force_value",
    default="",
    hidden=True,  # the MLproject's spelling of --force: true | false | empty
)
@click.option(
    "--dry-run", is_flag=True, help="Check config and data, train one batch, log nothing."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.pass_context
def run(
    ctx,
    experiment_file,
    overrides,
    data_dir,
    experiment_name,
    max_train,
    max_test,
    resume_run_id,
    workers,
    storage,
    trials,
    register,
    force,
    force_value,
    dry_run,
    quiet,
):
    """Run EXPERIMENT_FILE (YAML) and print the ids of the MLflow runs it created.

    A file with `grid`, `variants`, `seeds`, `folds` or `search` is a sweep, run as one Optuna
    study: one parent run (printed first) with a nested run per trial. Running it again continues
    the study: finished trials are kept, interrupted ones resume from their last checkpoint.

    Under `mlflow run` (MLFLOW_RUN_ID set), the run MLflow opened becomes the parent and the
    training runs are its nested children.
    """
    # `mlflow run` passes the run it opened; take it out of the environment so that MLflow does not
    # resume it for every run this process (or its workers) starts.
    adopt_run_id = os.environ.pop("MLFLOW_RUN_ID", None) or None
    try:
        experiment = read_experiment(experiment_file)
        given = _project_parameters(ctx.args)
        if adopt_run_id and storage:
            raise ConfigError(
                "the study storage is not a project parameter (MLflow logs parameters, passwords "
                f"included): set {contract.STUDY_STORAGE_ENV} in the environment instead"
            )
        data_dir = given.pop("data_dir", data_dir)
        max_train = int(given.pop("max_train")) if "max_train" in given else max_train
        max_test = int(given.pop("max_test")) if "max_test" in given else max_test
        trials = int(given.pop("trials")) if "trials" in given else trials
        # `--set lr=` (no value) overrides nothing
        pairs = [*overrides, *(f"{k}={v}" for k, v in given.items())]
        values = parse_overrides(pair for pair in pairs if not _empty_assignment(pair))
        for key, value in (
            ("experiment", experiment_name),
            ("max_train", max_train),
            ("max_test", max_test),
        ):
            if value is not None:
                values[key] = value
        data_dir = (
            Path(data_dir) if data_dir else default_data_dir()
        )  # empty from the MLproject too
        if resume_run_id and (experiment.sweep or adopt_run_id):
            raise ConfigError(
                "--resume is for single runs; a sweep resumes its interrupted children when run "
                "again"
            )
        force = force or _flag("force", force_value)
        sweep = {"storage": storage or None, "trials": trials, "register": register, "force": force}
        if experiment.sweep:
            plan = make_plan(experiment, values)
            if dry_run:
                _dry_run_plan(plan, data_dir)
                return
            warm_up_in_background()
            _run_sweep(plan, data_dir, workers, adopt_run_id, quiet, **sweep)
            return
        config = resolve(experiment, values)
        if dry_run:
            _dry_run(config, data_dir)
            return
        warm_up_in_background()
        if adopt_run_id:
            # MLflow logged the entry point's parameters (empty ones too) on its run, and a logged
            # parameter can never change, so the run with the resolved config is its child.
            plan = StudyPlan(
                config.name, experiment, config.to_dict(), children=(Child(config.name, config),)
            )
            _run_sweep(plan, data_dir, 1, adopt_run_id, quiet, **{**sweep, "force": True})
            return
        run_id = _run_one(config, experiment, data_dir, resume_run_id, quiet)
    except (ConfigError, DataError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(run_id)


def _echo_safely(text: str, *, err: bool = False) -> None:
    """click.echo that survives a closed terminal (SIGHUP): the run is recorded either way."""
    try:
        click.echo(text, err=err)
    except OSError:
        pass


PROJECT_OPTIONS = ("data_dir", "max_train", "max_test", "trials")  # -P names of CLI options


def _project_parameters(args: list[str]) -> dict[str, str]:
    """`--key value` pairs that `mlflow run -P key=value` appended: config fields and the
    options in PROJECT_OPTIONS, by name; anything else is a ConfigError."""
    from .config import FIELDS

    given, rest = {}, list(args)
    while rest:
        token = rest.pop(0)
        key, sep, value = token.removeprefix("--").partition("=")
        key = key.replace("-", "_")
        if not token.startswith("--") or not key:
            raise ConfigError(f"unexpected argument {token!r}")
        if key not in FIELDS and key not in PROJECT_OPTIONS:
            raise ConfigError(f"no such option or config field: --{key}")
        if not sep:
            if not rest:
                raise ConfigError(f"--{key} needs a value")
            value = rest.pop(0)
        given[key] = value
    return given


def _flag(option: str, value: str) -> bool:
    """The MLproject's `force` parameter: true or false; empty is false."""
    text = str(value).strip().lower()
    if text in ("", "false", "0", "no"):
        return False
    if text in ("true", "1", "yes"):
        return True
    raise ConfigError(f"{option} takes true or false, got {value!r}")


def _empty_assignment(pair: str) -> bool:
    key, sep, value = pair.partition("=")
    return bool(sep) and not value.strip()


def _run_sweep(
    plan: StudyPlan,
    data_dir: Path,
    workers: int,
    adopt_run_id: str | None,
    quiet: bool,
    *,
    storage: str | None,
    trials: int | None,
    register: str | None,
    force: bool,
) -> None:
    """Run a study; print the parent's and trials' run ids; exit 1 if any trial failed."""
    from mlflow.exceptions import MlflowException

    from .runner import EXIT_STORE_LOST
    from .study import QueueingStopped, default_storage
    from .study_run import StoreLost, run_study
    from .tracking import quiet_mlflow_logs

    quiet_mlflow_logs()
    storage = storage or default_storage(default_tracking_uri())
    try:
        # stdout carries run ids only: whatever MLflow prints goes to stderr
        with stop_on_signals() as stop, contextlib.redirect_stdout(sys.stderr):
            result = run_study(
                plan,
                data_dir=data_dir,
                storage_url=storage,
                workers=workers,
                force=force,
                trials=trials,
                adopt_run_id=adopt_run_id,
                register=register,
                quiet=quiet,
                should_stop=stop,
            )
    except StoreLost as err:
        _echo_safely(f"Error: {err}", err=True)
        sys.exit(EXIT_STORE_LOST)
    except QueueingStopped as err:
        _echo_safely(f"Error: {err}", err=True)
        sys.exit(stop.exit_code(130))
    except MlflowException as err:
        raise click.ClickException(f"MLflow: {str(err).splitlines()[0]}") from None
    _echo_safely(result.parent_run_id)
    for outcome in result.outcomes:
        if outcome.run_id:
            _echo_safely(outcome.run_id)
    if result.stopped:
        _echo_safely(
            f"Error: study {result.study_name} interrupted; run the command again to resume it",
            err=True,
        )
        sys.exit(stop.exit_code(130))
    if result.failed:
        names = ", ".join(o.name for o in result.failed)
        click.echo(
            f"Error: {len(result.failed)} of {len(result.outcomes)} trials failed: {names} "
            "(the parent run's description and each run's failure_reason say why)",
            err=True,
        )
        sys.exit(1)


def _run_one(
    config: RunConfig,
    experiment: ExperimentFile,
    data_dir: Path,
    resume_run_id: str | None,
    quiet: bool,
) -> str:
    from mlflow.exceptions import MlflowException

    from .progress import Reporter
    from .runner import EXIT_INTERRUPTED, TrainingStopped, prepare_run, run_training
    from .tracking import current_tracking_uri, quiet_mlflow_logs, run_url

    quiet_mlflow_logs()
    prepared = prepare_run(config, data_dir)
    stop = StopFlag()
    try:
        with stop_on_signals() as stop, contextlib.redirect_stdout(sys.stderr):  # as in _run_sweep
            result = run_training(
                prepared,
                experiment_file=experiment,
                resume_run_id=resume_run_id,
                reporter=Reporter(enabled=not quiet, label=config.name),
                should_stop=stop,
            )
        link = run_url(current_tracking_uri(), result.experiment_id, result.run_id)
        if link and not quiet:
            _echo_safely(f"view it at {link}", err=True)
        return result.run_id
    except TrainingStopped as err:
        _echo_safely(err.run_id)  # stdout carries the run id, interrupted or not
        _echo_safely(f"Error: {err}", err=True)
        sys.exit(
            stop.exit_code(err.exit_code) if err.exit_code == EXIT_INTERRUPTED else err.exit_code
        )
    except MlflowException as err:
        raise click.ClickException(f"MLflow: {str(err).splitlines()[0]}") from None


def _dry_run_plan(plan: StudyPlan, data_dir: Path) -> None:
    if plan.spec is None:
        click.echo(f"{len(plan.children)} children: " + "; ".join(c.name for c in plan.children))
        _dry_run(plan.children[0].config, data_dir)
        return
    spec = plan.spec
    click.echo(
        f"search: {spec.trials} trials, {spec.sampler} sampler, {spec.pruner} pruner, "
        f"objective {spec.objective} ({spec.direction}); "
        + "; ".join(f"{p.name} {_describe(p)}" for p in spec.params)
    )
    _dry_run(build_config(plan.base, source=str(plan.experiment.path)), data_dir)


def _describe(param) -> str:
    if param.kind == "categorical":
        return "in {" + ", ".join(str(c) for c in param.labels) + "}"
    scale = " log" if param.log else ""
    return f"{param.kind}{scale} [{param.low}, {param.high}]"


def _dry_run(config: RunConfig, data_dir: Path) -> None:
    """Everything up to the first optimisation step, without MLflow: a smoke test of a config."""
    from . import models
    from .runner import build_trainable, prepare_run
    from .train import Progress, train

    prepared = prepare_run(config, data_dir)
    parts = build_trainable(config, prepared.device, len(prepared.tensors.train_y))
    model = parts.model
    steps = train(
        model, parts.optimizer, prepared.tensors, config, Progress(), lambda: True, parts.scheduler
    )
    first = next(steps)
    click.echo(models.summary_text(model))
    click.echo(
        f"dry run ok: {len(prepared.train_split)} train / {len(prepared.test_split)} test images, "
        f"device {prepared.device}, first batch loss {first.loss:.4f}; nothing was logged"
    )


def main() -> None:
    process.pause_collection()
    process.configure()
    process.finish_process(lambda: cli(prog_name="mnist-train"))


if __name__ == "__main__":
    main()
