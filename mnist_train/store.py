"""The tracking store as a process uses it: opened (or created) once, under a lock beside a new
SQLite store, with one clear error for a store MLflow cannot open."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import contract
from .config import ConfigError


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite store while it is first touched: MLflow creates or
    migrates its tables on first use, and two processes doing that at once lose a run."""
    if uri.startswith("postgresql"):
        with _advisory_lock(uri):
            yield
        return
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


TRACKING_SCHEMA_LOCK_KEY = 730_522_002  # PostgreSQL advisory lock: MLflow's tables created


@contextmanager
def _advisory_lock(uri: str) -> Iterator[None]:
    """A lock in the PostgreSQL database itself while MLflow creates or migrates its tables:
    machines meeting a fresh database at once otherwise race in CREATE TABLE (MLflow's own
    initialisation lock holds on one host only). An unreachable database is left for MLflow
    to report, in `open_store`'s one line."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": 4})
        connection = engine.connect()
    except Exception:
        yield
        return
    key = {"key": TRACKING_SCHEMA_LOCK_KEY}
    try:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), key)
        connection.commit()
        yield
    finally:
        try:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), key)
        finally:
            connection.close()
            engine.dispose()


_OPENED: set[str] = set()  # tracking URIs this process has opened


def open_store() -> None:
    """Create or open the tracking store once per process, under `store_lock`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = mlflow.get_tracking_uri()
    if uri in _OPENED:
        return
    try:
        with store_lock(uri):
            MlflowClient().search_experiments(max_results=1)
    except Exception as err:  # MLflow (and the lock's driver) raise many types
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise ConfigError(
            f"cannot open the tracking store {contract.mask_url(uri)} "
            f"({type(err).__name__}: {detail}); is it an MLflow database in a writable folder?"
        ) from None
    _OPENED.add(uri)
