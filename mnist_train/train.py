"""The training loop. It yields a record per step and per epoch and knows nothing of MLflow.

Everything the loop needs to continue exactly where it stopped lives in `Progress` plus the model
and optimizer state, which `checkpoint` bundles and `restore` unpacks. A stop requested between
steps (Ctrl-C, SIGTERM) leaves `Progress` consistent, so an interrupted epoch resumes mid-way and
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import contract, data
from .config import ConfigError, RunConfig


@dataclass(frozen=True)
class Tensors:
    """Model-ready inputs on the training device: x float32 (N, 784), y int64 (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: float  # normalisation applied to [0, 1] pixels
    std: float
    val_x: torch.Tensor | None = None  # held out from the training set; None without validation
    val_y: torch.Tensor | None = None


def prepare(
    train: data.Split,
    test: data.Split,
    config: RunConfig,
    device: torch.device,
    validation: data.Split | None = None,
) -> Tensors:
    """Normalise every split once, with statistics taken from the training images (the
    validation images are held out of those statistics too)."""
    mean, std = data.normalization(train.images, config.normalize)

    def inputs(split: data.Split) -> torch.Tensor:
        return data.to_inputs(split.images, mean, std).to(device)

    held_out = validation is not None and len(validation) > 0
    return Tensors(
        train_x=inputs(train),
        train_y=train.labels.to(device),
        test_x=inputs(test),
        test_y=test.labels.to(device),
        mean=mean,
        std=std,
        val_x=inputs(validation) if held_out else None,
        val_y=validation.labels.to(device) if held_out else None,
    )


@dataclass(frozen=True)
class StepRecord:
    step: int  # global optimisation step, from 1
    epoch: int
    batch: int  # batch within the epoch, from 1
    batches: int  # batches per epoch
    loss: float  # this batch's mean cross-entropy
    running_loss: float  # epoch so far, per image
    running_accuracy: float  # epoch so far, fraction


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float  # mean cross-entropy over the epoch's training images, as trained
    train_accuracy: float  # fraction of the epoch's training images predicted right while training
    test_loss: float
    test_accuracy: float
    epoch_time_s: float  # training pass plus evaluation
    test_probs: np.ndarray = field(repr=False)  # float32 (N_test, 10) softmax after this epoch
    val_loss: float | None = None  # on the held-out validation images; None without them
    val_accuracy: float | None = None
    lr: float | None = None  # learning rate of the epoch's last step; None without a schedule
    # per training image, as trained this epoch: bool (N,) right, float16 (N,) label probability
    train_correct: np.ndarray | None = field(default=None, repr=False)
    train_label_prob: np.ndarray | None = field(default=None, repr=False)
    train_predicted: np.ndarray | None = field(default=None, repr=False)  # int8 (N,)

    def metrics(self) -> dict[str, float]:
        """The per-epoch metrics to log, by their contract names (absent ones left out)."""
        return {
            k: v
            for k, v in asdict(self).items()
            if k
            not in ("epoch", "test_probs", "train_correct", "train_label_prob", "train_predicted")
            and v is not None
        }


@dataclass
class Progress:
    """Where training stands. Consistent whenever the loop yields or returns."""

    epoch: int = 1  # epoch in progress (or next to start)
    batch: int = 0  # batches of that epoch already trained
    step: int = 0  # optimisation steps done in all
    loss_sum: float = 0.0  # sum over images of the epoch so far
    correct: int = 0
    seen: int = 0
    elapsed_s: float = 0.0  # time spent on this epoch before an interruption
    train_time_s: float = 0.0  # all finished epochs, training plus evaluation
    epoch_rng: torch.Tensor | None = None  # global RNG state when the epoch began
    # early stopping: the best epoch so far by the configured validation metric
    best_epoch: int = 0
    best_value: float | None = None
    bad_epochs: int = 0  # epochs since the best one
    stopped_early: bool = False
    # the epoch's per-example record, from the forward passes training already makes:
    # right or wrong (bool (N,)) and the probability given to the label (float16 (N,), NaN for
    # an image not yet seen this epoch)
    example_correct: torch.Tensor | None = None
    example_label_prob: torch.Tensor | None = None
    example_predicted: torch.Tensor | None = None  # int8 (N,), -1 for an image not yet seen

    def finish_epoch(self, seconds: float) -> None:
        self.train_time_s += seconds
        self.epoch += 1
        self.batch = 0
        self.loss_sum, self.correct, self.seen, self.elapsed_s = 0.0, 0, 0, 0.0
        self.epoch_rng = None
        self.example_correct = self.example_label_prob = self.example_predicted = None


class NonFiniteLoss(RuntimeError):
    def __init__(self, epoch: int, step: int, loss: float):
        super().__init__(f"{contract.DIVERGED_PREFIX} {loss} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, loss


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but CUDA is not available")
    return torch.device(choice)


@torch.no_grad()
def infer(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits (N, 10) for inputs (N, 784), in chunks, in eval mode."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return logits


def score(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of logits against labels."""
    loss = F.cross_entropy(logits, y, reduction="sum").item() / len(y)
    accuracy = (logits.argmax(1) == y).sum().item() / len(y)
    return loss, accuracy


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tensors: Tensors,
    config: RunConfig,
    progress: Progress,
    should_stop: Callable[[], bool] = lambda: False,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> Iterator[StepRecord | EpochRecord]:
    """Train from `progress` to `config.epochs`, updating `progress` in place.

    Returns early, between two steps, once `should_stop()` is true, and after an epoch when early
    stopping says so (`progress.stopped_early`). Raises NonFiniteLoss before applying a step whose
    loss is NaN or infinite, so the weights stay those of the last good step. `scheduler` advances
    after every batch (onecycle) or after every epoch (the others).
    """
    every_batch = config.scheduler == "onecycle"
    n = len(tensors.train_y)
    per_epoch = data.num_batches(n, config.batch_size, drop_last=config.drop_last)
    model.train()
    while progress.epoch <= config.epochs:
        started = time.perf_counter() - progress.elapsed_s
        order = _epoch_order(progress, n)
        if config.per_example_record and progress.example_correct is None:
            progress.example_correct = torch.zeros(n, dtype=torch.bool)
            progress.example_label_prob = torch.full((n,), float("nan"), dtype=torch.float16)
            progress.example_predicted = torch.full((n,), -1, dtype=torch.int8)
        for index in list(data.batches(order, config.batch_size, drop_last=config.drop_last))[
            progress.batch :
        ]:
            x, y = tensors.train_x[index], tensors.train_y[index]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss_value = loss.item()
            if not np.isfinite(loss_value):
                raise NonFiniteLoss(progress.epoch, progress.step + 1, loss_value)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]
            if scheduler is not None and every_batch:
                scheduler.step()

            progress.step += 1
            progress.batch += 1
            progress.loss_sum += loss_value * len(y)
            predicted = logits.argmax(1)
            right = predicted == y
            progress.correct += int(right.sum())
            progress.seen += len(y)
            if progress.example_correct is not None:
                with torch.no_grad():
                    label_prob = torch.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
                where = index.cpu()
                progress.example_correct[where] = right.cpu()
                progress.example_label_prob[where] = label_prob.cpu().half()
                progress.example_predicted[where] = predicted.cpu().to(torch.int8)
            yield StepRecord(
                step=progress.step,
                epoch=progress.epoch,
                batch=progress.batch,
                batches=per_epoch,
                loss=loss_value,
                running_loss=progress.loss_sum / progress.seen,
                running_accuracy=progress.correct / progress.seen,
            )
            if should_stop() and progress.batch < per_epoch:
                progress.elapsed_s = time.perf_counter() - started
                return

        if scheduler is not None and not every_batch:
            scheduler.step()
        logits = infer(model, tensors.test_x, config.test_batch_size)
        test_loss, test_accuracy = score(logits, tensors.test_y)
        val_loss = val_accuracy = None
        if tensors.val_x is not None:
            val_logits = infer(model, tensors.val_x, config.test_batch_size)
            val_loss, val_accuracy = score(val_logits, tensors.val_y)
        record = EpochRecord(
            epoch=progress.epoch,
            train_loss=progress.loss_sum / progress.seen,
            train_accuracy=progress.correct / progress.seen,
            test_loss=test_loss,
            test_accuracy=test_accuracy,
            epoch_time_s=time.perf_counter() - started,
            test_probs=torch.softmax(logits, 1).cpu().numpy().astype(np.float32),
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            lr=lr if scheduler is not None else None,
            train_correct=_numpy(progress.example_correct),
            train_label_prob=_numpy(progress.example_label_prob),
            train_predicted=_numpy(progress.example_predicted),
        )
        progress.finish_epoch(record.epoch_time_s)
        if config.early_stopping_patience is not None:
            track_best(progress, record, config)
        yield record
        if progress.stopped_early:
            return
        if should_stop() and progress.epoch <= config.epochs:
            return


def _numpy(values: torch.Tensor | None) -> np.ndarray | None:
    return None if values is None else values.numpy().copy()


def track_best(progress: Progress, record: EpochRecord, config: RunConfig) -> None:
    """Early stopping's bookkeeping after an epoch: the best epoch by the configured validation
    metric (lower val_loss or higher val_accuracy; ties keep the earlier epoch), and
    `stopped_early` once `early_stopping_patience` epochs have passed without improving on it."""
    value = getattr(record, config.early_stopping_metric)
    if value is None:
        raise ConfigError("early stopping needs a validation split (set validation)")
    lower_is_better = config.early_stopping_metric == "val_loss"
    best = progress.best_value
    improved = best is None or (value < best if lower_is_better else value > best)
    if improved:
        progress.best_epoch, progress.best_value, progress.bad_epochs = record.epoch, value, 0
    else:
        progress.bad_epochs += 1
        progress.stopped_early = progress.bad_epochs >= config.early_stopping_patience


def _epoch_order(progress: Progress, n: int) -> torch.Tensor:
    if progress.batch == 0:
        progress.epoch_rng = torch.get_rng_state()
        return data.epoch_order(n)
    # Resuming inside an epoch: redraw its order from the state it began with, then carry on
    # from the RNG state at the interruption (dropout masks have used it since).
    now = torch.get_rng_state()
    torch.set_rng_state(progress.epoch_rng)
    order = data.epoch_order(n)
    torch.set_rng_state(now)
    return order


def checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    config: RunConfig,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, Any]:
    """Everything `restore` needs to continue exactly: weights, optimiser, schedule, position,
    RNG; tensors and plain values only, so it loads with `torch.load(weights_only=True)`."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "progress": asdict(progress),
        "rng": torch.get_rng_state(),
        "config": config.to_dict(),
        "epoch": progress.epoch - 1
        if progress.batch == 0
        else progress.epoch,  # last epoch touched
    }
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> Progress:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return Progress(**state["progress"])
