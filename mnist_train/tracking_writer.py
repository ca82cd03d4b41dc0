"""Metric writes for `tracking.py`, optionally from a helper process.

MLflow's SQL store inserts metric rows one ORM object at a time (~0.2 ms a row here), so the
9,000 per-step losses of a 15-epoch softmax run cost more than a second — a third of its training
time. A helper process writes each epoch's batch while the next epoch trains on the other core.
A thread would not help: it fights the training loop for the GIL (measured: slower than writing
inline). This module imports only MLflow, so the spawned process starts without torch.
"""

from __future__ import annotations

import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

Row = tuple[str, float, int, int]  # (key, value, timestamp ms, step)
TRANSIENT = (  # what a parallel run's write, or a busy store, looks like in an MLflow error
    "UNIQUE constraint failed",  # SQLite: the row another run inserted a moment ago
    "duplicate key value violates unique constraint",  # PostgreSQL (behind `mlflow server`)
    "database is locked",  # SQLite beyond its busy timeout
)


def retry_conflicts(write: Callable[[], Any], attempts: int = 6) -> Any:
    """Do an MLflow write, again after a pause if a parallel run got in the way.

    Trials running in parallel (on one machine or several) log the same datasets at the same
    moment; MLflow looks a dataset up, then inserts it, so one of two can fail on the unique key
    although the row it wanted now exists. A SQLite store can also stay locked beyond its busy
    timeout.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            return write()
        except MlflowException as err:
            transient = any(sign in str(err) for sign in TRANSIENT)
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
    """Writes batches of rows, in order, from a helper process (`python -m
    mnist_train.tracking_writer`).

    A plain subprocess rather than multiprocessing: spawn would import the caller's main module
    again, which runs an unguarded script's training a second time. Batches are pickled down the
    child's stdin by a feeder thread, so a child still importing MLflow never blocks training.
    `close` waits until every batch is written and raises if any write failed, so a run is never
    marked FINISHED with metrics missing. Starting the helper costs ~1.5 s of imports on the other
    core, worth it only for runs with thousands of points.
    """

    def __init__(self, tracking_uri: str, run_id: str):
        self._process = subprocess.Popen(
            [sys.executable, "-m", "mnist_train.tracking_writer", tracking_uri, run_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C is the parent's to handle; it then waits for us
        )
        self._batches: queue.SimpleQueue[list[Row] | None] = queue.SimpleQueue()
        self._feed_error: BaseException | None = None
        self._feeder = threading.Thread(target=self._feed, name="metric-feeder", daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        pipe = self._process.stdin
        try:
            while (rows := self._batches.get()) is not None:
                pickle.dump(rows, pipe)
                pipe.flush()
        except OSError as err:  # the helper died; `close` reports what it said
            self._feed_error = err
        finally:
            try:
                pipe.close()
            except OSError:
                pass

    def write(self, rows: list[Row]) -> None:
        self._batches.put(rows)

    def close(self) -> None:
        self._batches.put(None)
        self._feeder.join()
        report = self._process.stdout.read().decode(errors="replace").strip()
        self._process.stdout.close()
        code = self._process.wait()
        if code != 0 or report != "ok" or self._feed_error:
            raise RuntimeError(
                f"writing metrics failed: {report or self._feed_error or f'exit code {code}'}"
            )


def _serve(tracking_uri: str, run_id: str) -> None:
    """The helper process: write every pickled batch from stdin, then say `ok` or the error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    error = None
    source = sys.stdin.buffer
    while True:
        try:
            rows = pickle.load(source)
        except EOFError:
            break
        if error is None:  # after a failure, keep reading so the parent never blocks
            try:
                write_rows(client, run_id, rows)
            except Exception as err:  # reported to the parent, which raises it
                error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    try:
        sys.stdout.write(error or "ok")
        sys.stdout.flush()
    except OSError:  # the training process is gone (kill -9): nobody is left to tell
        pass


if __name__ == "__main__":
    _serve(*sys.argv[1:3])
