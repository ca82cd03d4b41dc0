"""The tracking store as a process uses it: opening (or creating) it once, warming what a run
needs later, and who owns a run (`owner_tags`, `abandoned`): what `tracking.py` builds on.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import contract
from .config import ConfigError

# --------------------------------------------------------------------------- ownership


def owner_tags() -> dict[str, str]:
    """Who trains a run, and when it last said so (tags refreshed every epoch)."""
    return {
        contract.TAG_OWNER: f"{socket.gethostname()} {os.getpid()}",
        contract.TAG_HEARTBEAT: str(int(time.time())),
    }


def abandoned(tags: dict[str, str], *, now: float | None = None) -> str | None:
    """Why a RUNNING run has no live owner (its process on this host is gone, or its host has
    been silent for `HEARTBEAT_STALE_S`), or None when it may still be training."""
    host, _, pid = tags.get(contract.TAG_OWNER, "").partition(" ")
    beat = tags.get(contract.TAG_HEARTBEAT)
    if not host or not pid.isdigit() or beat is None:
        return None  # no ownership recorded: nothing says it is gone
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return f"its process {pid} on this host is gone"
        except PermissionError:
            pass  # alive, someone else's
        return None
    silent = (now or time.time()) - float(beat)
    if silent > contract.HEARTBEAT_STALE_S:
        return f"no heartbeat from {host} for {silent / 60:.0f} min"
    return None


# --------------------------------------------------------------------------- the store itself


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite store while it is first touched: MLflow creates or
    migrates its tables on first use, and two processes doing that at once lose a run."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri[len("sqlite:///") :])
    try:
        lock = open(f"{path}.lock", "a")  # noqa: SIM115 - held for the block
    except OSError:
        yield  # a read-only folder: MLflow reports that itself
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


_WARMING: list[threading.Thread] = []


def warm_up_in_background() -> threading.Thread:
    """Do, on a thread, slow first-time work a run needs later, while the main thread loads data,
    opens the store and trains (torch releases the GIL in its kernels; the import lock makes a
    later import wait for this one rather than repeat it): `torch._dynamo`, which the first
    optimizer step imports (~1 s), `mlflow.pytorch` (~2-3 s) and the installed-packages map that
    logging the model builds once (~1 s). Started once per process."""
    if _WARMING:
        return _WARMING[0]

    def work() -> None:
        import importlib

        for name in ("torch._dynamo", "mlflow.models", "mlflow.pytorch"):  # in order of need
            importlib.import_module(name)

        try:  # private to MLflow: skipped quietly if it moves
            from mlflow.utils.requirements_utils import _init_packages_to_modules_map

            _init_packages_to_modules_map()
        except Exception:
            pass

    thread = threading.Thread(target=work, name="warm-up", daemon=True)
    thread.start()
    _WARMING.append(thread)
    return thread


_OPENED: set[str] = set()  # tracking URIs this process has opened


def open_store() -> None:
    """Create or open the tracking store once per process, under `store_lock`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = mlflow.get_tracking_uri()
    if uri in _OPENED:
        return
    with store_lock(uri):
        try:
            MlflowClient().search_experiments(max_results=1)
        except Exception as err:  # MLflow raises many types for a store it cannot open
            detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            raise ConfigError(
                f"cannot open the tracking store {uri} ({type(err).__name__}: {detail}); is it "
                "an MLflow database in a writable folder?"
            ) from None
    _OPENED.add(uri)
