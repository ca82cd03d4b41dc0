"""What a run records while it trains, in the order that logs each step once across a crash and a
resume, with the uploads off the epoch's path.

After an epoch, its checkpoint (holding every metric point the store may lack) and its
per-example record are written whole to local disk, then uploaded on a thread while the next
epoch trains (`RunLog.log_epoch_files`). The epoch's points reach the metric writer only once the
store has that checkpoint: at the first step after it does, or at the next epoch's end, which
waits for it, so the store is never more than an epoch behind. A process killed before then
leaves the checkpoint on disk; a resume on this machine uploads it and writes the points it holds
that the store lacks, and a resume elsewhere trains the epoch again, none of its points logged.
An inline writer (a run with few points) writes in the training process, so it gets the points
at the epoch's end, outside the epoch's timing, after waiting for the upload.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .ownership import owner_tags
from .tracking import RunLog
from .tracking_writer import InlineWriter, Row, SharedHandle


class EpochRecorder:
    """One run's points and epoch files on their way to the store. `unwritten` is kept as the
    points the store may lack (after `finish`: those of the interrupted epoch too), for a
    checkpoint kept on this machine when the store goes away."""

    def __init__(self, log: RunLog, writer: InlineWriter | SharedHandle, unwritten: list[Row]):
        self.log, self.writer, self.unwritten = log, writer, unwritten
        self.steps: list[Row] = []  # this epoch's batch losses so far
        self.awaiting: list[Row] = []  # the last epoch's points, until its checkpoint is stored
        self._in_process = isinstance(writer, InlineWriter)
        self._finished = False

    def step(self, row: Row) -> None:
        """A batch loss; hands the last epoch's points over once its checkpoint is stored."""
        self.steps.append(row)
        if self.awaiting and not self._in_process and self.log.epoch_upload_over():
            self._hand_over()

    def epoch(
        self,
        epoch_rows: list[Row],
        state: dict[str, Any],
        name: str,
        record: dict[str, np.ndarray] | None,
    ) -> None:
        """The epoch's points (its batch losses and `epoch_rows`), its checkpoint `state` (to
        which the points the store may lack are added as `rows`) and per-example `record`.
        Until the checkpoint is written the epoch's points stay in `steps`, so whatever fails
        first leaves them among the points a kept checkpoint must hold."""
        self.steps += epoch_rows
        self._hand_over()  # the previous epoch's, which waits for its checkpoint's upload
        self.unwritten[:] = [*self.writer.pending(), *self.steps]
        state["rows"] = [list(row) for row in self.unwritten]
        self.log.log_epoch_files(state, name, record)
        self.awaiting, self.steps = self.steps, []
        if self._in_process:
            self._hand_over()

    def finish(self, *, wait_for_upload: bool = True) -> None:
        """Hand the last points over (once their checkpoint is stored: without
        `wait_for_upload`, only if it already is) and wait until the writer has every point;
        raises if an upload or a write failed. Once; the interrupted epoch's batch losses are
        left to `write_steps`."""
        if self._finished:
            return
        self._finished = True
        try:
            if self.awaiting and (wait_for_upload or self.log.epoch_upload_over()):
                self._hand_over()
        finally:
            try:
                self.writer.close()
            finally:
                self.unwritten[:] = [*self.writer.pending(), *self.awaiting, *self.steps]

    def settle(self) -> None:
        """Hand the last epoch's points over now, waiting for its checkpoint's upload (there is
        no next step to do it at); raises if that upload failed."""
        self._hand_over()

    def write_steps(self) -> None:
        """The batch losses of an epoch stopped part-way: cleanly, before its partial checkpoint
        (the resume goes on after them), or by a diverged loss (its curve up to the last good
        step)."""
        if self.steps:
            self.log.write_rows(self.steps)
            self.steps = []
            self.unwritten[:] = [*self.writer.pending(), *self.awaiting]

    def _hand_over(self) -> None:
        self.log.epoch_stored(wait=True)  # StoreUnavailable, naming the checkpoint, if not
        if self.awaiting:
            self.writer.write(self.awaiting, owner_tags())  # the heartbeat rides with the points
            self.awaiting = []
