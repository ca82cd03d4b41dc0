"""Read training runs back from an MLflow tracking store.

Everything the analysis needs from a run is gathered here once: params, tags, status, the
per-epoch and per-step metric histories, and the stored test predictions (`predictions/test.npz`,
through the artifact cache of `artifacts.py`). The rest of the package works on the returned
`RunData` and never reads MLflow itself (`publish.py` writes the reports back).

MLflow is imported inside the functions that need it: `import mlflow` costs about a second, and
`analysis.metrics` / `analysis.plots` users should not pay it.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis import records
from analysis.artifacts import fetch_artifact
from analysis.errors import AnalysisError, first_line
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
    TRAIN_DYNAMICS_PATH,
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


@dataclass
class RunData:
    """One run as the analysis sees it.

    `epochs`: DataFrame indexed by epoch (1, 2, ...) with the columns of EPOCH_METRICS that were
    logged (accuracies as fractions, losses as mean cross-entropy, times in seconds).
    `batch_loss`: Series indexed by global optimisation step. `predictions` is None when the run
    stored none (for example it was killed before the end); `notices` then says why.
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
    predictions = None
    if with_predictions:
        path = fetch_artifact(client, run, PREDICTIONS_PATH, cache_dir=cache_dir)
        if path is not None:
            try:
                predictions = Predictions.from_npz(path)
            except AnalysisError as err:  # the run still has its curves: left out of the rest
                notices.append(
                    f"run {info.run_id}: its {PREDICTIONS_PATH} is left out ({err}); prediction "
                    "diagnostics are skipped"
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
        start_time=info.start_time,
        end_time=info.end_time,
    )


def load_example_records(
    client: MlflowClient, run_id: str, *, cache_dir: str | Path | None = None
) -> tuple[dict | None, dict | None]:
    """The run's per-example records as dicts of arrays: (predictions/test_by_epoch.npz,
    dynamics/train.npz), None for each it lacks."""
    run = get_run(client, run_id)
    found = []
    for path in (TEST_BY_EPOCH_PATH, TRAIN_DYNAMICS_PATH):
        local = fetch_artifact(client, run, path, cache_dir=cache_dir)
        if local is None:
            found.append(None)
            continue
        try:
            with np.load(local) as npz:
                found.append({key: npz[key] for key in npz.files})
        except Exception as err:
            raise AnalysisError(f"{local}: not a per-example record ({first_line(err)})") from None
    return found[0], found[1]


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
