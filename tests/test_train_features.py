"""Validation split, early stopping, schedules, weight decay, the CNN and system metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config, train_run
from mlflow.tracking import MlflowClient

from mnist_train import data, models
from mnist_train.config import ConfigError, build_config
from mnist_train.runner import TrainingStopped, build_trainable, prepare_run
from mnist_train.train import EpochRecord, Progress, checkpoint, infer, restore, track_best, train


def history(client, run_id, key):
    points = client.get_metric_history(run_id, key)
    return [(m.step, m.value) for m in sorted(points, key=lambda m: (m.step, m.timestamp))]


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "values, message",
    [
        ({"validation": 1000, "max_train": 1000}, "validation \\(1000\\) must be less than"),
        ({"validation": -1}, "validation must be >= 0"),
        ({"early_stopping_patience": 2}, "early_stopping_patience needs a validation split"),
        ({"early_stopping_patience": 0, "validation": 10}, "early_stopping_patience must be >= 1"),
        ({"early_stopping_metric": "test_loss"}, "early_stopping_metric must be one of"),
        ({"scheduler": "linear"}, "scheduler must be one of none, step, cosine, onecycle"),
        ({"scheduler": "step"}, "scheduler step needs step_size"),
        ({"scheduler": "cosine", "min_lr": 0.01, "lr": 0.001}, "min_lr must be in"),
        ({"model": "cnn", "conv_channels": []}, "conv_channels must list at least one"),
        ({"model": "cnn", "conv_channels": [16, 0]}, "conv_channels must be positive"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, adam, adamw"),
    ],
)
def test_bad_training_options_are_one_line_naming_the_field(values, message):
    with pytest.raises(ConfigError, match=f"^exp.yaml: {message}"):
        build_config(values, source="exp.yaml")


def test_validation_beyond_the_training_images_fails_before_any_run(data_dir):
    with pytest.raises(ConfigError, match="validation \\(5000\\) must be less than the 3000"):
        prepare_run(build_config({"validation": 5000}), data_dir)


# --------------------------------------------------------------------------- validation split


def test_validation_holds_out_the_last_images_and_is_scored_each_epoch(data_dir):
    config = tiny_config(name="val", validation=200, experiment="features")
    prepared = prepare_run(config, data_dir)
    full, _ = data.load_mnist(data_dir)
    assert len(prepared.train_split) == 800 and len(prepared.val_split) == 200
    assert torch.equal(prepared.val_split.labels, full.labels[800:1000])  # the last 200 of 1000
    assert torch.equal(prepared.train_split.labels, full.labels[:800])

    run_id = train_run(config, data_dir)
    run = MlflowClient().get_run(run_id)
    assert run.data.params["val_images"] == "200" and run.data.params["train_images"] == "800"
    for key in ("val_loss", "val_accuracy"):
        assert [step for step, _ in history(MlflowClient(), run_id, key)] == [1, 2]
    contexts = {d.tags[0].value for d in run.inputs.dataset_inputs}
    assert contexts == {"training", "testing", "validation"}


def test_validation_scores_equal_a_fresh_evaluation(data_dir):
    config = tiny_config(validation=200, epochs=1)
    prepared = prepare_run(config, data_dir)
    parts = build_trainable(config, prepared.device, len(prepared.tensors.train_y))
    record = [r for r in train(parts.model, parts.optimizer, prepared.tensors, config, Progress())][
        -1
    ]
    logits = infer(parts.model, prepared.tensors.val_x, 1000)
    expected = (logits.argmax(1) == prepared.tensors.val_y).float().mean().item()
    assert record.val_accuracy == pytest.approx(expected)


# --------------------------------------------------------------------------- early stopping


def record(epoch: int, val_loss: float) -> EpochRecord:
    return EpochRecord(epoch, 0.0, 0.0, 0.0, 0.0, 0.0, np.zeros((1, 10)), val_loss, 0.5)


def test_early_stopping_tracks_the_best_epoch_and_stops_after_patience():
    config = build_config({"validation": 10, "early_stopping_patience": 2})
    progress = Progress()
    stops = []
    for epoch, loss in enumerate([0.5, 0.4, 0.41, 0.40, 0.39], start=1):
        track_best(progress, record(epoch, loss), config)
        stops.append(progress.stopped_early)
        if progress.stopped_early:
            break  # as train() does
    # 0.40 at epoch 4 ties the best (0.4) without beating it: the earlier epoch stays best
    assert stops == [False, False, False, True]
    assert progress.best_epoch == 2 and progress.best_value == 0.4


def test_early_stopping_on_accuracy_prefers_larger_values():
    config = build_config(
        {"validation": 10, "early_stopping_patience": 1, "early_stopping_metric": "val_accuracy"}
    )
    progress = Progress()
    for epoch, (loss, acc) in enumerate([(0.5, 0.8), (0.6, 0.9), (0.4, 0.85)], start=1):
        rec = EpochRecord(epoch, 0, 0, 0, 0, 0, np.zeros((1, 10)), loss, acc)
        track_best(progress, rec, config)
    assert progress.best_epoch == 2 and progress.stopped_early


def test_an_early_stopped_run_logs_the_best_epochs_model_and_predictions(data_dir, tmp_path):
    # lr 1.0 on SGD overshoots after the first epochs: validation loss stops improving
    config = tiny_config(
        name="early",
        experiment="features",
        validation=200,
        epochs=8,
        early_stopping_patience=1,
        optimizer="sgd",
        lr=2.0,
    )
    run_id = train_run(config, data_dir)
    client = MlflowClient()
    metrics = client.get_run(run_id).data.metrics
    best, stopped = int(metrics["best_epoch"]), int(metrics["stopped_epoch"])
    val = dict(history(client, run_id, "val_loss"))
    assert stopped < 8 and stopped == max(val) and stopped == best + 1
    assert val[best] == min(val.values())
    assert metrics["predictions_epoch"] == best

    import mlflow

    stored = np.load(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="predictions/test.npz", dst_path=str(tmp_path)
        )
    )
    state = torch.load(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"checkpoints/epoch_{best:03d}.pt", dst_path=str(tmp_path)
        ),
        weights_only=True,
    )
    prepared = prepare_run(config, data_dir)
    model = models.build_model(config)
    model.load_state_dict(state["model"])
    fresh = torch.softmax(infer(model, prepared.tensors.test_x, 1000), 1).numpy()
    np.testing.assert_allclose(stored["probs"], fresh, atol=1e-6)
    last = dict(history(client, run_id, "test_accuracy"))
    assert np.mean(stored["probs"].argmax(1) == stored["labels"]) == pytest.approx(last[best])

    with pytest.raises(ConfigError, match="stopped early"):
        train_run(
            config.__class__(**{**config.to_dict(), "epochs": 9}), data_dir, resume_run_id=run_id
        )


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    "changes",
    [
        {"scheduler": "step", "step_size": 1, "gamma": 0.5},
        {"scheduler": "cosine", "min_lr": 1e-4, "epochs": 3},
    ],
)
def test_epoch_schedules_log_the_rate_torch_computes(data_dir, changes):
    config = tiny_config(experiment="features", **changes)
    run_id = train_run(config, data_dir)
    logged = [value for _, value in history(MlflowClient(), run_id, "lr")]
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    schedule = models.build_scheduler(config, reference, steps_per_epoch=10)
    expected = []
    for _ in range(config.epochs):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        schedule.step()
    np.testing.assert_allclose(logged, expected, rtol=1e-12)


def test_no_schedule_logs_no_rate(trained_runs):
    assert history(MlflowClient(), trained_runs["mlp"], "lr") == []


def run_to_the_end(config, tensors, *, stop_after_steps=None):
    """train() from scratch, or stopped after N steps, checkpointed, rebuilt and resumed."""
    parts = build_trainable(config, torch.device("cpu"), len(tensors.train_y))
    progress = Progress()
    if stop_after_steps is None:
        for _ in train(
            parts.model, parts.optimizer, tensors, config, progress, scheduler=parts.scheduler
        ):
            pass
        return parts.model.state_dict()
    seen = iter(range(10**6))
    for _ in train(
        parts.model,
        parts.optimizer,
        tensors,
        config,
        progress,
        lambda: next(seen) >= stop_after_steps,
        parts.scheduler,
    ):
        pass
    assert progress.epoch <= config.epochs  # really interrupted
    state = checkpoint(parts.model, parts.optimizer, progress, config, parts.scheduler)
    torch.save(state, buffer := __import__("io").BytesIO())
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # only tensors and plain values inside
    fresh = build_trainable(config, torch.device("cpu"), len(tensors.train_y))
    torch.manual_seed(12345)  # whatever the RNG did since, restore() puts it back
    progress = restore(state, fresh.model, fresh.optimizer, fresh.scheduler)
    for _ in train(
        fresh.model, fresh.optimizer, tensors, config, progress, scheduler=fresh.scheduler
    ):
        pass
    return fresh.model.state_dict()


@pytest.mark.parametrize(
    "changes",
    [
        {"scheduler": "onecycle", "dropout": 0.3},
        {"scheduler": "cosine", "optimizer": "adamw", "weight_decay": 0.01},
        {
            "model": "cnn",
            "conv_channels": [4, 8],
            "hidden_sizes": [16],
            "scheduler": "step",
            "step_size": 1,
        },
    ],
)
def test_a_resumed_run_ends_bit_identical_with_schedules_and_the_cnn(data_dir, changes):
    config = tiny_config(max_train=400, max_test=100, epochs=3, validation=100, **changes)
    tensors = prepare_run(config, data_dir).tensors
    straight = run_to_the_end(config, tensors)
    resumed = run_to_the_end(config, tensors, stop_after_steps=5)  # inside epoch 2 (3 steps each)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


# --------------------------------------------------------------------------- models


def test_cnn_shapes_and_parameter_summary():
    config = build_config({"model": "cnn", "conv_channels": [16, 32], "hidden_sizes": [128]})
    model = models.build_model(config)
    assert model(torch.zeros(5, 784)).shape == (5, 10)
    summary = dict((name, count) for name, _, count in models.parameter_summary(model))
    # conv 1->16 (3x3 + bias), conv 16->32, dense 32*7*7->128, 128->10
    assert list(summary.values()) == [144, 16, 4608, 32, 1568 * 128, 128, 1280, 10]
    assert models.count_parameters(model) == 160 + 4640 + 200832 + 1290
    assert "total" in models.summary_text(model)


def test_weight_decay_reaches_every_optimizer():
    for optimizer in ("sgd", "adam", "adamw"):
        config = build_config({"optimizer": optimizer, "weight_decay": 0.01})
        built = models.build_optimizer(config, models.build_model(config))
        assert built.param_groups[0]["weight_decay"] == 0.01
    assert isinstance(
        models.build_optimizer(
            build_config({"optimizer": "adamw"}), models.build_model(build_config({}))
        ),
        torch.optim.AdamW,
    )


def test_cnn_trains_and_logs_like_any_run(data_dir):
    config = tiny_config(
        name="tiny_cnn", experiment="features", model="cnn", conv_channels=[4], hidden_sizes=[16]
    )
    run_id = train_run(config, data_dir)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["conv_channels"] == "[4]"
    assert run.data.metrics["test_accuracy"] > 0.3  # learns something in 2 tiny epochs


# --------------------------------------------------------------------------- system metrics


def test_system_metrics_fill_the_runs_system_tab(data_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    config = tiny_config(name="sys", experiment="features", epochs=6, max_train=3000)
    run_id = train_run(config, data_dir)
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert any(key.startswith("system/cpu_utilization") for key in metrics), sorted(metrics)
    off = train_run(
        tiny_config(name="nosys", experiment="features", system_metrics=False), data_dir
    )
    assert not any(k.startswith("system/") for k in MlflowClient().get_run(off).data.metrics)


def test_stopping_a_scheduled_run_keeps_it_resumable(data_dir):
    config = tiny_config(name="sched-stop", experiment="features", scheduler="onecycle")
    calls = iter(range(10**6))
    with pytest.raises(TrainingStopped) as stopped:
        train_run(config, data_dir, should_stop=lambda: next(calls) >= 4)
    assert train_run(config, data_dir, resume_run_id=stopped.value.run_id) == stopped.value.run_id


# ----------------------------------------------------------------------- selection on validation


def log_validated_run(uri, experiment, name, *, val, test, labels, seed):
    """A run whose validation and test accuracy curves are given (3 epochs)."""
    from analysis_helpers import fake_predictions, log_contract_run

    epochs = {
        "train_loss": [0.5, 0.3, 0.2],
        "train_accuracy": [0.9, 0.95, 0.97],
        "test_loss": [0.4, 0.3, 0.35],
        "test_accuracy": test,
        "val_loss": [0.4, 0.3, 0.35],
        "val_accuracy": val,
        "epoch_time_s": [1.0, 1.0, 1.0],
    }
    return log_contract_run(
        uri,
        experiment,
        run_name=name,
        params={"model": "mlp", "lr": name, "seed": "0"},
        epochs=epochs,
        n_steps=6,
        final={"overfit_gap": (0.01, 3), "train_time_s": (3.0, 3)},
        probs=fake_predictions(labels, accuracy=test[-1], seed=seed),
        labels=labels,
        index=np.arange(len(labels)),
    )


def test_a_validated_comparison_picks_and_marks_its_best_run_on_validation(tracking_uri, tmp_path):
    from analysis_helpers import fixture_test_labels

    from analysis.compare_report import compare_runs

    labels = fixture_test_labels()
    # "b" is best on test, "a" on validation: a report that chose on test would pick "b"
    a = log_validated_run(
        tracking_uri,
        "sel",
        "a",
        val=[0.9, 0.95, 0.97],
        test=[0.9, 0.9, 0.90],
        labels=labels,
        seed=1,
    )
    b = log_validated_run(
        tracking_uri,
        "sel",
        "b",
        val=[0.9, 0.92, 0.93],
        test=[0.9, 0.9, 0.96],
        labels=labels,
        seed=2,
    )
    comparison, path, _ = compare_runs(
        out_dir=tmp_path / "report", run_ids=[a, b], log_to_mlflow=False
    )
    assert comparison.selection.idxmax() == a
    assert comparison.findings[0].startswith("a is the best run on validation accuracy (97.00%")
    assert "chosen on validation" in comparison.findings[0]
    html = path.read_text()
    assert "a (baseline) (best on validation)" in html or "a (best on validation)" in html
    assert "b (best on validation)" not in html


def test_a_comparison_without_validation_says_its_ranking_is_on_test(trained_runs, tmp_path):
    from analysis.compare_report import compare_runs

    comparison, _, _ = compare_runs(
        out_dir=tmp_path / "report", run_ids=list(trained_runs.values()), log_to_mlflow=False
    )
    assert comparison.selection is None
    assert "this ranking is on the test set" in comparison.findings[0]


def test_sweep_summary_names_its_best_child_on_validation():
    from mnist_train.study_grid import Child, best_child, summary_rows

    children = [
        Child(n, build_config({"name": n, "lr": lr})) for n, lr in (("x", 0.1), ("y", 0.01))
    ]
    metrics = {
        "r1": {"val_accuracy": 0.97, "test_accuracy": 0.95, "predictions_epoch": 2.0},
        "r2": {"val_accuracy": 0.96, "test_accuracy": 0.98, "predictions_epoch": 3.0},
    }
    rows = summary_rows(children, [("r1", "FINISHED"), ("r2", "FINISHED")], metrics)
    assert "val_accuracy" in rows[0] and "stopped_epoch" not in rows[0]
    assert rows[0]["predictions_epoch"] == 2  # which epoch the scores are of, as an integer
    assert best_child(rows) == "Best on val_accuracy: x (0.9700; test accuracy 0.9500, epoch 2)."
    plain = summary_rows(
        children,
        [("r1", "FINISHED"), ("r2", "FINISHED")],
        {"r1": {"test_accuracy": 0.95}, "r2": {"test_accuracy": 0.98}},
    )
    assert "val_accuracy" not in plain[0]
    assert best_child(plain).startswith("Best on test_accuracy: y")
    assert "overstates" in best_child(plain)
