"""Process-wide settings, set once by a command's `main` (and by a spawned worker's entry point),
never by library code; temporary changes go through `scoped_env` and are restored.

Standard library only: both CLIs import it before torch or MLflow.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from . import contract

# MLflow retries an http store 7 times with a 2 s backoff factor and a 120 s timeout: a server
# that stops mid-run kept a run hanging for about 20 minutes, and a server answering 503 cost
# minutes of silence. These bound a failing call to about 30 s; a user's own settings win.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
QUIET_MLFLOW = {
    # a progress bar for each checkpoint download is noise between progress lines and errors
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # MLflow samples system metrics every 10 s by default, which leaves a run of a few seconds
    # with none; every 2 s fills the System metrics tab of a 5 s run at a negligible cost
    "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "2",
    "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING": "1",
    # MLflow 3 sends usage telemetry to its maintainers' servers from every process that imports
    # it (outside CI); a command of the workbench talks to no host but the tracking store the user
    # named and torchvision's MNIST mirrors. MLflow reads this once, when it is first imported.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # through an http store MLflow reads every run back as it ends, to print two links to it
    # ("View run ... at"): a request and two lines per trial of a study. `mnist-train run` prints
    # a single run's link itself (`tracking.run_url`).
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def configure(tracking_uri: str | None = None) -> str:
    """Settle the process's MLflow settings (the user's environment wins) and its tracking URI:
    `tracking_uri`, else $MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db`. Returns the URI, which
    every later MLflow call of this process (and of the workers it spawns) uses."""
    for key, value in {**HTTP_LIMITS, **QUIET_MLFLOW}.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri or contract.default_tracking_uri()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    if "://" not in uri or uri.startswith("file:"):
        # a file store, named on purpose: MLflow 3 refuses one unless told it is wanted
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


_COLLECTION_PAUSED: list[bool] = []


def pause_collection() -> None:
    """Pause Python's cyclic garbage collector while a command starts: importing torch, MLflow,
    pandas and matplotlib and loading a run make millions of objects that live as long as the
    process, and the collector scanned them again and again as they came (measured here: 1.2 s
    of a 7 s `mnist-train run` of seed 000, 0.6 s of a 3.4 s `mnist-analysis run`). `settled`
    resumes it. For a command's `main` only: library code and tests keep Python's defaults."""
    if not _COLLECTION_PAUSED:
        gc.disable()
        _COLLECTION_PAUSED.append(True)


def settled() -> None:
    """The command's long-lived objects are in place (imports, data, store): freeze them (the
    collector never scans them again) and resume collecting what the work makes. Called where
    the work begins (training, a report); a no-op unless `pause_collection` paused it."""
    if _COLLECTION_PAUSED:
        _COLLECTION_PAUSED.clear()
        gc.freeze()
        gc.enable()


@contextmanager
def scoped_env(**values: str) -> Iterator[None]:
    """Set environment variables for the block only; their earlier values come back after."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def finish_process(command) -> None:
    """Run a click `command` as the whole process, then leave without the interpreter's teardown.

    Tearing down torch, MLflow and SQLAlchemy at exit took 1.5-2 s here, after all the work was
    done and reported. The exit handlers a finished command needs (logging, MLflow's queues)
    still run, and the streams are flushed; then the process ends with the command's exit code.
    """
    try:
        command()
        code = 0
    except SystemExit as done:
        code = done.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed terminal or pipe: nothing left to tell it
            pass
    os._exit(code or 0)
