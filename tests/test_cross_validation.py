"""K-fold cross-validation on the training side: folds that partition the training set, the
`folds: K` sweep section, its one-line errors, and what a fold run stores (no analysis here:
tests/test_cv_labels.py reads the folds back)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from checks import assert_one_line_error
from click.testing import CliRunner
from conftest import tiny_config

from mnist_train import contract, data
from mnist_train.cli import cli
from mnist_train.config import ConfigError, RunConfig, build_config, read_experiment
from mnist_train.study_grid import expand, varying_keys

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.mark.parametrize(("n", "k"), [(10, 2), (1000, 3), (60000, 5), (7, 7), (3001, 20)])
def test_folds_partition_the_images_in_near_equal_parts(n, k):
    parts = data.folds(n, k)
    assert len(parts) == k
    joined = torch.cat(parts)
    assert sorted(joined.tolist()) == list(range(n))  # every image in exactly one fold
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(torch.equal(p, p.sort().values) for p in parts)  # each in torchvision order


def test_folds_are_fixed_whatever_the_global_generator_says():
    torch.manual_seed(1)
    first = data.folds(1000, 5)
    state = torch.get_rng_state()
    torch.manual_seed(2)
    second = data.folds(1000, 5)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    torch.manual_seed(1)
    data.folds(1000, 5)
    assert torch.equal(torch.get_rng_state(), state)  # the batches' generator is untouched


def test_a_fold_run_trains_on_the_other_folds_whatever_its_seed(data_dir):
    from mnist_train.runner import prepare_run

    full = data.load_split(data_dir, train=True).head(600)
    held = []
    for fold in range(3):
        for seed in (0, 5):
            prepared = prepare_run(
                tiny_config(max_train=600, cv_folds=3, cv_fold=fold, seed=seed), data_dir
            )
            train_index, val_index = prepared.train_index, prepared.val_index
            assert sorted([*train_index, *val_index]) == list(range(600))  # respects max_train
            assert torch.equal(prepared.val_split.labels, full.labels[val_index])
            assert torch.equal(prepared.train_split.images, full.images[train_index])
            assert len(prepared.tensors.val_y) == len(val_index)
            held.append(tuple(val_index))
    # the seed changes nothing; the three folds partition the 600 images
    assert held[0] == held[1] and held[2] == held[3] and held[4] == held[5]
    assert sorted(i for fold in held[::2] for i in fold) == list(range(600))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"cv_folds": 1}, "cv_folds must be 0 (no cross-validation) or 2 to 20, got 1"),
        ({"cv_folds": 21}, "cv_folds must be 0 (no cross-validation) or 2 to 20, got 21"),
        ({"cv_folds": 5, "cv_fold": 5}, "cv_fold must be 0 to 4 (cv_folds 5), got 5"),
        ({"cv_folds": 5, "cv_fold": -1}, "cv_fold must be 0 to 4"),
        ({"cv_fold": 2}, "cv_fold (2) needs cv_folds"),
        ({"cv_folds": 5, "validation": 5000}, "cannot be combined with validation: 5000"),
        (
            {"cv_folds": 5, "early_stopping_patience": 2},
            "early_stopping_patience cannot be combined with cross-validation",
        ),
        ({"cv_folds": 5, "max_train": 4}, "cv_folds (5) needs at least one training image"),
    ],
)
def test_bad_cross_validation_settings_are_one_clear_error(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config(values, source="cv.yaml")


def test_only_a_cross_validated_run_logs_its_fold():
    assert "cv_folds" not in RunConfig().applied_params()
    params = RunConfig(cv_folds=5, cv_fold=3).applied_params()
    assert (params["cv_folds"], params["cv_fold"]) == ("5", "3")
    assert RunConfig(cv_folds=5).holds_out and not RunConfig().holds_out


def sweep_file(tmp_path, text):
    path = tmp_path / "cv.yaml"
    path.write_text(text)
    return read_experiment(path)


def test_folds_expand_into_one_child_per_fold_and_combine_with_seeds(tmp_path):
    children = expand(sweep_file(tmp_path, "name: cv\nfolds: 4\n"))
    assert [c.name for c in children] == ["fold=0", "fold=1", "fold=2", "fold=3"]
    assert [(c.config.cv_folds, c.config.cv_fold) for c in children] == [(4, k) for k in range(4)]
    assert varying_keys(children) == ["cv_fold"]
    children = expand(sweep_file(tmp_path, "name: cv\nseeds: 2\nfolds: 3\n"))
    names = [c.name for c in children]
    assert names[:4] == ["seed=0,fold=0", "seed=0,fold=1", "seed=0,fold=2", "seed=1,fold=0"]
    assert len(children) == 6 and varying_keys(children) == ["seed", "cv_fold"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("folds: 1\n", "folds must be a number of folds from 2 to 20, got 1"),
        ("folds: 21\n", "folds must be a number of folds from 2 to 20, got 21"),
        ("folds: true\n", "folds must be a number of folds from 2 to 20, got True"),
        ("folds: [0, 1]\n", "folds must be a number of folds from 2 to 20, got [0, 1]"),
        ("folds: 5\nvalidation: 5000\n", "cannot be combined with validation: 5000"),
        ("folds: 5\ncv_fold: 2\n", "cv_fold is set by folds: 5; remove it from the file"),
        ("folds: 5\ngrid:\n  cv_fold: [0, 1]\n", "cv_fold is varied by both grid and folds"),
        ("folds: 5\nsearch:\n  trials: 3\n", "search cannot be combined with folds"),
    ],
)
def test_bad_folds_sections_are_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "cv.yaml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["run", str(path)])
    assert_one_line_error(result.output, result.exit_code, f"{path}: ", message)


def test_a_swept_fold_cannot_be_overridden(tmp_path):
    with pytest.raises(ConfigError, match="cannot override cv_fold: the sweep varies it"):
        expand(sweep_file(tmp_path, "folds: 3\n"), {"cv_fold": 1})


def test_a_fold_run_stores_its_held_out_images_at_the_model_of_record(data_dir, tmp_path):
    from mlflow import MlflowClient

    from mnist_train.runner import prepare_run, run_training

    prepared = prepare_run(
        tiny_config(name="fold1", max_train=600, cv_folds=3, cv_fold=1), data_dir
    )
    result = run_training(prepared)
    client = MlflowClient()
    path = client.download_artifacts(result.run_id, contract.HELDOUT_PREDICTIONS_PATH, tmp_path)
    with np.load(path) as npz:
        labels, probs, index = npz["labels"], npz["probs"], npz["index"]
    assert probs.dtype == np.float32 and probs.shape == (200, 10)
    np.testing.assert_array_equal(index, prepared.val_index)
    np.testing.assert_array_equal(labels, prepared.val_split.labels.numpy())
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    # the model of record's validation accuracy is the held-out fold's
    val_accuracy = client.get_run(result.run_id).data.metrics["model/val_accuracy"]
    assert (probs.argmax(1) == labels).mean() == pytest.approx(val_accuracy)
    # the training record holds the other folds, by their positions in the training set
    record = client.download_artifacts(result.run_id, contract.TRAIN_DYNAMICS_PATH, tmp_path)
    with np.load(record) as npz:
        np.testing.assert_array_equal(npz["index"], prepared.train_index)


def test_the_example_file_is_five_folds_of_one_setting():
    children = expand(read_experiment(EXPERIMENTS / "cv_labels.yaml"))
    assert [c.name for c in children] == [f"fold={k}" for k in range(5)]
    assert varying_keys(children) == ["cv_fold"]
    assert {(c.config.cv_folds, c.config.validation) for c in children} == {(5, 0)}


@pytest.mark.full_data
def test_the_example_folds_partition_the_full_training_set(full_data_dir):
    from mnist_train.runner import prepare_run

    held = []
    for child in expand(read_experiment(EXPERIMENTS / "cv_labels.yaml")):
        prepared = prepare_run(child.config, full_data_dir)
        assert len(prepared.train_index) == 48_000 and len(prepared.val_index) == 12_000
        assert not set(prepared.train_index.tolist()) & set(prepared.val_index.tolist())
        held.append(prepared.val_index)
    assert sorted(np.concatenate(held).tolist()) == list(range(60_000))
