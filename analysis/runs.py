"""Read training runs back from an MLflow tracking store.

Everything the analysis needs from a run is gathered here once: params, tags, status, the
per-epoch and per-step metric histories, and the stored test predictions (`predictions/test.npz`).
Artifacts are downloaded once per run and cached by run id; the rest of the package works on the
returned `RunData` and never talks to MLflow itself (only the report logs its files back).

MLflow is imported inside the functions that need it: `import mlflow` costs about a second, and
`analysis.metrics` / `analysis.plots` users should not pay it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mnist_train import idx

if TYPE_CHECKING:
    from mlflow import MlflowClient

# The contract with the training side (see DESIGN.md); change only everywhere at once.
EPOCH_METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "epoch_time_s")
STEP_METRIC = "batch_loss"
PREDICTIONS_PATH = "predictions/test.npz"
MODEL_URI = "runs:/{run_id}/model"
DATA_DIR_TAG = "mnist.data_dir"
PARENT_TAG = "mlflow.parentRunId"
N_CLASSES = 10

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's own default
PROBE_TIMEOUT_S = 3.0  # an unreachable server should fail in seconds, not after MLflow's retries
MAX_RUNS = 5000
RUN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")  # what MLflow's run ids look like (uuid4 hex)


class AnalysisError(RuntimeError):
    """A problem the user can fix (unknown run, wrong store, ...); the message is shown as is."""


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
        except (KeyError, ValueError, OSError) as err:
            raise AnalysisError(
                f"{path}: not a predictions file with labels/probs/index ({err})"
            ) from None


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
    def is_finished(self) -> bool:
        return self.status == "FINISHED"

    @property
    def label(self) -> str:
        """Short human name: the run name, else the first 8 characters of the id."""
        return self.run_name or self.run_id[:8]


# --------------------------------------------------------------------------- connecting


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """Explicit URI, else $MLFLOW_TRACKING_URI, else MLflow's default `sqlite:///mlflow.db`."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def connect(tracking_uri: str | None = None) -> MlflowClient:
    """An MlflowClient for an existing store; AnalysisError when there is nothing to read.

    Checked before MLflow sees the URI because MLflow would otherwise create an empty SQLite
    database or directory on a typo, and retry an unreachable HTTP server for minutes.
    """
    uri = resolve_tracking_uri(tracking_uri)
    check_store_reachable(uri)
    if urllib.parse.urlparse(uri).scheme in ("", "file"):
        # DESIGN.md names a file path as a valid store, but MLflow 3 refuses file stores unless this
        # is set; reading an existing one is harmless (a user's explicit "false" still wins)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as err:  # MLflow raises a variety of types for a bad store
        raise AnalysisError(f"cannot open tracking store {uri}: {_first_line(err)}") from None


def check_store_reachable(uri: str) -> None:
    """Raise AnalysisError unless `uri` names an existing store or a server that answers."""
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in ("http", "https"):
        # one plain request with a short timeout: MLflow's own client would retry for minutes
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            pass  # the server answered (perhaps 401 or 404): reachable, let MLflow take over
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise AnalysisError(f"tracking server {uri} is unreachable ({reason})") from None
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
    (see `resolve_run_ref`), each checked to exist; `parent_run_id`: the child runs of a sweep; `filter_string`: an MLflow search
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
                filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
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
        raise AnalysisError(f"run search failed: {_first_line(err)}") from None
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
        raise AnalysisError(f"cannot look up run {ref!r}: {_first_line(err)}") from None
    if not matches:
        raise AnalysisError(f"no run with id or name {ref!r} in {client.tracking_uri}")
    return matches[0].info.run_id, len(matches)


def get_run(client: MlflowClient, run_id: str):
    """The mlflow Run `run_id`; AnalysisError when the store does not know it."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as err:
        raise AnalysisError(
            f"no run with id {run_id!r} in {client.tracking_uri} ({_first_line(err)})"
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
) -> RunData:
    """Everything the analysis reads about one run.

    Raises AnalysisError when the run is unknown or carries none of the contract's metrics and no
    predictions (a run from another project, or a sweep parent).
    """
    run = get_run(client, run_id)
    info, data = run.info, run.data
    present = set(data.metrics)
    epochs = _epoch_frame(client, run_id, [k for k in EPOCH_METRICS if k in present])
    batch_loss = (
        _step_series(client, run_id, STEP_METRIC) if STEP_METRIC in present else _empty_steps()
    )
    notices: list[str] = []
    predictions = None
    if with_predictions:
        path = fetch_artifact(client, run, PREDICTIONS_PATH, cache_dir=cache_dir)
        if path is not None:
            predictions = Predictions.from_npz(path)
        else:
            notices.append(
                f"run {info.run_id} ({info.status}) has no {PREDICTIONS_PATH}; "
                "prediction diagnostics are skipped (try --predict to use the logged model)"
            )

    if epochs.empty and batch_loss.empty and predictions is None:
        n_children = _count_children(client, run)
        if n_children:
            raise AnalysisError(
                f"run {run_id} is a sweep parent with {n_children} child runs; analyse a child run"
            )
        raise AnalysisError(
            f"run {run_id} has none of the workbench metrics ({', '.join(EPOCH_METRICS)}, "
            f"{STEP_METRIC}) and no {PREDICTIONS_PATH}; is it an MNIST workbench run?"
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
        params=dict(data.params),
        tags=dict(data.tags),
        metrics=dict(data.metrics),
        epochs=epochs,
        batch_loss=batch_loss,
        predictions=predictions,
        notices=notices,
        start_time=info.start_time,
        end_time=info.end_time,
    )


def load_runs(
    tracking_uri: str | None = None,
    *,
    experiments: Sequence[str] = (),
    run_ids: Sequence[str] = (),
    parent_run_id: str | None = None,
    filter_string: str | None = None,
    cache_dir: str | Path | None = None,
    with_predictions: bool = True,
) -> list[RunData]:
    """Connect, select runs as `find_run_ids` does, and load each of them."""
    client = connect(tracking_uri)
    ids = find_run_ids(
        client,
        experiments=experiments,
        run_ids=run_ids,
        parent_run_id=parent_run_id,
        filter_string=filter_string,
    )
    return [
        load_run(client, i, cache_dir=cache_dir, with_predictions=with_predictions) for i in ids
    ]


def _count_children(client: MlflowClient, run) -> int:
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{run.info.run_id}'",
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
    return pd.Series([], index=pd.Index([], dtype=int, name="step"), dtype=float, name=STEP_METRIC)


# --------------------------------------------------------------------------- artifact cache


def default_cache_dir() -> Path:
    """$MNIST_WORKBENCH_CACHE, else $XDG_CACHE_HOME/mnist-workbench, else ~/.cache/mnist-workbench."""
    if os.environ.get("MNIST_WORKBENCH_CACHE"):
        return Path(os.environ["MNIST_WORKBENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnist-workbench"


def fetch_artifact(client: MlflowClient, run, artifact_path: str, *, cache_dir=None) -> Path | None:
    """Local copy of one artifact file of `run`, or None when the run has no such artifact.

    Only runs that have FINISHED are cached (under `<cache_dir>/<run_id>/`, stamped with the run's
    end time): a running or killed run may still gain or replace artifacts, e.g. when it is resumed,
    so it is downloaded afresh each time. Files are moved into the cache only once complete, so an
    interrupted download or a concurrent reader never sees half a file.
    """
    from mlflow.exceptions import MlflowException

    run_id = run.info.run_id
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = root / run_id / artifact_path
    stamp = root / run_id / "run.json"
    cacheable = run.info.status == "FINISHED"
    if cacheable and cached.is_file() and _read_stamp(stamp) == run.info.end_time:
        return cached

    parent, _, name = artifact_path.rpartition("/")
    try:
        listed = {Path(f.path).name for f in client.list_artifacts(run_id, parent or None)}
    except (MlflowException, OSError) as err:
        raise AnalysisError(f"cannot list artifacts of run {run_id}: {_first_line(err)}") from None
    if name not in listed:
        return None

    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_id}-", dir=root))
    try:
        downloaded = Path(client.download_artifacts(run_id, artifact_path, dst_path=str(staging)))
        if not cacheable:
            # keep this one download for the caller under a per-run "live" name, replaced each time
            live = root / f"{run_id}.live" / artifact_path
            live.parent.mkdir(parents=True, exist_ok=True)
            os.replace(downloaded, live)
            return live
        cached.parent.mkdir(parents=True, exist_ok=True)
        os.replace(downloaded, cached)
        _write_stamp(stamp, run.info.end_time)
        return cached
    except (MlflowException, OSError) as err:
        raise AnalysisError(
            f"cannot download {artifact_path} of run {run_id}: {_first_line(err)}"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_stamp(path: Path) -> int | None:
    try:
        return json.loads(path.read_text())["end_time"]
    except (OSError, ValueError, KeyError):
        return None


def _write_stamp(path: Path, end_time: int | None) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"end_time": end_time}))
    os.replace(partial, path)


# --------------------------------------------------------------------------- test images


def resolve_data_dir(data_dir: str | Path | None, run: RunData | None = None) -> Path:
    """`--data-dir`, else the run's `mnist.data_dir` tag, else $MNIST_DATA_DIR, else ./data."""
    if data_dir:
        return Path(data_dir)
    if run is not None and run.tags.get(DATA_DIR_TAG):
        return Path(run.tags[DATA_DIR_TAG])
    return Path(os.environ.get("MNIST_DATA_DIR") or "./data")


def load_test_set(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST test images uint8 (N, 28, 28) and labels int64 (N,) from `<data_dir>/MNIST/raw/`.

    Read with numpy (`mnist_train.idx`) rather than through torchvision: importing it alone costs
    ~2.5 s, half the budget of a whole report, and the analysis only needs the raw pixels.
    Nothing is downloaded; missing or damaged files are an AnalysisError.
    """
    try:
        return idx.read_split(data_dir, train=False)
    except idx.IdxError as err:
        raise AnalysisError(f"{err} (pass --data-dir or set MNIST_DATA_DIR)") from None


def load_train_labels(data_dir: str | Path) -> np.ndarray:
    """MNIST training labels int64 (60000,) from `<data_dir>/MNIST/raw/` (for the dataset view)."""
    raw = Path(data_dir) / "MNIST" / "raw"
    try:
        return idx.read(raw, idx.FILES[True][1], idx.LABELS_MAGIC).astype(np.int64)
    except idx.IdxError as err:
        raise AnalysisError(f"{err} (pass --data-dir or set MNIST_DATA_DIR)") from None


def load_test_images(data_dir: str | Path) -> np.ndarray:
    """MNIST test images, uint8 (N, 28, 28), in torchvision's order (the `index` of predictions)."""
    return load_test_set(data_dir)[0]


# --------------------------------------------------------------------------- predicting


def predict_with_logged_model(
    run_id: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    tracking_uri: str | None = None,
    batch_size: int = 2000,
) -> Predictions:
    """Predictions of the run's logged model (`runs:/<id>/model`) on the given test images.

    `images` uint8 (N, 28, 28) in test-set order, `labels` int (N,). The logged model takes float32
    (N, 784) pixels in [0, 1] (its normalisation is built in) and returns logits.
    Only used when a run stored no predictions and the user asked for `--predict`.
    """
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.exceptions import MlflowException

    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pytorch.load_model(MODEL_URI.format(run_id=run_id), map_location="cpu")
    except (MlflowException, OSError) as err:
        raise AnalysisError(
            f"run {run_id} has no loadable logged model: {_first_line(err)}"
        ) from None
    model.eval()
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            chunks.append(torch.softmax(model(x[start : start + batch_size]), dim=1))
    probs = torch.cat(chunks).numpy().astype(np.float32)
    return Predictions(
        labels=np.asarray(labels, np.int64), probs=probs, index=np.arange(len(labels))
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
