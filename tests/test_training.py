"""A tiny run on the fixture records every contract metric and artifact; resume is exact."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config, train_run
from mlflow.tracking import MlflowClient

from mnist_train import models, runner, tracking
from mnist_train.runner import TrainingStopped

EPOCH_METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "epoch_time_s")


def history(client, run_id, key):
    return [
        (m.step, m.value)
        for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    ]


def download(run_id, path, tmp_path):
    import mlflow

    return mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=path, dst_path=str(tmp_path)
    )


def test_run_logs_the_contract(trained_runs, tmp_path):
    client = MlflowClient()
    run = client.get_run(trained_runs["mlp"])
    assert run.info.status == "FINISHED" and run.info.run_name == "fixture_mlp"
    params = run.data.params
    for key in (
        "model",
        "hidden_sizes",
        "activation",
        "dropout",
        "optimizer",
        "lr",
        "batch_size",
        "epochs",
        "seed",
        "normalize",
    ):
        assert key in params
    assert params["hidden_sizes"] == "[32]" and params["num_params"] == str(
        784 * 32 + 32 + 32 * 10 + 10
    )
    for key in EPOCH_METRICS:
        assert [step for step, _ in history(client, run.info.run_id, key)] == [1, 2]
    for key in ("train_accuracy", "test_accuracy"):
        assert all(0 <= value <= 1 for _, value in history(client, run.info.run_id, key))
    steps = [step for step, _ in history(client, run.info.run_id, "batch_loss")]
    assert steps == list(range(1, 2 * 10 + 1))  # 1000 images / batch 100, 2 epochs
    metrics = run.data.metrics
    assert metrics["overfit_gap"] == pytest.approx(
        metrics["train_accuracy"] - metrics["test_accuracy"]
    )
    epoch_times = [v for _, v in history(client, run.info.run_id, "epoch_time_s")]
    assert metrics["train_time_s"] == pytest.approx(sum(epoch_times))
    assert "mlflow.source.git.commit" in run.data.tags and run.data.tags["mnist.data_dir"]
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"mnist-train", "mnist-test"}

    artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert artifacts == {"checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt"}
    stored = np.load(download(run.info.run_id, "predictions/test.npz", tmp_path))
    assert stored["probs"].shape == (200, 10) and stored["probs"].dtype == np.float32
    assert np.allclose(stored["probs"].sum(1), 1, atol=1e-5)
    assert np.array_equal(stored["index"], np.arange(200))
    assert (stored["probs"].argmax(1) == stored["labels"]).mean() == pytest.approx(
        metrics["test_accuracy"]
    )


def test_logged_model_loads_and_reproduces_the_stored_predictions(trained_runs, data_dir, tmp_path):
    import mlflow.pytorch

    from mnist_train.data import load_split
    from mnist_train.tracking import logged_model_id

    run_id = trained_runs["mlp"]
    model_id = logged_model_id(MlflowClient(), run_id)
    model = mlflow.pytorch.load_model(f"models:/{model_id}")
    images = load_split(data_dir, train=False, download=False).images[:200]
    with torch.no_grad():
        probs = torch.softmax(model(images.reshape(200, -1).float() / 255), 1).numpy()
    stored = np.load(download(run_id, "predictions/test.npz", tmp_path))
    np.testing.assert_allclose(probs, stored["probs"], atol=1e-6)
    # the run's own path to it works too, under the model's name
    logged = mlflow.models.get_model_info(f"runs:/{run_id}/fixture_mlp")
    assert tuple(logged.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 784)


LOAD_WITHOUT_THE_PACKAGE = """
import sys, numpy as np, torch, mlflow.pytorch

class NoWorkbench:  # this process cannot import mnist_train, as on a machine without it
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "mnist_train":
            raise ImportError("mnist_train is not installed here")

sys.meta_path.insert(0, NoWorkbench())
model = mlflow.pytorch.load_model(sys.argv[1])
pixels = torch.from_numpy(np.load(sys.argv[2]))
with torch.no_grad():
    np.save(sys.argv[3], torch.softmax(model(pixels), 1).numpy())
print(sorted(name for name in sys.modules if name.startswith("mnist_train")))
"""


def test_logged_model_loads_where_the_workbench_is_not_installed(trained_runs, data_dir, tmp_path):
    """The model's own class (`Standardize`) is pickled by value: no copy of the package's code
    travels with it, and none is needed."""
    import os
    import subprocess
    import sys

    from mnist_train.data import load_split
    from mnist_train.tracking import logged_model_id

    run_id = trained_runs["mlp"]
    model_id = logged_model_id(MlflowClient(), run_id)
    files = {f.path for f in MlflowClient().list_logged_model_artifacts(model_id)}
    assert "code" not in files and "MLmodel" in files
    pixels = load_split(data_dir, train=False, download=False).images[:200]
    np.save(tmp_path / "pixels.npy", pixels.reshape(200, -1).float().numpy() / 255)
    done = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_THE_PACKAGE, f"models:/{model_id}"]
        + [str(tmp_path / "pixels.npy"), str(tmp_path / "probs.npy")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
    stored = np.load(download(run_id, "predictions/test.npz", tmp_path))
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), stored["probs"], atol=1e-6)


def test_logged_model_carries_the_model_of_record_scores_with_their_datasets(trained_runs):
    """What MLflow's Models page lists: the model under the run's name, its accuracy and loss
    on each dataset (the model of record's epoch), and nothing else (no system samples)."""
    from mnist_train.tracking import logged_model_id

    client = MlflowClient()
    run_id = trained_runs["mlp"]
    run = client.get_run(run_id)
    logged = client.get_logged_model(logged_model_id(client, run_id))
    assert logged.name == "fixture_mlp"
    assert logged.source_run_id == run_id
    assert logged.params["hidden_sizes"] == "[32]"
    epoch = int(run.data.metrics["predictions_epoch"])
    linked = {(m.key, m.dataset_name): m for m in logged.metrics}
    assert set(linked) == {
        ("train_loss", "mnist-train"),
        ("train_accuracy", "mnist-train"),
        ("test_loss", "mnist-test"),
        ("test_accuracy", "mnist-test"),
    }
    for (key, _), metric in linked.items():
        assert metric.step == epoch
        at_epoch = [m.value for m in client.get_metric_history(run_id, key) if m.step == epoch]
        assert at_epoch == [metric.value]  # linked, not logged a second time in the run
        assert run.data.metrics[f"model/{key}"] == metric.value


def final_state(run_id, epoch, tmp_path):
    path = download(run_id, f"checkpoints/epoch_{epoch:03d}.pt", tmp_path / run_id)
    return torch.load(path, weights_only=False)["model"]


def test_interrupted_run_resumes_to_the_same_weights_and_metrics(data_dir, tmp_path):
    client = MlflowClient()
    config = tiny_config(
        name="resume", hidden_sizes=[16], dropout=0.3
    )  # dropout: RNG must be restored too
    straight = train_run(config, data_dir)

    calls = iter(range(10**6))  # asked after each of 10 steps, after epoch 1, then after each step
    with pytest.raises(TrainingStopped, match="--resume") as stopped:
        train_run(
            config, data_dir, should_stop=lambda: next(calls) >= 13
        )  # after step 3 of epoch 2
    run_id = stopped.value.run_id
    assert stopped.value.exit_code == 130
    assert client.get_run(run_id).info.status == "KILLED"
    names = {f.path for f in client.list_artifacts(run_id, "checkpoints")}
    assert names == {"checkpoints/epoch_001.pt", "checkpoints/epoch_002_partial.pt"}
    assert len(history(client, run_id, "batch_loss")) == 13  # nothing recorded is lost

    assert train_run(config, data_dir, resume_run_id=run_id) == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    ours, reference = final_state(run_id, 2, tmp_path), final_state(straight, 2, tmp_path)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "batch_loss"):
        assert history(client, run_id, key) == history(client, straight, key)


def test_finished_run_can_be_extended_by_more_epochs(data_dir, tmp_path):
    client = MlflowClient()
    straight = train_run(tiny_config(name="three", epochs=3), data_dir)
    short = train_run(tiny_config(name="three", epochs=2), data_dir)
    with pytest.raises(runner.ConfigError, match="already finished 2 epochs"):
        train_run(tiny_config(name="three", epochs=2), data_dir, resume_run_id=short)
    train_run(tiny_config(name="three", epochs=3), data_dir, resume_run_id=short)
    assert history(client, short, "test_accuracy") == history(client, straight, "test_accuracy")
    with pytest.raises(runner.ConfigError, match="different configuration.*lr"):
        train_run(tiny_config(name="three", epochs=4, lr=0.5), data_dir, resume_run_id=short)


def test_non_finite_loss_fails_the_run_and_keeps_checkpoints(data_dir, monkeypatch):
    client = MlflowClient()
    real_build = models.build_model

    class PoisonAfter(torch.nn.Module):
        """Returns NaN logits from the 15th training forward pass on (inside epoch 2)."""

        def __init__(self, net):
            super().__init__()
            self.net, self.calls = net, 0

        def forward(self, x):
            if self.training:
                self.calls += 1
            out = self.net(x)
            return out * float("nan") if self.calls >= 15 else out

    monkeypatch.setattr(models, "build_model", lambda config: PoisonAfter(real_build(config)))
    with pytest.raises(
        TrainingStopped, match="diverged: loss became nan at epoch 2, step 15"
    ) as stopped:
        train_run(tiny_config(name="diverges", epochs=3), data_dir)
    run = client.get_run(stopped.value.run_id)
    assert run.info.status == "FAILED"
    assert "loss became nan" in run.data.tags["failure_reason"]
    assert {f.path for f in client.list_artifacts(run.info.run_id, "checkpoints")} == {
        "checkpoints/epoch_001.pt"
    }
    assert [s for s, _ in history(client, run.info.run_id, "test_accuracy")] == [1]
    # its losses up to the step that diverged, the last good one included
    assert [s for s, _ in history(client, run.info.run_id, "batch_loss")] == list(range(1, 15))


def test_background_metric_writer_records_the_same_points(trained_runs, data_dir, monkeypatch):
    client = MlflowClient()
    monkeypatch.setattr(
        tracking, "BACKGROUND_WRITES_FROM", 0
    )  # every run: write from a helper process
    config = tiny_config(name="fixture_mlp_again", hidden_sizes=[32])
    run_id = train_run(config, data_dir)
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in ("batch_loss", *EPOCH_METRICS[:-1]):
        assert history(client, run_id, key) == history(client, trained_runs["mlp"], key)


def test_background_writer_works_from_an_unguarded_script(data_dir, tmp_path):
    """The helper process must not import the caller's main module again (spawn would)."""
    import os
    import subprocess
    import sys

    script = (
        tmp_path / "train_here.py"
    )  # no `if __name__ == "__main__"` guard, as in a notebook export
    script.write_text(
        "from conftest import tiny_config, train_run\n"
        "from mnist_train import tracking\n"
        "tracking.BACKGROUND_WRITES_FROM = 0\n"
        f"print(train_run(tiny_config(name='unguarded'), {str(data_dir)!r}))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=180
    )
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip().splitlines()[-1]
    assert len(history(MlflowClient(), run_id, "batch_loss")) == 20


def test_a_run_logs_only_the_fields_that_apply_to_it(trained_runs):
    client = MlflowClient()
    mlp = client.get_run(trained_runs["mlp"]).data.params
    softmax = client.get_run(trained_runs["softmax"]).data.params
    for absent in ("conv_channels", "momentum", "step_size", "gamma", "min_lr"):
        assert absent not in mlp
    assert mlp["hidden_sizes"] == "[32]" and mlp["optimizer"] == "adam"
    assert "early_stopping_metric" not in mlp  # no early stopping
    for absent in ("hidden_sizes", "activation", "dropout", "conv_channels"):
        assert absent not in softmax
    assert softmax["optimizer"] == "sgd" and "momentum" in softmax
    assert "" not in {*mlp.values(), *softmax.values()}
