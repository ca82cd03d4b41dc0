"""The one place in `mnist_train` that talks to MLflow: a training run, logged as DESIGN.md names it.

`run_training` validates and loads everything that can fail before it opens an MLflow run, so a
bad config or missing data leaves no run behind. Once the run is open, every way out marks it:
FINISHED, FAILED (with a `failure_reason` tag) or KILLED (after writing a checkpoint to resume
from). Per-step losses are written in one batch per epoch: one MLflow call per point would cost
more than the training itself.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__, data, models
from .config import ConfigError, ExperimentFile, RunConfig
from .progress import Reporter
from .tracking_writer import InlineWriter, ProcessWriter, Row, retry_conflicts, write_rows
from .train import (
    EpochRecord,
    NonFiniteLoss,
    Progress,
    StepRecord,
    Tensors,
    checkpoint,
    infer,
    pick_device,
    prepare,
    restore,
    score,
    train,
)

CHECKPOINT_DIR = "checkpoints"
PREDICTIONS_PATH = "predictions/test.npz"
# Per-step points from which a helper process writes metrics: below it, starting the process
# (~1.5 s of imports) costs more than the inline writes it saves (~0.2 ms a point).
BACKGROUND_WRITES_FROM = 3000
RESUMABLE_PARAMS_IGNORED = ("epochs", "name", "experiment")  # may change when a run is resumed


class TrainingStopped(Exception):
    """The run ended early (interrupted or failed); the message says what happened and what next."""

    def __init__(self, message: str, run_id: str, exit_code: int):
        super().__init__(message)
        self.run_id, self.exit_code = run_id, exit_code


@dataclass
class Prepared:
    """Everything a run needs, built before the MLflow run opens."""

    config: RunConfig
    tensors: Tensors
    test_index: np.ndarray  # int64 (N_test,) positions in the torchvision test set
    train_split: data.Split
    test_split: data.Split
    data_dir: Path
    device: torch.device


def prepare_run(config: RunConfig, data_dir: str | Path) -> Prepared:
    """Load MNIST and normalise it for `config`, after checking that the tracking server answers.

    Raises ConfigError / DataError for the user, before any MLflow run exists.
    """
    check_tracking_server(os.environ.get("MLFLOW_TRACKING_URI", ""))
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    train_split, test_split = data.load_mnist(data_dir)
    train_split, test_split = train_split.head(config.max_train), test_split.head(config.max_test)
    return Prepared(
        config=config,
        tensors=prepare(train_split, test_split, config, device),
        test_index=np.arange(len(test_split), dtype=np.int64),
        train_split=train_split,
        test_split=test_split,
        data_dir=Path(data_dir).resolve(),
        device=device,
    )


def quiet_mlflow_logs() -> None:
    """Keep the terminal for training progress and real problems.

    MLflow narrates store and experiment creation at INFO and warns, on every model it saves,
    that pickled models run code when loaded (ours are our own). Its logger is configured when
    it is imported, so import it before setting levels.
    """
    import logging

    import mlflow  # noqa: F401

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)


def check_tracking_server(uri: str, timeout_s: float = 5.0) -> None:
    """One short request to an http(s) tracking server; MLflow's client would retry for minutes."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        pass  # it answered (401, 404, ...): reachable; MLflow reports anything else
    except (urllib.error.URLError, OSError) as err:
        raise ConfigError(
            f"tracking server {uri} is unreachable ({getattr(err, 'reason', err)})"
        ) from None


def run_training(
    prepared: Prepared,
    *,
    experiment_file: ExperimentFile | None = None,
    resume_run_id: str | None = None,
    parent_run_id: str | None = None,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> str:
    """Train and track one run (or continue `resume_run_id`); returns the MLflow run id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    config = prepared.config
    client = MlflowClient()
    torch.manual_seed(config.seed)
    model = models.build_model(config).to(prepared.device)
    optimizer = models.build_optimizer(config, model)
    progress = Progress()

    if resume_run_id:
        state = _load_resume_state(client, resume_run_id, config)
        progress = restore(state, model, optimizer)
        if progress.epoch > config.epochs:
            raise ConfigError(
                f"run {resume_run_id} already finished {progress.epoch - 1} epochs; "
                f"raise epochs (--set epochs=N) to train it further"
            )
        active = mlflow.start_run(run_id=resume_run_id)
    else:
        experiment = mlflow.set_experiment(config.experiment)
        active = mlflow.start_run(
            experiment_id=experiment.experiment_id,
            run_name=config.name,
            nested=parent_run_id is not None,
            parent_run_id=parent_run_id,
            tags=_run_tags(prepared, experiment_file),
        )
    run_id = active.info.run_id
    reporter = reporter or Reporter(enabled=False)
    try:
        if not resume_run_id:
            _log_setup(mlflow, prepared, model, experiment_file)
        last = _train_and_log(
            client, run_id, model, optimizer, prepared, progress, reporter, should_stop
        )
        if progress.epoch <= config.epochs:  # stopped early on request
            _save_checkpoint(mlflow, model, optimizer, progress, config)
            mlflow.end_run(status="KILLED")
            raise TrainingStopped(
                f"interrupted in epoch {progress.epoch} after step {progress.step}; checkpoint saved. "
                f"Resume with: mnist-train run <experiment file> --resume {run_id}",
                run_id,
                exit_code=130,
            )
        if last is not None:
            _log_results(mlflow, client, run_id, model, prepared, progress, last)
        mlflow.end_run(status="FINISHED")
        return run_id
    except NonFiniteLoss as err:
        client.set_tag(run_id, "failure_reason", str(err))
        mlflow.end_run(status="FAILED")
        raise TrainingStopped(
            f"training diverged: {err}; run {run_id} marked FAILED", run_id, 1
        ) from None
    except TrainingStopped:
        raise
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise TrainingStopped(
            f"interrupted; run {run_id} marked KILLED, it resumes from its last epoch checkpoint "
            f"with: mnist-train run <experiment file> --resume {run_id}",
            run_id,
            exit_code=130,
        ) from None
    except BaseException as err:
        client.set_tag(run_id, "failure_reason", f"{type(err).__name__}: {err}"[:5000])
        mlflow.end_run(status="FAILED")
        raise
    finally:
        reporter.close()


def _train_and_log(
    client, run_id, model, optimizer, prepared, progress, reporter, should_stop
) -> EpochRecord | None:
    """Drive the training loop; log each epoch's metrics, batch losses and checkpoint."""
    import mlflow

    config = prepared.config
    per_epoch = data.num_batches(
        len(prepared.tensors.train_y), config.batch_size, drop_last=config.drop_last
    )
    points = (config.epochs - progress.epoch + 1) * per_epoch
    if points >= BACKGROUND_WRITES_FROM:
        writer = ProcessWriter(mlflow.get_tracking_uri(), run_id)
    else:
        writer = InlineWriter(client, run_id)
    pending: list[Row] = []  # batch losses not yet handed to the writer
    last = None
    try:
        for record in train(model, optimizer, prepared.tensors, config, progress, should_stop):
            now = int(time.time() * 1000)
            if isinstance(record, StepRecord):
                pending.append(("batch_loss", record.loss, now, record.step))
                reporter.step(record)
                continue
            writer.write(pending + [(k, v, now, record.epoch) for k, v in record.metrics().items()])
            pending = []
            _save_checkpoint(mlflow, model, optimizer, progress, config)
            reporter.epoch(record, config.epochs)
            last = record
    finally:
        writer.close()
        if pending:  # an interrupted epoch resumes after these steps, so keep them
            write_rows(client, run_id, pending)
    return last


def _log_setup(
    mlflow, prepared: Prepared, model: torch.nn.Module, experiment_file: ExperimentFile | None
) -> None:
    config, tensors = prepared.config, prepared.tensors
    params = config.to_params()
    params.update(
        normalize_mean=f"{tensors.mean:.6g}",
        normalize_std=f"{tensors.std:.6g}",
        num_params=str(models.count_parameters(model)),
        train_images=str(len(prepared.train_split)),
        test_images=str(len(prepared.test_split)),
    )
    mlflow.log_params(params)
    mlflow.log_text(models.summary_text(model), "model_summary.txt")
    mlflow.log_dict(config.to_dict(), "config/resolved.yaml")
    if experiment_file is not None:
        mlflow.log_text(experiment_file.text, f"config/{experiment_file.path.name}")
    _log_datasets(mlflow, prepared)


def _log_datasets(mlflow, prepared: Prepared) -> None:
    import mlflow.data

    raw = str(prepared.data_dir / "MNIST" / "raw")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow muses over how to read a local source path
        for split, context, name in (
            (prepared.train_split, "training", "mnist-train"),
            (prepared.test_split, "testing", "mnist-test"),
        ):
            dataset = mlflow.data.from_numpy(
                split.images.reshape(len(split), -1).numpy(),
                targets=split.labels.numpy(),
                source=raw,
                name=name,
            )
            retry_conflicts(lambda: mlflow.log_input(dataset, context=context))


def _run_tags(prepared: Prepared, experiment_file: ExperimentFile | None) -> dict[str, str]:
    tags = {
        "mnist.data_dir": str(prepared.data_dir),
        "mnist.device": str(prepared.device),
        "mnist.torch_version": torch.__version__,
        "mnist.workbench_version": __version__,
        "mlflow.source.type": "LOCAL",
    }
    if prepared.device.type == "cuda":
        tags["mnist.gpu_name"] = torch.cuda.get_device_name(prepared.device)
    where = Path.cwd()
    if experiment_file is not None:
        tags["mlflow.source.name"] = str(experiment_file.path)
        where = experiment_file.path.resolve().parent
    commit = git_commit(where) or git_commit(Path(__file__).resolve().parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def git_commit(where: Path) -> str | None:
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


def _save_checkpoint(mlflow, model, optimizer, progress: Progress, config: RunConfig) -> None:
    """`checkpoints/epoch_003.pt` after an epoch, `epoch_004_partial.pt` when stopped inside one."""
    state = checkpoint(model, optimizer, progress, config)
    name = (
        f"epoch_{state['epoch']:03d}.pt"
        if progress.batch == 0
        else f"epoch_{progress.epoch:03d}_partial.pt"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        torch.save(state, path)
        mlflow.log_artifact(str(path), CHECKPOINT_DIR)


def _checkpoint_order(name: str) -> tuple[int, int]:
    """Sort key: later epochs first; within an epoch the finished checkpoint beats the partial."""
    stem = Path(name).stem
    epoch = int(stem.split("_")[1])
    return epoch, 0 if stem.endswith("_partial") else 1


def _load_resume_state(client, run_id: str, config: RunConfig) -> dict[str, Any]:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"no run with id {run_id} in the tracking store") from None
    if run.info.status == "RUNNING":
        raise ConfigError(f"run {run_id} is still RUNNING; stop it before resuming")
    logged = run.data.params
    expected = config.to_params()
    differing = [
        k
        for k, v in expected.items()
        if k not in RESUMABLE_PARAMS_IGNORED and logged.get(k, v) != v
    ]
    if differing:
        changes = ", ".join(f"{k}: run has {logged[k]!r}, now {expected[k]!r}" for k in differing)
        raise ConfigError(f"cannot resume run {run_id} with a different configuration ({changes})")
    names = [Path(f.path).name for f in client.list_artifacts(run_id, CHECKPOINT_DIR)]
    names = [n for n in names if n.startswith("epoch_") and n.endswith(".pt")]
    if not names:
        raise ConfigError(f"run {run_id} has no checkpoint to resume from")
    latest = max(names, key=_checkpoint_order)
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"{CHECKPOINT_DIR}/{latest}", dst_path=tmp
        )
        return torch.load(path, weights_only=False)


def _log_results(
    mlflow, client, run_id, model, prepared: Prepared, progress: Progress, last: EpochRecord
) -> None:
    """Final metrics, stored test predictions and the logged model."""
    config, tensors = prepared.config, prepared.tensors
    final = {
        "overfit_gap": last.train_accuracy - last.test_accuracy,
        "train_time_s": progress.train_time_s,
    }
    if config.unscaled_eval:
        # seed 001's notebook scored raw 0-255 pixels with a model trained on [0, 1] inputs
        raw = (
            prepared.test_split.images.reshape(len(prepared.test_split), -1)
            .float()
            .to(prepared.device)
        )
        _, final["test_accuracy_unscaled"] = score(
            infer(model, raw, config.test_batch_size), tensors.test_y
        )
    mlflow.log_metrics(final, step=last.epoch)

    buffer = io.BytesIO()
    labels = prepared.test_split.labels.numpy().astype(np.int64)
    np.savez_compressed(buffer, labels=labels, probs=last.test_probs, index=prepared.test_index)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(PREDICTIONS_PATH).name
        path.write_bytes(buffer.getvalue())
        mlflow.log_artifact(str(path), str(Path(PREDICTIONS_PATH).parent))
    _log_model(mlflow, model, prepared)


def _log_model(mlflow, model: torch.nn.Module, prepared: Prepared) -> None:
    import mlflow.pytorch
    from mlflow.models import infer_signature

    deployable = models.with_preprocessing(
        copy.deepcopy(model).cpu(), prepared.tensors.mean, prepared.tensors.std
    ).eval()
    example = prepared.test_split.images[:5].reshape(5, -1).float().div(255).numpy()
    with torch.no_grad():
        outputs = deployable(torch.from_numpy(example)).numpy()
    import torchvision

    mlflow.pytorch.log_model(
        deployable,
        name="model",
        signature=infer_signature(example, outputs),
        # listed explicitly: inferring them costs seconds per run
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"torchvision=={torchvision.__version__.split('+')[0]}",
            f"numpy=={np.__version__}",
        ],
        code_paths=[str(Path(__file__).resolve().parent)],
        serialization_format="pickle",
    )
