"""Run configuration: one frozen dataclass of plain values, experiment files and `--set` overrides.

An experiment file (YAML) holds only the fields it changes from these defaults. Every field ends
up, flat, in the MLflow run's parameters and in each checkpoint, so a run says exactly what it was.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration the user wrote is wrong; the message is shown as is."""


MODELS = ("softmax", "mlp", "cnn")
ACTIVATIONS = ("relu", "tanh", "sigmoid")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "step", "cosine", "onecycle")
STOPPING_METRICS = ("val_loss", "val_accuracy")
NORMALIZATIONS = ("none", "estimate", "standard")
DEVICES = ("auto", "cpu", "cuda")


# torch threads: more than any CPU here has; 100,000 aborted the process inside libgomp
MAX_THREADS = 256
MAX_FOLDS = 20  # cross-validation folds: beyond 20 each fold's model costs more than it adds


@dataclass(frozen=True)
class RunConfig:
    # naming
    name: str = "mnist"  # MLflow run name; say what the run is, e.g. "seed000_mlp" or "lr=0.01"
    experiment: str = "mnist"  # MLflow experiment the run is recorded in
    # model
    model: str = "mlp"  # softmax (one Linear 784->10) | mlp | cnn
    hidden_sizes: tuple[int, ...] = (100,)  # mlp hidden widths; (100,) is the seed's 784-100-10
    activation: str = "relu"  # relu | tanh | sigmoid (mlp and cnn)
    dropout: float = 0.0  # dropout probability after each hidden activation, in [0, 1)
    conv_channels: tuple[int, ...] = (32, 64)  # cnn: one 3x3 conv + 2x2 max-pool per entry
    batch_norm: bool = False  # cnn: conv, max-pool, BatchNorm2d, activation per entry
    channels_last: bool = False  # cnn: NHWC tensors, oneDNN's own layout on CPU (same function)
    # optimisation
    optimizer: str = "adam"  # sgd | adam | adamw
    lr: float = 1e-3  # learning rate (onecycle: its peak)
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0  # L2 penalty (sgd, adam) or decoupled decay (adamw), >= 0
    scheduler: str = "none"  # none | step | cosine (over all epochs) | onecycle (per step)
    step_size: int | None = None  # step: epochs between decays (required for step)
    gamma: float = 0.1  # step: factor per decay, in (0, 1]
    min_lr: float = 0.0  # cosine: the final learning rate
    batch_size: int = 128  # training images per step
    test_batch_size: int = 1000  # images per evaluation chunk (affects speed only, not results)
    drop_last: bool = False  # drop the last, smaller training batch of each epoch
    epochs: int = 3
    seed: int = 0  # torch seed: initial weights, shuffling order and dropout masks
    # validation and early stopping: every "best" is chosen on validation, never on test
    validation: int = 0  # hold out the last N training images (the classic split: 5000)
    early_stopping_patience: int | None = None  # stop after N epochs without improvement
    early_stopping_metric: str = "val_loss"  # val_loss (lower is better) | val_accuracy
    # cross-validation (a `folds: K` sweep sets both): the run holds out fold `cv_fold` of
    # `cv_folds` as its validation split and trains on the other folds
    cv_folds: int = 0  # K folds of the training images (0: no cross-validation; else 2 to 20)
    cv_fold: int = 0  # the fold held out, 0 to K-1
    # data
    normalize: str = (
        "estimate"  # none (pixels/255) | estimate (mean/std of 1000 train images) | standard
    )
    max_train: int | None = None  # use only the first N training images (None: all 60,000)
    max_test: int | None = None  # use only the first N test images (None: all 10,000)
    # extras
    unscaled_eval: bool = (
        False  # also score the model on raw 0-255 pixels, as seed 001's notebook did
    )
    device: str = "auto"  # auto (cuda when present) | cpu | cuda
    system_metrics: bool = True  # MLflow's CPU / memory (/ GPU) sampling, the run's System tab
    per_example_record: bool = True  # each image's correctness and label probability per epoch
    threads: int = 1  # torch CPU threads (0: torch's default, one per core); more gain ~20% on an
    #                   idle machine but collapse when another process holds a core

    def __post_init__(self) -> None:
        _check_choice("model", self.model, MODELS)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("normalize", self.normalize, NORMALIZATIONS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("scheduler", self.scheduler, SCHEDULERS)
        _check_choice("early_stopping_metric", self.early_stopping_metric, STOPPING_METRICS)
        if not self.name.strip():
            raise ConfigError("name must not be empty")
        if not self.experiment.strip():
            raise ConfigError("experiment must not be empty")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        for key in ("batch_size", "test_batch_size", "epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be in [0, 2**63), got {self.seed}")
        if not 0 <= self.threads <= MAX_THREADS:
            raise ConfigError(f"threads must be from 0 to {MAX_THREADS}, got {self.threads}")
        for key in ("max_train", "max_test"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be >= 1 or null, got {value}")
        if self.model == "mlp" and not self.hidden_sizes:
            raise ConfigError("hidden_sizes must list at least one width for model mlp")
        if any(width < 1 for width in self.hidden_sizes):
            raise ConfigError(f"hidden_sizes must be positive, got {list(self.hidden_sizes)}")
        self._check_training_extras()

    def _check_training_extras(self) -> None:
        if self.model == "cnn" and not self.conv_channels:
            raise ConfigError("conv_channels must list at least one channel count for model cnn")
        if any(channels < 1 for channels in self.conv_channels):
            raise ConfigError(f"conv_channels must be positive, got {list(self.conv_channels)}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.scheduler == "step" and self.step_size is None:
            raise ConfigError("scheduler step needs step_size (epochs between decays)")
        if self.step_size is not None and self.step_size < 1:
            raise ConfigError(f"step_size must be >= 1, got {self.step_size}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        if not (math.isfinite(self.min_lr) and 0 <= self.min_lr < self.lr):
            raise ConfigError(f"min_lr must be in [0, lr), got {self.min_lr}")
        if self.validation < 0:
            raise ConfigError(f"validation must be >= 0 images, got {self.validation}")
        if self.max_train is not None and self.validation >= self.max_train:
            raise ConfigError(
                f"validation ({self.validation}) must be less than the training images "
                f"(max_train {self.max_train})"
            )
        self._check_cross_validation()
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1:
                raise ConfigError(
                    f"early_stopping_patience must be >= 1, got {self.early_stopping_patience}"
                )
            if self.validation == 0:
                raise ConfigError(
                    "early_stopping_patience needs a validation split (set validation, e.g. 5000)"
                )

    def _check_cross_validation(self) -> None:
        folds, fold = self.cv_folds, self.cv_fold
        if folds == 0:
            if fold != 0:
                raise ConfigError(
                    f"cv_fold ({fold}) needs cv_folds (2 to {MAX_FOLDS}); "
                    "a `folds: K` sweep sets both"
                )
            return
        if not 2 <= folds <= MAX_FOLDS:
            raise ConfigError(
                f"cv_folds must be 0 (no cross-validation) or 2 to {MAX_FOLDS}, got {folds}"
            )
        if not 0 <= fold < folds:
            raise ConfigError(f"cv_fold must be 0 to {folds - 1} (cv_folds {folds}), got {fold}")
        if self.validation:
            raise ConfigError(
                f"cross-validation ({folds} folds) holds out each fold in turn as the validation "
                f"split; it cannot be combined with validation: {self.validation} (remove it)"
            )
        if self.early_stopping_patience is not None:
            raise ConfigError(
                "early_stopping_patience cannot be combined with cross-validation: it would "
                "choose the epoch on the held-out fold whose probabilities score its labels"
            )
        if self.max_train is not None and self.max_train < folds:
            raise ConfigError(
                f"cv_folds ({folds}) needs at least one training image per fold "
                f"(max_train {self.max_train})"
            )

    @property
    def holds_out(self) -> bool:
        """Whether the run scores a validation split: the last `validation` training images, or
        its cross-validation fold."""
        return self.validation > 0 or self.cv_folds > 0

    def to_params(self) -> dict[str, str]:
        """The flat parameter dict logged to MLflow; lists are written as `[100, 50]`."""
        out = {}
        for key, value in dataclasses.asdict(self).items():
            if isinstance(value, (tuple, list)):
                value = "[" + ", ".join(str(v) for v in value) + "]"
            out[key] = str(value)
        return out

    def applies(self, key: str) -> bool:
        """Whether field `key` changes what this run trains: `conv_channels` applies to a CNN
        only, `momentum` to SGD only, `step_size` to a step schedule only, ..."""
        when = {
            "hidden_sizes": self.model != "softmax",
            "activation": self.model != "softmax",
            "dropout": self.model != "softmax",
            "conv_channels": self.model == "cnn",
            "batch_norm": self.model == "cnn",
            "channels_last": self.model == "cnn",
            "momentum": self.optimizer == "sgd",
            "step_size": self.scheduler == "step",
            "gamma": self.scheduler == "step",
            "min_lr": self.scheduler == "cosine",
            "early_stopping_metric": self.early_stopping_patience is not None,
            "cv_folds": self.cv_folds > 0,
            "cv_fold": self.cv_folds > 0,
        }
        return when.get(key, True)

    def applied_params(self) -> dict[str, str]:
        """`to_params` without the fields that do not apply to this run (`applies`): what a run
        logs, so that MLflow's runs table shows no `conv_channels` for an MLP."""
        return {k: v for k, v in self.to_params().items() if self.applies(k)}

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples) for YAML and checkpoints."""
        out = dataclasses.asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        out["conv_channels"] = list(self.conv_channels)
        return out


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
MAX_EXPERIMENT_BYTES = 1_000_000  # experiment files are a few hundred bytes


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _field_type(name: str) -> Any:
    return typing.get_type_hints(RunConfig)[name]


def coerce(key: str, value: Any, *, from_text: bool = False) -> Any:
    """Check `value` against the type of field `key`, converting where it is safe.

    `from_text` marks values that came from the command line (`--set lr=0.01`), which are parsed
    as YAML scalars first so that numbers, booleans, null and lists work the same as in files.
    """
    if key not in FIELDS:
        raise ConfigError(f"unknown config key {key!r} (known keys: {', '.join(FIELDS)})")
    if from_text and isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            pass
        if value is None and _field_type(key) is str:
            value = "null"
    return _coerce_to(key, value, _field_type(key))


def _coerce_to(key: str, value: Any, kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _coerce_to(key, value, inner)
    if origin is tuple:
        (item_kind, _) = typing.get_args(kind)
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list of {item_kind.__name__}, got {value!r}")
        return tuple(_coerce_to(key, item, item_kind) for item in value)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as text; accept what float() accepts
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} must be {kind.__name__}, got {value!r} ({type(value).__name__})")


def parse_overrides(pairs: typing.Iterable[str]) -> dict[str, Any]:
    """`["lr=0.01", "hidden_sizes=[200]"]` -> `{"lr": 0.01, "hidden_sizes": (200,)}`, checked."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set takes key=value, got {pair!r}")
        out[key.strip()] = coerce(key.strip(), text.strip(), from_text=True)
    return out


def build_config(values: dict[str, Any], *, source: str = "config") -> RunConfig:
    """Validate a mapping of field values (unknown keys, types, ranges) into a RunConfig."""
    try:
        checked = {key: coerce(key, value) for key, value in values.items()}
        return RunConfig(**checked)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


@dataclass(frozen=True)
class ExperimentFile:
    """An experiment file: its base fields, plus the sweep sections `study_run.py` handles."""

    path: Path
    base: dict[str, Any]
    sweep: dict[str, Any] = field(default_factory=dict)  # grid / variants / seeds / folds
    text: str = ""


SWEEP_KEYS = ("grid", "variants", "seeds", "folds", "search")
META_KEYS = ("description",)


def read_experiment(path: str | Path) -> ExperimentFile:
    """Read an experiment YAML file; every top-level key is a config field or a sweep section.

    A file of more than MAX_EXPERIMENT_BYTES (`/dev/zero` given by mistake) and YAML aliases (a
    few lines of nested `*refs` expand to gigabytes once the config is written out) are refused
    before they are loaded."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file():
            raise ConfigError(f"{path}: not a regular file")
        with path.open("rb") as f:
            raw = f.read(MAX_EXPERIMENT_BYTES + 1)
        if len(raw) > MAX_EXPERIMENT_BYTES:
            raise ConfigError(
                f"{path}: over {MAX_EXPERIMENT_BYTES // 1000} kB; not an experiment file"
            )
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {err.start}); save the experiment file as UTF-8"
        ) from None
    except FileNotFoundError:
        raise ConfigError(f"experiment file not found: {path}") from None
    except OSError as err:
        raise ConfigError(f"cannot read experiment file {path}: {err.strerror}") from None
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text)):
            raise ConfigError(f"{path}: YAML aliases (*name) are not accepted; write values out")
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    sweep = {key: data.pop(key) for key in SWEEP_KEYS if key in data}
    for key in META_KEYS:
        data.pop(key, None)
    return ExperimentFile(path=path, base=data, sweep=sweep, text=text)


def resolve(experiment: ExperimentFile, overrides: dict[str, Any]) -> RunConfig:
    """The single-run configuration of an experiment file with `--set` overrides applied."""
    return build_config({**experiment.base, **overrides}, source=str(experiment.path))
