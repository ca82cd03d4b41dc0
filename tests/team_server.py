"""Start the team server (PostgreSQL + mlflow server, scripts/team_server.py) for tests.

    with team_server() as urls:  # urls.tracking_uri (http), urls.storage_url (postgresql://)
        ...

Skips (pytest.skip, with the reason) when the PostgreSQL binaries are missing, unless `CI` is set:
there it fails, since CI installs them (.ci/run).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "team_server.py"


def _script():
    spec = importlib.util.spec_from_file_location("team_server_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class ServerUrls:
    tracking_uri: str  # http://127.0.0.1:PORT, artifacts proxied
    storage_url: str  # postgresql://optuna:PASSWORD@127.0.0.1:PORT/optuna
    artifacts: Path  # the server's --artifacts-destination


@contextmanager
def team_server() -> Iterator[ServerUrls]:
    """Both servers in a fresh temporary folder, stopped and deleted on exit."""
    script = _script()
    try:
        script.pg_bin()
    except script.ServerError as err:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {err}")
        pytest.skip(str(err))
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700 and PostgreSQL runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="mnist-server-"))
    root.chmod(0o755)
    try:
        state = script.start(root)
        yield ServerUrls(state["tracking_uri"], state["storage_url"], Path(state["artifacts"]))
    finally:
        script.stop(root, quiet=True)
        shutil.rmtree(root, ignore_errors=True)
