"""A study's own numbers for the comparison report: its trials table, objective and best trial.

`mnist-train` writes them on the study's parent run (`study/trials.csv`, `study/importance.json`,
tags `mnist.study*`); this module reads them (`load_study`) and computes what the report's study
section shows (pure functions on the table).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.artifacts import fetch_artifact
from mnist_train import contract

FIXED_COLUMNS = ("trial", "state", "name", "run_id", "status")
# the trials table's metric columns: every metric but `lr` and `epoch_time_s`, which are per-epoch
# readings of no split (and `lr` is a parameter's name too)
METRIC_COLUMNS = tuple(
    m.name for m in contract.METRICS if not (m.scope == contract.EPOCH and m.split is None)
)


@dataclass(frozen=True)
class Study:
    """trials: one row per trial (the parent's trials.csv); `objective` is its column of Optuna
    values (empty unless the trial is COMPLETE)."""

    name: str
    objective: str
    direction: str  # maximize | minimize
    trials: pd.DataFrame
    importance: dict[str, float] = field(default_factory=dict)
    best_trial: int | None = None

    @property
    def params(self) -> list[str]:
        """The columns the study varied, in the table's order."""
        known = {*FIXED_COLUMNS, *METRIC_COLUMNS, self.objective}
        return [c for c in self.trials.columns if c not in known]

    @property
    def complete(self) -> pd.DataFrame:
        done = self.trials[self.trials["state"] == "COMPLETE"]
        return done[done[self.objective].notna()]

    def best(self) -> pd.Series | None:
        """The best complete trial on the objective (the parent's tag when it names one)."""
        done = self.complete
        if done.empty:
            return None
        if self.best_trial is not None and (done["trial"] == self.best_trial).any():
            return done[done["trial"] == self.best_trial].iloc[0]
        scores = done[self.objective].astype(float)
        position = scores.idxmax() if self.direction == "maximize" else scores.idxmin()
        return done.loc[position]

    def counts(self) -> dict[str, int]:
        return {state: int(n) for state, n in self.trials["state"].value_counts().items()}


def best_so_far(values: np.ndarray, direction: str) -> np.ndarray:
    """Running best of `values` (NaN = no value: the best so far carries over)."""
    values = np.asarray(values, dtype=np.float64)
    sign = 1.0 if direction == "maximize" else -1.0
    out = np.full(len(values), np.nan)
    best = -math.inf
    for i, value in enumerate(values):
        if not np.isnan(value) and sign * value > best:
            best = sign * value
        out[i] = sign * best if best > -math.inf else np.nan
    return out


def ranked_importance(importance: dict[str, float]) -> list[tuple[str, float]]:
    """(parameter, importance) from the most important down; ties by name."""
    return sorted(importance.items(), key=lambda item: (-item[1], item[0]))


def is_log_scaled(values: pd.Series) -> bool:
    """True for a positive numeric column spanning more than a decade (a log axis reads it)."""
    numbers = pd.to_numeric(values, errors="coerce").dropna()
    if numbers.empty or len(numbers) != len(values.dropna()) or (numbers <= 0).any():
        return False
    return numbers.max() / numbers.min() > 10


def slice_columns(study: Study) -> pd.DataFrame:
    """The complete trials' parameters as the slice view plots them, one column per panel: a
    column of layer lists (`[256, 256]`) becomes its width (the widest layer) and its number of
    layers, which read as numbers; anything else is kept as it is."""
    done = study.complete
    out = {}
    for param in study.params:
        column = done[param]
        layers = column.astype(str).map(_layers)
        if len(column) and layers.notna().all():
            out[f"{param}: width"] = layers.map(max)
            out[f"{param}: layers"] = layers.map(len)
        else:
            out[param] = column
    return pd.DataFrame(out, index=done.index)


def _layers(text: str) -> tuple[int, ...] | None:
    """`[256, 128]` -> (256, 128); anything else -> None."""
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    parts = [p.strip() for p in text[1:-1].split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def load_study(client, parent_run, *, cache_dir=None) -> Study | None:
    """The study of a parent run, or None for a run that is no study parent (an older sweep)."""
    path = fetch_artifact(client, parent_run, contract.STUDY_TRIALS_PATH, cache_dir=cache_dir)
    if path is None:
        return None
    trials = pd.read_csv(path)
    tags = parent_run.data.tags
    objective, _, direction = tags.get(contract.TAG_STUDY_OBJECTIVE, "").partition(" ")
    if objective not in trials.columns:
        return None
    importance_path = fetch_artifact(
        client, parent_run, contract.STUDY_IMPORTANCE_PATH, cache_dir=cache_dir
    )
    importance = json.loads(importance_path.read_text()) if importance_path else {}
    best = tags.get(contract.TAG_BEST_TRIAL)
    return Study(
        name=tags.get(contract.TAG_STUDY, parent_run.info.run_name or ""),
        objective=objective,
        direction=direction or "maximize",
        trials=trials,
        importance={str(k): float(v) for k, v in importance.items()},
        best_trial=int(best) if best is not None and best.isdigit() else None,
    )
