"""Progress output: a tqdm bar per epoch on a terminal, one plain line per epoch elsewhere."""

from __future__ import annotations

import sys
from typing import TextIO

from .train import EpochRecord, StepRecord


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
            print(
                f"{self.label}epoch {record.epoch}/{epochs}  train_loss {record.train_loss:.4f}  "
                f"train_acc {record.train_accuracy:.4f}  test_loss {record.test_loss:.4f}  "
                f"test_acc {record.test_accuracy:.4f}  ({record.epoch_time_s:.1f}s)",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
