"""Progress output: a tqdm bar per epoch on a terminal, one plain line per epoch elsewhere."""

from __future__ import annotations

import sys
from typing import TextIO

from . import contract
from .train import EpochRecord, StepRecord

# how the terminal shortens the contract's names: val_acc 0.9812
SHORT = {"accuracy": "acc"}


def _short(name: str) -> str:
    head, _, tail = name.rpartition("_")
    return f"{head}_{SHORT.get(tail, tail)}"


def format_scores(scores: dict[str, float]) -> str:
    """`val_loss 0.0712  val_acc 0.9801  test_loss ...`: validation first, as in contract.SCORES
    (train last: it is shown by the epoch line already)."""
    order = [k for k in contract.SCORES if k in scores]
    return "  ".join(f"{_short(k)} {scores[k]:.4f}" for k in order)


class Reporter:
    """Shows training progress on `stream` (stderr by default); silent when not `enabled`."""

    def __init__(self, *, enabled: bool = True, stream: TextIO | None = None, label: str = ""):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.label = f"{label} " if label else ""
        self.interactive = enabled and self.stream.isatty()
        self._bar = None

    def step(self, record: StepRecord) -> None:
        if not self.interactive:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=record.batches,
                initial=record.batch - 1,
                desc=f"{self.label}epoch {record.epoch}",
                unit="batch",
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
            )
        self._bar.update(1)
        if record.batch % 20 == 0 or record.batch == record.batches:
            self._bar.set_postfix(
                loss=f"{record.running_loss:.4f}",
                acc=f"{record.running_accuracy:.4f}",
                refresh=False,
            )

    def epoch(self, record: EpochRecord, epochs: int) -> None:
        self._close_bar()
        if self.enabled:
            scores = {k: v for k, v in record.metrics().items() if k in contract.SCORES}
            train = {k: scores.pop(k) for k in (contract.TRAIN_LOSS, contract.TRAIN_ACCURACY)}
            print(
                f"{self.label}epoch {record.epoch}/{epochs}  {format_scores(train)}  "
                f"{format_scores(scores)}  ({record.epoch_time_s:.1f}s)",
                file=self.stream,
                flush=True,
            )

    def finish(self, epoch: int, scores: dict[str, float], why: str = "") -> None:
        """The run's last line: its model of record, which epoch it is and why, its scores."""
        if self.enabled:
            held_out = {k: v for k, v in scores.items() if not k.startswith("train_")}
            because = f" ({why})" if why else ""
            print(
                f"{self.label}model of record: epoch {epoch}{because}  {format_scores(held_out)}",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
