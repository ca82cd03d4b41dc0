"""The `search:` section of an experiment file: what a hyperparameter search varies, and how (pure).

    search:
      trials: 30                   # how many trials the study runs (`--trials N` overrides)
      objective: val_accuracy      # a metric every run logs; accuracies are maximised, losses
                                   # minimised (`direction:` says otherwise); never a test_* metric
      sampler: tpe                 # tpe | random | grid
      pruner: median               # median | halving | none (on the per-epoch objective)
      params:
        lr: {type: float, low: 1.0e-4, high: 0.1, log: true}
        hidden_size: {type: int, low: 64, high: 1024, log: true}   # with depth: hidden_sizes
        depth: {type: int, low: 1, high: 3}
        batch_size: {choices: [64, 128, 256]}
        hidden_sizes: {choices: [[100], [200, 100]]}                # lists are choices too

Every parameter is a config field, except `hidden_size` and `depth`, which together make
`hidden_sizes` ([hidden_size] * depth). Every value a distribution can produce is checked against
the base config here, so a bad range is one error before anything runs. Nothing here imports
Optuna until `distributions()` is called.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import contract
from .config import FIELDS, ConfigError, RunConfig, build_config
from .study_grid import check_value, format_value

KINDS = ("float", "int", "categorical")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "halving", "none")
DERIVED = ("hidden_size", "depth")  # together: hidden_sizes = [hidden_size] * depth
# what a study may optimise: the model of record's scores except the test set's, and two costs
PER_EPOCH = tuple(k for k in contract.SCORES if contract.measured_on(k) != contract.TEST)
OBJECTIVES = (*PER_EPOCH, contract.OVERFIT_GAP, contract.TRAIN_TIME)
SEARCH_KEYS = ("trials", "objective", "direction", "sampler", "pruner", "params")
MAX_GRID = 10_000
# most trials one study queues: each is a row in the storage and a run in MLflow, queued up
# front (a hundred million once filled 15 GB before the first trial ran)
MAX_TRIALS = 10_000


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: int | float | None = None
    choices: tuple[Any, ...] = ()  # categorical: the values as the config takes them

    @property
    def labels(self) -> tuple[Any, ...]:
        """Categorical choices as Optuna stores them: lists become text such as `[200, 100]`."""
        return tuple(label(value) for value in self.choices)

    def decode(self, value: Any) -> Any:
        """A value Optuna returned, as the config takes it."""
        if self.kind == "categorical":
            return self.choices[self.labels.index(value)]
        return int(value) if self.kind == "int" else float(value)


@dataclass(frozen=True)
class SearchSpec:
    params: tuple[Param, ...]
    trials: int
    objective: str = contract.VAL_ACCURACY
    direction: str = "maximize"
    sampler: str = "tpe"
    pruner: str = "median"

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions by parameter name."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        out: dict[str, Any] = {}
        for p in self.params:
            if p.kind == "categorical":
                out[p.name] = CategoricalDistribution(p.labels)
            elif p.kind == "int":
                out[p.name] = IntDistribution(int(p.low), int(p.high), log=p.log, step=p.step or 1)
            else:
                out[p.name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        return out

    def grid(self) -> list[dict[str, Any]]:
        """Every combination (Optuna's stored values), for `sampler: grid`."""
        axes = []
        for p in self.params:
            if p.kind == "categorical":
                axes.append(p.labels)
            else:
                axes.append(tuple(range(int(p.low), int(p.high) + 1, int(p.step or 1))))
        names = [p.name for p in self.params]
        return [dict(zip(names, values)) for values in itertools.product(*axes)]

    def settings(self, values: dict[str, Any]) -> dict[str, Any]:
        """Config fields for one trial's parameter values (Optuna's stored form)."""
        by_name = {p.name: p for p in self.params}
        decoded = {name: by_name[name].decode(value) for name, value in values.items()}
        if "hidden_size" in decoded:
            width, depth = decoded.pop("hidden_size"), decoded.pop("depth")
            decoded["hidden_sizes"] = [width] * depth
        return decoded


def label(value: Any) -> Any:
    """A value as Optuna stores it: lists as their text (`[200, 100]`), the rest as they are."""
    return format_value(value) if isinstance(value, (list, tuple)) else value


def read_search(path: Path, section: Any, base: dict[str, Any]) -> SearchSpec:
    """Check a `search:` section against the base config (itself already valid)."""
    where = f"{path}: search"
    if not isinstance(section, dict):
        raise ConfigError(f"{where} must be a mapping with params, trials and objective")
    unknown = sorted(set(section) - set(SEARCH_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} (known: {', '.join(SEARCH_KEYS)})")
    raw = section.get("params")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}.params must map parameter names to distributions")
    params = tuple(_read_param(where, name, spec, base) for name, spec in raw.items())
    names = {p.name for p in params}
    if ("hidden_size" in names) != ("depth" in names):
        raise ConfigError(f"{where}.params: hidden_size and depth go together (hidden_sizes)")
    if "hidden_size" in names and "hidden_sizes" in names:
        raise ConfigError(f"{where}.params: hidden_size/depth and hidden_sizes both set widths")
    for key in ("name", "experiment"):
        if key in names:
            raise ConfigError(f"{where}.params.{key}: {key} cannot vary within a search")

    sampler = _choice(where, "sampler", section.get("sampler", "tpe"), SAMPLERS)
    pruner = _choice(where, "pruner", section.get("pruner", "median"), PRUNERS)
    objective = str(section.get("objective", contract.VAL_ACCURACY))
    _check_objective(where, objective, pruner, base, params)
    default_direction = "maximize" if contract.higher_is_better(objective) else "minimize"
    direction = _choice(
        where, "direction", section.get("direction", default_direction), ("maximize", "minimize")
    )
    if sampler == "grid":
        floats = [p.name for p in params if p.kind == "float"]
        if floats:
            raise ConfigError(
                f"{where}: sampler grid needs choices or int ranges; {', '.join(floats)} "
                "is a float range"
            )
        size = math.prod(len(p.labels) if p.choices else _int_count(p) for p in params)
        if size > MAX_GRID:
            raise ConfigError(f"{where}: the grid has {size} points (at most {MAX_GRID})")
        default_trials = size
    else:
        default_trials = None
    trials = section.get("trials", default_trials)
    if isinstance(trials, bool) or not isinstance(trials, int) or not 1 <= trials <= MAX_TRIALS:
        raise ConfigError(f"{where}.trials must be a count from 1 to {MAX_TRIALS}, got {trials!r}")
    return SearchSpec(params, trials, objective, direction, sampler, pruner)


def _int_count(p: Param) -> int:
    return len(range(int(p.low), int(p.high) + 1, int(p.step or 1)))


def _choice(where: str, key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{where}.{key} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _check_objective(
    where: str, objective: str, pruner: str, base: dict[str, Any], params: tuple[Param, ...]
) -> None:
    if contract.measured_on(objective) == contract.TEST:
        raise ConfigError(
            f"{where}.objective {objective}: a search never chooses on the test set "
            f"(it would overstate the winner); use {contract.VAL_ACCURACY} or {contract.VAL_LOSS}"
        )
    if objective not in OBJECTIVES:
        raise ConfigError(
            f"{where}.objective {objective!r}: no run logs that metric "
            f"(objectives: {', '.join(OBJECTIVES)})"
        )
    if contract.measured_on(objective) == contract.VALIDATION:
        validation = build_config(base).validation
        if not validation or any(p.name == "validation" for p in params):
            raise ConfigError(
                f"{where}.objective {objective} needs a fixed validation split: "
                "set validation (e.g. 5000) in the file"
            )
    if pruner != "none" and objective not in PER_EPOCH:
        raise ConfigError(
            f"{where}.pruner {pruner} needs a per-epoch objective ({', '.join(PER_EPOCH)}); "
            "set pruner: none"
        )


def _read_param(where: str, name: Any, spec: Any, base: dict[str, Any]) -> Param:
    at = f"{where}.params.{name}"
    if name not in FIELDS and name not in DERIVED:
        known = ", ".join([*FIELDS, *DERIVED])
        raise ConfigError(f"{at}: unknown config key {name!r} (known keys: {known})")
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{at} must be a mapping such as {{type: float, low: 0.001, high: 0.1}}")
    kind = spec.get("type", "categorical" if "choices" in spec else None)
    if kind not in KINDS:
        raise ConfigError(
            f"{at}: unknown distribution {kind!r} (type: float | int | categorical)"
            if kind is not None
            else f"{at}: say its type (float, int) with low and high, or list its choices"
        )
    allowed = (
        {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
    )
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ConfigError(f"{at}: {', '.join(extra)} does not apply to a {kind} distribution")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{at}: choices must be a non-empty list, got {choices!r}")
        checked = tuple(_check_value(at, name, value, base) for value in choices)
        if len({str(label(c)) for c in checked}) < len(checked):
            raise ConfigError(f"{at}: choices list a value twice")
        return Param(name, kind, choices=checked)
    low, high, log, step = (
        spec.get("low"),
        spec.get("high"),
        spec.get("log", False),
        spec.get("step"),
    )
    for key, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{at}.{key} must be a number, got {value!r}")
        if kind == "int" and not float(value).is_integer():
            raise ConfigError(f"{at}.{key} must be a whole number for an int range, got {value}")
    if not isinstance(log, bool):
        raise ConfigError(f"{at}.log must be true or false, got {log!r}")
    if not low < high:
        raise ConfigError(f"{at}: low ({low}) must be less than high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{at}: a log range needs low > 0, got {low}")
    if step is not None and (log or isinstance(step, bool) or not step > 0):
        raise ConfigError(f"{at}.step must be a positive number, and not with log")
    if step is not None and kind == "int" and not float(step).is_integer():
        raise ConfigError(f"{at}.step must be a whole number for an int range, got {step}")
    if kind == "int":
        low, high = int(low), int(high)
    else:
        low, high = float(low), float(high)
    for value in (low, high):
        _check_value(at, name, value, base)
    return Param(name, kind, low, high, log, step)


def _check_value(at: str, name: str, value: Any, base: dict[str, Any]) -> Any:
    """`value` coerced for field `name` and checked in a config built on `base`."""
    if name in DERIVED:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{at}: {name} values must be whole numbers >= 1, got {value!r}")
        if name == "hidden_size":
            build_config({**base, "hidden_sizes": [value]}, source=at)
        return value
    return check_value(at, base, name, value)


def trial_config(spec: SearchSpec, base: dict[str, Any], number: int, values: dict) -> RunConfig:
    """The run configuration of trial `number` with Optuna's `values`; its name says them."""
    settings = spec.settings(values)
    parts = [f"{p.name}={_short(values[p.name])}" for p in spec.params]
    name = f"trial {number:03d}: " + ",".join(parts)
    return build_config({**base, **settings, "name": name}, source=f"trial {number}")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
