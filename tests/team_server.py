"""Start the team server (PostgreSQL + mlflow server, scripts/team_server.py) for tests.

    with team_server() as urls:  # urls.tracking_uri (http), urls.storage_url (postgresql://)
        ...

Skips (pytest.skip, with the reason) when the PostgreSQL binaries are missing, unless `CI` is set:
there it fails, since CI installs them (.ci/run). `run_script` runs the script's command line.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "team_server.py"


def script_module():
    spec = importlib.util.spec_from_file_location("team_server_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_postgres() -> None:
    """Skip without the PostgreSQL binaries; fail instead under CI."""
    script = script_module()
    try:
        script.pg_bin()
    except script.ServerError as err:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {err}")
        pytest.skip(str(err))


@contextmanager
def server_folder() -> Iterator[Path]:
    """A fresh folder for one server (not created yet), stopped and deleted on exit."""
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700 and PostgreSQL runs as `postgres`.
    parent = Path(tempfile.mkdtemp(prefix="mnist-server-"))
    parent.chmod(0o755)
    try:
        yield parent / "server"
    finally:
        if (parent / "server").is_dir():
            script_module().stop(parent / "server", quiet=True)
        shutil.rmtree(parent, ignore_errors=True)


def run_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python scripts/team_server.py ARGS` with this python (the venv's: mlflow is beside it)."""
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@dataclass(frozen=True)
class ServerUrls:
    tracking_uri: str  # http://127.0.0.1:PORT, artifacts proxied
    storage_url: str  # postgresql://optuna:PASSWORD@127.0.0.1:PORT/optuna
    artifacts: Path  # the server's --artifacts-destination
    root: Path  # the server's folder (state.json, credentials.json, logs)


@contextmanager
def team_server() -> Iterator[ServerUrls]:
    """Both servers in a fresh temporary folder, stopped and deleted on exit."""
    require_postgres()
    with server_folder() as root:
        state = script_module().start(root)
        yield ServerUrls(
            state["tracking_uri"], state["storage_url"], Path(state["artifacts"]), root
        )
