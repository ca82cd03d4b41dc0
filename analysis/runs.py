"""Read training runs back from an MLflow tracking store.

Everything the analysis needs from a run is gathered here once: params, tags, status, the
per-epoch and per-step metric histories, and the stored test predictions (`predictions/test.npz`,
through the artifact cache of `artifacts.py`); the per-example records and a fold's held-out
predictions on request. Every stored array is checked (`records.py`) before it is handed out: one
that is not usable is left out of its run with a notice naming the run and the reason. The rest
of the package works on the returned `RunData` and never reads MLflow itself (`publish.py`
writes the reports back).

MLflow is imported inside the functions that need it: `import mlflow` costs about a second, and
`analysis.metrics` / `analysis.plots` users should not pay it.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis import records
from analysis.artifacts import fetch_artifact
from analysis.errors import AnalysisError, first_line
from analysis.records import EpochPredictions, TrainingRecord
from mnist_train import contract
from mnist_train.contract import (
    BATCH_LOSS,
    EPOCH_METRICS,
    HELDOUT_PREDICTIONS_PATH,
    MAX_RUNS,
    N_CLASSES,
    OPTIONAL_EPOCH_METRICS,
    PREDICTIONS_PATH,
    TAG_EPOCHS,
    TAG_PARENT,
    TEST_BY_EPOCH_PATH,
    TEST_IMAGES,
    TRAIN_DYNAMICS_PATH,
    TRAIN_IMAGES,
    VAL_IMAGES,
    default_tracking_uri,
)
from mnist_train.server_probe import is_http, probe_http_store

if TYPE_CHECKING:
    from mlflow import MlflowClient

RUN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")  # what MLflow's run ids look like (uuid4 hex)


@dataclass(frozen=True)
class Predictions:
    """Stored test-set predictions of one run.

    `labels` int64 (N,), true digits; `probs` float32 (N, 10), softmax outputs; `index` int64 (N,),
    position of each row in the torchvision MNIST test set.
    """

    labels: np.ndarray
    probs: np.ndarray
    index: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.labels.ndim != 1 or self.index.shape != (n,) or self.probs.shape != (n, N_CLASSES):
            raise AnalysisError(
                f"predictions have inconsistent shapes: labels {self.labels.shape}, "
                f"probs {self.probs.shape}, index {self.index.shape} (expected (N,), (N, 10), (N,))"
            )
        problem = _predictions_problem(self.labels, self.probs, self.index)
        if problem:
            # a wrong array is worse than a missing one: NaN probabilities once made a run look
            # significantly worse than its own logged accuracy
            raise AnalysisError(f"predictions are not usable: {problem}")

    @property
    def y_pred(self) -> np.ndarray:
        """Predicted digit per row, int64 (N,)."""
        return self.probs.argmax(axis=1)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_npz(cls, path: str | Path) -> Predictions:
        try:
            with np.load(path) as npz:
                return cls(
                    labels=np.asarray(npz["labels"], dtype=np.int64),
                    probs=np.asarray(npz["probs"], dtype=np.float32),
                    index=np.asarray(npz["index"], dtype=np.int64),
                )
        except AnalysisError:
            raise
        except Exception as err:  # truncated zip, missing keys, a pickle, a wrong dtype ...
            raise AnalysisError(
                f"{path}: not a predictions file with labels/probs/index "
                f"({type(err).__name__}: {str(err)[:200]})"
            ) from None


@dataclass(frozen=True)
class ModelOfRecord:
    """The epoch whose weights a run logged and whose predictions it stored, with that epoch's
    scores (contract.SCORES: validation, test and train accuracy and loss). Every table, tile
    and finding reads a run's scores from here; curves keep every epoch.

    `epoch` is None for a run with no epoch logged; `last_epoch` is the last epoch trained
    (later than `epoch` when early stopping kept an earlier one)."""

    epoch: int | None
    last_epoch: int | None
    scores: dict[str, float] = field(default_factory=dict)

    def get(self, key: str) -> float | None:
        return self.scores.get(key)

    @property
    def is_last(self) -> bool:
        return self.epoch == self.last_epoch

    @property
    def described(self) -> str:
        """`epoch 3` or `epoch 3 of 5`: which model the scores are of."""
        if self.epoch is None:
            return "no epoch"
        return f"epoch {self.epoch}" + ("" if self.is_last else f" of {self.last_epoch}")


def model_of_record(metrics: dict[str, float], epochs: pd.DataFrame) -> ModelOfRecord:
    """A run's model of record from its final metrics and per-epoch curves: the epoch is
    `predictions_epoch` (the last logged epoch for a run that ended before recording one); its
    scores are those the run logged as `model/<score>`, else read off the curves at that epoch
    (runs recorded before those were logged)."""
    last = int(epochs.index.max()) if len(epochs) else None
    logged = metrics.get(contract.PREDICTIONS_EPOCH)
    epoch = int(logged) if logged is not None else last
    scores = {}
    for key in contract.SCORES:
        recorded = metrics.get(contract.record_key(key))
        if recorded is not None:
            scores[key] = float(recorded)
        elif epoch is not None and key in epochs.columns and epoch in epochs.index:
            value = epochs.at[epoch, key]
            if pd.notna(value):
                scores[key] = float(value)
    return ModelOfRecord(epoch, last, scores)


def _predictions_problem(labels: np.ndarray, probs: np.ndarray, index: np.ndarray) -> str:
    """What is wrong with stored predictions, or "": labels are digits, probabilities finite
    rows in [0, 1] that sum to 1, index positions distinct and not negative."""
    if len(labels) == 0:
        return "no rows"
    if labels.min() < 0 or labels.max() >= N_CLASSES:
        return f"labels outside 0-{N_CLASSES - 1}"
    return records.probs_problem(probs) or records.index_problem(index)


def left_out(run_name: str, run_id: str, path: str, reason: str) -> str:
    """The notice for a stored file left out of a run: the run, the file and why, in one line."""
    name = f"{run_name} ({run_id[:8]})" if run_name else run_id
    return f"run {name}: its {path} is left out ({reason})"


def int_param(params: dict[str, str], key: str) -> int | None:
    """A run's param read as a whole number; None when it is absent or not one."""
    try:
        return int(params[key])
    except (KeyError, ValueError):
        return None


@dataclass
class RunData:
    """One run as the analysis sees it.

    `epochs`: DataFrame indexed by epoch (1, 2, ...) with the columns of EPOCH_METRICS that were
    logged (accuracies as fractions, losses as mean cross-entropy, times in seconds).
    `batch_loss`: Series indexed by global optimisation step. `predictions` is None when the run
    stored none (for example it was killed before the end) or stored ones that are not usable;
    `notices` then says why, and `left_out` maps such a stored file to the reason.
    """

    run_id: str
    run_name: str
    experiment_id: str
    experiment_name: str
    status: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]  # latest value of every metric, e.g. overfit_gap, train_time_s
    epochs: pd.DataFrame
    batch_loss: pd.Series
    predictions: Predictions | None = None
    notices: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)  # artifact path -> why it is not used
    start_time: int | None = None  # ms since the epoch, as MLflow stores it
    end_time: int | None = None

    @property
    def label(self) -> str:
        """Short human name: the run name, else the first 8 characters of the id."""
        return self.run_name or self.run_id[:8]

    @property
    def record(self) -> ModelOfRecord:
        """The run's model of record and its scores (see `model_of_record`)."""
        return model_of_record(self.metrics, self.epochs)


# --------------------------------------------------------------------------- connecting


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """Explicit URI, else $MLFLOW_TRACKING_URI, else MLflow's default `sqlite:///mlflow.db`."""
    return tracking_uri or default_tracking_uri()


def connect(tracking_uri: str | None = None) -> MlflowClient:
    """An MlflowClient for an existing store; AnalysisError when there is nothing to read.

    Checked before MLflow sees the URI because MLflow would otherwise create an empty SQLite
    database or directory on a typo, and retry an unreachable HTTP server for minutes.
    """
    uri = resolve_tracking_uri(tracking_uri)
    check_store_reachable(uri)
    from mlflow import MlflowClient

    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as err:  # MLflow raises a variety of types for a bad store
        raise AnalysisError(f"cannot open tracking store {uri}: {first_line(err)}") from None


def check_store_reachable(uri: str) -> None:
    """Raise AnalysisError unless `uri` names an existing store or a server that answers."""
    scheme = urllib.parse.urlparse(uri).scheme
    if is_http(uri):
        reason = probe_http_store(uri)
        if reason is not None:
            raise AnalysisError(f"tracking server {uri} is unreachable ({reason})")
    elif scheme == "sqlite":
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:" and not Path(path).is_file():
            raise AnalysisError(
                f"tracking store {uri} does not exist (no file {Path(path).resolve()})"
            )
    elif scheme in ("", "file"):
        path = urllib.parse.urlparse(uri).path if scheme == "file" else uri
        if not Path(path).is_dir():
            raise AnalysisError(f"tracking store {uri} does not exist (no directory {path})")


# --------------------------------------------------------------------------- finding runs


def find_run_ids(
    client: MlflowClient,
    *,
    experiments: Sequence[str] = (),
    run_ids: Sequence[str] = (),
    parent_run_id: str | None = None,
    filter_string: str | None = None,
) -> list[str]:
    """Ids of the runs selected by any combination of the arguments (their union, in order).

    `experiments`: experiment names (all their runs, oldest first); `run_ids`: run ids or run names
    (see `resolve_run_ref`), each checked to exist; `parent_run_id`: the child runs of a sweep;
    `filter_string`: an MLflow search
    filter such as `params.lr = '0.01'`, applied to the named experiments or else to all of them.
    """
    from mlflow.exceptions import MlflowException

    found = [resolve_run_ref(client, ref)[0] for ref in run_ids]

    experiment_ids = [_experiment_id(client, name) for name in experiments]
    try:
        if parent_run_id is not None:
            parent = get_run(client, parent_run_id)
            children = client.search_runs(
                [parent.info.experiment_id],
                filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
                max_results=MAX_RUNS,
                order_by=["attributes.start_time ASC"],
            )
            if not children:
                raise AnalysisError(f"run {parent_run_id} has no child runs (not a sweep parent)")
            found += [r.info.run_id for r in children]
        if experiments or filter_string is not None:
            ids = experiment_ids or [e.experiment_id for e in client.search_experiments()]
            runs = client.search_runs(
                ids,
                filter_string=filter_string or "",
                max_results=MAX_RUNS,
                order_by=["attributes.start_time ASC"],
            )
            found += [r.info.run_id for r in runs]
    except MlflowException as err:
        raise AnalysisError(f"run search failed: {first_line(err)}") from None
    if not found:
        raise AnalysisError("no runs matched the selection")
    return list(dict.fromkeys(found))  # drop duplicates, keep order


def resolve_run_ref(client: MlflowClient, ref: str) -> tuple[str, int]:
    """(run id, number of runs that matched) for a run id or a run name such as `seed000_mlp`.

    A 32-hex-digit string is taken as an id. A name may match several runs (a seed reproduction
    run twice); the most recently started one is chosen and the count lets the caller say so.
    """
    from mlflow.exceptions import MlflowException

    if RUN_ID_PATTERN.fullmatch(ref):
        return get_run(client, ref).info.run_id, 1
    quote = "'" if "'" not in ref else '"'
    try:
        matches = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"attributes.run_name = {quote}{ref}{quote}",
            max_results=MAX_RUNS,
            order_by=["attributes.start_time DESC"],
        )
    except MlflowException as err:
        raise AnalysisError(f"cannot look up run {ref!r}: {first_line(err)}") from None
    if not matches:
        raise AnalysisError(f"no run with id or name {ref!r} in {client.tracking_uri}")
    return matches[0].info.run_id, len(matches)


def get_run(client: MlflowClient, run_id: str):
    """The mlflow Run `run_id`; AnalysisError when the store does not know it."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise AnalysisError(
                f"no run with id {run_id!r} in {client.tracking_uri} ({first_line(err)})"
            ) from None
        # a server that answers /health but fails its API (503 ...) is not "no such run"
        raise AnalysisError(
            f"the tracking store {client.tracking_uri} failed to answer for run {run_id} "
            f"({first_line(err)})"
        ) from None


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise AnalysisError(f"no experiment named {name!r} (known: {known})")
    return experiment.experiment_id


# --------------------------------------------------------------------------- loading runs


def load_run(
    client: MlflowClient,
    run_id: str,
    *,
    cache_dir: str | Path | None = None,
    with_predictions: bool = True,
    with_steps: bool = True,
) -> RunData:
    """Everything the analysis reads about one run.

    `with_steps=False` skips the per-step `batch_loss` history (thousands of points that a
    comparison never shows), leaving `batch_loss` empty. Raises AnalysisError when the run is
    unknown or carries none of the contract's metrics and no
    predictions (a run from another project, or a sweep parent).
    """
    run = get_run(client, run_id)
    info, data = run.info, run.data
    present = set(data.metrics)
    keys = [k for k in (*EPOCH_METRICS, *OPTIONAL_EPOCH_METRICS) if k in present]
    epochs = _epoch_frame(client, run_id, keys)
    if with_steps and BATCH_LOSS in present:
        batch_loss = _step_series(client, run_id, BATCH_LOSS)
    else:
        batch_loss = _empty_steps()
    notices: list[str] = []
    unusable: dict[str, str] = {}
    predictions = None
    if with_predictions:
        path = fetch_artifact(client, run, PREDICTIONS_PATH, cache_dir=cache_dir)
        if path is not None:
            try:
                predictions = Predictions.from_npz(path)
            except AnalysisError as err:  # the run still has its curves: left out of the rest
                unusable[PREDICTIONS_PATH] = str(err)
                notices.append(
                    left_out(info.run_name, info.run_id, PREDICTIONS_PATH, str(err))
                    + "; prediction diagnostics are skipped"
                )
        else:
            notices.append(
                f"run {info.run_id} ({info.status}) has no {PREDICTIONS_PATH}; "
                "prediction diagnostics are skipped (try --predict to use the logged model)"
            )

    if epochs.empty and BATCH_LOSS not in present and predictions is None:
        n_children = _count_children(client, run)
        if n_children:
            raise AnalysisError(
                f"run {run_id} is a sweep parent with {n_children} child runs; analyse a child run"
            )
        if PREDICTIONS_PATH in unusable:
            raise AnalysisError(
                f"run {run_id} has none of the workbench metrics, and its {PREDICTIONS_PATH} is "
                f"left out ({unusable[PREDICTIONS_PATH]}): nothing to analyse"
            )
        raise AnalysisError(
            f"run {run_id} has none of the workbench metrics ({', '.join(EPOCH_METRICS)}, "
            f"{BATCH_LOSS}) and no {PREDICTIONS_PATH}; is it an MNIST workbench run?"
        )
    if info.status != "FINISHED":
        notices.append(
            f"run {info.run_id} is {info.status}: analysed as far as its data go "
            f"({len(epochs)} epoch(s) logged)"
        )
    experiment = client.get_experiment(info.experiment_id)
    return RunData(
        run_id=info.run_id,
        run_name=info.run_name or "",
        experiment_id=info.experiment_id,
        experiment_name=experiment.name if experiment else "",
        status=info.status,
        # a resume that trained further records the new total in a tag (params are immutable)
        params={**data.params, **_epochs_override(data.tags)},
        tags=dict(data.tags),
        metrics=dict(data.metrics),
        epochs=epochs,
        batch_loss=batch_loss,
        predictions=predictions,
        notices=notices,
        left_out=unusable,
        start_time=info.start_time,
        end_time=info.end_time,
    )


def load_epoch_predictions(
    client: MlflowClient, run: RunData, *, cache_dir: str | Path | None = None
) -> tuple[EpochPredictions | None, str | None]:
    """The run's `predictions/test_by_epoch.npz`, checked against its logged epochs, its
    `test_images` param and its test predictions: (record, None), (None, None) when it stored
    none, (None, notice) when what it stored is not usable (see `left_out`)."""

    def check(arrays: dict) -> EpochPredictions:
        return records.epoch_predictions(
            arrays,
            logged_epochs=run.epochs.index,
            n_images=int_param(run.params, TEST_IMAGES),
            index=run.predictions.index if run.predictions is not None else None,
        )

    return _load_record(client, run, TEST_BY_EPOCH_PATH, check, cache_dir)


def load_training_record(
    client: MlflowClient, run: RunData, *, cache_dir: str | Path | None = None
) -> tuple[TrainingRecord | None, str | None]:
    """The run's `dynamics/train.npz`, checked against its logged epochs and its
    `train_images` / `val_images` params; returns as `load_epoch_predictions` does."""
    trained, held = int_param(run.params, TRAIN_IMAGES), int_param(run.params, VAL_IMAGES)

    def check(arrays: dict) -> TrainingRecord:
        return records.training_record(
            arrays,
            logged_epochs=run.epochs.index,
            n_images=trained,
            n_drawn=None if trained is None else trained + (held or 0),
        )

    return _load_record(client, run, TRAIN_DYNAMICS_PATH, check, cache_dir)


def load_example_records(
    client: MlflowClient, run: RunData, *, cache_dir: str | Path | None = None
) -> tuple[EpochPredictions | None, TrainingRecord | None, list[str]]:
    """Both per-example records of the run (None for each it lacks or that is not usable) and
    a notice for each left out."""
    test, test_notice = load_epoch_predictions(client, run, cache_dir=cache_dir)
    train, train_notice = load_training_record(client, run, cache_dir=cache_dir)
    return test, train, [n for n in (test_notice, train_notice) if n]


def _load_record(
    client: MlflowClient, run: RunData, path: str, check: Callable, cache_dir
) -> tuple:
    local = fetch_artifact(client, get_run(client, run.run_id), path, cache_dir=cache_dir)
    if local is None:
        return None, None
    try:
        with np.load(local) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as err:  # truncated zip, a pickle, not an npz at all ...
        reason = f"not readable: {type(err).__name__}: {first_line(err)[:200]}"
        return None, left_out(run.run_name, run.run_id, path, reason)
    try:
        return check(arrays), None
    except AnalysisError as err:
        return None, left_out(run.run_name, run.run_id, path, str(err))


def load_heldout_predictions(
    client: MlflowClient, run_id: str, *, cache_dir: str | Path | None = None
) -> Predictions | None:
    """A cross-validation run's `predictions/heldout.npz` (its held-out fold, `index` into the
    training set), checked as test predictions are; None when the run stored none, and
    AnalysisError when what it stored is not usable."""
    local = fetch_artifact(
        client, get_run(client, run_id), HELDOUT_PREDICTIONS_PATH, cache_dir=cache_dir
    )
    return None if local is None else Predictions.from_npz(local)


def _epochs_override(tags: dict[str, str]) -> dict[str, str]:
    return {"epochs": tags[TAG_EPOCHS]} if TAG_EPOCHS in tags else {}


def _count_children(client: MlflowClient, run) -> int:
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{run.info.run_id}'",
        max_results=MAX_RUNS,
    )
    return len(children)


def _history(client: MlflowClient, run_id: str, key: str) -> pd.Series:
    """Metric `key` by step; a step logged twice (a resumed run) keeps its latest value."""
    history = client.get_metric_history(run_id, key)
    frame = pd.DataFrame(
        [(m.step, m.timestamp, m.value) for m in history], columns=["step", "timestamp", "value"]
    )
    frame = frame.sort_values(["step", "timestamp"]).drop_duplicates("step", keep="last")
    return pd.Series(frame["value"].to_numpy(float), index=frame["step"].to_numpy(int), name=key)


def _epoch_frame(client: MlflowClient, run_id: str, keys: Iterable[str]) -> pd.DataFrame:
    columns = {key: _history(client, run_id, key) for key in keys}
    frame = pd.DataFrame(columns, columns=list(columns)) if columns else pd.DataFrame()
    frame.index = frame.index.astype(int)
    frame.index.name = "epoch"
    return frame.sort_index()


def _step_series(client: MlflowClient, run_id: str, key: str) -> pd.Series:
    series = _history(client, run_id, key)
    series.index.name = "step"
    return series


def _empty_steps() -> pd.Series:
    return pd.Series([], index=pd.Index([], dtype=int, name="step"), dtype=float, name=BATCH_LOSS)
