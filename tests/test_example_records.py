"""Per-example records: every training image's correctness and label probability per epoch, and
every epoch's test probabilities, taken from passes training already makes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_config, train_run

from mnist_train.runner import TrainingStopped


def arrays(run_id, path, tmp_path):
    import mlflow

    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=path, dst_path=str(tmp_path / run_id)
    )
    with np.load(local) as npz:
        return {key: npz[key] for key in npz.files}


def test_records_agree_with_the_logged_metrics(trained_runs, tmp_path):
    from mlflow.tracking import MlflowClient

    run_id = trained_runs["mlp"]
    train = arrays(run_id, "dynamics/train.npz", tmp_path)
    test = arrays(run_id, "predictions/test_by_epoch.npz", tmp_path)
    stored = arrays(run_id, "predictions/test.npz", tmp_path)
    assert train["correct"].shape == (2, 1000) and train["correct"].dtype == bool
    assert train["label_prob"].dtype == np.float16 and test["probs"].dtype == np.float16
    assert test["probs"].shape == (2, 200, 10) and list(train["epochs"]) == [1, 2]
    np.testing.assert_array_equal(train["index"], np.arange(1000))
    history = MlflowClient().get_metric_history(run_id, "train_accuracy")
    accuracy = {m.step: m.value for m in history}
    for e, epoch in enumerate(train["epochs"]):  # every image trained once an epoch
        assert train["correct"][e].mean() == pytest.approx(accuracy[int(epoch)])
    assert np.all((train["label_prob"] >= 0) & (train["label_prob"] <= 1))
    np.testing.assert_allclose(test["probs"][-1], stored["probs"], atol=1e-3)  # float16 of it
    np.testing.assert_array_equal(test["index"], stored["index"])


def test_a_resumed_runs_record_equals_an_uninterrupted_ones(data_dir, tmp_path):
    config = tiny_config(name="record-resume", experiment="records", dropout=0.2, hidden_sizes=[16])
    straight = train_run(config, data_dir)
    calls = iter(range(10**6))
    with pytest.raises(TrainingStopped) as stopped:
        train_run(config, data_dir, should_stop=lambda: next(calls) >= 14)  # mid epoch 2
    resumed = train_run(config, data_dir, resume_run_id=stopped.value.run_id)
    for path in ("dynamics/train.npz", "predictions/test_by_epoch.npz"):
        a, b = arrays(straight, path, tmp_path), arrays(resumed, path, tmp_path)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_the_record_can_be_switched_off(data_dir):
    from mlflow.tracking import MlflowClient

    run_id = train_run(tiny_config(name="no-record", per_example_record=False), data_dir)
    assert not MlflowClient().list_artifacts(run_id, "dynamics")
