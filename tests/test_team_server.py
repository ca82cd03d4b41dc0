"""The team server of scripts/team_server.py: MLflow over http with proxied artifacts, Optuna on
PostgreSQL. One server for the module (~20 s to start)."""

import pytest
from team_server import team_server

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server():
    with team_server() as urls:
        yield urls


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
