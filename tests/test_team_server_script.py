"""scripts/team_server.py's own failures, through its command line and real processes: stale state
files naming someone else's process, two starts at once, missing binaries, unusable folders,
taken ports. Each ends in one line and a non-zero exit, or works."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from team_server import SCRIPT, require_postgres, run_script, script_module, server_folder


@pytest.fixture
def bystander():
    """An unrelated process that leads its own process group, as mlflow server does."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def still_running(proc: subprocess.Popen) -> bool:
    return proc.poll() is None


def stale_state(pid: int, variant: str) -> dict:
    """A state file whose pids now belong to `pid`, as after a reboot or a crash."""
    if variant == "old format":  # what the script wrote before it recorded identities
        return {"postgres_pid": pid, "mlflow_pid": pid, "tracking_uri": "http://127.0.0.1:1"}
    real = psutil.Process(pid)
    record = {"pid": pid, "create_time": real.create_time(), "cmdline": real.cmdline()}
    if variant == "start time differs":
        record["create_time"] -= 5.0
    else:  # "command differs": same pid and start time, not the command we started
        record["cmdline"] = ["/venv/bin/python", "/venv/bin/mlflow", "server", "--port", "1"]
    return {
        "postgres": record,
        "mlflow": [record, record],
        "tracking_uri": "http://127.0.0.1:1",
        "storage_url": "postgresql://optuna:x@127.0.0.1:2/optuna",
    }


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.mark.parametrize("variant", ["old format", "start time differs", "command differs"])
def test_stale_state_naming_another_process_is_not_running_and_never_signalled(
    tmp_path, bystander, variant
):
    root = tmp_path / "server"
    (root / "pgdata").mkdir(parents=True)
    state = root / "state.json"
    state.write_text(json.dumps(stale_state(bystander.pid, variant)))

    done = run_script("status", "--dir", str(root))
    assert (done.returncode, done.stdout) == (1, "not running\n")
    assert done.stderr == "removed a stale state file: none of its processes runs\n"
    assert not state.exists() and still_running(bystander)

    state.write_text(json.dumps(stale_state(bystander.pid, variant)))
    (root / "pgdata" / "postmaster.pid").write_text(f"{bystander.pid}\n{root / 'pgdata'}\n")
    done = run_script("stop", "--dir", str(root))
    assert (done.returncode, done.stderr) == (0, f"not running (data kept in {root})\n")
    assert not state.exists() and not (root / "pgdata" / "postmaster.pid").exists()
    time.sleep(0.2)  # a signal, had one been sent, has landed
    assert still_running(bystander)


def test_unreadable_state_file_is_not_running(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    (root / "state.json").write_text('{"postgres": ')
    done = run_script("status", "--dir", str(root))
    assert (done.returncode, done.stdout) == (1, "not running\n")
    assert "Traceback" not in done.stderr and not (root / "state.json").exists()


def test_clean_removes_only_a_folder_the_server_made(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "credentials.json").write_text("{}")
    (mine / "mlflow.log").write_text("")
    done = run_script("clean", "--dir", str(mine))
    assert (done.returncode, done.stderr) == (0, f"removed {mine}\n")
    assert not mine.exists()

    theirs = tmp_path / "project"
    theirs.mkdir()
    (theirs / "credentials.json").write_text("{}")
    (theirs / "README.md").write_text("keep me")
    line = one_error_line(run_script("clean", "--dir", str(theirs)))
    assert line == f"error: {theirs} holds files the server did not make (README.md): kept"
    assert (theirs / "README.md").read_text() == "keep me"

    done = run_script("clean", "--dir", str(tmp_path / "absent"))
    assert done.returncode == 0 and "nothing to remove" in done.stderr


def test_missing_postgresql_binaries(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PG_BIN": str(empty)}
    root = tmp_path / "server"
    line = one_error_line(run_script("start", "--dir", str(root), env=env))
    assert line == f"error: PostgreSQL binaries missing in {empty}: initdb, pg_ctl, psql, postgres"
    initdb = empty / "initdb"
    initdb.write_text("#!/bin/sh\n")
    initdb.chmod(0o755)
    line = one_error_line(run_script("start", "--dir", str(root), env=env))
    assert line.endswith(f"missing in {empty}: pg_ctl, psql, postgres")
    assert not (root / "pgdata").exists() and not (root / "state.json").exists()


def test_a_folder_that_cannot_be_made(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = one_error_line(run_script("start", "--dir", str(blocker / "server")))
    assert line == f"error: cannot create the server folder {blocker / 'server'}: Not a directory"


def test_a_folder_the_postgres_user_cannot_enter(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("only root runs PostgreSQL as another user")
    require_postgres()
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    root = hidden / "server"
    line = one_error_line(run_script("start", "--dir", str(root)))
    assert line.startswith(f"error: the postgres user cannot enter {root} ")
    assert not (root / "pgdata").exists()


@pytest.mark.server
def test_unreadable_credentials():
    require_postgres()
    with server_folder() as root:
        root.mkdir()
        (root / "credentials.json").write_text("{")
        line = one_error_line(run_script("start", "--dir", str(root)))
        assert line.startswith(f"error: {root / 'credentials.json'} is not valid JSON (")
        assert not (root / "pgdata").exists()


@pytest.mark.server
def test_two_starts_at_once_over_a_stale_state_share_one_server(bystander):
    """Both commands start together on a fresh folder whose state file names the bystander:
    one sets the server up, the other waits on the folder lock and reports the same exports.
    Then the tracking server alone is killed: `status` says so and `start` replaces it, workers
    included; `stop` ends every process of the server and none other."""
    require_postgres()
    with server_folder() as root:
        root.mkdir()
        (root / "state.json").write_text(json.dumps(stale_state(bystander.pid, "old format")))
        command = [sys.executable, str(SCRIPT), "start", "--dir", str(root)]
        pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs = [subprocess.Popen(command, **pipes) for _ in range(2)]
        results = [(*p.communicate(timeout=300), p.returncode) for p in procs]
        results = [(code, out, err) for out, err, code in results]
        assert [code for code, _, _ in results] == [0, 0], results
        outs = {out for _, out, _ in results}
        assert len(outs) == 1 and outs.pop().startswith("export MLFLOW_TRACKING_URI=http://")
        already = f"already running (state in {root / 'state.json'})\n"
        assert sorted(err for _, _, err in results) == ["", already]
        assert still_running(bystander)

        status = run_script("status", "--dir", str(root))
        assert status.returncode == 0 and status.stdout == results[0][1], status

        # The tracking server dies alone (its workers live on): half a server, then restarted.
        first = json.loads((root / "state.json").read_text())
        os.kill(first["mlflow"][0]["pid"], signal.SIGKILL)
        orphans = [psutil.Process(r["pid"]) for r in first["mlflow"][1:]]
        assert orphans and all(p.is_running() for p in orphans), orphans
        status = run_script("status", "--dir", str(root))
        assert (status.returncode, status.stdout) == (1, "not running\n"), status
        assert status.stderr == "partly running: `stop` it, or `start` to restart it\n"
        again = run_script("start", "--dir", str(root))
        assert again.returncode == 0, again
        assert again.stdout.startswith("export MLFLOW_TRACKING_URI="), again
        _, alive = psutil.wait_procs(orphans, timeout=10)
        assert not [p.cmdline() for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert run_script("status", "--dir", str(root)).stdout == again.stdout

        state = json.loads((root / "state.json").read_text())
        ours = [psutil.Process(r["pid"]) for r in [state["postgres"], *state["mlflow"]]]
        done = run_script("stop", "--dir", str(root))
        assert (done.returncode, done.stderr) == (
            0,
            f"stopped mlflow server and PostgreSQL (data kept in {root})\n",
        )
        _, alive = psutil.wait_procs(ours, timeout=10)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert still_running(bystander)


@pytest.mark.server
def test_ports_taken_between_pick_and_bind_are_replaced(monkeypatch):
    """The port picked for PostgreSQL, then the one picked for mlflow, is taken by someone else
    before the server binds it: each server retries on another port."""
    require_postgres()
    script = script_module()
    with socket.socket() as squatter, server_folder() as root:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken, script.free_port(), taken])
        monkeypatch.setattr(script, "free_port", lambda: next(picks, None) or _free())
        state = script.start(root)
        assert taken not in (state["postgres_port"], state["mlflow_port"])
        assert "Address already in use" in (root / "postgres.log").read_text()
        assert "address already in use" in (root / "mlflow.log").read_text().lower()
        assert script.running_state(root) == state


@pytest.mark.server
def test_a_port_that_stays_taken_is_one_line(monkeypatch, capsys):
    require_postgres()
    script = script_module()
    with socket.socket() as squatter, server_folder() as root:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        monkeypatch.setattr(script, "free_port", lambda: taken)
        assert script.main(["start", "--dir", str(root)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        log = root / "postgres.log"
        expected = f"error: PostgreSQL did not start: port {taken} on 127.0.0.1 is in use"
        assert err == [f"{expected} (see {log})"]
        assert log.read_text().count("Address already in use") == script.PORT_TRIES
        assert script.postmaster(root / "pgdata") is None and not (root / "state.json").exists()


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
