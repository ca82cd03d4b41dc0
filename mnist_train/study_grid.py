"""Sweep planning: one experiment file expanded into the configurations of its children (pure).

A sweep file is an experiment file with up to four extra sections:

    grid:      {lr: [0.01, 0.001]}          # cartesian product over the listed values
    variants:  [{name: layers=3, hidden_sizes: [100, 100]}, ...]   # named partial configs
    seeds:     [0, 1, 2]                    # replicates (or a count: `seeds: 5` is 0..4)
    folds:     5                            # K-fold cross-validation: child k holds out fold k

Every child is validated like a single config, and its name says what varies (`lr=0.01`,
`layers=3,seed=2`, `seed=1,fold=4`). This module also formats the sweep's summary table;
running a sweep is `study_run.py`'s job, and nothing here touches MLflow.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import contract
from .config import (
    FIELDS,
    MAX_FOLDS,
    SWEEP_KEYS,
    ConfigError,
    ExperimentFile,
    RunConfig,
    build_config,
    coerce,
)
from .csv_safe import rows_to_csv

FIXED_KEYS = ("name", "experiment")  # one per sweep: the parent's name, and where all runs live
# The summary's columns: the model of record's scores (validation left out when no child has a
# split), which epoch it is, and the costs. Scores come from `study_tracking.model_of_record`.
SUMMARY_METRICS = (
    contract.VAL_ACCURACY,
    contract.TRAIN_ACCURACY,
    contract.TEST_ACCURACY,
    contract.PREDICTIONS_EPOCH,
    contract.STOPPED_EPOCH,  # left out without early stopping
    contract.TRAIN_TIME,
)
OPTIONAL_SUMMARY = (contract.VAL_ACCURACY, contract.STOPPED_EPOCH)


@dataclass(frozen=True)
class Child:
    """One configuration of a sweep. `settings` holds what the sweep set for it, e.g. {"lr":
    0.01}."""

    name: str
    config: RunConfig
    settings: dict[str, Any] = field(default_factory=dict)


def expand(experiment: ExperimentFile, overrides: dict[str, Any] | None = None) -> list[Child]:
    """Every child of a sweep file, in order variants x grid x seeds x folds, validated.

    `overrides` (from `--set`, `--max-train`, ...) apply to every child; overriding a key the sweep
    varies is an error, and an overridden `name` names the parent only.
    """
    path = experiment.path
    overrides = dict(overrides or {})
    sections = experiment.sweep
    unknown = set(sections) - set(SWEEP_KEYS)
    if unknown:  # read_experiment only collects known sections; guard against misuse
        raise ConfigError(f"{path}: unknown sweep sections {sorted(unknown)}")
    base = {**experiment.base, **{k: v for k, v in overrides.items() if k != "name"}}
    folds = _read_folds(path, sections.get("folds"), base, overrides)
    if folds:  # every check below sees the cross-validation (it refuses validation, ...)
        base.update(cv_folds=folds, cv_fold=0)
    build_config(base, source=str(path))  # a bad base is reported once, not per child

    variants = _read_variants(path, sections.get("variants"), base)
    grid = _read_grid(path, sections.get("grid"), base)
    seeds = _read_seeds(path, sections.get("seeds"), base)

    varied = {}  # key -> section that varies it, to report clashes
    for section, keys in (
        ("variants", {k for v in variants for k in v if k != "name"}),
        ("grid", set(grid)),
        ("seeds", {"seed"} if seeds else set()),
        ("folds", {"cv_folds", "cv_fold"} if folds else set()),
    ):
        for key in sorted(keys):
            if key in varied:
                raise ConfigError(f"{path}: {key} is varied by both {varied[key]} and {section}")
            varied[key] = section
    for key in overrides:
        if key in varied:
            raise ConfigError(f"{path}: cannot override {key}: the sweep varies it ({varied[key]})")

    children, names = [], set()
    grid_keys = list(grid)
    for variant in variants or [{}]:
        for values in itertools.product(*(grid[k] for k in grid_keys)):
            for seed, fold in itertools.product(seeds or [None], range(folds) if folds else [None]):
                settings = {k: v for k, v in variant.items() if k != "name"}
                settings.update(zip(grid_keys, values))
                parts = [variant["name"]] if variant else []
                parts += [f"{k}={format_value(v)}" for k, v in zip(grid_keys, values)]
                if seed is not None:
                    settings["seed"] = seed
                    parts.append(f"seed={seed}")
                if fold is not None:
                    settings.update(cv_folds=folds, cv_fold=fold)
                    parts.append(f"fold={fold}")
                name = ",".join(parts) or str(base.get("name", path.stem))
                if name in names:
                    raise ConfigError(f"{path}: two children would both be named {name!r}")
                names.add(name)
                config = build_config({**base, **settings, "name": name}, source=f"{path}: {name}")
                children.append(Child(name=name, config=config, settings=settings))
    return children


def varying_keys(children: Sequence[Child]) -> list[str]:
    """Config fields whose logged value differs between children, in field order."""
    params = [child.config.to_params() for child in children]
    return [k for k in FIELDS if k != "name" and len({p[k] for p in params}) > 1]


def format_value(value: Any) -> str:
    """A value as it appears in names and parameters: `0.01`, `[200]`, `True`."""
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def _check_key(path: Path, where: str, key: Any) -> None:
    if key not in FIELDS:
        raise ConfigError(
            f"{path}: {where}: unknown config key {key!r} (known keys: {', '.join(FIELDS)})"
        )
    if key in FIXED_KEYS:
        raise ConfigError(f"{path}: {where}: {key} cannot vary within a sweep")


def check_value(source: str, base: dict, key: str, value: Any) -> Any:
    """Coerce one swept (or searched) value of field `key` and check its range against the base
    config; errors name `source`."""
    try:
        value = coerce(key, value)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    build_config({**base, key: value}, source=source)
    return value


def _read_grid(path: Path, grid: Any, base: dict) -> dict[str, list]:
    if grid is None:
        return {}
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: grid must map config keys to lists of values, got {grid!r}")
    out = {}
    for key, values in grid.items():
        _check_key(path, f"grid.{key}", key)
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{path}: grid.{key} must be a non-empty list of values, got {values!r}"
            )
        out[key] = [
            check_value(f"{path}: grid.{key}[{i}]", base, key, v) for i, v in enumerate(values)
        ]
        if len(set(map(format_value, out[key]))) < len(out[key]):
            raise ConfigError(f"{path}: grid.{key} lists a value twice")
    return out


def _read_variants(path: Path, variants: Any, base: dict) -> list[dict]:
    if variants is None:
        return []
    if not isinstance(variants, list) or not variants:
        raise ConfigError(
            f"{path}: variants must be a non-empty list of mappings, each with a name"
        )
    out, names = [], set()
    for i, variant in enumerate(variants):
        if not isinstance(variant, dict):
            raise ConfigError(
                f"{path}: variants[{i}] must be a mapping with a name, got {variant!r}"
            )
        name = variant.get("name")
        if not isinstance(name, str) or not name.strip() or "," in name:
            raise ConfigError(
                f"{path}: variants[{i}] needs a name (text without commas), got {name!r}"
            )
        if name in names:
            raise ConfigError(f"{path}: variants[{i}]: name {name!r} is used twice")
        names.add(name)
        where = f"variants[{i}] ({name})"
        checked = {"name": name}
        for key, value in variant.items():
            if key != "name":
                _check_key(path, f"{where}.{key}", key)
                checked[key] = check_value(f"{path}: {where}.{key}", base, key, value)
        build_config(
            {**base, **{k: v for k, v in checked.items() if k != "name"}}, source=f"{path}: {where}"
        )
        out.append(checked)
    return out


def _read_seeds(path: Path, seeds: Any, base: dict) -> list[int]:
    if seeds is None:
        return []
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(
                f"{path}: seeds must be a positive count or a list of seeds, got {seeds}"
            )
        return list(range(seeds))
    if not isinstance(seeds, list) or not seeds:
        raise ConfigError(
            f"{path}: seeds must be a positive count or a non-empty list of seeds, got {seeds!r}"
        )
    out = [check_value(f"{path}: seeds[{i}]", base, "seed", s) for i, s in enumerate(seeds)]
    if len(set(out)) < len(out):
        raise ConfigError(f"{path}: seeds lists a seed twice")
    return out


def _read_folds(path: Path, folds: Any, base: dict, overrides: dict) -> int:
    """K of `folds: K` (0 when the file has no folds section); the fields it sets may be set
    nowhere else."""
    if folds is None:
        return 0
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= MAX_FOLDS:
        raise ConfigError(
            f"{path}: folds must be a number of folds from 2 to {MAX_FOLDS}, got {folds!r}"
        )
    for key in ("cv_folds", "cv_fold"):
        if key in overrides:
            raise ConfigError(f"{path}: cannot override {key}: the sweep varies it (folds)")
        if key in base:
            raise ConfigError(f"{path}: {key} is set by folds: {folds}; remove it from the file")
    return folds


def summary_rows(
    children: Sequence[Child],
    ended: Sequence[tuple[str | None, str]],
    metrics: dict[str, dict[str, float]],
) -> list[dict[str, Any]]:
    """One row per child: name, run id, status, the varying parameters, final metrics.

    `ended`: (run id or None, status) per child, in order; `metrics`: final metrics by run id.
    """
    keys = varying_keys(children)
    rows = []
    for child, (run_id, status) in zip(children, ended):
        row: dict[str, Any] = {"name": child.name, "run_id": run_id or "", "status": status}
        params = child.config.to_params()
        row.update({k: params[k] for k in keys})
        found = metrics.get(run_id or "", {})
        for key in SUMMARY_METRICS:
            value = found.get(key)
            integral = value is not None and contract.metric_format(key) == "int"
            row[key] = int(value) if integral else value
        rows.append(row)
    for key in OPTIONAL_SUMMARY:
        if all(row[key] is None for row in rows):
            for row in rows:
                del row[key]
    return rows


def best_child(rows: list[dict[str, Any]]) -> str:
    """One sentence naming the best child, chosen on validation when every finished child has
    it, else on test accuracy with a warning that such a ranking overstates."""
    done = [r for r in rows if r["status"] == "FINISHED"]
    on_val = bool(done) and all(r.get(contract.VAL_ACCURACY) is not None for r in done)
    key = contract.VAL_ACCURACY if on_val else contract.TEST_ACCURACY
    scored = [r for r in done if r.get(key) is not None]
    if not scored:
        return ""
    best = max(scored, key=lambda r: r[key])
    test = best[contract.TEST_ACCURACY]
    epoch = best.get(contract.PREDICTIONS_EPOCH)
    at = f", epoch {epoch}" if epoch is not None else ""
    text = f"Best on {key}: {best['name']} ({best[key]:.4f}; test accuracy {test:.4f}{at})."
    if not on_val:
        text += " No validation split, so this ranking is on the test set and overstates."
    return text


def to_csv(rows: list[dict[str, Any]]) -> str:
    """`summary.csv`: spreadsheet-safe (a child named `=1+2` stays text)."""
    return rows_to_csv(rows, list(rows[0]) if rows else ["name"])


def to_markdown(rows: list[dict[str, Any]], *, headline: str = "") -> str:
    """A markdown table (the MLflow UI renders run descriptions as markdown)."""
    if not rows:
        return headline
    header = list(rows[0])

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.4f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row[k]) for k in header) + " |" for row in rows]
    return (headline + "\n\n" if headline else "") + "\n".join(lines) + "\n"
