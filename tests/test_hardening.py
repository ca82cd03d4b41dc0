"""Faults a hostile but realistic user meets: planted checkpoints, kill -9, two processes on a new
store, a tracking server that goes away, spreadsheet formulas in names. Real processes."""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from conftest import tiny_config, train_run
from mlflow.tracking import MlflowClient
from mlflow_server import free_port, start_server

from mnist_train import contract, ownership
from mnist_train.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write_experiment(tmp_path: Path, name: str, experiment: str, epochs: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nexperiment: {experiment}\nhidden_sizes: [16]\nbatch_size: 100\n"
        f"epochs: {epochs}\nmax_train: 1000\nmax_test: 200\nsystem_metrics: false\n"
    )
    return path


def mnist_train(*args, env=None, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mnist_train", "run", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        **popen,
    )


def wait_for(predicate, timeout: float = 120, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def runs_named(name: str, uri: str | None = None):
    client = MlflowClient(uri) if uri else MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, f"attributes.run_name = '{name}'")


def final_weights(run_id: str, epoch: int, tmp_path: Path) -> dict:
    import mlflow

    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=f"checkpoints/epoch_{epoch:03d}.pt", dst_path=str(tmp_path)
    )
    return torch.load(path, weights_only=True)["model"]


# --------------------------------------------------------------------------- 1. no code from store


class Payload:
    """Unpickling this would create `marker`: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_planted_checkpoint_is_refused_and_runs_nothing(data_dir, tmp_path):
    config = tiny_config(name="victim", experiment="hardening")
    calls = iter(range(10**6))
    from mnist_train.runner import TrainingStopped

    with pytest.raises(TrainingStopped) as stopped:
        train_run(config, data_dir, should_stop=lambda: next(calls) >= 3)
    run_id = stopped.value.run_id
    marker = tmp_path / "code-ran"
    planted = tmp_path / "epoch_009.pt"  # newer than any real checkpoint: resume picks it
    torch.save({"model": Payload(marker)}, planted)
    MlflowClient().log_artifact(run_id, str(planted), "checkpoints")
    with pytest.raises(ConfigError, match="epoch_009.pt of run .* cannot be read"):
        train_run(config, data_dir, resume_run_id=run_id)
    assert not marker.exists()
    torch.load(planted, weights_only=False)  # the same file, unpickled the unsafe way, runs code
    assert marker.exists()


# --------------------------------------------------------------------------- 2. kill -9


def test_a_run_killed_hard_is_taken_over_and_ends_like_an_uninterrupted_one(data_dir, tmp_path):
    experiment = write_experiment(tmp_path, "hard_kill", "hardening", epochs=30)
    process = mnist_train(experiment, "--data-dir", data_dir, "--quiet")

    def killed_run():
        runs = runs_named("hard_kill")
        if runs and MlflowClient().list_artifacts(runs[0].info.run_id, "checkpoints"):
            return runs[0]

    run = wait_for(killed_run, what="the first checkpoint")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    run_id = run.info.run_id
    assert MlflowClient().get_run(run_id).info.status == "RUNNING"  # nobody left to mark it
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags[contract.TAG_OWNER] == f"{socket.gethostname()} {process.pid}"
    assert "is gone" in ownership.abandoned(tags)

    resumed = mnist_train(experiment, "--data-dir", data_dir, "--quiet", "--resume", run_id)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert out.strip() == run_id
    assert f"taking over run {run_id}" in err and "Traceback" not in err
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"

    straight = mnist_train(experiment, "--data-dir", data_dir, "--quiet")
    out, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err
    ours, reference = (
        final_weights(run_id, 30, tmp_path / "a"),
        final_weights(out.strip(), 30, tmp_path / "b"),
    )
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


def test_a_live_runs_owner_is_respected(tmp_path):
    alive = {contract.TAG_OWNER: f"{socket.gethostname()} {os.getpid()}", "mnist.heartbeat": "0"}
    assert ownership.abandoned(alive) is None
    elsewhere = {contract.TAG_OWNER: "other-host 12", contract.TAG_HEARTBEAT: str(time.time())}
    assert ownership.abandoned(elsewhere) is None
    stale = {contract.TAG_OWNER: "other-host 12", contract.TAG_HEARTBEAT: "0"}
    assert "no heartbeat from other-host" in ownership.abandoned(stale)
    assert ownership.abandoned({}) is None  # no ownership recorded: never taken over


def test_the_heartbeat_is_a_readable_utc_time_and_a_garbled_one_lets_a_run_be_taken_over():
    beat = ownership.owner_tags()[contract.TAG_HEARTBEAT]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", beat)
    assert abs(ownership.heartbeat_seconds(beat) - time.time()) < 5
    fresh = {contract.TAG_OWNER: "other-host 12", contract.TAG_HEARTBEAT: beat}
    assert ownership.abandoned(fresh) is None
    an_hour_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    old = {contract.TAG_OWNER: "other-host 12", contract.TAG_HEARTBEAT: an_hour_ago}
    assert "no heartbeat from other-host for 60 min" in ownership.abandoned(old)
    garbled = {contract.TAG_OWNER: "other-host 12", contract.TAG_HEARTBEAT: "yesterday"}
    assert "cannot be read" in ownership.abandoned(garbled)


# --------------------------------------------------------------------------- 4. a fresh store


def test_two_runs_started_at_once_on_a_new_store_both_finish(data_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    experiment = write_experiment(tmp_path, "race", "hardening-race", epochs=1)
    env = {"MLFLOW_TRACKING_URI": uri}
    processes = [mnist_train(experiment, "--data-dir", data_dir, "--quiet", env=env) for _ in "ab"]
    results = [p.communicate(timeout=300) for p in processes]
    for process, (_, err) in zip(processes, results):
        assert process.returncode == 0, err
    runs = runs_named("race", uri)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}


# --------------------------------------------------------------------------- 6. CSV formulas


def test_a_formula_run_name_stays_text_in_every_csv(data_dir, tmp_path):
    from analysis.compare_report import compare_runs

    first = train_run(tiny_config(name="=1+2", experiment="hardening-csv"), data_dir)
    second = train_run(tiny_config(name="@SUM(A1)", experiment="hardening-csv"), data_dir)
    _, report, _ = compare_runs(
        out_dir=tmp_path / "c", run_ids=[first, second], log_to_mlflow=False
    )
    rows = list(csv.DictReader((report.parent / "runs.csv").open()))
    assert {r["run_name"] for r in rows} == {"'=1+2", "'@SUM(A1)"}
    assert all(float(r["test_accuracy"]) > 0 for r in rows)  # numbers stay numbers

    from mnist_train.study_grid import Child, summary_rows, to_csv

    rows = summary_rows([Child("=cmd|x", tiny_config())], [("id", "FINISHED")], {})
    assert to_csv(rows).splitlines()[1].startswith("'=cmd|x,id,FINISHED")


# ------------------------------------------------------------------------ 3. the server goes away


@pytest.mark.skipif(
    not os.environ.get("MNIST_TEST_HTTP_SERVER"),
    reason="starts an mlflow server twice (~60 s); set MNIST_TEST_HTTP_SERVER=1",
)
def test_a_server_that_stops_mid_run_costs_a_minute_and_no_checkpoint(data_dir, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {"MLFLOW_TRACKING_URI": uri, "MNIST_WORKBENCH_CACHE": str(tmp_path / "cache")}
    experiment = write_experiment(tmp_path, "server_gone", "hardening-http", epochs=40)
    server = start_server(tmp_path, port)
    try:
        process = mnist_train(experiment, "--data-dir", data_dir, env=env)
        wait_for(
            lambda: [
                r
                for r in runs_named("server_gone", uri)
                if MlflowClient(uri).list_artifacts(r.info.run_id, "checkpoints")
            ],
            what="a checkpoint on the server",
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    started = time.time()
    out, err = process.communicate(timeout=240)
    assert time.time() - started < 90
    assert process.returncode == 75, err
    message = err.strip().splitlines()[-1]
    assert "tracking server stopped answering" in message and "--resume" in message
    run_id = out.strip()
    kept = Path(message.split("kept at ")[1].split(";")[0])
    assert kept.is_file() and run_id in str(kept)

    server = start_server(tmp_path, port)
    try:
        resumed = mnist_train(experiment, "--data-dir", data_dir, "--resume", run_id, env=env)
        out, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err
        assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
        assert not kept.exists()  # uploaded, so no longer kept aside
        # one link of ours to the run's page; none of MLflow's (a request per run to make them)
        experiment_id = MlflowClient(uri).get_run(run_id).info.experiment_id
        assert f"view it at {uri}/#/experiments/{experiment_id}/runs/{run_id}" in err
        assert "View run" not in err + out and "View experiment" not in err + out
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.skipif(
    not os.environ.get("MNIST_TEST_HTTP_SERVER"),
    reason="starts an mlflow server twice (~60 s); set MNIST_TEST_HTTP_SERVER=1",
)
def test_a_server_lost_mid_study_ends_in_75_and_the_next_command_resumes(data_dir, tmp_path):
    """The tracking server goes away while a study's first trial trains: the command ends with
    75 naming what it kept, the trial is queued again (not failed for good), and the same
    command, once the server is back, resumes that run, uploads what was kept and finishes
    every grid point exactly once, each step logged once."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {"MLFLOW_TRACKING_URI": uri, "MNIST_WORKBENCH_CACHE": str(tmp_path / "cache")}
    path = write_experiment(tmp_path, "lost_study", "hardening-lost", epochs=30)
    path.write_text(path.read_text() + "grid:\n  lr: [0.01, 0.02]\n")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    server = start_server(tmp_path, port)
    try:
        process = mnist_train(path, "--data-dir", data_dir, "--storage", storage, env=env)
        wait_for(
            lambda: [
                r
                for r in runs_named("lr=0.01", uri)
                if len(MlflowClient(uri).list_artifacts(r.info.run_id, "checkpoints")) >= 2
            ],
            what="two checkpoints of the first trial on the server",
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 75, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("Error: the tracking server") and "queued again" in message
    assert "kept on this machine: " in message
    kept = Path(message.split("kept on this machine: ")[1].split(",")[0].split(". Run")[0])
    assert kept.is_file()
    study = optuna.load_study(study_name="lost_study", storage=storage)
    assert "FAIL" in {t.state.name for t in study.trials}
    assert any(t.state.name == "WAITING" for t in study.trials)  # queued again, not lost

    server = start_server(tmp_path, port)
    try:
        again = mnist_train(path, "--data-dir", data_dir, "--storage", storage, env=env)
        out, err = again.communicate(timeout=600)
        assert again.returncode == 0, err
        assert "View run" not in err + out and "view it at" not in err  # no link per trial
        assert "uploaded what run" in err and not kept.exists()
        client = MlflowClient(uri)
        parent_id, *child_ids = out.split()
        children = [client.get_run(i) for i in child_ids]
        assert sorted(r.info.run_name for r in children) == ["lr=0.01", "lr=0.02"]
        assert all(r.info.status == "FINISHED" for r in children)
        for run in children:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "batch_loss")]
            assert sorted(steps) == list(range(1, 30 * 10 + 1))  # 10 steps an epoch, each once
        assert client.get_run(parent_id).info.status == "FINISHED"
    finally:
        server.terminate()
        server.wait(timeout=30)


# --------------------------------------------------------------------------- 8. what is stored


def test_findings_never_rank_runs_scored_on_different_test_sets(data_dir, tmp_path):
    from analysis.compare_report import compare_runs

    full = train_run(tiny_config(name="all200", experiment="hardening-sets"), data_dir)
    small = train_run(
        tiny_config(name="first100", experiment="hardening-sets", max_test=100), data_dir
    )
    comparison, _, _ = compare_runs(
        out_dir=tmp_path / "c", run_ids=[full, small], baseline=full, log_to_mlflow=False
    )
    assert any("another test set" in note for note in comparison.notes)
    assert not any("first100" in sentence for sentence in comparison.findings)


def test_a_resume_that_adds_epochs_records_the_new_total(data_dir):
    from analysis import runs

    short = train_run(tiny_config(name="grow", experiment="hardening"), data_dir)
    train_run(
        tiny_config(name="grow", experiment="hardening", epochs=3), data_dir, resume_run_id=short
    )
    run = MlflowClient().get_run(short)
    assert run.data.params["epochs"] == "2" and run.data.tags[contract.TAG_EPOCHS] == "3"
    loaded = runs.load_run(runs.connect(), short, with_predictions=False)
    assert loaded.params["epochs"] == "3" and loaded.epochs.index.max() == 3


def test_a_sweep_named_with_a_quote_is_found_again(data_dir, tmp_path):
    path = tmp_path / "quoted.yaml"
    path.write_text(
        "name: bob's sweep\nexperiment: hardening-quote\nhidden_sizes: [16]\nbatch_size: 100\n"
        "epochs: 1\nmax_train: 500\nmax_test: 100\nsystem_metrics: false\ngrid:\n  lr: [0.01]\n"
    )
    first = mnist_train(path, "--data-dir", data_dir, "--quiet")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    again = mnist_train(path, "--data-dir", data_dir)
    out2, err2 = again.communicate(timeout=300)
    assert again.returncode == 0, err2
    assert out2.split() == out.split()  # the same parent and child: nothing retrained
    assert "study bob's sweep is complete (1 complete): nothing to train" in err2


# --------------------------------------------------------------------------- 7. orphans


def test_sweep_workers_end_with_the_process_that_owns_them(data_dir, tmp_path):
    import psutil

    path = tmp_path / "orphans.yaml"
    path.write_text(
        "name: orphans\nexperiment: hardening-orphans\nhidden_sizes: [16]\nbatch_size: 100\n"
        "epochs: 200\nmax_train: 1000\nmax_test: 100\nsystem_metrics: false\n"
        "grid:\n  lr: [0.01, 0.001, 0.0001]\n"
    )
    sweep = mnist_train(path, "--data-dir", data_dir, "--workers", "2", "--quiet")

    def children_training():
        found = MlflowClient().get_experiment_by_name("hardening-orphans")
        return found and MlflowClient().search_runs(
            [found.experiment_id],
            "attributes.status = 'RUNNING' and attributes.run_name = 'lr=0.01'",
        )

    wait_for(children_training, what="a child run training")

    def command_line(process) -> str:
        try:
            return " ".join(process.cmdline())
        except psutil.Error:  # a short-lived child (a git call, a metric writer) already ended
            return ""

    helpers = psutil.Process(sweep.pid).children(recursive=True)  # the two study workers ...
    workers = [p for p in helpers if "spawn_main" in command_line(p)]
    assert len(workers) >= 2, [command_line(p) for p in helpers]
    sweep.send_signal(signal.SIGKILL)
    sweep.wait(timeout=30)  # not communicate(): the workers hold its pipes until they end
    gone, alive = psutil.wait_procs(helpers, timeout=90)
    assert not alive, f"workers outlived their sweep: {[p.pid for p in alive]}"
    experiment = MlflowClient().get_experiment_by_name("hardening-orphans").experiment_id
    statuses = {r.info.run_name: r.info.status for r in MlflowClient().search_runs([experiment])}
    assert statuses["lr=0.01"] == "KILLED"  # interrupted by its worker on the way out
    for run in MlflowClient().search_runs([experiment], "attributes.status = 'RUNNING'"):
        MlflowClient().set_terminated(run.info.run_id, "KILLED")  # the sweep's own parent run


def test_ctrl_c_stops_every_worker_with_a_checkpoint_and_the_rerun_resumes(data_dir, tmp_path):
    import optuna

    from mnist_train.study import default_storage

    path = tmp_path / "interrupted.yaml"
    path.write_text(
        "name: interrupted_workers\nexperiment: hardening-ctrl-c\nhidden_sizes: [16]\n"
        "batch_size: 100\nepochs: 200\nmax_train: 1000\nmax_test: 100\nsystem_metrics: false\n"
        "per_example_record: false\ngrid:\n  lr: [0.01, 0.001, 0.0001]\n"
    )
    sweep = mnist_train(path, "--data-dir", data_dir, "--workers", "2", "--quiet")

    def two_training():
        found = MlflowClient().get_experiment_by_name("hardening-ctrl-c")
        runs = found and MlflowClient().search_runs(
            [found.experiment_id],
            "attributes.status = 'RUNNING' and tags.`mnist.trial.number` != ''",
        )
        return (
            runs
            and len(runs) == 2
            and all(MlflowClient().list_artifacts(r.info.run_id, "checkpoints") for r in runs)
            and runs
        )

    training = wait_for(two_training, what="two trials training")
    sweep.send_signal(signal.SIGINT)
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, err[-2000:]
    assert "interrupted; run the command again" in err
    for run in training:
        stopped = MlflowClient().get_run(run.info.run_id)
        assert stopped.info.status == "KILLED"
        # the checkpoint of the step it stopped at: `_partial` inside an epoch, else the epoch's
        last = max(m.step for m in MlflowClient().get_metric_history(run.info.run_id, "batch_loss"))
        names = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "checkpoints")}
        epoch, inside = divmod(last, 10)
        expected = f"epoch_{epoch + 1:03d}_partial.pt" if inside else f"epoch_{epoch:03d}.pt"
        assert f"checkpoints/{expected}" in names
    study = optuna.load_study(
        study_name="interrupted_workers", storage=default_storage(os.environ["MLFLOW_TRACKING_URI"])
    )
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    resumable = {t.user_attrs.get("mlflow_run_id") for t in waiting}
    assert {run.info.run_id for run in training} <= resumable  # queued again, with their runs


def test_a_symlink_planted_among_pending_checkpoints_is_refused_not_followed(tmp_path):
    from mnist_train.config import ConfigError
    from mnist_train.tracking import open_pending, pending_checkpoints

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    folder = pending_checkpoints("0" * 32)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "epoch_002.pt").symlink_to(victim)
    with pytest.raises(ConfigError, match="symbolic link"), open_pending(folder / "epoch_002.pt"):
        pass
    assert victim.read_text() == "keep me"
    linked = pending_checkpoints("1" * 32)
    linked.parent.mkdir(parents=True, exist_ok=True)
    linked.symlink_to(tmp_path)  # the run's whole folder planted as a link
    with pytest.raises(ConfigError, match="symbolic link"):
        with open_pending(linked / "records" / "epoch_001.npz"):
            pass
    assert not (tmp_path / "records").exists()
    with open_pending(folder / "epoch_003.pt") as f:  # an ordinary file is written as before
        f.write(b"state")
    assert (folder / "epoch_003.pt").read_bytes() == b"state"
    assert not list(folder.glob(".*.part"))  # written beside it, then renamed into place


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: &a [1, 1, 1]\nb: [*a, *a]\n", "YAML aliases"),
        (None, "not a regular file"),
        ("x" * 1_000_001, "not an experiment file"),
    ],
)
def test_experiment_files_that_would_take_gigabytes_are_refused(tmp_path, text, message):
    from mnist_train.config import ConfigError, read_experiment

    path = Path("/dev/zero") if text is None else tmp_path / "big.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_experiment(path)


def test_threads_beyond_any_cpu_are_refused():
    from mnist_train.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="threads must be from 0 to 256"):
        build_config({"threads": 100000})


def test_a_checkpoint_kept_when_the_server_goes_holds_the_points_it_never_got(tmp_path):
    """The server may go away between an epoch's end and the write of its points: the
    checkpoint then kept on this machine carries them, and a resume writes them."""
    import torch as torch_

    from mnist_train.config import build_config
    from mnist_train.runner import _keep_locally, build_trainable
    from mnist_train.train import Progress

    config = build_config({"hidden_sizes": [8]})
    parts = build_trainable(config, torch_.device("cpu"), train_images=100)
    unwritten = [("batch_loss", 0.5, 1_700_000_000_000, 61), ("test_accuracy", 0.9, 1, 7)]
    kept = _keep_locally(
        RuntimeError("gone"), parts, Progress(epoch=8), config, "2" * 32, unwritten
    )
    state = torch_.load(kept, weights_only=True)
    assert [tuple(row) for row in state["rows"]] == unwritten


def train_with_cache(experiment: Path, data_dir, cache: Path, undo: list[str]):
    """(exit code, stdout, stderr) of a run whose cache folder is `cache`; `undo` restores the
    folder afterwards, whatever happened."""
    try:
        process = mnist_train(
            experiment, "--data-dir", data_dir, env={"MNIST_WORKBENCH_CACHE": str(cache)}
        )
        out, err = process.communicate(timeout=120)
    finally:
        subprocess.run(undo, check=True)
    return process.returncode, out, err


def test_a_cache_folder_that_cannot_be_written_is_one_line_before_the_run(data_dir, tmp_path):
    import checks

    locked = tmp_path / "locked"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    experiment = write_experiment(tmp_path, "locked_cache", "hardening-cache", epochs=1)
    code, _, err = train_with_cache(experiment, data_dir, locked, ["chattr", "-i", str(locked)])
    checks.assert_one_line_error(err, code, "Operation not permitted", "set MNIST_WORKBENCH_CACHE")
    assert not runs_named("locked_cache")  # refused before any run was opened


def test_a_full_cache_folder_fails_the_run_in_one_line_and_keeps_it(data_dir, tmp_path):
    import checks

    full = tmp_path / "full"
    full.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    experiment = write_experiment(tmp_path, "full_cache", "hardening-cache", epochs=2)
    code, out, err = train_with_cache(experiment, data_dir, full, ["umount", str(full)])
    checks.assert_one_line_error(err, code, "No space left on device", "is marked FAILED", code=1)
    (run,) = runs_named("full_cache")
    assert run.info.status == "FAILED"
    assert "No space left on device" in run.data.tags[contract.TAG_FAILURE_REASON]
    assert run.info.run_id in out  # the run's id on stdout, as for any run


def test_a_torn_newest_checkpoint_gives_way_to_the_one_before(data_dir, tmp_path, capsys):
    """A process killed mid-upload may leave its newest checkpoint torn in the store: whoever
    takes the run over resumes from the checkpoint before it, and says so. A checkpoint holding
    code is still refused, never skipped."""
    from mnist_train.tracking import load_latest_checkpoint

    run_id = train_run(tiny_config(name="torn", epochs=2), data_dir)
    client = MlflowClient()
    whole = Path(client.download_artifacts(run_id, "checkpoints/epoch_002.pt", str(tmp_path)))
    torn = tmp_path / "torn" / "epoch_003.pt"  # uploaded in part; its points never written
    torn.parent.mkdir()
    torn.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    client.log_artifact(run_id, str(torn), "checkpoints")
    state = load_latest_checkpoint(run_id)
    assert state["epoch"] == 2
    assert "epoch_003.pt of run" in capsys.readouterr().err
    recorded = tmp_path / "recorded" / "epoch_002.pt"  # torn, but its points are stored:
    recorded.parent.mkdir()  # going back would log them twice, so it is refused
    recorded.write_bytes(whole.read_bytes()[:1000])
    client.log_artifact(run_id, str(recorded), "checkpoints")
    with pytest.raises(ConfigError, match="epoch_002.pt of run .* is torn"):
        load_latest_checkpoint(run_id)
    planted = tmp_path / "planted" / "epoch_003.pt"
    planted.parent.mkdir()
    torch.save({"model": Payload(tmp_path / "ran")}, planted)
    client.log_artifact(run_id, str(planted), "checkpoints")
    with pytest.raises(ConfigError, match="not a workbench checkpoint"):
        load_latest_checkpoint(run_id)
    assert not (tmp_path / "ran").exists()


def test_a_run_stopped_after_its_last_epoch_is_ended_by_whoever_resumes_it(data_dir):
    """A process killed after its last epoch's checkpoint but before the run's end (a SIGKILL
    test caught this under load) leaves a run with nothing to train: the process taking it over
    records its results from the checkpoint and ends it FINISHED, as an uninterrupted run ends."""
    import numpy as np

    from mnist_train.runner import TrainingStopped, prepare_run, run_training

    config = tiny_config(name="unended", epochs=2, experiment="hardening-unended")

    def stop_after_last(record):
        if record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingStopped):
        run_training(prepare_run(config, data_dir), on_epoch=stop_after_last)
    (left,) = runs_named("unended")
    assert left.info.status == "KILLED"
    ended = run_training(prepare_run(config, data_dir), resume_run_id=left.info.run_id)
    straight = run_training(prepare_run(config, data_dir))
    client = MlflowClient()
    run = client.get_run(ended.run_id)
    assert run.info.status == "FINISHED"
    assert ended.record.epoch == straight.record.epoch == 2
    assert ended.record.scores == pytest.approx(straight.record.scores)
    assert run.data.metrics["model/test_accuracy"] == pytest.approx(
        client.get_run(straight.run_id).data.metrics["model/test_accuracy"]
    )
    for run_id in (ended.run_id, straight.run_id):
        client.download_artifacts(run_id, "predictions/test.npz", str(data_dir.parent / run_id))
    probs = [
        np.load(data_dir.parent / i / "test.npz")["probs"] for i in (ended.run_id, straight.run_id)
    ]
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-6)
    steps = [m.step for m in client.get_metric_history(ended.run_id, "batch_loss")]
    assert len(steps) == len(set(steps))  # nothing logged twice


def test_a_metric_writer_helper_has_no_tracking_uri_on_its_command_line(tmp_path):
    """The helper learns the store from its environment: a database password in the tracking
    URI never reaches `ps`."""
    import psutil

    from mnist_train.tracking_writer import SharedWriter

    uri = f"sqlite:///{tmp_path / 'secret-7f3a.db'}"
    writer = SharedWriter(uri)
    try:
        command = " ".join(psutil.Process(writer._process.pid).cmdline())
        assert "secret-7f3a" not in command and "mnist_train.tracking_writer" in command
    finally:
        writer.close()
    assert writer._process.returncode is not None  # reaped, not left behind
