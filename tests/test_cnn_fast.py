"""experiments/cnn_fast.yaml and the two CNN options it needs: `batch_norm` and `channels_last`.

How fast the recipe reaches 99% is measured by benchmarks/bench_fast.py, not here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_config
from mlflow.tracking import MlflowClient
from test_train_features import run_to_the_end

from mnist_train import models
from mnist_train.cli import cli
from mnist_train.config import ConfigError, build_config, parse_overrides, read_experiment, resolve
from mnist_train.runner import prepare_run

RECIPE = Path(__file__).resolve().parent.parent / "experiments" / "cnn_fast.yaml"
SMALL_CNN = {"model": "cnn", "conv_channels": [4, 8, 16], "hidden_sizes": [16]}


def recipe_config(**overrides):
    return resolve(read_experiment(RECIPE), overrides)


def test_the_recipe_loads_and_validates():
    config = recipe_config()
    assert config.model == "cnn" and config.batch_norm and config.channels_last
    assert config.validation > 0  # chosen on validation, and logs val_* to choose on
    model = models.build_model(config)
    assert model(torch.zeros(3, 784)).shape == (3, 10)


def test_both_options_are_off_by_default_and_leave_the_cnn_as_it_was():
    config = build_config({"model": "cnn", "conv_channels": [16, 32]})
    assert not config.batch_norm and not config.channels_last
    kinds = [type(layer).__name__ for layer in models.build_model(config)]
    assert kinds[:7] == ["Unflatten", "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d"]


@pytest.mark.parametrize("key", ["batch_norm", "channels_last"])
def test_options_are_checked_like_every_field(key):
    assert parse_overrides([f"{key}=true"]) == {key: True}
    with pytest.raises(ConfigError, match=f"{key} must be bool"):
        build_config({key: "sometimes"})
    with pytest.raises(ConfigError, match=f"{key} must be bool"):
        parse_overrides([f"{key}=2"])


def test_batch_norm_normalises_each_pooled_map_before_its_activation():
    config = build_config({**SMALL_CNN, "batch_norm": True, "activation": "tanh"})
    model = models.build_model(config)
    kinds = [type(layer).__name__ for layer in model]
    assert kinds[1:5] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "Tanh"]
    convs = [layer for layer in model if isinstance(layer, torch.nn.Conv2d)]
    assert all(conv.bias is None for conv in convs)  # the normalisation's shift replaces it
    norms = [layer.num_features for layer in model if isinstance(layer, torch.nn.BatchNorm2d)]
    assert norms == SMALL_CNN["conv_channels"]
    plain = models.build_model(build_config(SMALL_CNN))
    # each conv loses its bias (c) and gains a scale and a shift (2c)
    channels = sum(SMALL_CNN["conv_channels"])
    assert models.count_parameters(model) == models.count_parameters(plain) + channels


@pytest.mark.parametrize("batch_norm", [False, True])
def test_channels_last_is_the_same_function(batch_norm):
    base = build_config({**SMALL_CNN, "batch_norm": batch_norm})
    torch.manual_seed(0)
    nchw = models.build_model(base)
    nhwc = models.build_model(build_config({**base.to_dict(), "channels_last": True}))
    nhwc.load_state_dict(nchw.state_dict())
    convs = [layer for layer in nhwc if isinstance(layer, torch.nn.Conv2d)]
    # the first conv's weight (c, 1, 3, 3) is both layouts at once; the others are NHWC only
    assert all(conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convs)
    assert not convs[1].weight.is_contiguous()
    x = torch.rand(6, 784)
    for mode in ("train", "eval"):
        getattr(nchw, mode)(), getattr(nhwc, mode)()
        torch.testing.assert_close(nhwc(x), nchw(x), rtol=1e-4, atol=1e-5)


def test_a_resumed_run_with_both_options_ends_bit_identical(data_dir):
    config = tiny_config(
        max_train=400,
        max_test=100,
        epochs=2,
        validation=100,
        scheduler="onecycle",
        batch_norm=True,
        channels_last=True,
        **SMALL_CNN,
    )
    tensors = prepare_run(config, data_dir).tensors
    straight = run_to_the_end(config, tensors)
    resumed = run_to_the_end(config, tensors, stop_after_steps=4)  # inside epoch 2 (3 steps each)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)  # running stats too


def test_the_recipe_trains_one_short_run_through_the_cli(data_dir):
    result = CliRunner().invoke(
        cli,
        [
            "run",
            str(RECIPE),
            "--data-dir",
            str(data_dir),
            "--max-train",
            "1000",
            "--max-test",
            "200",
            "--set",
            "validation=200",
            "--set",
            "experiment=cnn-fast-tests",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip().splitlines()[-1]
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    params, metrics = run.data.params, run.data.metrics
    assert params["batch_norm"] == "True" and params["channels_last"] == "True"
    assert params["conv_channels"] == str(list(recipe_config().conv_channels))
    for key in ("train_time_s", "val_accuracy", "test_accuracy"):
        assert key in metrics
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["train_time_s"] > 0


@pytest.mark.full_data
def test_the_recipe_on_full_mnist_logs_a_model_that_gives_its_predictions(full_data_dir):
    """One epoch on all of MNIST (about 10 s on 2 cores): the logged model, loaded back,
    predicts what the run stored."""
    import mlflow

    from mnist_train.runner import run_training

    config = recipe_config(experiment="full-data-tests", system_metrics=False)
    run_id = run_training(prepare_run(config, full_data_dir)).run_id
    client = MlflowClient()
    metrics = client.get_run(run_id).data.metrics
    assert metrics["predictions_epoch"] == config.epochs
    stored = np.load(client.download_artifacts(run_id, "predictions/test.npz"))
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/{config.name}")
    from mnist_train import data

    _, test = data.load_mnist(full_data_dir)
    pixels = test.images.reshape(len(test), -1).float().div(255)
    with torch.no_grad():
        predicted = model(pixels).argmax(1).numpy()
    np.testing.assert_array_equal(predicted, stored["probs"].argmax(1))
    assert metrics["test_accuracy"] == pytest.approx(np.mean(predicted == stored["labels"]))
