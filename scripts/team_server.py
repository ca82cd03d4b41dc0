#!/usr/bin/env python3
"""A throwaway local team server: PostgreSQL + `mlflow server` on it, in one folder.

    python scripts/team_server.py start [--dir .server]   # prints the two exports
    python scripts/team_server.py status|stop|clean [--dir .server]

Layout of DIR: pgdata/ (the cluster, owned by `postgres` when run as root), postgres.log,
artifacts/ (MLflow's --artifacts-destination), mlflow.log, credentials.json (generated passwords,
mode 0600, kept across restarts), databases.ok (the cluster is set up) and state.json (ports,
pids, URLs; present while running).

Two databases in one cluster, `mlflow` and `optuna`, each with its own user: both tools run
Alembic migrations and each keeps an `alembic_version` table, so one database would mix them up.
Stdlib only; run it with the project's venv python so that `mlflow` is found beside it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 90  # mlflow's first start runs its schema migrations (~10-20 s here)
USERS = {"mlflow": "mlflow", "optuna": "optuna"}  # database -> user


class ServerError(Exception):
    """A failure to report in one line."""


def pg_bin() -> Path:
    """The folder of initdb/pg_ctl/psql: $PG_BIN, Debian's newest, or the PATH."""
    if os.environ.get("PG_BIN"):
        if (Path(os.environ["PG_BIN"]) / "initdb").exists():
            return Path(os.environ["PG_BIN"])
        raise ServerError(f"no initdb in PG_BIN={os.environ['PG_BIN']}")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise ServerError("PostgreSQL server binaries (initdb) not found: apt-get install postgresql")


def _version_key(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def mlflow_exe() -> str:
    """`mlflow` beside this python (the project's venv), else on the PATH."""
    beside = Path(sys.executable).parent / "mlflow"
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("mlflow")
    if not found:
        raise ServerError("mlflow not found: run this script with the project's .venv/bin/python")
    return found


def as_pg_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: there, run it as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def write_private(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
    path.chmod(0o600)


def credentials(root: Path) -> dict:
    path = root / "credentials.json"
    creds = read_json(path)
    if creds is None:
        creds = {"superuser": secrets.token_hex(16)}
        creds.update({user: secrets.token_hex(16) for user in USERS.values()})
        write_private(path, creds)
    return creds


def init_cluster(root: Path, bindir: Path, creds: dict) -> None:
    """initdb into root/pgdata with password auth, listening on 127.0.0.1 only."""
    data = root / "pgdata"
    data.mkdir(mode=0o700)
    pwfile = root / "superuser.pw"  # initdb wants an empty pgdata; deleted below
    pwfile.write_text(creds["superuser"] + "\n")
    pwfile.chmod(0o600)
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    cmd = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile)]
    cmd += ["--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8"]
    run(as_pg_user(cmd), "initdb")
    pwfile.unlink()
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{data}'\n")


def psql(bindir: Path, port: int, creds: dict, sql: str) -> None:
    env = {**os.environ, "PGPASSWORD": creds["superuser"]}
    cmd = [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    cmd += ["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql]
    run(cmd, "psql", env=env)


def create_databases(bindir: Path, port: int, creds: dict) -> None:
    for db, user in USERS.items():
        psql(bindir, port, creds, f"CREATE ROLE {user} LOGIN PASSWORD '{creds[user]}'")
        psql(bindir, port, creds, f"CREATE DATABASE {db} OWNER {user}")


def run(cmd: list[str], what: str, env: dict | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ServerError(f"{what} failed: {tail[0]}")


def start_postgres(root: Path, bindir: Path, port: int) -> int:
    """pg_ctl start on `port`; returns the postmaster's pid."""
    data, log = root / "pgdata", root / "postgres.log"
    log.touch()
    if os.geteuid() == 0:
        shutil.chown(log, "postgres", "postgres")
    cmd = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", f"-p {port}"]
    run(as_pg_user([*cmd, "-w", "-t", str(START_TIMEOUT_S), "start"]), f"pg_ctl (see {log})")
    return int((data / "postmaster.pid").read_text().split()[0])


def start_mlflow(root: Path, exe: str, backend_uri: str, port: int) -> int:
    """`mlflow server` with artifact proxying into root/artifacts; returns its pid."""
    artifacts = root / "artifacts"
    artifacts.mkdir(exist_ok=True)
    cmd = [exe, "server", "--backend-store-uri", backend_uri]
    cmd += ["--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1"]
    with open(root / "mlflow.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    return proc.pid


def wait_http(url: str, pid: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not alive(pid):
            raise ServerError(f"mlflow server exited at start (see {log})")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise ServerError(f"mlflow server did not answer within {START_TIMEOUT_S} s (see {log})")


def exports(state: dict) -> str:
    return (
        f"export MLFLOW_TRACKING_URI={state['tracking_uri']}\n"
        f"export MNIST_STUDY_STORAGE={state['storage_url']}"
    )


def running_state(root: Path) -> dict | None:
    state = read_json(root / "state.json")
    if state and alive(state["postgres_pid"]) and alive(state["mlflow_pid"]):
        return state
    return None


def start(root: Path) -> dict:
    """Start both servers (or find them running); returns the state dict."""
    root.mkdir(parents=True, exist_ok=True)
    state = running_state(root)
    if state:
        print(f"already running (state in {root / 'state.json'})", file=sys.stderr)
        return state
    stop(root, quiet=True)  # half-dead leftovers of an earlier start
    bindir, exe, creds = pg_bin(), mlflow_exe(), credentials(root)
    fresh = not (root / "databases.ok").exists()  # absent until initdb and CREATE DATABASE ran
    if fresh:
        shutil.rmtree(root / "pgdata", ignore_errors=True)
        init_cluster(root, bindir, creds)
    pg_port = free_port()
    pg_pid = start_postgres(root, bindir, pg_port)
    try:
        if fresh:
            create_databases(bindir, pg_port, creds)
            (root / "databases.ok").touch()
        url = "postgresql://{u}:{p}@127.0.0.1:{port}/{db}"
        backend = url.format(u="mlflow", p=creds["mlflow"], port=pg_port, db="mlflow")
        storage = url.format(u="optuna", p=creds["optuna"], port=pg_port, db="optuna")
        ml_port = free_port()
        ml_pid = start_mlflow(root, exe, backend, ml_port)
        state = {
            "postgres_pid": pg_pid,
            "postgres_port": pg_port,
            "mlflow_pid": ml_pid,
            "mlflow_port": ml_port,
            "tracking_uri": f"http://127.0.0.1:{ml_port}",
            "storage_url": storage,
            "artifacts": str(root / "artifacts"),
        }
        write_private(root / "state.json", state)  # before the wait, so stop() finds mlflow
        wait_http(state["tracking_uri"], ml_pid, root / "mlflow.log")
    except (ServerError, OSError):
        stop(root, quiet=True)
        raise
    return state


def stop(root: Path, quiet: bool = False) -> None:
    """Stop mlflow (its process group) and PostgreSQL; the data stays."""
    state = read_json(root / "state.json") or {}
    pid = state.get("mlflow_pid")
    if pid and alive(pid):
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            if not alive(pid):
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
    if (root / "pgdata" / "postmaster.pid").exists():
        cmd = [str(pg_bin() / "pg_ctl"), "-D", str(root / "pgdata"), "-m", "fast", "-w", "stop"]
        subprocess.run(as_pg_user(cmd), capture_output=True)
    (root / "state.json").unlink(missing_ok=True)
    if not quiet:
        print(f"stopped (data kept in {root})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "status", "stop", "clean"])
    parser.add_argument("--dir", type=Path, default=Path(".server"), help="state folder")
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    try:
        if args.action == "start":
            print(exports(start(root)))
        elif args.action == "status":
            state = running_state(root)
            print(exports(state) if state else "not running")
            return 0 if state else 1
        elif args.action == "stop":
            stop(root)
        else:
            stop(root, quiet=True)
            shutil.rmtree(root, ignore_errors=True)
            print(f"removed {root}", file=sys.stderr)
    except (ServerError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
