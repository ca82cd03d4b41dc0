"""Metric writes for `tracking.py`, optionally from a helper process.

MLflow's SQL store inserts metric rows one ORM object at a time (~0.2 ms a row here), so the
9,000 per-step losses of a 15-epoch softmax run cost more than a second — a third of its training
time. A helper process writes each epoch's batch while the next epoch trains on the other core.
A thread would not help: it fights the training loop for the GIL (measured: slower than writing
inline). This module imports only MLflow, so the spawned process starts without torch.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from typing import Any, Callable

Row = tuple[str, float, int, int]  # (key, value, timestamp ms, step)


def retry_conflicts(write: Callable[[], Any], attempts: int = 6) -> Any:
    """Do an MLflow write, again after a pause if a parallel run got in the way.

    Sweep children running in parallel log the same datasets at the same moment; MLflow looks a
    dataset up, then inserts it, so one of two children can fail on the unique key although the
    row it wanted now exists. A SQLite store can also stay locked beyond its busy timeout.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            return write()
        except MlflowException as err:
            transient = "UNIQUE constraint failed" in str(err) or "database is locked" in str(err)
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(0.1 * 2**attempt)


def write_rows(client, run_id: str, rows: list[Row]) -> None:
    from mlflow.entities import Metric

    retry_conflicts(lambda: client.log_batch(run_id, metrics=[Metric(*row) for row in rows]))


class InlineWriter:
    """Writes each batch of rows at once, in this process."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def write(self, rows: list[Row]) -> None:
        write_rows(self.client, self.run_id, rows)

    def close(self) -> None:
        pass


class ProcessWriter:
    """Writes batches of rows, in order, from a spawned helper process.

    `close` waits until every batch is written and raises if any write failed, so a run is
    never marked FINISHED with metrics missing. Starting the helper costs ~1.5 s of imports on
    the other core, worth it only for runs with thousands of points.
    """

    def __init__(self, tracking_uri: str, run_id: str):
        context = multiprocessing.get_context("spawn")  # fork would share MLflow's open connections
        self._jobs = context.Queue()
        self._result = context.Queue()
        self._process = context.Process(
            target=_serve, args=(tracking_uri, run_id, self._jobs, self._result), daemon=True
        )
        self._process.start()

    def write(self, rows: list[Row]) -> None:
        self._jobs.put(rows)

    def close(self) -> None:
        self._jobs.put(None)
        error = self._result.get()
        self._process.join()
        if error:
            raise RuntimeError(f"writing metrics failed: {error}")


def _serve(tracking_uri: str, run_id: str, jobs, result) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; it waits for us
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    error = None
    while (rows := jobs.get()) is not None:
        if error is None:  # after a failure, keep draining so the parent never blocks
            try:
                write_rows(client, run_id, rows)
            except Exception as err:  # reported to the parent, which raises it
                error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    result.put(error)
