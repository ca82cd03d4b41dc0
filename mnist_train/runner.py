"""One training run end to end: data, device, model and optimizer, resume, the loop, the record.

`prepare_run` loads and checks everything that can fail before an MLflow run exists, so a bad
config or missing data leaves no run behind. `run_training` then opens the run (through
`tracking.py`, the only place that writes to MLflow), drives `train()` and hands its records over.
Once the run is open, every way out marks it: FINISHED, FAILED (with a `failure_reason` tag) or
KILLED (after writing a checkpoint to resume from).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import shutil
import sys
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import contract, data, models, process
from .config import ConfigError, ExperimentFile, RunConfig
from .ownership import abandoned, owner_tags
from .progress import Reporter
from .recording import EpochRecorder
from .run_record import Prepared, datasets, run_params, run_tags
from .store import open_store
from .tracking import (
    CacheUnwritable,
    RunLog,
    StoreUnavailable,
    check_cache_writable,
    check_tracking_server,
    current_tracking_uri,
    load_checkpoint,
    model_name,
    open_pending,
    pending_checkpoints,
    store_is_gone,
)
from .tracking_writer import Row
from .train import (
    EpochRecord,
    NonFiniteLoss,
    Progress,
    StepRecord,
    checkpoint,
    infer,
    pick_device,
    prepare,
    restore,
    score,
    train,
)

RESUMABLE_PARAMS_IGNORED = ("epochs", "name", "experiment")  # may change when a run is resumed
EXIT_INTERRUPTED = 130
EXIT_STORE_LOST = 75  # EX_TEMPFAIL: try again once the tracking server is back
EXIT_ENDED = 3  # an `on_epoch` callback ended the run (EndRun)


class EndRun(Exception):
    """Raised by an `on_epoch` callback to end the run after that epoch (a pruned trial): the run
    keeps its metrics and checkpoints and is marked KILLED."""


class TrainingStopped(Exception):
    """The run ended early (interrupted or failed); the message says what happened and what next."""

    def __init__(self, message: str, run_id: str, exit_code: int):
        super().__init__(message)
        self.run_id, self.exit_code = run_id, exit_code


@dataclass(frozen=True)
class ModelOfRecord:
    """The epoch whose weights are logged and whose predictions are stored, with that epoch's
    metric points as logged (`rows`: key, value, timestamp, step)."""

    epoch: int
    rows: tuple[Row, ...]

    @property
    def scores(self) -> dict[str, float]:
        """Its scores (contract.SCORES present in the run): val, test and train accuracy and
        loss of that epoch."""
        return {key: value for key, value, _, _ in self.rows if key in contract.SCORES}


@dataclass(frozen=True)
class RunResult:
    """A finished run: its id, its model of record and its final metrics."""

    run_id: str
    record: ModelOfRecord
    final: dict[str, float]  # the run's final metrics (train_time_s, predictions_epoch, ...)
    last_epoch: int  # the last epoch trained (later than the record's when it stopped early)
    experiment_id: str = ""

    def value(self, key: str) -> float | None:
        """`key` for the model of record: a score at its epoch, else a final metric."""
        return self.record.scores.get(key, self.final.get(key))


@dataclass
class _Kept:
    """The model of record while training goes on: the best epoch so far under early stopping,
    else the latest. `weights`: a copy of that epoch's state dict when training has moved on
    past it (None: the model as it stands)."""

    record: EpochRecord
    rows: list[Row]
    weights: dict[str, torch.Tensor] | None = None


def prepare_run(config: RunConfig, data_dir: str | Path, *, cache: dict | None = None) -> Prepared:
    """Load MNIST and normalise it for `config`, after checking that the tracking server answers.

    Raises ConfigError / DataError for the user, before any MLflow run exists. `cache` (a dict
    the caller keeps) reuses the last inputs prepared for the same data settings: a study worker
    loads and normalises MNIST once for trials that differ only in model or optimiser.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    key = (str(data_dir), config.max_train, config.max_test, config.validation, config.normalize)
    key += (config.cv_folds, config.cv_fold, str(device))
    if cache is not None and key in cache:
        # a worker's next trial: the server answered its last one, and the run will tell
        prepared = dataclasses.replace(cache[key], config=config)
        _check_batches(config, len(prepared.train_split))
        return prepared
    check_tracking_server(current_tracking_uri())
    train_split, test_split = data.load_mnist(data_dir)
    train_split, test_split = train_split.head(config.max_train), test_split.head(config.max_test)
    train_split, val_split, train_index, val_index = _held_out(config, train_split)
    _check_batches(config, len(train_split))
    prepared = Prepared(
        config=config,
        tensors=prepare(train_split, test_split, config, device, validation=val_split),
        test_index=np.arange(len(test_split), dtype=np.int64),
        train_index=train_index,
        train_split=train_split,
        test_split=test_split,
        data_dir=Path(data_dir).resolve(),
        device=device,
        val_split=val_split,
        val_index=val_index,
    )
    if cache is not None:
        cache.clear()
        cache[key] = prepared
    return prepared


def _held_out(
    config: RunConfig, split: data.Split
) -> tuple[data.Split, data.Split | None, np.ndarray, np.ndarray | None]:
    """(the images trained on, the held-out ones or None, and the positions of each in the
    torchvision training set): the last `validation` images, or cross-validation's fold."""
    positions = np.arange(len(split), dtype=np.int64)
    if config.validation:
        if config.validation >= len(split):
            raise ConfigError(
                f"validation ({config.validation}) must be less than the "
                f"{len(split)} training images"
            )
        trained, held = data.hold_out(split, config.validation)
        return trained, held, positions[: len(trained)], positions[len(trained) :]
    if config.cv_folds:
        if config.cv_folds > len(split):
            raise ConfigError(
                f"cv_folds ({config.cv_folds}) must be at most the {len(split)} training images"
            )
        trained, held, fold = data.hold_out_fold(split, config.cv_folds, config.cv_fold)
        inside = np.ones(len(split), dtype=bool)
        inside[fold.numpy()] = False
        return trained, held, positions[inside], fold.numpy().astype(np.int64)
    return split, None, positions, None


def _check_batches(config: RunConfig, train_images: int) -> None:
    if config.drop_last and config.batch_size > train_images:
        raise ConfigError(
            f"batch_size ({config.batch_size}) is larger than the {train_images} training "
            "images, and drop_last drops that one batch: lower batch_size or set drop_last false"
        )


@dataclass
class Trainable:
    """A model (initialised from `config.seed`), its optimizer and learning-rate schedule."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None


def build_trainable(config: RunConfig, device: torch.device, train_images: int) -> Trainable:
    """The one place model, optimizer and schedule are made: for runs, `--dry-run` and the
    benchmarks alike. `train_images` sets a per-step schedule's length."""
    torch.manual_seed(config.seed)
    model = models.build_model(config).to(device)
    optimizer = models.build_optimizer(config, model)
    steps = data.num_batches(train_images, config.batch_size, drop_last=config.drop_last)
    return Trainable(model, optimizer, models.build_scheduler(config, optimizer, steps))


def run_training(
    prepared: Prepared,
    *,
    experiment_file: ExperimentFile | None = None,
    resume_run_id: str | None = None,
    parent_run_id: str | None = None,
    reporter: Reporter | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    tags: dict[str, str] | None = None,
    on_start: Callable[[str], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    take_over: bool = False,
) -> RunResult:
    """Train and track one run (or continue `resume_run_id`); returns its id and its model of
    record.

    `tags` are added to the run's; `on_start(run_id)` is called once the run exists, before
    training; `on_epoch(record)` after each epoch's checkpoint is written (it and the epoch's
    metrics reach the store while the next epoch trains), and may raise `EndRun`. `take_over`
    resumes a run left RUNNING whose owner is known to be gone.
    """
    config = prepared.config
    open_store()
    check_cache_writable()
    parts = build_trainable(config, prepared.device, len(prepared.tensors.train_y))
    model = parts.model
    log, progress = _open_run(
        prepared, parts, experiment_file, resume_run_id, parent_run_id, tags, take_over
    )
    reporter = reporter or Reporter(enabled=False)
    unwritten: list[Row] = []  # the finished epoch's metric points not yet in the store
    recorder: EpochRecorder | None = None  # once training starts
    try:
        if resume_run_id:
            log.beat()  # this process owns the run now
            # parameters are immutable: a resume that changes the epochs records the new total
            log.set_tag(contract.TAG_EPOCHS, str(config.epochs))
            for key, value in (tags or {}).items():
                log.set_tag(key, value)
        if on_start is not None:
            on_start(log.run_id)
        if not resume_run_id:
            log.log_setup(
                run_params(prepared, model),
                models.summary_text(model),
                config.to_dict(),
                experiment_file,
                datasets(prepared),
            )
        if resume_run_id and _nothing_to_train(progress, config):
            last, kept = _last_recorded(log, progress), None  # a run left unended: end it
        else:
            last, kept, recorder = _train_and_log(
                log, parts, prepared, progress, reporter, should_stop, on_epoch, unwritten
            )
        if progress.epoch <= config.epochs and not progress.stopped_early:  # interrupted
            _save_checkpoint(log, parts, progress, config)
            log.end("KILLED")
            raise TrainingStopped(
                f"interrupted in epoch {progress.epoch} after step {progress.step}; checkpoint "
                f"saved. Resume with: mnist-train run <experiment file> --resume {log.run_id}",
                log.run_id,
                exit_code=EXIT_INTERRUPTED,
            )
        if last is None:  # resumed with every epoch already trained: nothing new to record
            raise ConfigError(f"run {log.run_id} has no epoch left to train")
        result = _log_results(
            log, model, prepared, progress, last, kept, model_name(config.name, tags), recorder
        )
        log.end("FINISHED")
        shutil.rmtree(pending_checkpoints(log.run_id), ignore_errors=True)  # all uploaded now
        reporter.finish(result.record.epoch, result.record.scores, _why_this_epoch(config, result))
        return result
    except TrainingStopped:
        raise
    except (NonFiniteLoss, EndRun, KeyboardInterrupt, CacheUnwritable) as err:
        # a second Ctrl-C waits for no upload: what is not yet stored stays on local disk
        _quietly(recorder, wait_for_upload=not isinstance(err, KeyboardInterrupt))
        raise _ended(log, err) from None
    except BaseException as err:
        _quietly(recorder)
        if isinstance(err, Exception) and store_is_gone():
            kept = _keep_locally(err, parts, progress, config, log.run_id, unwritten)
            log.end_quietly("KILLED")
            raise TrainingStopped(
                f"the tracking server stopped answering ({str(err).splitlines()[0][:200]}); "
                f"the last checkpoint is kept at {kept}; once the server is back: "
                f"mnist-train run <experiment file> --resume {log.run_id}",
                log.run_id,
                exit_code=EXIT_STORE_LOST,
            ) from None
        log.end("FAILED", reason=f"{type(err).__name__}: {err}")
        raise
    finally:
        reporter.close()


def _quietly(recorder: EpochRecorder | None, **how: bool) -> None:
    """Let the last upload and the metric writer finish before the run is marked, when the run
    failed after training (before that, `_train_and_log` waited for them): their own failure is
    then no news."""
    if recorder is None:
        return
    try:
        recorder.finish(**how)
    except Exception:
        pass


def _ended(log: RunLog, err: BaseException) -> TrainingStopped:
    """End the run as an expected stop `err` leaves it; the one line the user reads."""
    resume = f"mnist-train run <experiment file> --resume {log.run_id}"
    if isinstance(err, NonFiniteLoss):
        log.end("FAILED", reason=str(err))
        return TrainingStopped(
            f"training diverged: {err}; run {log.run_id} marked FAILED", log.run_id, 1
        )
    if isinstance(err, CacheUnwritable):
        log.end("FAILED", reason=str(err))
        return TrainingStopped(
            f"{err}. Run {log.run_id} is marked FAILED and keeps what the store has; once there "
            f"is room: {resume}",
            log.run_id,
            exit_code=1,
        )
    log.end("KILLED")
    if isinstance(err, EndRun):
        return TrainingStopped(str(err), log.run_id, exit_code=EXIT_ENDED)
    return TrainingStopped(
        f"interrupted; run {log.run_id} marked KILLED, it resumes from its last epoch "
        f"checkpoint with: {resume}",
        log.run_id,
        exit_code=EXIT_INTERRUPTED,
    )


def _open_run(
    prepared: Prepared,
    parts: Trainable,
    experiment_file: ExperimentFile | None,
    resume_run_id: str | None,
    parent_run_id: str | None,
    tags: dict[str, str] | None,
    take_over: bool,
) -> tuple[RunLog, Progress]:
    """`_open_or_reopen`, with a tracking server that stops answering there said as such:
    nothing of this session is recorded yet, so what the run had stays where it was."""
    try:
        return _open_or_reopen(
            prepared, parts, experiment_file, resume_run_id, parent_run_id, tags, take_over
        )
    except Exception as err:
        if not store_is_gone():
            raise
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise TrainingStopped(
            f"the tracking server stopped answering before the run could start ({reason})",
            resume_run_id or "",
            exit_code=EXIT_STORE_LOST,
        ) from None


def _open_or_reopen(
    prepared: Prepared,
    parts: Trainable,
    experiment_file: ExperimentFile | None,
    resume_run_id: str | None,
    parent_run_id: str | None,
    tags: dict[str, str] | None,
    take_over: bool,
) -> tuple[RunLog, Progress]:
    """A new run, or `resume_run_id` reopened with `parts` restored from its last checkpoint
    (after checking that it may be continued); where training stands."""
    config = prepared.config
    if not resume_run_id:
        log = RunLog.open(
            experiment=config.experiment,
            run_name=config.name,
            tags={**run_tags(prepared, experiment_file), **owner_tags(), **(tags or {})},
            parent_run_id=parent_run_id,
            system_metrics=config.system_metrics,
        )
        return log, Progress()
    state, status = _resume_state(resume_run_id, config, take_over)
    progress = restore(state, parts.model, parts.optimizer, parts.scheduler)
    if _nothing_to_train(progress, config) and status != "FINISHED":
        # its owner trained every epoch (or stopped early) but never ended it: end it here
        print(
            f"run {resume_run_id} trained all it had to but was never ended; recording its "
            "results from its last checkpoint",
            file=sys.stderr,
            flush=True,
        )
    elif progress.stopped_early:
        raise ConfigError(
            f"run {resume_run_id} stopped early at epoch {progress.epoch - 1} "
            f"(no improvement in {config.early_stopping_patience} epochs); nothing to resume"
        )
    elif progress.epoch > config.epochs:
        raise ConfigError(
            f"run {resume_run_id} already finished {progress.epoch - 1} epochs; "
            f"raise epochs (--set epochs=N) to train it further"
        )
    log = RunLog.reopen(resume_run_id, system_metrics=config.system_metrics)
    log.fill_metrics([tuple(row) for row in state.get("rows", [])])
    uploaded = log.upload_pending()
    if uploaded:
        print(
            f"uploaded what run {resume_run_id} kept here while the server was away: "
            + ", ".join(uploaded),
            file=sys.stderr,
            flush=True,
        )
    return log, progress


def _why_this_epoch(config: RunConfig, result: RunResult) -> str:
    """Why the model of record is the epoch it is, for the run's last line."""
    patience, metric = config.early_stopping_patience, config.early_stopping_metric
    if patience is None:
        return "the last epoch"
    if result.last_epoch < config.epochs:
        return (
            f"best {metric}; stopped early after epoch {result.last_epoch} of {config.epochs}: "
            f"no better {metric} in {patience} epochs"
        )
    return f"best {metric} of {result.last_epoch} epochs"


def _nothing_to_train(progress: Progress, config: RunConfig) -> bool:
    """Training went as far as `config` asks: early stopping, or exactly its last epoch (a run
    resumed with fewer epochs than it trained is refused instead)."""
    return progress.stopped_early or progress.epoch == config.epochs + 1


def _resume_state(
    run_id: str, config: RunConfig, take_over: bool = False
) -> tuple[dict[str, Any], str]:
    """The checkpoint to continue `run_id` from, after checking the run may be continued, and
    the run's status."""
    from .tracking import load_latest_checkpoint, read_run

    status, logged, tags = read_run(run_id)
    if status == "RUNNING":
        gone = "its owner stopped answering" if take_over else abandoned(tags)
        if gone is None:
            owner = tags.get(contract.TAG_OWNER, "another process")
            raise ConfigError(f"run {run_id} is still RUNNING ({owner}); stop it before resuming")
        print(f"taking over run {run_id}, left RUNNING: {gone}", file=sys.stderr, flush=True)
    expected = config.to_params()
    differing = [
        k
        for k, v in expected.items()
        if k not in RESUMABLE_PARAMS_IGNORED and logged.get(k, v) != v
    ]
    if differing:
        changes = ", ".join(f"{k}: run has {logged[k]!r}, now {expected[k]!r}" for k in differing)
        raise ConfigError(f"cannot resume run {run_id} with a different configuration ({changes})")
    trained_to = tags.get(contract.TAG_EPOCHS, logged.get("epochs"))
    if config.scheduler == "onecycle" and trained_to not in (None, str(config.epochs)):
        raise ConfigError(
            f"run {run_id} has a onecycle schedule sized to {trained_to} epochs; it cannot be "
            f"resumed with epochs {config.epochs}"
        )
    return load_latest_checkpoint(run_id), status


def _train_and_log(
    log: RunLog,
    parts: Trainable,
    prepared: Prepared,
    progress: Progress,
    reporter: Reporter,
    should_stop: Callable[[], bool],
    on_epoch: Callable[[EpochRecord], None] | None = None,
    unwritten: list[Row] | None = None,
) -> tuple[EpochRecord | None, _Kept | None, EpochRecorder]:
    """Drive the training loop; log each epoch's metrics, batch losses, per-example record and
    checkpoint (see `recording.py` for their order). Returns the last epoch's record, the model
    of record as it stands (kept in memory, so the end of the run needs no checkpoint read back)
    and its `EpochRecorder`: a run that trained to its end finishes it after storing its arrays
    and model, which overlap the last upload and the writer's last batch."""
    config = prepared.config
    process.settled()  # the command's imports, data and store are in place
    per_epoch = data.num_batches(
        len(prepared.tensors.train_y), config.batch_size, drop_last=config.drop_last
    )
    writer = log.metric_writer((config.epochs - progress.epoch + 1) * per_epoch)
    recorder = EpochRecorder(log, writer, unwritten if unwritten is not None else [])
    last = kept = None
    early_stopping = config.early_stopping_patience is not None
    ended = "raised"  # "raised", "diverged", "at once" (a second Ctrl-C), "stopped", "done"
    try:
        steps = train(
            parts.model,
            parts.optimizer,
            prepared.tensors,
            config,
            progress,
            should_stop,
            scheduler=parts.scheduler,
        )
        for record in steps:
            now = int(time.time() * 1000)
            if isinstance(record, StepRecord):
                recorder.step((contract.BATCH_LOSS, record.loss, now, record.step))
                reporter.step(record)
                continue
            epoch_rows = [(k, v, now, record.epoch) for k, v in record.metrics().items()]
            state = checkpoint(parts.model, parts.optimizer, progress, config, parts.scheduler)
            recorder.epoch(epoch_rows, state, checkpoint_name(state["epoch"]), _arrays(record))
            reporter.epoch(record, config.epochs)
            last = record
            if not early_stopping:
                kept = _Kept(record, epoch_rows)
            elif progress.best_epoch == record.epoch:
                kept = _Kept(record, epoch_rows, copy.deepcopy(parts.model.state_dict()))
            if on_epoch is not None:
                on_epoch(record)
        done = not recorder.steps and (progress.epoch > config.epochs or progress.stopped_early)
        ended = "done" if done else "stopped"
    except KeyboardInterrupt:
        ended = "at once"
        raise
    except NonFiniteLoss:
        ended = "diverged"
        raise
    finally:
        if ended == "stopped":  # the writes end here; the resume goes on after these steps
            recorder.finish()
            recorder.write_steps()
        elif ended != "done":  # any other failure: the interrupted epoch is trained again
            with contextlib.suppress(Exception):  # what went wrong first is what the user reads
                recorder.finish(wait_for_upload=ended != "at once")
                if ended == "diverged":  # the run shows its losses up to the last good step
                    recorder.write_steps()
    return last, kept, recorder


def _arrays(record: EpochRecord) -> dict[str, np.ndarray] | None:
    """The epoch's per-example record as stored, when the run keeps one."""
    if record.train_correct is None:
        return None
    return {
        "correct": record.train_correct,
        "label_prob": record.train_label_prob,
        "predicted": record.train_predicted,
        "test_probs": record.test_probs.astype(np.float16),
    }


def _last_recorded(log: RunLog, progress: Progress) -> EpochRecord:
    """The last trained epoch's record as the store has it (its scores; no arrays)."""
    epoch = progress.epoch - 1
    fields = {
        "train_loss": contract.TRAIN_LOSS,
        "train_accuracy": contract.TRAIN_ACCURACY,
        "test_loss": contract.TEST_LOSS,
        "test_accuracy": contract.TEST_ACCURACY,
        "epoch_time_s": contract.EPOCH_TIME,
    }
    values = {}
    for field_name, key in fields.items():
        history = log.client.get_metric_history(log.run_id, key)
        values[field_name] = next((m.value for m in history if m.step == epoch), float("nan"))
    return EpochRecord(epoch=epoch, test_probs=np.empty((0, contract.N_CLASSES)), **values)


def _keep_locally(
    err: Exception,
    parts: Trainable,
    progress: Progress,
    config: RunConfig,
    run_id: str,
    unwritten: list[Row],
) -> Path:
    """The newest checkpoint on local disk: the one whose upload failed, or one written now
    holding the epoch's metric points the store never got (`unwritten`), which a resume then
    writes: the server may go away between an epoch's end and its points' write."""
    if isinstance(err, StoreUnavailable) and err.checkpoint is not None:
        return err.checkpoint
    state = checkpoint(parts.model, parts.optimizer, progress, config, parts.scheduler)
    state["rows"] = [list(row) for row in unwritten]
    if progress.batch == 0:
        name = checkpoint_name(state["epoch"])
    else:
        name = f"epoch_{progress.epoch:03d}_partial.pt"
    path = pending_checkpoints(run_id) / name
    with open_pending(path) as f:
        torch.save(state, f)
    return path


def _save_checkpoint(log: RunLog, parts: Trainable, progress: Progress, config: RunConfig) -> None:
    """The checkpoint of a run stopped cleanly, uploaded now: `epoch_004_partial.pt` inside an
    epoch, `checkpoints/epoch_003.pt` between two (every point is in the store by then)."""
    state = checkpoint(parts.model, parts.optimizer, progress, config, parts.scheduler)
    state["rows"] = []
    if progress.batch == 0:
        name = checkpoint_name(state["epoch"])
    else:
        name = f"epoch_{progress.epoch:03d}_partial.pt"
    log.log_checkpoint(state, name)


def _store_arrays(
    log: RunLog, prepared: Prepared, model: torch.nn.Module, probs: np.ndarray, last: EpochRecord
) -> futures.Future:
    """Start storing the run's arrays (test predictions, the held-out fold's, the per-example
    records) on a thread: their uploads wait on the disk or the network while this thread logs
    the model. The future raises what storing them raised."""
    config = prepared.config
    heldout = None
    if config.cv_folds and prepared.val_split is not None:
        # the fold this run never trained on, scored by the model of record: out-of-sample
        # probabilities for the label-quality ranking of the training set
        logits = infer(model, prepared.tensors.val_x, config.test_batch_size)
        heldout = {
            "labels": prepared.val_split.labels.numpy().astype(np.int64),
            "probs": torch.softmax(logits, 1).cpu().numpy().astype(np.float32),
            "index": prepared.val_index,
        }
    labels = prepared.test_split.labels.numpy().astype(np.int64)

    def store() -> None:
        log.log_predictions(labels, probs, prepared.test_index)
        if heldout is not None:
            log.log_arrays(contract.HELDOUT_PREDICTIONS_PATH, **heldout)
        if config.per_example_record:
            log.log_per_example_records(last.epoch, prepared.train_index, prepared.test_index)

    pool = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="arrays")
    try:
        return pool.submit(store)
    finally:
        pool.shutdown(wait=False)


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pt"


def _log_results(
    log: RunLog,
    model: torch.nn.Module,
    prepared: Prepared,
    progress: Progress,
    last: EpochRecord,
    kept: _Kept | None,
    name: str,
    recorder: EpochRecorder | None,
) -> RunResult:
    """Final metrics, the model of record's scores, its stored test predictions and the logged
    model. The model of record is the best epoch's under early stopping, else the last's.
    `recorder` (None when this session trained nothing) hands its last points over as the
    arrays start uploading, so the writer's last batch overlaps them and the model, and is
    finished before any metric is logged here: the model's scores are linked to those points."""
    config, tensors = prepared.config, prepared.tensors
    record_epoch = progress.best_epoch if config.early_stopping_patience is not None else last.epoch
    if kept is not None and kept.record.epoch == record_epoch:
        if kept.weights is not None:
            model.load_state_dict(kept.weights)
        probs, rows = kept.record.test_probs, kept.rows
    else:
        # the best epoch was trained by an earlier session of a resumed run: its checkpoint
        # holds the weights and the metric points it logged
        best = load_checkpoint(log.run_id, checkpoint_name(record_epoch))
        model.load_state_dict(best["model"])
        logits = infer(model, tensors.test_x, config.test_batch_size)
        probs = torch.softmax(logits, 1).cpu().numpy().astype(np.float32)
        rows = [tuple(row) for row in best.get("rows", []) if row[3] == record_epoch]
    record = ModelOfRecord(record_epoch, tuple(r for r in rows if r[0] in contract.SCORES))
    final = {
        contract.OVERFIT_GAP: last.train_accuracy - last.test_accuracy,
        contract.TRAIN_TIME: progress.train_time_s,
        contract.PREDICTIONS_EPOCH: record_epoch,
    }
    if config.early_stopping_patience is not None:
        final[contract.BEST_EPOCH], final[contract.STOPPED_EPOCH] = record_epoch, last.epoch
    if config.unscaled_eval:
        # seed 001's notebook scored raw 0-255 pixels with a model trained on [0, 1] inputs
        raw = prepared.test_split.images.reshape(len(prepared.test_split), -1).float()
        logits = infer(model, raw.to(prepared.device), config.test_batch_size)
        _, final[contract.TEST_ACCURACY_UNSCALED] = score(logits, tensors.test_y)
    arrays = _store_arrays(log, prepared, model, probs, last)
    try:
        if recorder is not None:
            recorder.settle()
        deployable = models.with_preprocessing(
            copy.deepcopy(model).cpu(), tensors.mean, tensors.std
        )
        deployable.eval()
        example = prepared.test_split.images[:5].reshape(5, -1).float().div(255).numpy()
        with torch.no_grad():
            outputs = deployable(torch.from_numpy(example)).numpy()
        model_id = log.log_model(
            deployable,
            example,
            outputs,
            name=name,
            epoch=record_epoch,
            params=config.applied_params(),
        )
    finally:
        futures.wait([arrays])  # the run is not marked while they are being stored
    arrays.result()
    if recorder is not None:
        recorder.finish()  # the scores linked below are points the writer logged
    now = int(time.time() * 1000)
    points = [(key, float(value), now, last.epoch) for key, value in final.items()]
    points += [
        (contract.record_key(k), float(v), now, record_epoch) for k, v in record.scores.items()
    ]
    log.log_final(points, model_id, record.rows)
    return RunResult(log.run_id, record, final, last.epoch, log.experiment_id)
