"""Searches (`search:` sections) on the Optuna engine: validation of the section, trials linked
to their runs both ways, pruning, growing and restarting a study, a champion in the registry."""

import os
from pathlib import Path

import checks
import optuna
import pytest
from click.testing import CliRunner
from conftest import TINY
from mlflow.tracking import MlflowClient

from mnist_train.cli import cli
from mnist_train.study import default_storage

TINY_YAML = "".join(f"{key}: {value}\n" for key, value in TINY.items())
SEARCH = (
    "search:\n  trials: 3\n  pruner: none\n  params:\n"
    "    lr: {type: float, low: 1.0e-3, high: 0.1, log: true}\n"
    "    batch_size: [50, 100]\n"
)


def invoke(*args):
    return CliRunner().invoke(cli, ["run", *map(str, args)])


def storage():
    return default_storage(os.environ["MLFLOW_TRACKING_URI"])


def study_names():
    path = Path(storage().removeprefix("sqlite:///"))
    if not path.exists():
        return []
    return optuna.get_all_study_names(storage())


def write(tmp_path, name, body, *, validation=200, **changes):
    fields = {**TINY, "validation": validation, **changes}
    head = "".join(f"{key}: {value}\n" for key, value in fields.items())
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nexperiment: search-{name}\n{head}{body}")
    return path


BAD = [
    ("    lr: {type: normal, low: 0.1, high: 1}\n", "unknown distribution 'normal'"),
    ("    batch_size: {choices: []}\n", "choices must be a non-empty list"),
    ("    lr: {type: float, low: 0, high: 0.1, log: true}\n", "a log range needs low > 0"),
    ("    lr: {type: float, low: 0.1, high: 0.01}\n", "low (0.1) must be less than high"),
    ("    optimiser: [sgd, adam]\n", "unknown config key 'optimiser'"),
    ("    dropout: {type: float, low: 0.0, high: 1.5}\n", "dropout must be in [0, 1)"),
]


@pytest.mark.parametrize("param, message", BAD)
def test_a_bad_distribution_is_one_line_and_records_nothing(tmp_path, data_dir, param, message):
    path = write(tmp_path, "bad_param", f"search:\n  trials: 2\n  params:\n{param}")
    before = study_names()
    result = invoke(path, "--data-dir", data_dir)
    checks.assert_one_line_error(result.output, result.exit_code, message)
    assert study_names() == before
    assert MlflowClient().get_experiment_by_name("search-bad_param") is None


@pytest.mark.parametrize(
    "head, validation, message",
    [
        ("objective: test_accuracy\n", 200, "never chooses on the test set"),
        ("objective: val_f1\n", 200, "no run logs that metric"),
        ("", 0, "needs a fixed validation split"),
        ("objective: train_time_s\n", 200, "needs a per-epoch objective"),
    ],
)
def test_an_objective_no_run_can_rank_on_is_refused(tmp_path, data_dir, head, validation, message):
    body = "search:\n" + (f"  {head}" if head else "") + "  params:\n    lr: [0.01, 0.1]\n"
    path = write(tmp_path, "bad_objective", body, validation=validation)
    result = invoke(path, "--data-dir", data_dir)
    checks.assert_one_line_error(result.output, result.exit_code, message)


def test_an_unreachable_storage_is_one_line_with_the_password_masked(tmp_path, data_dir):
    path = write(tmp_path, "unreachable", SEARCH)
    url = "postgresql://optuna:s3cret@127.0.0.1:1/optuna"
    result = invoke(path, "--data-dir", data_dir, "--storage", url)
    masked = "cannot open study storage postgresql://optuna:***@127.0.0.1:1/optuna"
    checks.assert_one_line_error(result.output, result.exit_code, masked)
    assert "s3cret" not in result.output


def test_a_search_links_trials_and_runs_both_ways_grows_and_restarts(tmp_path, data_dir):
    path = write(tmp_path, "linked", SEARCH)
    result = invoke(path, "--data-dir", data_dir, "--quiet")
    assert result.exit_code == 0, result.output
    parent_id, *run_ids = result.stdout.split()
    assert len(run_ids) == 3
    client = MlflowClient()
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mnist.study"] == "linked"
    assert parent.data.tags["mnist.study.objective"] == "val_accuracy maximize"
    study = optuna.load_study(study_name="linked", storage=storage())
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["mnist.trial.number"] == str(trial.number)
        assert run.data.tags["mnist.trial.state"] == "COMPLETE"
        assert float(run.data.params["lr"]) == pytest.approx(trial.params["lr"])
        assert run.data.params["batch_size"] == str(trial.params["batch_size"])
        assert trial.value == run.data.metrics["val_accuracy"]  # no early stopping: the last
    best = max(study.trials, key=lambda t: t.value)
    assert parent.data.tags["mnist.study.best_trial"] == str(best.number)
    assert f"Best trial on val_accuracy: {best.number}" in parent.data.tags["mlflow.note.content"]

    grown = invoke(path, "--data-dir", data_dir, "--quiet", "--trials", "4")
    assert grown.exit_code == 0, grown.output
    assert grown.stdout.split()[:4] == [parent_id, *run_ids]  # the same study, one more trial
    assert len(grown.stdout.split()) == 5
    assert client.get_run(parent_id).data.tags["mnist.sweep.skipped"] == "3"
    shrink = invoke(path, "--data-dir", data_dir, "--quiet", "--trials", "2")
    assert shrink.exit_code != 0 and "can only raise it" in shrink.output

    forced = invoke(path, "--data-dir", data_dir, "--quiet", "--force")
    assert forced.exit_code == 0, forced.output
    assert forced.stdout.split()[0] != parent_id and len(forced.stdout.split()) == 4
    assert "linked#2" in study_names()


def test_a_study_of_another_sweep_file_under_the_same_name_is_refused(tmp_path, data_dir):
    first = write(tmp_path, "same_name", SEARCH)
    assert invoke(first, "--data-dir", data_dir, "--quiet").exit_code == 0
    other = tmp_path / "other"
    other.mkdir()
    changed = write(
        other, "same_name", SEARCH.replace("batch_size: [50, 100]", "dropout: [0.0, 0.2]")
    )
    result = invoke(changed, "--data-dir", data_dir, "--quiet")
    checks.assert_one_line_error(
        result.output, result.exit_code, "was made with other values in its search"
    )
    overridden = invoke(first, "--data-dir", data_dir, "--quiet", "--max-train", "300")
    checks.assert_one_line_error(
        overridden.output,
        overridden.exit_code,
        f"study same_name was made with max_train {TINY['max_train']} (now 300)",
    )


def test_raising_trials_in_the_file_queues_more_and_lowering_it_keeps_the_study(tmp_path, data_dir):
    path = write(tmp_path, "grown", SEARCH.replace("  trials: 3\n", "  trials: 1\n"))
    assert invoke(path, "--data-dir", data_dir, "--quiet").exit_code == 0
    path.write_text(path.read_text().replace("  trials: 1\n", "  trials: 2\n"))
    grown = invoke(path, "--data-dir", data_dir)
    assert grown.exit_code == 0, grown.output
    assert "1 more trials queued (the file's trials: 2)" in grown.stderr
    study = optuna.load_study(study_name="grown", storage=storage())
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    path.write_text(path.read_text().replace("  trials: 2\n", "  trials: 1\n"))
    again = invoke(path, "--data-dir", data_dir)
    assert again.exit_code == 0 and "nothing to train" in again.stderr
    lowered = invoke(path, "--data-dir", data_dir, "--trials", "1")
    checks.assert_one_line_error(
        lowered.output, lowered.exit_code, "already has 2 trials; --trials 1 can only raise it"
    )


def test_a_read_only_storage_is_one_line(tmp_path, data_dir):
    import subprocess

    path = write(tmp_path, "read_only", SEARCH)
    frozen = tmp_path / "frozen.db"
    optuna.create_study(storage=f"sqlite:///{frozen}", study_name="someone_elses")
    if subprocess.run(["chattr", "+i", str(frozen)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        result = invoke(path, "--data-dir", data_dir, "--storage", f"sqlite:///{frozen}")
    finally:
        subprocess.run(["chattr", "-i", str(frozen)], check=True)
    checks.assert_one_line_error(
        result.output, result.exit_code, "refused a write: attempt to write a readonly database"
    )
    assert optuna.get_all_study_names(f"sqlite:///{frozen}") == ["someone_elses"]


def test_a_stop_while_queueing_leaves_no_half_made_study_or_parent(tmp_path, monkeypatch):
    """Queueing checks the stop flag between chunks; a stopped creation removes its study (the
    parent is made only once every trial is queued)."""
    from mnist_train import study as study_module
    from mnist_train.config import read_experiment

    monkeypatch.setattr(study_module, "QUEUE_CHUNK", 2)
    path = write(tmp_path, "stopped", SEARCH.replace("  trials: 3\n", "  trials: 9\n"))
    plan = study_module.make_plan(read_experiment(path), {})
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    storage = study_module.open_storage(url)
    looks = []
    parents = []
    with pytest.raises(study_module.QueueingStopped):
        study_module.open_study(
            plan,
            storage,
            force=False,
            trials=None,
            create_parent=parents.append,
            say=lambda text: None,
            should_stop=lambda: looks.append(1) or len(looks) > 3,
        )
    assert len(looks) == 4 and parents == []  # three chunks queued, then the stop was heard
    assert optuna.get_all_study_names(url) == []
    study, parent = study_module.open_study(
        plan, storage, force=False, trials=None, create_parent=lambda name: "p1", say=print
    )
    assert parent == "p1" and len(study.trials) == 9


def test_a_pruned_trial_stops_keeps_its_checkpoints_and_is_marked(tmp_path, data_dir):
    # a grid sampler queues the five sensible rates first; the last rate cannot learn, and the
    # median pruner (five trials to start from) stops it after its first epochs
    body = (
        "search:\n  sampler: grid\n  pruner: median\n  params:\n"
        "    lr: [0.01, 0.02, 0.03, 0.04, 0.05, 1.0e-7]\n"
    )
    path = write(tmp_path, "pruning", body, epochs=3)
    result = invoke(path, "--data-dir", data_dir, "--quiet")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="pruning", storage=storage())
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE"] * 5 + ["PRUNED"]
    pruned = study.trials[-1]
    run = MlflowClient().get_run(pruned.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["mnist.trial.state"] == "PRUNED"
    epochs = sorted(
        m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")
    )
    assert epochs == sorted(pruned.intermediate_values) and len(epochs) < 3
    checkpoints = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "checkpoints")}
    assert f"checkpoints/epoch_{epochs[-1]:03d}.pt" in checkpoints


def test_register_makes_the_best_trial_the_champion(tmp_path, data_dir):
    path = write(tmp_path, "champion", SEARCH)
    result = invoke(path, "--data-dir", data_dir, "--quiet", "--register", "tiny-champion")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="champion", storage=storage())
    best = study.best_trial.user_attrs["mlflow_run_id"]
    version = MlflowClient().get_model_version_by_alias("tiny-champion", "champion")
    assert version.run_id == best


def test_register_refuses_a_grid_without_validation(tmp_path, data_dir):
    path = tmp_path / "no_val.yaml"
    path.write_text(
        f"name: no_val\nexperiment: search-noval\n{TINY_YAML}grid:\n  lr: [0.01, 0.1]\n"
    )
    result = invoke(path, "--data-dir", data_dir, "--register", "x")
    assert result.exit_code != 0 and "needs a validation split" in result.output


def test_the_shipped_search_files_are_valid_and_choose_on_validation():
    from mnist_train.config import read_experiment
    from mnist_train.study import make_plan

    root = Path(__file__).resolve().parent.parent / "experiments"
    plans = {p.name: make_plan(read_experiment(p), {}) for p in sorted(root.glob("search_*.yaml"))}
    assert sorted(plans) == ["search_cnn.yaml", "search_mlp.yaml"]
    assert plans["search_mlp.yaml"].trials == 30
    names = {p.name for p in plans["search_mlp.yaml"].spec.params}
    assert {"lr", "hidden_size", "depth", "dropout", "batch_size", "weight_decay"} <= names
    for plan in plans.values():
        assert plan.objective == "val_accuracy" and plan.direction == "maximize"


def test_the_default_storage_sits_beside_a_sqlite_tracking_store(monkeypatch):
    monkeypatch.delenv("MNIST_STUDY_STORAGE", raising=False)
    assert default_storage("sqlite:////data/runs/mlflow.db") == "sqlite:////data/runs/optuna.db"
    assert default_storage("http://server:5000") == "sqlite:///optuna.db"
    monkeypatch.setenv("MNIST_STUDY_STORAGE", "postgresql://u:p@h/db")
    assert default_storage("sqlite:///mlflow.db") == "postgresql://u:p@h/db"


def test_a_long_summary_fits_the_description_and_keeps_the_best_rows():
    from mnist_train.search_space import Param, SearchSpec
    from mnist_train.study import StudyPlan
    from mnist_train.study_run import DESCRIPTION_LIMIT, _description

    spec = SearchSpec(params=(Param("lr", "float", 1e-3, 0.1),), trials=400)
    plan = StudyPlan("s", experiment=None, base={}, spec=spec)
    rows = [
        {"trial": i, "name": "x" * 80, "lr": i / 1000, "val_accuracy": i / 1000} for i in range(400)
    ]
    text = _description(rows, "Study s: 400 of 400 trials complete.", plan)
    assert len(text) <= DESCRIPTION_LIMIT and "x" * 80 not in text
    assert "summary.csv has them all" in text and "| 399 |" in text and "| 0 |" not in text


def test_a_worker_reusing_its_inputs_still_checks_each_trials_batches(data_dir):
    from conftest import tiny_config

    from mnist_train.config import ConfigError
    from mnist_train.runner import prepare_run

    cache = {}
    first = prepare_run(tiny_config(max_train=300), data_dir, cache=cache)
    again = prepare_run(tiny_config(max_train=300, lr=0.01), data_dir, cache=cache)
    assert again.tensors is first.tensors and again.config.lr == 0.01  # MNIST prepared once
    with pytest.raises(ConfigError, match="larger than the 300 training images"):
        prepare_run(
            tiny_config(max_train=300, batch_size=400, drop_last=True), data_dir, cache=cache
        )


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_every_sampler_completes_its_trials(tmp_path, data_dir, sampler):
    """The random sampler reads no trials before sampling: a trial claimed on the raw storage
    must still be known to the study it samples in (it once failed every trial)."""
    body = SEARCH.replace("  trials: 3\n", f"  trials: 2\n  sampler: {sampler}\n")
    path = write(tmp_path, f"sampler_{sampler}", body)
    result = invoke(path, "--data-dir", data_dir, "--quiet")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name=f"sampler_{sampler}", storage=storage())
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert all({"lr", "batch_size"} <= set(t.params) for t in study.trials)
    assert study.metric_names == ["val_accuracy"]  # dashboards name the value, not "Objective 0"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--register", "a/b"], "a registered model's name is 1 to 100 letters"),
        (["--register", "<script>"], "a registered model's name is 1 to 100 letters"),
        (["--register", ""], "a registered model's name is 1 to 100 letters"),
        (["--trials", "99999999999999999999999"], "is not a count from 1 to 10000"),
        (["--storage", "sqlite://"], "an in-memory SQLite database lives in one process only"),
        (["--storage", "sqlite:///:memory:"], "lives in one process only"),
    ],
)
def test_study_options_are_checked_before_anything_trains(tmp_path, data_dir, extra, message):
    path = write(tmp_path, "checked", SEARCH)
    before = study_names()
    result = invoke(path, "--data-dir", data_dir, *extra)
    checks.assert_one_line_error(result.output, result.exit_code, message)
    assert study_names() == before
    assert MlflowClient().get_experiment_by_name("search-checked") is None


def test_the_tracking_database_is_no_study_storage(tmp_path, data_dir):
    path = write(tmp_path, "same_db", SEARCH)
    tracking = os.environ["MLFLOW_TRACKING_URI"]
    result = invoke(path, "--data-dir", data_dir, "--storage", tracking)
    checks.assert_one_line_error(
        result.output, result.exit_code, "is the MLflow tracking store's own database"
    )


@pytest.mark.parametrize(
    "param, message",
    [
        ("    depth: {type: int, low: 1, high: 4, step: 0.5}\n", "step must be a whole number"),
        ("    lr: [0.01, 0.1]\n  trials: 100000000\n", "trials must be a count from 1 to 10000"),
    ],
)
def test_a_search_that_cannot_run_is_refused_before_queueing(tmp_path, data_dir, param, message):
    body = f"search:\n  pruner: none\n  params:\n{param}"
    path = write(tmp_path, "unqueued", body)
    before = study_names()
    result = invoke(path, "--data-dir", data_dir)
    checks.assert_one_line_error(result.output, result.exit_code, message)
    assert study_names() == before


def test_workers_are_capped_by_the_trials_left(tmp_path, data_dir):
    body = SEARCH.replace("  trials: 3\n", "  trials: 1\n")
    path = write(tmp_path, "capped", body)
    result = invoke(path, "--data-dir", data_dir, "--workers", "4")
    assert result.exit_code == 0, result.output
    assert "1 worker(s), not 4: 1 trial(s) left" in result.stderr


def test_a_trial_that_fails_before_its_run_exists_keeps_its_reason(tmp_path, data_dir):
    body = "search:\n  trials: 1\n  pruner: none\n  params:\n    batch_size: [5000]\n"
    path = write(tmp_path, "early_fail", body, drop_last="true")
    result = invoke(path, "--data-dir", data_dir, "--quiet")
    assert result.exit_code == 1
    study = optuna.load_study(study_name="early_fail", storage=storage())
    (trial,) = study.trials
    reason = trial.user_attrs["mnist.failure_reason"]
    assert "batch_size (5000) is larger than the" in reason
    assert "mlflow_run_id" not in trial.user_attrs  # it failed before any run was opened
    parent = MlflowClient().get_run(result.stdout.split()[0])
    assert reason in parent.data.tags["mlflow.note.content"]


def test_register_on_a_complete_study_registers_its_best(tmp_path, data_dir):
    body = SEARCH.replace("  trials: 3\n", "  trials: 1\n")
    path = write(tmp_path, "done_then_registered", body)
    first = invoke(path, "--data-dir", data_dir, "--quiet")
    assert first.exit_code == 0, first.output
    again = invoke(path, "--data-dir", data_dir, "--register", "late-champion")
    assert again.exit_code == 0, again.output
    assert "nothing to train" in again.stderr and "registered trial 0" in again.stderr
    version = MlflowClient().get_model_version_by_alias("late-champion", "champion")
    assert version.tags["run_id"] == first.stdout.split()[1]
