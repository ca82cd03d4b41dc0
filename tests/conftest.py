"""Shared fixtures: a copy of the committed MNIST slice, one SQLite tracking store per session,
and two tiny runs trained on the slice that analysis tests can read."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

FIXTURE_DATA = Path(__file__).parent / "fixtures" / "mnist"

# Small enough to train in about a second, large enough to learn something.
TINY = dict(max_train=1000, max_test=200, epochs=2, batch_size=100, test_batch_size=100)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A private copy of the fixture data (loading unpacks the .gz files next to them)."""
    target = tmp_path_factory.mktemp("data") / "mnist"
    shutil.copytree(FIXTURE_DATA, target)
    return target


@pytest.fixture(scope="session")
def full_data_dir() -> Path:
    """The full MNIST from MNIST_DATA_DIR; tests using it are skipped when it is absent."""
    value = os.environ.get("MNIST_DATA_DIR")
    if not value or not (Path(value) / "MNIST" / "raw").is_dir():
        pytest.skip("full MNIST not available (set MNIST_DATA_DIR)")
    return Path(value)


@pytest.fixture(autouse=True)
def restore_environment():
    """Each test leaves the environment as it found it: the CLIs settle process settings (the
    tracking URI among them) in `os.environ`, as a command's `main` does."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


@pytest.fixture(scope="session", autouse=True)
def tracking_uri(tmp_path_factory) -> str:
    """One SQLite store for the whole session (creating one costs seconds), never ./mlflow.db,
    and a private cache for the artifacts analysis downloads."""
    store = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    # through the environment only, so a test can point one call elsewhere with monkeypatch.setenv
    changes = {
        "MLFLOW_TRACKING_URI": uri,
        "MNIST_WORKBENCH_CACHE": str(tmp_path_factory.mktemp("cache")),
    }
    previous = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    yield uri
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def tiny_config(**changes):
    from mnist_train.config import build_config

    return build_config({**TINY, "experiment": "tests", **changes})


def train_run(config, data_dir, **kwargs) -> str:
    from mnist_train.runner import prepare_run, run_training

    return run_training(prepare_run(config, data_dir), **kwargs).run_id


@pytest.fixture(scope="session")
def trained_runs(data_dir, tracking_uri) -> dict[str, str]:
    """Run ids of two finished runs on the fixture slice, in experiment `fixture-runs`:
    `mlp` (784-32-10, Adam) and `softmax` (SGD). Read them, don't modify them."""
    common = dict(experiment="fixture-runs")
    return {
        "mlp": train_run(tiny_config(name="fixture_mlp", hidden_sizes=[32], **common), data_dir),
        "softmax": train_run(
            tiny_config(
                name="fixture_softmax",
                model="softmax",
                optimizer="sgd",
                lr=0.1,
                normalize="none",
                **common,
            ),
            data_dir,
        ),
    }
