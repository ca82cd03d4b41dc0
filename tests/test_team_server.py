"""The team server of scripts/team_server.py: MLflow over http with proxied artifacts, Optuna on
PostgreSQL. One server for the module (~20 s to start)."""

import os

import pytest
from team_server import team_server

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server():
    with team_server() as urls:
        yield urls


def test_no_password_on_any_command_line_environment_or_log(server):
    """Every process the server started (postmaster and its backends, mlflow server, its uvicorn
    worker and job runner), `ps -ef` as a whole and both logs: none holds a password."""
    import json
    import subprocess

    import psutil
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=server.tracking_uri).search_experiments()  # a database session
    passwords = json.loads((server.root / "credentials.json").read_text()).values()
    state = json.loads((server.root / "state.json").read_text())
    # the two roots as recorded; their children as they are now (a helper mlflow starts for a
    # moment at boot may already be gone from the recorded list)
    started = [psutil.Process(r["pid"]) for r in [state["postgres"], state["mlflow"][0]]]
    family = {p for proc in started for p in [proc, *proc.children(recursive=True)]}
    family = {p for p in family if p.is_running()}
    commands = {p.pid: " ".join(p.cmdline()) for p in family}
    assert any("uvicorn" in c for c in commands.values()), commands  # the workers are counted
    assert any("postgres: mlflow mlflow" in c for c in commands.values()), commands
    environments = {p.pid: json.dumps(p.environ()) for p in family}
    process_list = subprocess.run(["ps", "-efww"], capture_output=True, text=True).stdout
    logs = [(server.root / name).read_text() for name in ("postgres.log", "mlflow.log")]
    for password in passwords:
        assert len(password) == 32
        assert not [pid for pid, c in commands.items() if password in c]
        assert not [pid for pid, e in environments.items() if password in e]
        assert password not in process_list
        assert not [log for log in logs if password in log]


def test_the_tracking_server_is_two_processes_without_job_consumers(server):
    """MLflow's job runner and its Huey consumers (eight processes, ~1.9 GB, ~20 s of CPU at
    start on this machine) serve features the workbench never uses: the team server runs the
    mlflow command and its one uvicorn worker only, and sends no telemetry."""
    import json

    import psutil

    state = json.loads((server.root / "state.json").read_text())
    root = psutil.Process(state["mlflow"][0]["pid"])
    family = [root, *root.children(recursive=True)]
    commands = [" ".join(p.cmdline()) for p in family]
    assert len(family) == 2 and "uvicorn" in commands[1], commands
    assert not [c for c in commands if "huey" in c or "_job_runner" in c]
    assert all(p.environ().get("MLFLOW_DISABLE_TELEMETRY") == "true" for p in family)


def test_mlflow_run_round_trip_with_proxied_artifact(server, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.tracking_uri)
    exp_id = client.create_experiment("team-server-test")
    run_id = client.create_run(exp_id).info.run_id
    client.log_param(run_id, "lr", "0.01")
    for step, loss in enumerate([0.9, 0.5, 0.25]):
        client.log_metric(run_id, "loss", loss, step=step)
    note = tmp_path / "note.txt"
    note.write_text("through the proxy")
    client.log_artifact(run_id, str(note), artifact_path="docs")
    client.set_terminated(run_id)

    run = client.get_run(run_id)
    assert run.data.params == {"lr": "0.01"}
    history = client.get_metric_history(run_id, "loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [0.9, 0.5, 0.25]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert [f.path for f in client.list_artifacts(run_id, "docs")] == ["docs/note.txt"]
    stored = list(server.artifacts.rglob("note.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "through the proxy"
    back = client.download_artifacts(run_id, "docs/note.txt", str(tmp_path / "back"))
    assert open(back).read() == "through the proxy"


def test_optuna_study_shared_through_storage_url(server):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=server.storage_url, study_name="shared", direction="maximize"
    )
    study.optimize(lambda trial: -((trial.suggest_float("x", -1, 1) - 0.3) ** 2), n_trials=2)
    again = optuna.load_study(study_name="shared", storage=server.storage_url)
    again.optimize(lambda trial: -((trial.suggest_float("x", -1, 1) - 0.3) ** 2), n_trials=1)
    reloaded = optuna.load_study(study_name="shared", storage=server.storage_url)
    assert [t.number for t in reloaded.trials] == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in reloaded.trials)
    assert reloaded.best_value == max(t.value for t in reloaded.trials)


def test_one_grid_study_split_by_two_commands_survives_a_sigkill(server, tmp_path, data_dir):
    """Two `mnist-train` processes in separate folders share only the two URLs. One is killed
    with SIGKILL while its trial trains: its trial goes stale, the other process takes it over
    and resumes the same run from its last checkpoint."""
    import signal
    import subprocess
    import sys
    import time

    import optuna
    from mlflow import MlflowClient

    sweep = tmp_path / "shared_grid.yaml"
    sweep.write_text(
        "name: shared_grid\nexperiment: team-grid\nmax_train: 1000\nmax_test: 200\n"
        "batch_size: 50\nepochs: 6\nhidden_sizes: [64]\n"
        "grid:\n  lr: [0.001, 0.002, 0.003, 0.004]\n"
    )
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": server.tracking_uri,
        "MNIST_STUDY_GRACE_S": "10",
    }
    env.pop("MNIST_STUDY_STORAGE", None)
    command = [sys.executable, "-m", "mnist_train", "run", str(sweep), "--quiet"]
    command += ["--storage", server.storage_url, "--data-dir", str(data_dir)]
    procs = {}
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        procs[name] = subprocess.Popen(
            command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        time.sleep(0.5)

    client = MlflowClient(tracking_uri=server.tracking_uri)
    victim = procs["a"]
    killed_run = None
    deadline = time.monotonic() + 180
    while killed_run is None and time.monotonic() < deadline:
        assert victim.poll() is None, "process a ended before it could be killed"
        experiment = client.get_experiment_by_name("team-grid")
        if experiment is not None:
            for run in client.search_runs([experiment.experiment_id]):
                owner = run.data.tags.get("mnist.owner", "")
                if run.info.status == "RUNNING" and owner.endswith(f" {victim.pid}"):
                    if client.list_artifacts(run.info.run_id, "checkpoints"):
                        killed_run = run.info.run_id
        time.sleep(0.2)
    assert killed_run, "process a never trained a trial past its first checkpoint"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    out, err = procs["b"].communicate(timeout=300)
    if procs["b"].returncode != 0:  # say why a trial failed, from its run
        found = client.search_runs(
            [client.get_experiment_by_name("team-grid").experiment_id],
            "attributes.status = 'FAILED'",
        )
        reasons = {r.info.run_name: r.data.tags.get("failure_reason") for r in found}
        study = optuna.load_study(study_name="shared_grid", storage=server.storage_url)
        trials = {t.number: t.user_attrs.get("mnist.failure_reason") for t in study.trials}
        raise AssertionError(f"{err[-2000:]}\nfailed runs: {reasons}\ntrials: {trials}")

    experiment = client.get_experiment_by_name("team-grid")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mnist.sweep" in r.data.tags]
    children = [r for r in runs if "mnist.sweep" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    names = sorted(r.info.run_name for r in children)
    assert names == ["lr=0.001", "lr=0.002", "lr=0.003", "lr=0.004"]  # each point once
    assert all(r.info.status == "FINISHED" for r in children)
    steps = 6 * 1000 // 50
    for run in children:
        logged = [m.step for m in client.get_metric_history(run.info.run_id, "batch_loss")]
        assert sorted(logged) == list(range(1, steps + 1)), run.info.run_name

    resumed = client.get_run(killed_run)
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["mnist.trial.state"] == "COMPLETE"
    study = optuna.load_study(study_name="shared_grid", storage=server.storage_url)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1
    retry = [t for t in study.trials if "failed_trial" in t.system_attrs]
    assert len(retry) == 1 and retry[0].user_attrs["mlflow_run_id"] == killed_run
    assert retry[0].state.name == "COMPLETE"


def _empty(url: str) -> None:
    """The database behind `url` with nothing in it: a fresh storage or store."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("DROP SCHEMA public CASCADE"))
        connection.execute(sqlalchemy.text("CREATE SCHEMA public"))
    engine.dispose()


def _at_the_same_moment(opener: str, url: str, envs: list[dict], *, lead_s: float, timeout: float):
    """(exit code, stdout, stderr) of `python -c opener START URL` in one process per `envs`,
    each waiting until START (`lead_s` from now, once every interpreter has its imports)."""
    import subprocess
    import sys
    import time

    start = time.time() + lead_s
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", opener, str(start), url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.getcwd(), **env},
        )
        for env in envs
    ]
    return [(p.wait(timeout=timeout), p.stdout.read(), p.stderr.read()) for p in procs]


def test_machines_meeting_a_fresh_storage_at_once_all_open_it(server):
    """Three processes open an empty PostgreSQL storage at the same moment: each creates
    Optuna's tables or waits for the one that does (an advisory lock in the database), and none
    dies on a duplicate type. Runs last in this module: it empties the storage first."""
    _empty(server.storage_url)  # a fresh storage: no Optuna tables
    opener = (
        "import sys, time; from mnist_train.study import open_storage; import optuna; "
        "time.sleep(max(0, float(sys.argv[1]) - time.time())); "
        "storage = open_storage(sys.argv[2]); print(len(optuna.get_all_study_names(storage)))"
    )
    # started after every interpreter has imported optuna
    results = _at_the_same_moment(opener, server.storage_url, [{}] * 3, lead_s=3, timeout=120)
    assert [code for code, _, _ in results] == [0, 0, 0], results
    assert [out.strip() for _, out, _ in results] == ["0", "0", "0"]
    assert all(server.storage_url.split("@")[0] not in err for _, _, err in results)


def test_machines_meeting_a_fresh_tracking_database_at_once_all_open_it(server, tmp_path):
    """MLflow's own initialisation lock is a file in the host's temporary folder, so machines
    meeting a fresh PostgreSQL tracking database race in CREATE TABLE. Three processes, each
    with a temporary folder of its own (as on three hosts), open it at the same moment: the
    advisory lock in `store.open_store` lets each create the tables or wait for the one that
    does."""
    _empty(server.storage_url)
    opener = (
        "import sys, time, mlflow; from mnist_train.store import open_store; "
        "mlflow.set_tracking_uri(sys.argv[2]); "
        "time.sleep(max(0, float(sys.argv[1]) - time.time())); open_store(); "
        "print(len(mlflow.MlflowClient().search_experiments()))"
    )
    hosts = [tmp_path / host for host in "abc"]
    for host in hosts:
        host.mkdir()
    envs = [{"TMPDIR": str(host)} for host in hosts]
    # started after every interpreter has imported mlflow
    results = _at_the_same_moment(opener, server.storage_url, envs, lead_s=4, timeout=180)
    assert [code for code, _, _ in results] == [0, 0, 0], results
    assert [out.strip() for _, out, _ in results] == ["1", "1", "1"]  # the Default experiment


def test_three_machines_on_a_fresh_storage_survive_the_server_going_and_coming_back(
    server, tmp_path, data_dir
):
    """Issue 21's closing case, with real processes: three `mnist-train` processes (each with a
    cache and temporary folder of its own, as on three machines) start one grid study at the same
    moment on an empty PostgreSQL storage; the tracking server is killed while they train and
    they end with 75; with the server back on the same port the same three commands finish the
    study. Every grid point is FINISHED exactly once and each step is logged once. A run whose
    only checkpoint stayed on the machine that lost the server cannot be resumed elsewhere: it
    is KILLED as abandoned, and its point trains again in a new run (seen once in CI)."""
    import subprocess
    import sys
    import time

    import optuna
    from mlflow import MlflowClient
    from mlflow_server import free_port, start_server

    _empty(server.storage_url)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    sweep = tmp_path / "fleet.yaml"
    sweep.write_text(
        "name: fleet\nexperiment: team-fleet\nmax_train: 1000\nmax_test: 200\n"
        "batch_size: 100\nepochs: 30\nhidden_sizes: [16]\nsystem_metrics: false\n"
        "grid:\n  lr: [0.01, 0.02, 0.03, 0.04]\n"
    )
    command = [sys.executable, "-m", "mnist_train", "run", str(sweep), "--quiet"]
    command += ["--storage", server.storage_url, "--data-dir", str(data_dir)]

    def fleet() -> list[subprocess.Popen]:
        procs = []
        for host in "abc":
            folder = tmp_path / host
            (folder / "tmp").mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "TMPDIR": str(folder / "tmp")}
            env["MNIST_WORKBENCH_CACHE"] = str(folder / "cache")
            env.pop("MNIST_STUDY_STORAGE", None)
            procs.append(
                subprocess.Popen(
                    command,
                    cwd=folder,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        return procs

    mlflow_server = start_server(tmp_path, port)
    try:
        first = fleet()
        client = MlflowClient(uri)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            experiment = client.get_experiment_by_name("team-fleet")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if any(
                len(client.list_artifacts(r.info.run_id, "checkpoints")) >= 2
                for r in runs
                if "mlflow.parentRunId" in r.data.tags
            ):
                break
            assert all(p.poll() is None for p in first), [p.communicate() for p in first]
            time.sleep(0.3)
        else:
            raise AssertionError("no trial reached its second checkpoint")
    finally:
        mlflow_server.terminate()
        mlflow_server.wait(timeout=30)
    ended = [(p.wait(timeout=300), p.stderr.read()) for p in first]
    assert {code for code, _ in ended} <= {0, 75} and 75 in {c for c, _ in ended}, ended
    for code, err in ended:
        if code == 75:
            assert err.strip().splitlines()[-1].startswith("Error: the tracking server"), err

    mlflow_server = start_server(tmp_path, port)
    try:
        again = fleet()
        finished = [(p.wait(timeout=600), p.stderr.read()[-2000:]) for p in again]
        assert [code for code, _ in finished] == [0, 0, 0], finished
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("team-fleet")
        runs = client.search_runs([experiment.experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        finished = [r for r in children if r.info.status == "FINISHED"]
        names = sorted(r.info.run_name for r in finished)
        assert names == ["lr=0.01", "lr=0.02", "lr=0.03", "lr=0.04"]  # each point once
        for run in finished:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "batch_loss")]
            assert sorted(steps) == list(range(1, 30 * 10 + 1)), run.info.run_name
        # a trial whose first checkpoint never reached the server (it stayed on the machine
        # that lost it) starts afresh elsewhere; its first run is KILLED, said why, logged nothing
        for run in (r for r in children if r.info.status != "FINISHED"):
            assert run.info.status == "KILLED", run.info.run_name
            assert run.data.tags["failure_reason"].startswith("abandoned: its worker stopped")
            assert not client.get_metric_history(run.info.run_id, "batch_loss")
    finally:
        mlflow_server.terminate()
        mlflow_server.wait(timeout=30)
    study = optuna.load_study(study_name="fleet", storage=server.storage_url)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 4
