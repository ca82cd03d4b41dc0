"""Files a run has already made whole on local disk, uploaded in order on a thread of their own.

A checkpoint or an epoch's per-example record is first written to the run's pending folder
(`tracking.open_pending`), so nothing is lost if the process dies; its upload then need not hold
up the next epoch. One thread uploads the files in the order they were handed over, which keeps
the order the store relied on before: an epoch's record before the checkpoint that vouches for
it. A file leaves local disk only once uploaded; after a failure the thread uploads nothing more
and leaves the later files where they are, for a resume to upload (`RunLog.upload_pending`).
The thread is a daemon: a process that leaves while an upload retries leaves its file on disk.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path


class Uploads:
    """Uploads `upload(local path, artifact folder)` calls in order on one daemon thread."""

    def __init__(self, upload: Callable[[str, str], None]):
        self._upload = upload
        self._queue: queue.Queue[tuple[Path, str] | None] = queue.Queue()
        self._done = threading.Condition()
        self._handed = 0  # files handed over so far
        self._finished = 0  # of those, uploaded or given up on
        self._failure: str | None = None  # the first upload's error, in one line
        self._thread: threading.Thread | None = None

    def put(self, path: Path, artifact_path: str) -> int:
        """Upload `path` (removing it once the store has it) after those handed over before;
        returns its place in line, which `wait` takes."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="uploads", daemon=True)
            self._thread.start()
        with self._done:
            self._handed += 1
            place = self._handed
        self._queue.put((path, artifact_path))
        return place

    def wait(self, place: int | None = None) -> str | None:
        """Wait until the files up to `place` (every file handed over, by default) are uploaded
        or given up on; returns the first failure's reason, None when every one succeeded."""
        with self._done:
            target = self._handed if place is None else place
            self._done.wait_for(lambda: self._finished >= target)
            return self._failure

    def close(self) -> None:
        """Let the thread end once the files handed over are done with; does not wait."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            path, artifact_path = item
            failure = None
            if self._failure is None:  # after a failure the rest wait on disk for a resume
                try:
                    self._upload(str(path), artifact_path)
                    path.unlink()
                except Exception as err:
                    failure = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            with self._done:
                if failure is not None and self._failure is None:
                    self._failure = failure
                self._finished += 1
                self._done.notify_all()
