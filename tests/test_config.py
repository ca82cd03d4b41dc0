import pytest

from mnist_train.config import (
    ConfigError,
    RunConfig,
    build_config,
    parse_overrides,
    read_experiment,
    resolve,
)


def test_defaults_are_the_seed_mlp():
    config = RunConfig()
    assert (config.model, config.hidden_sizes, config.optimizer, config.lr) == (
        "mlp",
        (100,),
        "adam",
        1e-3,
    )


def test_overrides_are_typed_like_the_fields():
    values = parse_overrides(
        ["lr=1e-2", "hidden_sizes=[200, 50]", "drop_last=true", "max_train=null", "epochs=5"]
    )
    assert values == {
        "lr": 0.01,
        "hidden_sizes": (200, 50),
        "drop_last": True,
        "max_train": None,
        "epochs": 5,
    }
    config = build_config(values)
    assert config.hidden_sizes == (200, 50) and config.epochs == 5


def test_int_is_accepted_where_a_float_is_expected_but_not_the_reverse():
    assert build_config({"lr": 1}).lr == 1.0
    with pytest.raises(ConfigError, match="epochs must be int"):
        build_config({"epochs": 2.5})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"nope": 1}, "unknown config key 'nope'"),
        ({"epochs": "three"}, "epochs must be int"),
        ({"lr": 0}, "lr must be > 0"),
        ({"lr": -0.1}, "lr must be > 0"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
        ({"model": "resnet"}, "model must be one of softmax, mlp, cnn"),
        ({"activation": "gelu"}, "activation must be one of relu, tanh, sigmoid"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, adam"),
        ({"normalize": "zscore"}, "normalize must be one of"),
        ({"hidden_sizes": [100, 0]}, "hidden_sizes must be positive"),
        ({"hidden_sizes": "wide"}, "hidden_sizes must be a list of int"),
        ({"drop_last": "yes"}, "drop_last must be bool"),
        ({"max_train": 0}, "max_train must be >= 1 or null"),
    ],
)
def test_bad_values_are_one_clear_error(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(values, source="exp.yaml")


def test_errors_name_their_source():
    with pytest.raises(ConfigError, match=r"^exp.yaml: lr must be > 0"):
        build_config({"lr": 0}, source="exp.yaml")


def test_params_are_flat_strings_of_every_field():
    params = RunConfig(hidden_sizes=(200, 50)).to_params()
    assert params["hidden_sizes"] == "[200, 50]"
    assert set(params) == set(RunConfig.__dataclass_fields__)
    assert all(isinstance(v, str) for v in params.values())


def test_experiment_file_with_override(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("description: why\nmodel: softmax\nlr: 0.5\n")
    config = resolve(read_experiment(path), parse_overrides(["lr=0.25"]))
    assert (config.model, config.lr) == ("softmax", 0.25)


def test_experiment_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="experiment file not found"):
        read_experiment(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_experiment(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown config key 'learning_rate'"):
        resolve(read_experiment(typo), {})


def test_seed_experiment_files_reproduce_the_notebooks():
    softmax = resolve(read_experiment("experiments/seed001_softmax.yaml"), {})
    assert (softmax.model, softmax.optimizer, softmax.lr, softmax.batch_size) == (
        "softmax",
        "sgd",
        0.1,
        100,
    )
    assert (softmax.epochs, softmax.seed, softmax.normalize, softmax.drop_last) == (
        15,
        777,
        "none",
        True,
    )
    mlp = resolve(read_experiment("experiments/seed000_mlp.yaml"), {})
    assert (mlp.hidden_sizes, mlp.activation, mlp.optimizer, mlp.lr) == (
        (100,),
        "relu",
        "adam",
        1e-3,
    )
    assert (mlp.batch_size, mlp.test_batch_size, mlp.epochs, mlp.normalize) == (
        128,
        1000,
        3,
        "estimate",
    )
