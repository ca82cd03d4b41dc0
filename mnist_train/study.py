"""Every sweep and search is one Optuna study: its plan, its storage, and joining it.

A `grid`, `variants`, `seeds` or `folds` file becomes a study whose trials are all queued when
the study is created, one per configuration: workers pop queued trials atomically (a row lock in
the storage), so every configuration runs exactly once however many workers and machines share
the study. A `search` file queues `trials` empty trials whose parameters the sampler (TPE,
random) picks when a worker takes one, with every finished trial already known; `sampler: grid`
queues every point.

The process that creates a study also creates its MLflow parent run and marks the study ready;
processes that join wait for that, check the study was made from the same sweep file, and pull
trials from it (`study_worker.py`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import contract
from .config import ConfigError, ExperimentFile, RunConfig, build_config
from .search_space import SearchSpec, label, trial_config
from .study_grid import FIXED_KEYS, Child, varying_keys

ATTR_CHILD = "child"  # a queued grid trial's user attribute: the child's name
READY_TIMEOUT_S = 120


class StudyError(ConfigError):
    """A study cannot be created or joined; the message says why and what to do."""


@dataclass(frozen=True)
class StudyPlan:
    """What a study runs: the children of a grid file, or a search spec over a base config."""

    sweep_name: str
    experiment: ExperimentFile
    base: dict[str, Any]  # the file's config fields with command-line overrides applied
    children: tuple[Child, ...] = ()
    spec: SearchSpec | None = None

    @property
    def objective(self) -> str:
        if self.spec:
            return self.spec.objective
        on_val = all(c.config.holds_out for c in self.children)
        return contract.VAL_ACCURACY if on_val else contract.TEST_ACCURACY

    @property
    def direction(self) -> str:
        return self.spec.direction if self.spec else "maximize"

    @property
    def trials(self) -> int:
        return self.spec.trials if self.spec else len(self.children)

    @property
    def experiment_name(self) -> str:
        return build_config(self.base).experiment

    def fingerprint(self) -> str:
        """What the study runs (up to its trial count, comments and layout) <=> its fingerprint.

        The run names and the MLflow experiment are left out: they say where the runs are
        filed, not what they try, and `mlflow run --experiment-name` files the same sweep file
        elsewhere than `mnist-train run` does."""

        def settings(values: dict[str, Any]) -> list[tuple[str, str]]:
            return sorted((k, str(v)) for k, v in values.items() if k not in FIXED_KEYS)

        if self.spec:
            what: Any = [repr(p) for p in self.spec.params]
            what += [self.spec.objective, self.spec.direction, self.spec.sampler]
            what += [self.spec.pruner, settings(self.base)]
        else:
            what = [settings(c.config.to_params()) for c in self.children]
        return hashlib.sha256(json.dumps(what, default=str).encode()).hexdigest()[:16]

    def settings(self) -> dict[str, Any]:
        """What the fingerprint covers, readable: the base config's fields (overrides
        applied), and the children's names or the search, to say what changed."""
        base = {k: str(v) for k, v in sorted(self.base.items()) if k not in FIXED_KEYS}
        if self.spec:
            return {"base": base, "search": [repr(p) for p in self.spec.params]}
        names = json.dumps([c.name for c in self.children])  # a digest: any storage holds it
        children = (
            f"{len(self.children)} children, {hashlib.sha256(names.encode()).hexdigest()[:16]}"
        )
        return {"base": base, "children": children}

    def queued(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(params, user attributes) of each trial queued at creation ({}: the sampler picks)."""
        if self.spec is None:
            keys = varying_keys(self.children)
            return [
                ({k: label(getattr(c.config, k)) for k in keys}, {ATTR_CHILD: c.name})
                for c in self.children
            ]
        if self.spec.sampler == "grid":
            return [(point, {}) for point in self.spec.grid()]
        return [({}, {}) for _ in range(self.spec.trials)]

    def distributions(self) -> dict[str, Any]:
        if self.spec:
            return self.spec.distributions()
        from optuna.distributions import CategoricalDistribution

        out = {}
        for key in varying_keys(self.children):
            labels = {label(getattr(c.config, key)): None for c in self.children}
            out[key] = CategoricalDistribution(list(labels))
        return out

    def config_for(self, number: int, params: dict[str, Any], attrs: dict[str, Any]) -> Child:
        """The child a trial trains: a grid's by name, a search's from its parameters."""
        if self.spec is None:
            by_name = {c.name: c for c in self.children}
            if attrs.get(ATTR_CHILD) not in by_name:
                raise StudyError(f"trial {number} names no child of this sweep file")
            return by_name[attrs[ATTR_CHILD]]
        config: RunConfig = trial_config(self.spec, self.base, number, params)
        return Child(config.name, config, self.spec.settings(params))


def make_plan(experiment: ExperimentFile, overrides: dict[str, Any]) -> StudyPlan:
    """The study of a sweep file with `--set` overrides: a search, or a grid of children."""
    from .search_space import read_search
    from .study_grid import expand

    sweep_name = str(overrides.get("name") or experiment.base.get("name") or experiment.path.stem)
    base = {**experiment.base, **{k: v for k, v in overrides.items() if k != "name"}}
    base["name"] = sweep_name
    section = experiment.sweep.get("search")
    if section is None:
        children = expand(experiment, overrides)
        return StudyPlan(sweep_name, experiment, base, children=tuple(children))
    others = sorted(set(experiment.sweep) - {"search"})
    if others:
        raise ConfigError(
            f"{experiment.path}: search cannot be combined with {', '.join(others)}: "
            "a search samples its parameters"
        )
    build_config(base, source=str(experiment.path))  # a bad base: one error, before the search
    spec = read_search(experiment.path, section, base)
    for key in overrides:
        if any(
            p.name == key or (key == "hidden_sizes" and p.name == "hidden_size")
            for p in spec.params
        ):
            raise ConfigError(f"{experiment.path}: cannot override {key}: the search varies it")
    return StudyPlan(sweep_name, experiment, base, spec=spec)


# ------------------------------------------------------------------------------------ storage


def default_storage(tracking_uri: str) -> str:
    """$MNIST_STUDY_STORAGE, else `optuna.db` beside a SQLite tracking store, else in the
    working directory: a local study needs no server."""
    if os.environ.get(contract.STUDY_STORAGE_ENV):
        return os.environ[contract.STUDY_STORAGE_ENV]
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///") :]).parent
        return f"sqlite:///{folder / 'optuna.db'}"
    return "sqlite:///optuna.db"


def mask(url: str) -> str:
    """The URL with its password replaced by `***`."""
    return contract.mask_url(url)


SCHEMA_LOCK_KEY = 730_522_001  # PostgreSQL advisory lock: this workbench's schema creation


EXTEND_LOCK_KEY = 730_522_003  # PostgreSQL advisory lock: a study's trial count raised


@contextlib.contextmanager
def study_lock(url: str, key: int) -> Iterator[None]:
    """Machines that change the same study's trial count take turns: an advisory lock in a
    PostgreSQL storage (it holds across hosts), a file lock beside a SQLite one."""
    if url.startswith("sqlite:///"):
        import fcntl

        with open(url[len("sqlite:///") :] + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        return
    if not url.startswith("postgresql"):
        yield
        return
    with _advisory(url, key, {"connect_args": {"connect_timeout": 4}}):
        yield


@contextlib.contextmanager
def _schema_lock(url: str, engine_kwargs: dict[str, Any]) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock while Optuna creates or migrates its tables. Machines
    meeting a fresh storage at once otherwise race in CREATE TABLE, and all but one die on
    `duplicate key value violates unique constraint "pg_type_typname_nsp_index"`; a lock in the
    database itself holds across hosts (a file lock would not). SQLite storages are created
    under the workers' file lock instead."""
    if not url.startswith("postgresql"):
        yield
        return
    with _advisory(url, SCHEMA_LOCK_KEY, engine_kwargs):
        yield


@contextlib.contextmanager
def _advisory(url: str, key: int, engine_kwargs: dict[str, Any]) -> Iterator[None]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                unlock = sqlalchemy.text("SELECT pg_advisory_unlock(:key)")
                connection.execute(unlock, {"key": key})
    finally:
        engine.dispose()


def _check_sqlite_storage(url: str) -> None:
    """A SQLite study storage must be a file of its own: an in-memory one lives and dies with
    one process (workers and a later run would find no study), and MLflow's own database would
    get Optuna's tables mixed into it."""
    path = url.split("://", 1)[1].removeprefix("/")
    if not path or path == ":memory:":
        raise StudyError(
            f"--storage {url}: an in-memory SQLite database lives in one process only; name a "
            "file (sqlite:///optuna.db)"
        )
    tracking = contract.default_tracking_uri()
    if (
        tracking.startswith("sqlite:///")
        and Path(path).resolve() == Path(tracking[len("sqlite:///") :]).resolve()
    ):
        raise StudyError(
            f"--storage {url} is the MLflow tracking store's own database; give the study a file "
            "of its own (sqlite:///optuna.db)"
        )


def open_storage(url: str, *, retry: bool = True) -> Any:
    """Optuna's RDB storage with the heartbeat on: a trial whose worker goes silent for
    `STUDY_GRACE_S` is failed and queued again with its MLflow run. One line on failure, within
    5 s for an unreachable server."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the heartbeat and its retry callback are marked experimental; they are what we rely on
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if not re.match(r"^(sqlite|postgresql|mysql)(\+\w+)?://", url):
        raise StudyError(
            f"--storage {mask(url)}: expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB"
        )
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 4}  # one line within 5 s
    elif url.startswith("sqlite"):
        _check_sqlite_storage(url)
        engine_kwargs["connect_args"] = {"timeout": 60}  # workers wait for each other's writes
        folder = Path(url.split(":///", 1)[-1]).parent
        if not folder.is_dir():
            raise StudyError(f"--storage {url}: folder {folder} does not exist")
    callback = RetryHeartbeatStaleTrialCallback(max_retry=3, inherit_intermediate_values=True)
    try:
        with _schema_lock(url, engine_kwargs):
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=contract.STUDY_HEARTBEAT_S,
                grace_period=int(os.environ.get("MNIST_STUDY_GRACE_S", contract.STUDY_GRACE_S)),
                heartbeat_stale_trial_callback=callback if retry else None,
            )
    except Exception as err:  # sqlalchemy's OperationalError, ImportError of a driver, ...
        reason = _database_reason(err) or type(err).__name__
        raise StudyError(f"cannot open study storage {mask(url)}: {reason}") from None


def _database_reason(err: BaseException | None) -> str:
    """The first line of what the database said (sqlalchemy keeps it as `orig`), else of `err`."""
    lines = str(getattr(err, "orig", None) or err or "").strip().splitlines()
    return lines[0] if lines else ""


def requeue(study: Any, trial: Any) -> None:
    """Queue a failed (interrupted) trial again: same parameters, same MLflow run to resume."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    RetryHeartbeatStaleTrialCallback(max_retry=None, inherit_intermediate_values=True)(study, trial)


# ------------------------------------------------------------------------ creating or joining


def latest_study_name(storage: Any, sweep_name: str) -> str | None:
    """The newest study of this sweep: `name`, or `name#N` after `--force`."""
    import optuna

    names = [
        n
        for n in optuna.get_all_study_names(storage)
        if n == sweep_name or re.fullmatch(re.escape(sweep_name) + r"#\d+", n)
    ]
    return max(names, key=_generation, default=None)


def _generation(name: str) -> int:
    return int(name.rsplit("#", 1)[1]) if re.search(r"#\d+$", name) else 1


def open_study(
    plan: StudyPlan,
    storage: Any,
    *,
    force: bool,
    trials: int | None,
    create_parent: Callable[[str], str],
    say: Callable[[str], None],
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[Any, str]:
    """(study, parent run id): a new study when there is none (or `force`), else the latest.

    `create_parent(study_name)` makes the MLflow parent run of a new study. A study whose
    creation is stopped or fails before it is ready is deleted again: the next command starts
    it afresh instead of waiting on a study nobody will finish setting up.
    """
    import optuna

    with _storage_writes(storage):
        latest = latest_study_name(storage, plan.sweep_name)
        name = latest or plan.sweep_name
        if force and latest:
            name = f"{plan.sweep_name}#{_generation(latest) + 1}"
        created = False
        if latest is None or force:
            try:
                study = optuna.create_study(
                    study_name=name, storage=storage, direction=plan.direction
                )
                created = True
            except optuna.exceptions.DuplicatedStudyError:  # another machine created it first
                study = optuna.load_study(study_name=name, storage=storage)
        else:
            study = optuna.load_study(study_name=name, storage=storage)
        if created:
            _set_up(study, plan, storage, create_parent, say, should_stop)
        else:
            _wait_until_ready(study, say)
            _check_same_sweep(study, plan)
        _extend(study, plan, str(getattr(storage, "url", "")), trials, say, should_stop)
    return study, study.user_attrs[contract.STUDY_ATTR_PARENT]


class QueueingStopped(Exception):
    """A stop signal came while a study's trials were being queued; the message says what was
    kept."""


QUEUE_CHUNK = 200  # trials queued between two looks at the stop flag


def _set_up(study, plan, storage, create_parent, say, should_stop) -> None:
    """Queue a new study's trials, then make its parent and mark it ready; undone on failure."""
    import optuna

    try:
        # dashboards (optuna-dashboard) label the value with the metric, not "Objective 0"
        study.set_metric_names([plan.objective])
        study.set_user_attr(contract.STUDY_ATTR_SWEEP, plan.sweep_name)
        study.set_user_attr(contract.STUDY_ATTR_FINGERPRINT, plan.fingerprint())
        study.set_user_attr(contract.STUDY_ATTR_SETTINGS, plan.settings())
        study.set_user_attr(contract.STUDY_ATTR_FILE, str(plan.experiment.path))
        _queue(study, plan, plan.queued(), say, should_stop)
        study.set_user_attr(contract.STUDY_ATTR_TRIALS, plan.trials)
        study.set_user_attr(contract.STUDY_ATTR_PARENT, create_parent(study.study_name))
        study.set_user_attr(contract.STUDY_ATTR_READY, True)
    except QueueingStopped:
        with contextlib.suppress(Exception):
            optuna.delete_study(study_name=study.study_name, storage=storage)
        raise QueueingStopped(
            f"stopped while queueing the trials of the new study {study.study_name}; it was "
            "removed, and the same command starts it again"
        ) from None
    except BaseException:
        with contextlib.suppress(Exception):
            optuna.delete_study(study_name=study.study_name, storage=storage)
        raise


def _queue(
    study: Any,
    plan: StudyPlan,
    queued: list[tuple[dict, dict]],
    say: Callable[[str], None],
    should_stop: Callable[[], bool],
) -> None:
    """Add `queued` as WAITING trials, a chunk at a time so that a stop signal is heard."""
    import optuna
    from optuna.trial import TrialState

    distributions = plan.distributions()
    if len(queued) > QUEUE_CHUNK:
        say(f"queueing {len(queued)} trials in study {study.study_name}")
    for start in range(0, len(queued), QUEUE_CHUNK):
        if should_stop():
            raise QueueingStopped(study.study_name)
        study.add_trials(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=params,
                distributions={k: distributions[k] for k in params},
                user_attrs=attrs,
            )
            for params, attrs in queued[start : start + QUEUE_CHUNK]
        )


@contextlib.contextmanager
def _storage_writes(storage: Any) -> Iterator[None]:
    """A storage that refuses a write (a read-only file, a full disk, a user without rights)
    is one line naming the storage and the database's reason."""
    import optuna

    try:
        yield
    except optuna.exceptions.StorageInternalError as err:
        reason = _database_reason(err.__cause__ or err) or "no reason given"
        url = mask(str(getattr(storage, "url", "")))
        raise StudyError(f"study storage {url} refused a write: {reason}") from None


def _wait_until_ready(study: Any, say: Callable[[str], None]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    told = False
    while not _ready(study):
        if time.monotonic() > deadline:
            raise StudyError(
                f"study {study.study_name} was created but never set up (its creator stopped?); "
                "start a new one with --force"
            )
        if not told:
            say(f"waiting for study {study.study_name} to be set up by the machine creating it")
            told = True
        time.sleep(0.5)


def _ready(study: Any) -> bool:
    try:
        return bool(study.user_attrs.get(contract.STUDY_ATTR_READY))
    except KeyError:  # Optuna's "no study with study_id": its creator was stopped and removed it
        raise StudyError(
            f"study {study.study_name} was removed by the machine creating it (stopped while "
            "queueing its trials); run the command again to create it"
        ) from None


def _check_same_sweep(study: Any, plan: StudyPlan) -> None:
    attrs = study.user_attrs
    if attrs.get(contract.STUDY_ATTR_FINGERPRINT) == plan.fingerprint():
        return
    made = f"the storage's study {study.study_name}"
    advice = "start a new study with --force, or rename the sweep (name: ...)"
    stored = attrs.get(contract.STUDY_ATTR_SETTINGS)
    if stored is None:  # a study made before its settings were kept beside the fingerprint
        raise StudyError(
            f"{made} was made from another sweep file ({attrs.get(contract.STUDY_ATTR_FILE, '?')}"
            f", or this file before a change); {advice}"
        )
    raise StudyError(f"{made} {describe_change(stored, plan.settings())}; {advice}")


def describe_change(before: dict[str, Any], now: dict[str, Any]) -> str:
    """What differs between two `StudyPlan.settings()`, in words (the first few settings)."""
    old, new = before.get("base", {}), now.get("base", {})
    keys = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
    if keys:
        said = [f"{k} {old.get(k, '(unset)')} (now {new.get(k, 'unset')})" for k in keys[:4]]
        more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
        return f"was made with {', '.join(said)}{more}"
    for part, words in (("children", "its grid, variants or seeds"), ("search", "its search")):
        if before.get(part) != now.get(part):
            return f"was made with other values in {words}"
    return "was made from another version of this sweep file"


def _extend(
    study: Any,
    plan: StudyPlan,
    storage_url: str,
    trials: int | None,
    say: Callable[[str], None],
    should_stop: Callable[[], bool],
) -> None:
    """A higher trial count (`--trials N`, or the file's `trials:` edited upwards) queues the
    difference; a lower one is an error."""
    if plan.spec is None:
        return
    if trials is not None and plan.spec.sampler == "grid":
        raise StudyError("--trials does not apply to sampler grid: it runs every point once")
    have = int(study.user_attrs.get(contract.STUDY_ATTR_TRIALS, plan.spec.trials))
    wanted = plan.spec.trials if trials is None else trials
    source = "the file's trials:" if trials is None else "--trials"
    if plan.spec.sampler == "grid" or wanted == have or (trials is None and wanted < have):
        return  # a file's count below an earlier --trials keeps the study as it grew
    if wanted < have:
        raise StudyError(
            f"study {study.study_name} already has {have} trials; {source} {wanted} can only "
            "raise it (--force starts a new study)"
        )
    with study_lock(storage_url, EXTEND_LOCK_KEY):  # machines raising it at once: once
        have = int(study.user_attrs.get(contract.STUDY_ATTR_TRIALS, plan.spec.trials))
        start = have
        while have < wanted:
            chunk = min(QUEUE_CHUNK, wanted - have)
            _queue(study, plan, [({}, {})] * chunk, say, lambda: False)
            have += chunk
            study.set_user_attr(contract.STUDY_ATTR_TRIALS, have)  # what is queued, so far
            if should_stop() and have < wanted:
                raise QueueingStopped(
                    f"stopped while queueing more trials of study {study.study_name}: "
                    f"{have - start} of {wanted - start} queued and kept; the same command "
                    "queues the rest"
                )
    if have > start:
        say(f"study {study.study_name}: {have - start} more trials queued ({source} {wanted})")


def retried_number(trial: Any) -> int | None:
    """The number of the trial `trial` retries (Optuna's own record), or None for a first try."""
    from optuna.storages import RetryFailedTrialCallback

    return RetryFailedTrialCallback.retried_trial_number(trial)
