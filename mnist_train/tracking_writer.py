"""Metric writes for `tracking.py`: inline, or from a helper process (`SharedWriter`).

MLflow's SQL store inserts metric rows one ORM object at a time (~0.2 ms a row here), so the
9,000 per-step losses of a 15-epoch softmax run cost more than a second — a third of its training
time. A helper process writes each epoch's batch while the next epoch trains on the other core.
A thread would not help: it fights the training loop for the GIL (measured: slower than writing
inline). This module imports only MLflow, so the spawned process starts without torch. A study
worker keeps one helper for all its runs; a long run outside a study starts one of its own.
"""

from __future__ import annotations

import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
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


class SharedWriter:
    """One helper process that writes the metrics of every run a long-lived process trains (a
    study worker), so that each run's points are written on the other core while it trains
    without paying the helper's start (~1.5 s of imports) per run.

    A plain subprocess rather than multiprocessing: spawn would import the caller's main module
    again, which runs an unguarded script's training a second time. Messages go down its stdin
    in order, pickled by a feeder thread (training never waits on a full pipe); the helper
    answers on stdout, a line each: `done RUN N` once a batch of N rows is written, `error RUN
    REASON` at a run's first failed write (it writes nothing more for that run), `ok RUN` to a
    `sync`. The tracking URI reaches it through its environment, never its command line, where
    `ps` would show a database password."""

    def __init__(self, tracking_uri: str):
        import os

        self.tracking_uri = tracking_uri
        self._process = subprocess.Popen(
            [sys.executable, "-m", "mnist_train.tracking_writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, URI_ENV: tracking_uri},
            start_new_session=True,  # Ctrl-C is the parent's to handle; it then waits for us
        )
        self._messages: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._feeder = threading.Thread(target=self._feed, name="metric-feeder", daemon=True)
        self._feeder.start()
        self._answers: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name="metric-answers", daemon=True)
        self._reader.start()

    def _feed(self) -> None:
        pipe = self._process.stdin
        try:
            while (message := self._messages.get()) is not None:
                pickle.dump(message, pipe)
                pipe.flush()
        except OSError:  # the helper died: its runs' syncs say so
            pass
        finally:
            try:
                pipe.close()
            except OSError:
                pass

    def _read(self) -> None:
        for line in self._process.stdout:
            self._answers.put(line.decode(errors="replace").strip())
        self._answers.put("")  # the helper is gone

    def alive(self) -> bool:
        return self._process.poll() is None

    def send(self, message: tuple) -> None:
        self._messages.put(message)

    def answers(self, block: bool) -> Iterator[str]:
        """The helper's answers so far; with `block`, wait for at least one."""
        try:  # blocking ends at the latest with the helper: its reader then puts ""
            yield self._answers.get(block=block)
        except queue.Empty:
            return
        while True:
            try:
                yield self._answers.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        self._messages.put(None)
        self._feeder.join(timeout=60)
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=5)
        self._process.stdout.close()


class SharedHandle:
    """A run's writer on a `SharedWriter`: writes return at once; each is confirmed by the
    helper later (then dropped from `pending`); a failed one raises at the run's next write or
    at `close`, which waits until every write of the run is confirmed."""

    def __init__(self, shared: SharedWriter, run_id: str):
        self.shared, self.run_id = shared, run_id
        self._batches: list[list[Row]] = []  # sent, not yet confirmed, oldest first
        self._error: str | None = None

    def write(self, rows: list[Row], tags: dict[str, str] | None = None) -> None:
        self._take(self.shared.answers(block=False))
        self._batches.append(list(rows))
        self.shared.send(("rows", self.run_id, rows, tags))

    def pending(self) -> list[Row]:
        return [row for batch in self._batches for row in batch]

    def close(self) -> None:
        self.shared.send(("sync", self.run_id))
        while True:
            if self._take(self.shared.answers(block=True)):
                return

    def _take(self, answers: Iterator[str]) -> bool:
        """Read the helper's answers about this run (True at its `ok`); raise on an error."""
        done = False
        for answer in answers:
            kind, _, rest = answer.partition(" ")
            run_id, _, detail = rest.partition(" ")
            if not answer:
                self._error = self._error or "the metric writer is gone"
            elif run_id != self.run_id:
                continue  # an earlier run's late answer
            elif kind == "done" and self._batches:
                self._batches.pop(0)
            elif kind == "error":
                self._error = detail
            elif kind == "ok":
                done = True
            if self._error:
                raise RuntimeError(f"writing metrics failed: {self._error}")
        return done


class OwnWriter(SharedHandle):
    """A run's writer on a helper process of its own, closed with the run: for a long run
    (thousands of points) outside a study worker."""

    def __init__(self, tracking_uri: str, run_id: str):
        super().__init__(SharedWriter(tracking_uri), run_id)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.shared.close()


_SHARED: SharedWriter | None = None
URI_ENV = "MLFLOW_TRACKING_URI"  # how a helper learns the store: never on its command line


def start_shared_writer(tracking_uri: str) -> None:
    """Start this process's `SharedWriter` (a study worker does, once)."""
    global _SHARED
    if shared_writer(tracking_uri) is None:
        stop_shared_writer()
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


def _serve_shared() -> None:
    """The shared helper: write each run's rows in order, answering as `SharedWriter` says."""
    import os

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ[URI_ENV])
    failed: set[str] = set()
    source = sys.stdin.buffer

    def say(line: str) -> None:
        sys.stdout.write(line.replace("\n", " ") + "\n")
        sys.stdout.flush()

    while True:
        try:
            message = pickle.load(source)
        except (EOFError, pickle.UnpicklingError):
            return
        try:
            if message[0] == "sync":
                say(f"ok {message[1]}")
                continue
            _, run_id, rows, tags = message
            if run_id in failed:  # keep reading so the parent never blocks
                continue
            try:
                write_rows(client, run_id, rows, tags)
                say(f"done {run_id} {len(rows)}")
            except Exception as err:  # the parent raises it at the run's next write
                failed.add(run_id)
                say(f"error {run_id} {type(err).__name__}: {first_line(err)}")
        except OSError:  # the training process is gone (kill -9): nobody is left to tell
            return


def first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else ""


if __name__ == "__main__":
    _serve_shared()
