#!/usr/bin/env python3
"""A throwaway local team server: PostgreSQL + `mlflow server` on it, in one folder.

    python scripts/team_server.py start [--dir .server]   # prints the two exports
    python scripts/team_server.py status|stop|clean [--dir .server]

Layout of DIR: pgdata/ (the cluster, owned by `postgres` when run as root), postgres.log,
artifacts/ (MLflow's --artifacts-destination), mlflow.log, credentials.json (generated passwords,
mode 0600, kept across restarts), mlflow.pgpass (the `mlflow` user's password for the tracking
server, a libpq password file, mode 0600), databases.ok (the cluster is set up), lock (held while
a command works on DIR) and state.json (ports, URLs and the identity of each started process;
present while running).

Two databases in one cluster, `mlflow` and `optuna`, each with its own user: both tools run
Alembic migrations and each keeps an `alembic_version` table, so one database would mix them up.
No password is ever on a command line: the tracking server finds its own through PGPASSFILE, roles
are created from psql's standard input with SCRAM verifiers (as psql's \\password sends them).
A process is ours only if its pid, start time and command line all match what `start` recorded,
so a stale state file whose pids were reused is never trusted or signalled.
Run it with the project's venv python: `mlflow` is found beside it, and psutil is a dependency.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import glob
import hashlib
import hmac
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

START_TIMEOUT_S = 90  # mlflow's first start runs its schema migrations (~10-20 s here)
LOCK_WAIT_S = 2 * START_TIMEOUT_S + 60  # a second command waits this long for a first start
STOP_WAIT_S = 15  # then SIGKILL (mlflow) or an immediate shutdown (PostgreSQL)
PORT_TRIES = 3  # a free port can be taken before the server binds it: pick another
USERS = {"mlflow": "mlflow", "optuna": "optuna"}  # database -> user
CAUSE_WORDS = ("error", "fatal", "could not", "denied", "failed")  # the line that says why
PG_PROGRAMS = ("initdb", "pg_ctl", "psql", "postgres")
MADE_HERE = {  # everything this script creates in DIR; `clean` removes nothing else
    "pgdata", "postgres.log", "artifacts", "mlflow.log", "credentials.json", "mlflow.pgpass",
    "admin.pgpass", "superuser.pw", "databases.ok", "lock", "state.json",
}  # fmt: skip


class ServerError(Exception):
    """A failure to report in one line."""


# ---- programs and folders -------------------------------------------------------------------


def pg_bin() -> Path:
    """The folder of initdb/pg_ctl/psql/postgres: $PG_BIN, Debian's newest, or the PATH."""
    if os.environ.get("PG_BIN"):
        folder = Path(os.environ["PG_BIN"])
    else:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
        on_path = shutil.which("initdb")
        if not found and not on_path:
            raise ServerError(
                "PostgreSQL server binaries (initdb) not found: apt-get install postgresql"
            )
        folder = Path(found[-1] if found else on_path).parent
    missing = [name for name in PG_PROGRAMS if not os.access(folder / name, os.X_OK)]
    if missing:
        raise ServerError(f"PostgreSQL binaries missing in {folder}: {', '.join(missing)}")
    return folder


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


def make_folder(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ServerError(f"cannot create the server folder {root}: {err.strerror}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ServerError(f"the server folder {root} is not writable")


def check_postgres_user(root: Path) -> None:
    """As root, PostgreSQL runs as `postgres`, which must exist and be able to enter DIR."""
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServerError("run as root, PostgreSQL needs a `postgres` user; none exists") from None
    if subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(root)]).returncode:
        raise ServerError(
            f"the postgres user cannot enter {root} (PostgreSQL runs as postgres under root): "
            "pick a folder whose parents are searchable by others (chmod o+x)"
        )


@contextmanager
def folder_lock(root: Path) -> Iterator[None]:
    """Hold DIR/lock (flock) so that two commands never set up or stop one folder at once."""
    deadline = time.monotonic() + LOCK_WAIT_S
    path = root / "lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by the servers
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() > deadline:
                raise ServerError(f"another command has held {path} for {LOCK_WAIT_S} s") from None
            time.sleep(0.2)
            continue
        if path.exists() and path.stat().st_ino == os.fstat(fd).st_ino:
            break  # else `clean` removed the folder while we waited: lock the new one
        os.close(fd)
        make_folder(root)
    try:
        yield
    finally:
        os.close(fd)


# ---- secrets --------------------------------------------------------------------------------


def read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ServerError(f"{path} is not valid JSON ({err})") from None


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def credentials(root: Path) -> dict:
    path = root / "credentials.json"
    creds = read_json(path)
    if creds is None:
        creds = {"superuser": secrets.token_hex(16)}
        creds.update({user: secrets.token_hex(16) for user in USERS.values()})
        write_private(path, json.dumps(creds, indent=2) + "\n")
    return creds


def write_passfile(path: Path, entries: dict[tuple[str, str], str]) -> Path:
    """A libpq password file: (database, user) -> password, for 127.0.0.1 on any port."""
    lines = [f"127.0.0.1:*:{db}:{user}:{password}\n" for (db, user), password in entries.items()]
    write_private(path, "".join(lines))
    return path


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's stored form of a SCRAM-SHA-256 password (RFC 5802, RFC 7677), computed here
    as psql's \\password does, so that no statement and no server log line holds the password."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = [base64.b64encode(part).decode() for part in (salt, stored_key, server_key)]
    return f"SCRAM-SHA-256${iterations}:{b64[0]}${b64[1]}:{b64[2]}"


def libpq_env(passfile: Path) -> dict:
    """This environment with one password source: the given password file."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGSERVICE")}
    return {**env, "PGPASSFILE": str(passfile)}


# ---- processes: ours only if pid, start time and command line all match --------------------


def identity(pid: int) -> dict:
    proc = psutil.Process(pid)
    return {"pid": pid, "create_time": proc.create_time(), "cmdline": proc.cmdline()}


def living_identities(procs: list) -> list[dict]:
    """The identities of `procs` still alive: a worker that ended (or is a zombie no one has
    reaped yet) in the meantime is skipped, not an error."""
    found = []
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(identity(proc.pid))
        except psutil.Error:
            pass
    return found


def started_identity(pid: int, cmd: list[str]) -> dict | None:
    """The identity of a child just started with `cmd`, once its command line shows it (it reads
    empty for a moment during the exec), or None if it ended first."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            record = identity(pid)
        except psutil.Error:
            return None
        if record["cmdline"][-len(cmd[1:]) :] == cmd[1:]:  # a script adds its interpreter
            return record
        time.sleep(0.05)
    return None


def is_ours(record: dict | None) -> bool:
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return False
    try:
        proc = psutil.Process(record["pid"])
        return (
            proc.status() != psutil.STATUS_ZOMBIE
            and abs(proc.create_time() - record.get("create_time", -1)) < 0.01
            and proc.cmdline() == record.get("cmdline")
        )
    except psutil.Error:  # gone, a zombie, or not ours to read: not ours to trust
        return False


def wait_ended(records: list[dict], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(is_ours(r) for r in records):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def postmaster(data: Path) -> dict | None:
    """The postmaster that serves `data` now, from its postmaster.pid, if it is one."""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        record = identity(pid)
    except (OSError, ValueError, IndexError, psutil.Error):
        return None
    cmd = record["cmdline"]
    serves = "-D" in cmd[:-1] and Path(cmd[cmd.index("-D") + 1]).resolve() == data
    return record if serves and Path(cmd[0]).name in ("postgres", "postmaster") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def log_size(log: Path) -> int:
    return log.stat().st_size if log.exists() else 0


def last_line(log: Path, since: int, words: tuple[str, ...] = ()) -> str:
    """The last line written to a log after byte `since` (with one of `words`, if given)."""
    try:
        with open(log, "rb") as f:
            f.seek(since)
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return ""
    found = [line for line in lines if line and (not words or any(w in line for w in words))]
    return found[-1][:300] if found else ""


# ---- PostgreSQL -----------------------------------------------------------------------------


def init_cluster(root: Path, bindir: Path, creds: dict) -> None:
    """initdb into root/pgdata with password auth, listening on 127.0.0.1 only."""
    data = root / "pgdata"
    data.mkdir(mode=0o700)
    pwfile = root / "superuser.pw"  # initdb wants an empty pgdata; deleted below
    write_private(pwfile, creds["superuser"] + "\n")
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    cmd = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile)]
    cmd += ["--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8"]
    try:
        run(as_pg_user(cmd), "initdb")
    finally:
        pwfile.unlink(missing_ok=True)
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{data}'\n")


def create_databases(root: Path, bindir: Path, port: int, creds: dict) -> None:
    """One role and one database per tool; the SQL goes through stdin, never argv."""
    sql = "".join(
        f"CREATE ROLE {user} LOGIN PASSWORD '{scram_verifier(creds[user])}';\n"
        f"CREATE DATABASE {db} OWNER {user};\n"
        for db, user in USERS.items()
    )
    passfile = write_passfile(root / "admin.pgpass", {("postgres", "postgres"): creds["superuser"]})
    cmd = [str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    cmd += ["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-f", "-"]
    try:
        run(cmd, "psql", env=libpq_env(passfile), stdin=sql)
    finally:
        passfile.unlink(missing_ok=True)


def run(cmd: list[str], what: str, env: dict | None = None, stdin: str | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, input=stdin)
    if done.returncode != 0:  # the cause, not initdb's closing "removing contents of ..."
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        causes = [line for line in lines if any(w in line.lower() for w in CAUSE_WORDS)]
        raise ServerError(f"{what} failed: {(causes or lines)[-1].strip()}")


def start_postgres(root: Path, bindir: Path) -> tuple[dict, int]:
    """pg_ctl start on a free port; returns the postmaster's identity and its port."""
    data, log = root / "pgdata", root / "postgres.log"
    log.touch()
    if os.geteuid() == 0:
        shutil.chown(log, "postgres", "postgres")
    for attempt in range(PORT_TRIES):
        port = free_port()
        cmd = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", f"-p {port}"]
        cmd += ["-w", "-t", str(START_TIMEOUT_S), "start"]
        since = log_size(log)
        done = subprocess.run(as_pg_user(cmd), capture_output=True, text=True)
        record = postmaster(data)
        if done.returncode == 0 and record:
            return record, port
        taken = record is None and port_taken(port)
        if taken and attempt + 1 < PORT_TRIES:
            continue  # someone bound the port between free_port() and the postmaster
        reason = f"port {port} on 127.0.0.1 is in use" if taken else None
        reason = reason or last_line(log, since, ("FATAL", "PANIC")) or last_line(log, since)
        raise ServerError(f"PostgreSQL did not start: {reason or done.stderr.strip()} (see {log})")
    raise AssertionError("unreachable")


def stop_postgres(data: Path) -> bool:
    """Fast shutdown of the postmaster serving `data` (what `pg_ctl -m fast stop` does), and
    only of that one: a stale postmaster.pid naming another process is removed, not obeyed."""
    record = postmaster(data)
    if record is None:
        (data / "postmaster.pid").unlink(missing_ok=True)
        return False
    os.kill(record["pid"], signal.SIGINT)
    if not wait_ended([record], STOP_WAIT_S) and is_ours(record):
        os.kill(record["pid"], signal.SIGQUIT)  # immediate shutdown
        wait_ended([record], STOP_WAIT_S)
    return True


# ---- the MLflow server ----------------------------------------------------------------------


def start_mlflow(root: Path, exe: str, backend_uri: str, passfile: Path) -> tuple[list[dict], int]:
    """`mlflow server` with artifact proxying into root/artifacts, in its own process group;
    returns the identities of its processes (the server first) and its port."""
    artifacts, log = root / "artifacts", root / "mlflow.log"
    artifacts.mkdir(exist_ok=True)
    for attempt in range(PORT_TRIES):
        port, since = free_port(), log_size(log)
        cmd = [exe, "server", "--backend-store-uri", backend_uri]
        cmd += ["--artifacts-destination", str(artifacts), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--workers", "1"]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=out, env=server_env(passfile), start_new_session=True
            )
        server = started_identity(proc.pid, cmd)
        if server and wait_http(f"http://127.0.0.1:{port}", server, log, since):
            family = psutil.Process(proc.pid).children(recursive=True)
            return [server, *living_identities(family)], port
        taken = port_taken(port)
        if taken and attempt + 1 < PORT_TRIES:
            continue  # the port was taken before uvicorn bound it
        reason = f"port {port} on 127.0.0.1 is in use" if taken else last_line(log, since)
        raise ServerError(f"mlflow server exited at start: {reason} (see {log})")
    raise AssertionError("unreachable")


# MLflow 3's server also starts a job runner with seven Huey consumers (GenAI evaluation, prompt
# optimisation, trace roll-ups: nothing the workbench uses): 8 more processes, ~1.9 GB of memory,
# and ~20 s of CPU at start, which competed with the first minute of training on two cores.
# Telemetry (usage records posted to MLflow's maintainers) is off, as in the workbench's commands.
SERVER_SETTINGS = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def server_env(passfile: Path) -> dict:
    """The tracking server's environment: the password file, and `SERVER_SETTINGS` unless the
    caller's environment says otherwise."""
    return {**SERVER_SETTINGS, **libpq_env(passfile)}


def wait_http(url: str, server: dict, log: Path, since: int) -> bool:
    """True once `url`/health answers; False if the server exits first or its web server could
    not bind (mlflow itself takes ~20 s to exit then: it is stopped here at once)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if "address already in use" in last_line(log, since, ("in use",)).lower():
            stop_mlflow([server])
        if not is_ours(server):
            return False
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    stop_mlflow([server])
    raise ServerError(f"mlflow server did not answer within {START_TIMEOUT_S} s (see {log})")


def stop_mlflow(records: list[dict]) -> bool:
    """SIGTERM to the server's process group, then to any recorded process of it still running;
    each only after it proved to be ours. SIGKILL after STOP_WAIT_S."""
    ours = [r for r in records if is_ours(r)]
    if not ours:
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if is_ours(records[0]):
            os.killpg(records[0]["pid"], sig)  # start_new_session: its pid is its group's id
        for record in records[1:]:  # still there when the server itself was killed
            if is_ours(record):
                os.kill(record["pid"], sig)
        if wait_ended(ours, STOP_WAIT_S):
            break
    return True


# ---- commands -------------------------------------------------------------------------------


def exports(state: dict) -> str:
    return (
        f"export MLFLOW_TRACKING_URI={state['tracking_uri']}\n"
        f"export MNIST_STUDY_STORAGE={state['storage_url']}"
    )


def load_state(root: Path) -> dict:
    """state.json, or {} when it is missing or unreadable (then it describes nothing of ours)."""
    try:
        state = read_json(root / "state.json")
    except ServerError:
        return {}
    return state if isinstance(state, dict) else {}


def state_processes(state: dict) -> list[dict]:
    mlflow = state.get("mlflow")
    return [state.get("postgres"), *(mlflow if isinstance(mlflow, list) else [])]


def running_state(root: Path) -> dict | None:
    """The state when every process it names is ours and alive, else None."""
    state = load_state(root)
    records = state_processes(state)
    return state if len(records) > 1 and all(is_ours(r) for r in records[:2]) else None


def start(root: Path) -> dict:
    """Start both servers (or find them running); returns the state dict."""
    make_folder(root)
    with folder_lock(root):
        state = running_state(root)
        if state:
            print(f"already running (state in {root / 'state.json'})", file=sys.stderr)
            return state
        _stop(root)  # half-dead leftovers of an earlier start, ours only
        bindir, exe = pg_bin(), mlflow_exe()
        check_postgres_user(root)
        creds = credentials(root)
        fresh = not (root / "databases.ok").exists()  # absent until initdb and CREATE DATABASE
        if fresh:
            shutil.rmtree(root / "pgdata", ignore_errors=True)
            init_cluster(root, bindir, creds)
        try:
            pg_record, pg_port = start_postgres(root, bindir)
            state = {"postgres": pg_record, "postgres_port": pg_port}
            write_private(root / "state.json", json.dumps(state, indent=2) + "\n")
            if fresh:
                create_databases(root, bindir, pg_port, creds)
                (root / "databases.ok").touch()
            passfile = root / "mlflow.pgpass"  # the tracking server's password, off its argv
            write_passfile(passfile, {("mlflow", "mlflow"): creds["mlflow"]})
            backend = f"postgresql://mlflow@127.0.0.1:{pg_port}/mlflow"
            ml_records, ml_port = start_mlflow(root, exe, backend, passfile)
            state.update(
                mlflow=ml_records,
                mlflow_port=ml_port,
                tracking_uri=f"http://127.0.0.1:{ml_port}",
                storage_url=f"postgresql://optuna:{creds['optuna']}@127.0.0.1:{pg_port}/optuna",
                artifacts=str(root / "artifacts"),
            )
            write_private(root / "state.json", json.dumps(state, indent=2) + "\n")
        except (ServerError, OSError, psutil.Error):
            _stop(root)
            raise
    return state


def _stop(root: Path) -> list[str]:
    """Stop what DIR's state names and is ours, and DIR's postmaster; returns what stopped."""
    state = load_state(root)
    mlflow = state.get("mlflow")
    stopped = ["mlflow server"] if stop_mlflow(mlflow if isinstance(mlflow, list) else []) else []
    stopped += ["PostgreSQL"] if stop_postgres(root / "pgdata") else []
    (root / "state.json").unlink(missing_ok=True)
    return stopped


def stop(root: Path, quiet: bool = False) -> None:
    """Stop mlflow (its process group) and PostgreSQL; the data stays."""
    if not root.is_dir():
        stopped = []
    else:
        with folder_lock(root):
            stopped = _stop(root)
    if not quiet:
        what = f"stopped {' and '.join(stopped)}" if stopped else "not running"
        print(f"{what} (data kept in {root})", file=sys.stderr)


def status(root: Path) -> int:
    """Print the exports (exit 0) or "not running" (exit 1); waits for a start in progress."""
    if not root.is_dir():
        print("not running")
        return 1
    with folder_lock(root):
        state = running_state(root)
        if state:
            print(exports(state))
            return 0
        print("not running")
        if any(is_ours(r) for r in state_processes(load_state(root))):
            print("partly running: `stop` it, or `start` to restart it", file=sys.stderr)
        elif (root / "state.json").exists():
            (root / "state.json").unlink()
            print("removed a stale state file: none of its processes runs", file=sys.stderr)
    return 1


def clean(root: Path) -> None:
    if not root.is_dir():
        print(f"nothing to remove: {root} is not a folder", file=sys.stderr)
        return
    with folder_lock(root):
        foreign = sorted(set(os.listdir(root)) - MADE_HERE)
        if foreign:
            named = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ServerError(f"{root} holds files the server did not make ({named}): kept")
        _stop(root)
        shutil.rmtree(root)
    print(f"removed {root}", file=sys.stderr)


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
            return status(root)
        elif args.action == "stop":
            stop(root)
        else:
            clean(root)
    except (ServerError, OSError, psutil.Error) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
