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


def write_rows(client, run_id: str, rows: list[Row], tags: dict[str, str] | None = None) -> None:
    """`rows` (and `tags`, say the owner's heartbeat) in one request."""
    from mlflow.entities import Metric, RunTag

    metrics = [Metric(*row) for row in rows]
    run_tags = [RunTag(k, v) for k, v in (tags or {}).items()]
    retry_conflicts(lambda: client.log_batch(run_id, metrics=metrics, tags=run_tags))


class InlineWriter:
    """Writes each batch of rows at once, in this process."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def write(self, rows: list[Row], tags: dict[str, str] | None = None) -> None:
        write_rows(self.client, self.run_id, rows, tags)

    def pending(self) -> list[Row]:
        """Rows handed over whose write is not confirmed yet: none, here."""
        return []

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
        self._batches: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._feed_error: BaseException | None = None
        self._feeder = threading.Thread(target=self._feed, name="metric-feeder", daemon=True)
        self._feeder.start()
        self._pending: list[Row] = []

    def _feed(self) -> None:
        pipe = self._process.stdin
        try:
            while (batch := self._batches.get()) is not None:
                pickle.dump(batch, pipe)
                pipe.flush()
        except OSError as err:  # the helper died; `close` reports what it said
            self._feed_error = err
        finally:
            try:
                pipe.close()
            except OSError:
                pass

    def write(self, rows: list[Row], tags: dict[str, str] | None = None) -> None:
        self._pending.extend(rows)
        self._batches.put((rows, tags))

    def pending(self) -> list[Row]:
        """Rows handed over whose write is not confirmed yet (until `close` returns): a run
        stopped meanwhile keeps them in its local checkpoint, and a resume writes the ones the
        store lacks."""
        return list(self._pending)

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
        self._pending.clear()


class SharedWriter:
    """One helper process that writes the metrics of every run a long-lived process trains (a
    study worker), so that each run's points are written on the other core while it trains
    without paying the helper's start (~1.5 s of imports) per run. Messages go down its stdin in
    order; `sync(run_id)` waits for the helper to answer once everything sent before is written,
    with the first error it met for that run, if any."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self._process = subprocess.Popen(
            [sys.executable, "-m", "mnist_train.tracking_writer", tracking_uri, "--shared"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self._process.poll() is None

    def send(self, message: tuple) -> None:
        pickle.dump(message, self._process.stdin)
        self._process.stdin.flush()

    def sync(self, run_id: str) -> None:
        try:
            self.send(("sync", run_id))
            answer = self._process.stdout.readline().decode(errors="replace").strip()
        except OSError as err:
            answer = f"the metric writer is gone ({err})"
        if answer != "ok":
            raise RuntimeError(f"writing metrics failed: {answer or 'the metric writer is gone'}")

    def close(self) -> None:
        try:
            self._process.stdin.close()
        except OSError:
            pass
        self._process.wait(timeout=60)


class SharedHandle:
    """A run's writer on a `SharedWriter`: writes return at once; `close` confirms them."""

    def __init__(self, shared: SharedWriter, run_id: str):
        self.shared, self.run_id = shared, run_id
        self._pending: list[Row] = []

    def write(self, rows: list[Row], tags: dict[str, str] | None = None) -> None:
        self._pending.extend(rows)
        try:
            self.shared.send(("rows", self.run_id, rows, tags))
        except OSError:
            pass  # the helper died: `close` says so, and `pending` still holds the rows

    def pending(self) -> list[Row]:
        return list(self._pending)

    def close(self) -> None:
        self.shared.sync(self.run_id)
        self._pending.clear()


_SHARED: SharedWriter | None = None


def start_shared_writer(tracking_uri: str) -> None:
    """Start this process's `SharedWriter` (a study worker does, once)."""
    global _SHARED
    if _SHARED is None or not _SHARED.alive() or _SHARED.tracking_uri != tracking_uri:
        _SHARED = SharedWriter(tracking_uri)


def stop_shared_writer() -> None:
    global _SHARED
    if _SHARED is not None:
        _SHARED.close()
        _SHARED = None


def shared_writer(tracking_uri: str) -> SharedWriter | None:
    """The running `SharedWriter` for `tracking_uri`, if this process started one."""
    if _SHARED is not None and _SHARED.alive() and _SHARED.tracking_uri == tracking_uri:
        return _SHARED
    return None


def _serve_shared(tracking_uri: str) -> None:
    """The shared helper: write each run's rows in order; answer each sync with the run's
    first error since its last sync, or `ok`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    errors: dict[str, str] = {}
    source = sys.stdin.buffer
    while True:
        try:
            message = pickle.load(source)
        except EOFError:
            return
        if message[0] == "sync":
            answer = errors.pop(message[1], "ok")
            try:
                sys.stdout.write(answer.replace("\n", " ") + "\n")
                sys.stdout.flush()
            except OSError:
                return
            continue
        _, run_id, rows, tags = message
        if run_id in errors:  # after a failure, keep reading so the parent never blocks
            continue
        try:
            write_rows(client, run_id, rows, tags)
        except Exception as err:  # told to the parent at its next sync
            errors[run_id] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _serve(tracking_uri: str, run_id: str) -> None:
    """The helper process: write every pickled batch from stdin, then say `ok` or the error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    error = None
    source = sys.stdin.buffer
    while True:
        try:
            rows, tags = pickle.load(source)
        except EOFError:
            break
        if error is None:  # after a failure, keep reading so the parent never blocks
            try:
                write_rows(client, run_id, rows, tags)
            except Exception as err:  # reported to the parent, which raises it
                error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    try:
        sys.stdout.write(error or "ok")
        sys.stdout.flush()
    except OSError:  # the training process is gone (kill -9): nobody is left to tell
        pass


if __name__ == "__main__":
    if sys.argv[2] == "--shared":
        _serve_shared(sys.argv[1])
    else:
        _serve(*sys.argv[1:3])
