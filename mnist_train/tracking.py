"""MLflow writes (and the reads a resume needs) for one training run, as the contract names them.

`runner.py` decides what to record and when; this module only knows how to put it in the store.
Per-step losses go through a metric writer in one batch per epoch: one MLflow call per point
would cost more than the training itself (~7 ms each against SQLite).
"""

from __future__ import annotations

import functools
import io
import logging
import pickle
import subprocess
import sys
import tempfile
import urllib.parse
import uuid
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import contract
from .config import ConfigError, ExperimentFile
from .ownership import owner_tags
from .process import scoped_env
from .server_probe import is_http, probe_http_store
from .tracking_writer import (
    InlineWriter,
    OwnWriter,
    Row,
    SharedHandle,
    retry_conflicts,
    shared_writer,
    write_rows,
)

# Per-step points from which a helper process writes metrics: below it, starting the process
# (~1.5 s of imports) costs more than the inline writes it saves (~0.2 ms a point).
BACKGROUND_WRITES_FROM = 3000


@dataclass(frozen=True)
class DatasetInput:
    """A split as the run's Dataset column shows it: features (N, 784) uint8, targets (N,)."""

    name: str  # "mnist-train"
    context: str  # "training" | "testing"
    split: str  # contract.TRAIN | VALIDATION | TEST: which scores are measured on it
    features: np.ndarray
    targets: np.ndarray
    source: str  # the folder the raw files came from


_DATASETS: dict[tuple, tuple[DatasetInput, Any]] = {}  # see _dataset
_DATASETS_KEPT = 6


def _dataset(split: DatasetInput) -> Any:
    """`split` as an MLflow dataset. Its digest hashes the arrays (~10 ms a split), so a study
    worker, whose trials share the same arrays in memory, makes each dataset once: the cache
    holds the arrays it was made from, so their memory (the key) cannot be reused meanwhile."""
    import mlflow.data

    key = (split.name, split.source, *(_where(a) for a in (split.features, split.targets)))
    if key in _DATASETS:
        return _DATASETS[key][1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow muses over how to read a local source path
        made = mlflow.data.from_numpy(
            split.features, targets=split.targets, source=split.source, name=split.name
        )
    if len(_DATASETS) >= _DATASETS_KEPT:
        _DATASETS.pop(next(iter(_DATASETS)))
    _DATASETS[key] = (split, made)
    return made


def artifact_repository(artifact_uri: str, tracking_uri: str) -> Any:
    """MLflow's artifact repository for `artifact_uri` (a run's or a logged model's), made from
    the URI already at hand: MLflow's client reads the run or model back for it first."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)


@contextmanager
def _our_classes_by_value() -> Iterator[None]:
    """Pickle the classes of `models.py` (`Standardize`; the rest of a logged model is torch's
    own layers) by value while a model is saved: the model then loads where this package is
    not installed, without a copy of its code beside it (~26 files, a request each through a
    tracking server, and a copy that would shadow the installed package once loaded)."""
    import cloudpickle

    from . import models

    cloudpickle.register_pickle_by_value(models)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(models)


@contextmanager
def _pins_from_this_environment() -> Iterator[None]:
    """Skip MLflow's check of a model's pip requirements against the installed packages while
    saving ours: it maps every installed distribution's files to its modules first (~0.6 s of
    CPU a process), and our pins are read from those same installed versions, so they match by
    construction. Private to MLflow: where it moves, the check simply runs."""
    from mlflow.utils import environment

    check = getattr(environment, "warn_dependency_requirement_mismatches", None)
    if check is None:
        yield
        return
    environment.warn_dependency_requirement_mismatches = lambda requirements: None
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = check


def _where(array: np.ndarray) -> tuple:
    """What makes two arrays the same data without reading it: memory, shape, strides, dtype."""
    return (array.__array_interface__["data"][0], array.shape, array.strides, array.dtype.str)


def quiet_mlflow_logs() -> None:
    """Keep the terminal for training progress and real problems.

    MLflow narrates store and experiment creation at INFO and warns, on every model it saves,
    that pickled models run code when loaded (ours are our own). Its logger is configured when
    it is imported, so import it before setting levels.
    """
    import mlflow  # noqa: F401

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)


def current_tracking_uri() -> str:
    """The tracking URI this process records to: the one its command's `main` settled
    (`process.configure`), which MLflow reads from the environment it set."""
    return contract.default_tracking_uri()


def store_is_gone() -> bool:
    """True when the run's store is an http server that no longer answers."""
    uri = current_tracking_uri()
    return is_http(uri) and probe_http_store(uri, timeout_s=3) is not None


def check_tracking_server(uri: str) -> None:
    """ConfigError unless an http(s) tracking store answers; other stores are not probed."""
    if is_http(uri):
        reason = probe_http_store(uri)
        if reason is not None:
            raise ConfigError(f"tracking server {uri} is unreachable ({reason})")


def save_npz(file: Any, **arrays: np.ndarray) -> None:
    """`arrays` as an .npz (read back with `np.load`): whole numbers and flags deflated at level
    1, probabilities stored as they are, which deflate barely shrinks. On seed 000's three end
    files (`train.npz`, `test_by_epoch.npz`, `test.npz`) that is 18% more bytes (1.60 against
    1.36 MB) written five times faster (7 against 37 ms); a run pays it after every epoch too."""
    deflate = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(file, "w", compression=deflate, compresslevel=1) as archive:
        for name, array in arrays.items():
            array = np.asanyarray(array)
            # the member's method, read by `open` (as `compresslevel`, which stays 1)
            archive.compression = zipfile.ZIP_STORED if array.dtype.kind == "f" else deflate
            with archive.open(f"{name}.npy", "w", force_zip64=True) as out:
                np.lib.format.write_array(out, array, allow_pickle=False)


@functools.lru_cache(maxsize=8)
def git_commit(where: Path) -> str | None:
    """The commit checked out at `where`, or None outside a git work tree."""
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class StoreUnavailable(RuntimeError):
    """The tracking store stopped answering mid-run; `checkpoint` is the local copy kept."""

    def __init__(self, reason: str, checkpoint: Path | None = None):
        super().__init__(reason)
        self.checkpoint = checkpoint


def pending_checkpoints(run_id: str) -> Path:
    """Where a run's checkpoints wait until the store has them."""
    return contract.default_cache_dir() / "pending-checkpoints" / run_id


class CacheUnwritable(ConfigError):
    """The cache folder (where checkpoints wait for the store) cannot be written."""


def _unwritable(path: Path, err: OSError) -> CacheUnwritable:
    root = contract.default_cache_dir()
    return CacheUnwritable(
        f"cannot write {path}: {err.strerror or err}; checkpoints wait in the cache folder {root} "
        "until the store has them: set MNIST_WORKBENCH_CACHE to a writable folder with room"
    )


@contextmanager
def open_pending(path: Path) -> Iterator[io.BytesIO]:
    """A buffer whose bytes become the file `path` under the pending folder, never written
    through a link: a symlink planted at `path` (or a linked folder on the way) is refused
    instead of followed, so a resume cannot be made to overwrite some other file. The file
    appears at `path` only once whole (written beside it, then renamed): a process killed
    mid-write leaves no torn checkpoint for the process that takes its run over. A folder that
    cannot be written, or a full disk, is a `CacheUnwritable` naming the folder."""
    import os

    root = contract.default_cache_dir() / "pending-checkpoints"
    for folder in [*reversed(path.parent.parents), path.parent]:
        if folder.is_symlink() and (folder == root or root in folder.parents):
            raise ConfigError(f"{folder} is a symbolic link; refusing to write a checkpoint there")
    if path.is_symlink():
        raise ConfigError(f"{path} is a symbolic link; refusing to write through it")
    buffer = io.BytesIO()
    yield buffer  # serialised in memory first: a failed write is the disk's error, not torch's
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
        os.replace(partial, path)  # replaces a link planted meanwhile, never writes through it
    except OSError as err:
        raise _unwritable(path, err) from None
    finally:
        if partial.exists():
            partial.unlink()


def check_cache_writable() -> None:
    """`CacheUnwritable` now, before a run starts, rather than after its first epoch."""
    probe = contract.default_cache_dir() / "pending-checkpoints" / f".probe-{uuid.uuid4().hex}"
    with open_pending(probe) as f:
        f.write(b"ok")
    probe.unlink()


def model_name(run_name: str, tags: dict[str, str] | None = None) -> str:
    """The logged model's name, which tells runs apart on MLflow's Models page: a study's trial
    is `<study>-T007` (its run name spells every setting, too long to read in a column), any
    other run its run name; in the characters MLflow allows (no / : . % or quotes)."""
    tags = tags or {}
    number = tags.get(contract.TAG_TRIAL_NUMBER, "")
    name = run_name
    if tags.get(contract.TAG_STUDY) and number.isdigit():
        name = f"{tags[contract.TAG_STUDY]}-T{int(number):03d}"
    cleaned = "".join("_" if c in "/:.%\"'" else c for c in name).strip()
    return cleaned[:200] or "model"


class RunLog:
    """One MLflow run being written: open (or reopen) it, log to it, end it with a status.

    `datasets`: split (contract.TRAIN, ...) -> (name, digest) of the datasets logged as the run's
    inputs, which the model's scores are linked to."""

    def __init__(
        self,
        run_id: str,
        experiment_id: str,
        datasets: dict[str, tuple[str, str]] | None = None,
        artifact_uri: str | None = None,
    ):
        from mlflow.tracking import MlflowClient

        self.run_id = run_id
        self.experiment_id = experiment_id
        self.datasets = dict(datasets or {})
        self.client = MlflowClient()
        self._records: dict[int, dict[str, np.ndarray]] = {}  # per-epoch records written here
        self._artifact_uri = artifact_uri
        self._repository: Any = None
        # the last epoch's files (on local disk, oldest first) and their upload on a thread
        self._in_flight: tuple[list[tuple[Path, str]], futures.Future] | None = None
        self._uploader: futures.ThreadPoolExecutor | None = None

    def _artifacts(self) -> Any:
        """The run's artifact repository, made once from its artifact URI (known from opening
        the run; MLflow's own `log_artifact` reads the run back for it, a request per run)."""
        if self._repository is None:
            uri = self._artifact_uri or self.client.get_run(self.run_id).info.artifact_uri
            self._repository = artifact_repository(uri, self.client.tracking_uri)
        return self._repository

    def upload(self, local: str | Path, artifact_path: str | None = None) -> None:
        """A file, or a folder's files, into the run's artifacts."""
        if Path(local).is_dir():
            self._artifacts().log_artifacts(str(local), artifact_path)
        else:
            self._artifacts().log_artifact(str(local), artifact_path)

    @classmethod
    def open(
        cls,
        *,
        experiment: str,
        run_name: str,
        tags: dict[str, str],
        parent_run_id: str | None,
        system_metrics: bool = False,
    ) -> RunLog:
        """Start a new run (nested under `parent_run_id` when given) as the active run;
        `system_metrics` samples CPU, memory (and GPU) into the run's System metrics tab."""
        import mlflow

        experiment_id = mlflow.set_experiment(experiment).experiment_id
        active = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name,
            nested=parent_run_id is not None,
            parent_run_id=parent_run_id,
            tags=tags,
            log_system_metrics=system_metrics,
        )
        return cls(active.info.run_id, experiment_id, artifact_uri=active.info.artifact_uri)

    @classmethod
    def reopen(cls, run_id: str, *, system_metrics: bool = False) -> RunLog:
        """Make an existing (ended) run active again, to continue it."""
        import mlflow

        run = mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
        inputs = run.inputs.dataset_inputs if run.inputs else []
        split_of = {name: split for split, name in contract.DATASET_NAMES.items()}
        datasets = {
            split_of[i.dataset.name]: (i.dataset.name, i.dataset.digest)
            for i in inputs
            if i.dataset.name in split_of
        }
        return cls(run_id, run.info.experiment_id, datasets, run.info.artifact_uri)

    def log_setup(
        self,
        params: dict[str, str],
        model_summary: str,
        config: dict[str, Any],
        experiment_file: ExperimentFile | None,
        datasets: Sequence[DatasetInput],
    ) -> None:
        """Parameters, the model summary, the resolved config and experiment file, the datasets."""
        import mlflow
        import yaml

        mlflow.log_params(params)
        with tempfile.TemporaryDirectory() as tmp:  # the three files in one call
            folder = Path(tmp)
            (folder / "config").mkdir()
            (folder / "model_summary.txt").write_text(model_summary)
            (folder / "config" / "resolved.yaml").write_text(
                yaml.dump(config, indent=2, default_flow_style=False)  # as mlflow.log_dict
            )
            if experiment_file is not None:
                (folder / "config" / experiment_file.path.name).write_text(experiment_file.text)
            self.upload(tmp)
        made = [_dataset(split) for split in datasets]
        contexts = [split.context for split in datasets]
        if made:
            tags: list[dict[str, str] | None] = [None] * len(made)
            retry_conflicts(
                lambda: mlflow.log_inputs(datasets=made, contexts=contexts, tags_list=tags)
            )
        for split, dataset in zip(datasets, made, strict=True):
            self.datasets[split.split] = (dataset.name, dataset.digest)

    def metric_writer(self, points: int) -> InlineWriter | SharedHandle:
        """A writer for `points` metric rows to come: this process's shared helper when it has
        one (a study worker), else a helper process of its own when there are many."""
        shared = shared_writer(current_tracking_uri())
        if shared is not None:
            return SharedHandle(shared, self.run_id)
        if points >= BACKGROUND_WRITES_FROM:
            return OwnWriter(current_tracking_uri(), self.run_id)
        return InlineWriter(self.client, self.run_id)

    def write_rows(self, rows: list[Row]) -> None:
        write_rows(self.client, self.run_id, rows)

    def fill_metrics(self, rows: list[Row]) -> None:
        """Write the points of `rows` the run lacks (a checkpoint's epoch whose metrics were
        not written before its process died), by metric key and step."""
        missing = []
        for key in {row[0] for row in rows}:
            logged = {m.step for m in self.client.get_metric_history(self.run_id, key)}
            missing += [row for row in rows if row[0] == key and row[3] not in logged]
        if missing:
            self.write_rows(missing)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def beat(self) -> None:
        """Refresh the owner and heartbeat tags (see `abandoned`)."""
        from mlflow.entities import RunTag

        tags = [RunTag(k, v) for k, v in owner_tags().items()]
        retry_conflicts(lambda: self.client.log_batch(self.run_id, tags=tags))

    def log_checkpoint(self, state: dict[str, Any], name: str) -> None:
        """`state` (tensors and plain values only) as `checkpoints/<name>`.

        It is written to a local folder first and removed from there once uploaded, so a
        tracking server that goes away loses no checkpoint: StoreUnavailable says where it is.
        Uploaded now, as `log_epoch_files` would, waiting for it.
        """
        self.log_epoch_files(state, name)
        self.epoch_stored(wait=True)

    def log_epoch_files(
        self, state: dict[str, Any], name: str, record: dict[str, np.ndarray] | None = None
    ) -> None:
        """An epoch's per-example `record` (when kept) and its checkpoint `state` as
        `checkpoints/<name>`: both written whole to the pending folder on this machine, then
        uploaded in that order (the checkpoint vouches for the record) on a thread while the
        next epoch trains. `epoch_stored` says when the store has them; each stays on local
        disk until it has, so a tracking server that goes away, or a process killed meanwhile,
        loses neither (a resume uploads what it finds there). The previous epoch's must be
        stored already: the store is never more than one epoch behind."""
        import torch

        if self._in_flight is not None:
            raise RuntimeError("the previous epoch's files are not known to be stored")
        folder = pending_checkpoints(self.run_id)
        files = []
        if record is not None:
            epoch = int(state["epoch"])
            path = folder / "records" / f"epoch_{epoch:03d}.npz"
            with open_pending(path) as f:
                save_npz(f, **record)
            files.append((path, contract.EPOCH_RECORD_DIR))
            self._records[epoch] = {k: np.asarray(v) for k, v in record.items()}  # for the end
        path = folder / name
        with open_pending(path) as f:
            torch.save(state, f)
        files.append((path, contract.CHECKPOINT_DIR))
        self._artifacts()  # made here, not on the thread: this thread uploads too
        if self._uploader is None:
            self._uploader = futures.ThreadPoolExecutor(1, thread_name_prefix="epoch-upload")
        self._in_flight = (files, self._uploader.submit(self._upload_all, files))

    def _upload_all(self, files: list[tuple[Path, str]]) -> None:
        for path, artifact_path in files:
            self.upload(str(path), artifact_path)

    def epoch_upload_over(self) -> bool:
        """Whether the last epoch's upload is over (stored or failed): `epoch_stored` then
        returns at once."""
        return self._in_flight is None or self._in_flight[1].done()

    def epoch_stored(self, *, wait: bool) -> bool:
        """Whether the store has the last epoch's files (`log_epoch_files`); with `wait`, once
        their upload is over. Stored, they leave local disk (here, on the caller's thread, never
        on the uploader's: a checkpoint kept under the same name meanwhile stays). An upload
        that failed is a StoreUnavailable naming the checkpoint, still on disk, at this call
        and every later one: the epoch's points must not follow it into the store."""
        if self._in_flight is None:
            return True
        files, upload = self._in_flight
        if not wait and not upload.done():
            return False
        try:
            upload.result()
        except Exception as err:
            reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            raise StoreUnavailable(reason, files[-1][0]) from None
        self._in_flight = None
        for path, _ in files:
            path.unlink(missing_ok=True)
        return True

    def log_final(self, metrics: Sequence[Row], model_id: str, scores: Sequence[Row]) -> None:
        """The run's end-of-run `metrics` and, linked to the logged model `model_id` and to the
        datasets they were measured on, its `scores` (the model of record's epoch's points as
        logged, timestamps included, so MLflow's Models page lists its accuracy and loss): one
        batch."""
        from mlflow.entities import Metric

        points = [Metric(key, value, timestamp, step) for key, value, timestamp, step in metrics]
        for key, value, timestamp, step in scores:
            dataset_name, digest = self.datasets.get(contract.METRIC[key].split, (None, None))
            points.append(
                Metric(
                    key,
                    value,
                    timestamp,
                    step,
                    model_id=model_id,
                    dataset_name=dataset_name,
                    dataset_digest=digest,
                    run_id=self.run_id,
                )
            )
        # a score is the same point as the run's own (same key, time, step, value): the store
        # keeps one copy in the run's history and links it to the model
        retry_conflicts(lambda: self.client.log_batch(self.run_id, metrics=points))

    def log_predictions(self, labels: np.ndarray, probs: np.ndarray, index: np.ndarray) -> None:
        """The contract's `predictions/test.npz`: labels int64 (N,), probs float32 (N, 10),
        index."""
        buffer = io.BytesIO()
        save_npz(buffer, labels=labels, probs=probs, index=index)
        path = Path(contract.PREDICTIONS_PATH)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / path.name).write_bytes(buffer.getvalue())
            self.upload(str(Path(tmp) / path.name), str(path.parent))

    def log_arrays(self, artifact_path: str, **arrays: np.ndarray) -> None:
        """Arrays as one compressed .npz artifact at `artifact_path`."""
        buffer = io.BytesIO()
        save_npz(buffer, **arrays)
        path = Path(artifact_path)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / path.name).write_bytes(buffer.getvalue())
            self.upload(str(Path(tmp) / path.name), str(path.parent))

    def upload_pending(self) -> list[str]:
        """Upload what an earlier session kept on this machine while the tracking server was
        away (checkpoints, per-epoch records) and remove it here; returns the names uploaded."""
        folder = pending_checkpoints(self.run_id)
        uploaded = []
        for path, destination in [
            *((p, contract.CHECKPOINT_DIR) for p in sorted(folder.glob("epoch_*.pt"))),
            *((p, contract.EPOCH_RECORD_DIR) for p in sorted(folder.glob("records/epoch_*.npz"))),
        ]:
            if path.is_symlink():  # planted, not written by a run: never read through it
                continue
            self.upload(str(path), destination)
            path.unlink()
            uploaded.append(path.name)
        return uploaded

    def load_epoch_record(self, epoch: int) -> dict[str, np.ndarray] | None:
        """An epoch's record: kept from this session, else from the store, else from local disk
        (uploading it now), else None."""
        import mlflow

        if epoch in self._records:
            return self._records[epoch]

        name = f"epoch_{epoch:03d}.npz"
        local = pending_checkpoints(self.run_id) / "records" / name
        listed = {
            Path(f.path).name
            for f in self.client.list_artifacts(self.run_id, contract.EPOCH_RECORD_DIR)
        }
        with tempfile.TemporaryDirectory() as tmp:
            if name in listed:
                path = mlflow.artifacts.download_artifacts(
                    run_id=self.run_id,
                    artifact_path=f"{contract.EPOCH_RECORD_DIR}/{name}",
                    dst_path=tmp,
                )
            elif local.is_file():
                self.upload(str(local), contract.EPOCH_RECORD_DIR)
                path = local
            else:
                return None
            with np.load(path) as npz:
                return {key: npz[key] for key in npz.files}

    def log_per_example_records(
        self, last_epoch: int, train_index: np.ndarray, test_index: np.ndarray
    ) -> None:
        """The contract's per-example artifacts, assembled from the run's per-epoch records
        (those of an earlier, interrupted session included): float16 keeps them at ~200 kB an
        epoch for 10,000 test images and ~180 kB for 60,000 training images."""
        epochs = np.arange(1, last_epoch + 1)
        records = [self.load_epoch_record(epoch) for epoch in epochs]
        if any(r is None for r in records):
            # an epoch trained while the tracking server was away, on another machine: the run
            # is whole without these optional artifacts, and says why they are missing
            missing = [int(e) for e, r in zip(epochs, records) if r is None]
            why = f"incomplete: no record of epochs {missing}"
            self.set_tag(contract.TAG_PER_EXAMPLE_RECORD, why)
            return
        self.log_arrays(
            contract.TEST_BY_EPOCH_PATH,
            probs=np.stack([r["test_probs"] for r in records]),
            epochs=epochs,
            index=test_index,
        )
        self.log_arrays(
            contract.TRAIN_DYNAMICS_PATH,
            correct=np.stack([r["correct"] for r in records]),
            label_prob=np.stack([r["label_prob"] for r in records]),
            predicted=np.stack([r["predicted"] for r in records]),
            epochs=epochs,
            index=train_index,
        )

    def log_model(
        self,
        model: Any,
        example: np.ndarray,
        outputs: np.ndarray,
        *,
        name: str,
        epoch: int,
        params: dict[str, str],
    ) -> str:
        """The deployable model of record, with a signature from `example` -> `outputs`, as a
        logged model named `name` (see `model_name`) made at step `epoch`; `log_final` links its
        scores.

        Built from the client's public calls rather than `mlflow.pytorch.log_model`: with a run
        active, `Model.log` links every metric the run logged at the model's step to the model
        (system samples and batch losses included) after reading each metric's whole history.
        Returns the logged model's id."""
        from importlib.metadata import version

        import mlflow.pytorch
        import torch
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        from mlflow.models import Model, infer_signature

        def pin(version: str) -> str:
            return version.split("+")[0]

        logged = self.client.create_logged_model(
            self.experiment_id,
            name=name,
            source_run_id=self.run_id,
            params=params,
            model_type="pytorch",
        )
        with (
            tempfile.TemporaryDirectory() as tmp,
            _pins_from_this_environment(),
            _our_classes_by_value(),
        ):
            path = Path(tmp) / "model"
            mlflow.pytorch.save_model(
                model,
                str(path),
                mlflow_model=Model(
                    artifact_path=logged.artifact_location,
                    model_uuid=logged.model_id,
                    run_id=self.run_id,
                    model_id=logged.model_id,
                ),
                signature=infer_signature(example, outputs),
                # listed explicitly: inferring them costs seconds per run
                pip_requirements=[
                    f"torch=={pin(torch.__version__)}",
                    # read from the installed metadata: importing torchvision costs ~2 s
                    f"torchvision=={pin(version('torchvision'))}",
                    f"numpy=={np.__version__}",
                ],
                serialization_format="pickle",
            )
            repository = artifact_repository(logged.artifact_location, self.client.tracking_uri)
            repository.log_artifacts(str(path))
        self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        self.client.log_outputs(self.run_id, [LoggedModelOutput(logged.model_id, step=epoch)])
        return logged.model_id

    def end_quietly(self, status: str) -> None:
        """Try once, briefly, to mark the run; the store may be gone for good. The limits are
        this call's only: a worker's next trial gets the usual retries again."""
        with scoped_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="3"):
            try:
                self.end(status)
            except Exception:
                pass  # the run stays RUNNING; its owner tags let --resume take it over

    def end(self, status: str, reason: str | None = None) -> None:
        """End the run as FINISHED, KILLED or FAILED; a reason goes to the `failure_reason` tag."""
        import mlflow

        if self._uploader is not None:  # an upload under way ends on its own; nothing waits
            self._uploader.shutdown(wait=False)
            self._uploader = None
        if reason is not None:
            reason = contract.fit_tag(reason)
            self.client.set_tag(self.run_id, contract.TAG_FAILURE_REASON, reason)
        mlflow.end_run(status=status)


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI of an http(s) tracking server, without any credentials
    the URI carries; None for a local store (whose UI is wherever `mlflow ui` serves it)."""
    if not is_http(tracking_uri) or not experiment_id:
        return None
    parts = urllib.parse.urlsplit(tracking_uri)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def logged_model_id(client: Any, run_id: str) -> str:
    """The id of the model a run logged (its model of record), from the run's outputs; the
    newest when a resumed run logged one again. ConfigError when it logged none."""
    run = client.get_run(run_id)
    outputs = run.outputs.model_outputs if run.outputs else []
    if not outputs:
        raise ConfigError(f"run {run_id} logged no model")
    return max(outputs, key=lambda o: o.step).model_id


def read_run(run_id: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """(status, params, tags) of a stored run; ConfigError when the store does not know it."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        raise ConfigError(f"no run with id {run_id} in the tracking store") from None
    return run.info.status, dict(run.data.params), dict(run.data.tags)


def _checkpoint_order(name: str) -> tuple[int, int]:
    """Sort key: later epochs first; within an epoch the finished checkpoint beats the partial."""
    stem = Path(name).stem
    epoch = int(stem.split("_")[1])
    return epoch, 0 if stem.endswith("_partial") else 1


def load_latest_checkpoint(run_id: str) -> dict[str, Any]:
    """The run's newest readable checkpoint (see `load_checkpoint`): the copy on this machine
    when there is one (kept while the server was away, or not yet known to be uploaded when its
    process stopped: whole, where the store's may be torn by an upload cut short), else the
    store's. A torn one (its writer killed mid-write or mid-upload) gives way to the one before,
    said on stderr; one holding code is refused."""
    from mlflow.tracking import MlflowClient

    listed = MlflowClient().list_artifacts(run_id, contract.CHECKPOINT_DIR)
    names = [Path(f.path).name for f in listed]
    names = [n for n in names if n.startswith("epoch_") and n.endswith(".pt")]
    local = {
        p.name: p
        for p in pending_checkpoints(run_id).glob("epoch_*.pt")
        if not p.is_symlink()  # planted, not written by a run: never read through it
    }
    if not names and not local:
        raise ConfigError(f"run {run_id} has no checkpoint to resume from")
    candidates = sorted({*names, *local}, key=_checkpoint_order, reverse=True)
    for i, name in enumerate(candidates):
        try:
            if name in local:  # written whole on this machine, then uploaded
                try:
                    return _load_state(local[name], f"{local[name]}")
                except TornCheckpoint:
                    if name not in names:
                        raise
            return load_checkpoint(run_id, name)
        except TornCheckpoint as err:
            if i + 1 == len(candidates) or not _never_recorded(run_id, name):
                raise
            print(f"{err}; resuming from {candidates[i + 1]}", file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


def _never_recorded(run_id: str, name: str) -> bool:
    """Whether checkpoint `name` is an epoch's whose metric points the store lacks: its writer
    died between the two (the checkpoint comes first), so training that epoch again logs each
    step once. Otherwise going back a checkpoint would log its steps twice."""
    from mlflow.tracking import MlflowClient

    epoch, whole = _checkpoint_order(name)
    history = MlflowClient().get_metric_history(run_id, contract.TEST_ACCURACY)
    return bool(whole) and epoch not in {m.step for m in history}


class TornCheckpoint(ConfigError):
    """A checkpoint file that ends early or is no zip archive: its writer stopped mid-write."""


def load_checkpoint(run_id: str, name: str) -> dict[str, Any]:
    """Checkpoint `checkpoints/<name>` of a run, loaded as tensors and plain values only (never
    unpickled code: a checkpoint in a shared store may have been written by anyone)."""
    import mlflow

    latest = name
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"{contract.CHECKPOINT_DIR}/{latest}", dst_path=tmp
        )
        return _load_state(Path(path), f"{contract.CHECKPOINT_DIR}/{latest} of run {run_id}")


def _load_state(path: Path, what: str) -> dict[str, Any]:
    import torch

    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # truncated, or holds more than tensors and plain values
        detail = str(err).splitlines()[0][:200] if str(err) else ""
        if isinstance(err, pickle.UnpicklingError):  # code where tensors belong: never skipped
            raise ConfigError(
                f"checkpoint {what} cannot be read ({type(err).__name__}: {detail}); "
                "it is damaged or not a workbench checkpoint"
            ) from None
        raise TornCheckpoint(
            f"checkpoint {what} is torn ({type(err).__name__}: {detail})"
        ) from None
