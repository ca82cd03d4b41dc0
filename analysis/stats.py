"""Statistics for comparing runs on a shared test set.

Pure functions: NumPy arrays and pandas objects in, arrays / DataFrames / plain values out. Nothing
here imports MLflow or matplotlib; `analysis.comparison` builds a comparison from them.

Conventions: `correct` arrays are boolean, one entry per test image, aligned on the same test set
(the same `index` array); a "run" is identified by its MLflow run id (a string); accuracies are
fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mnist_train import contract
from mnist_train.contract import SEED_PARAM

# --------------------------------------------------------------------------------------------- #
# Paired tests on one test set
# --------------------------------------------------------------------------------------------- #


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test of a run against a baseline on the same test images.

    b: images the baseline gets right and the run gets wrong; c: the reverse. Under the null
    hypothesis (equal accuracy) a discordant image is equally likely to fall either way, so
    b ~ Binomial(b + c, 1/2); `pvalue` is the two-sided exact binomial p-value and `statistic` is
    min(b, c), the usual statistic of the exact test.
    """

    b: int
    c: int
    statistic: int
    pvalue: float


def _check_correct_pair(baseline_correct, run_correct) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(baseline_correct)
    r = np.asarray(run_correct)
    if a.ndim != 1 or r.ndim != 1:
        raise ValueError(f"correctness arrays must be 1-D, got shapes {a.shape} and {r.shape}")
    if a.shape != r.shape:
        raise ValueError(f"correctness arrays differ in length: {a.shape[0]} vs {r.shape[0]}")
    if a.dtype != bool or r.dtype != bool:
        raise ValueError("correctness arrays must be boolean (prediction == label)")
    return a, r


def mcnemar_exact(baseline_correct, run_correct) -> McNemarResult:
    """McNemar's exact test from two boolean arrays of shape (N,) (True = image classified
    right)."""
    a, r = _check_correct_pair(baseline_correct, run_correct)
    b = int(np.count_nonzero(a & ~r))
    c = int(np.count_nonzero(~a & r))
    return McNemarResult(b=b, c=c, statistic=min(b, c), pvalue=_two_sided_sign_test(b, c))


def _two_sided_sign_test(b: int, c: int) -> float:
    """Exact two-sided p of `b` vs `c` discordant pairs, X ~ Bin(b + c, 1/2): 2 P(X <= min),
    capped at 1 (scipy's `binomtest(b, b + c).pvalue`; tests compare the two). Summed in log
    space, so tens of thousands of pairs neither overflow nor cost scipy's import."""
    n, low = b + c, min(b, c)
    if n == 0 or 2 * low >= n:
        return 1.0
    k = np.arange(low + 1)
    log_pmf = (
        math.lgamma(n + 1)
        - np.array([math.lgamma(i + 1) + math.lgamma(n - i + 1) for i in k])
        - n * math.log(2.0)
    )
    peak = log_pmf.max()
    tail = math.exp(peak) * float(np.exp(log_pmf - peak).sum())
    return min(1.0, 2.0 * tail)


def holm_adjust(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as the input), for testing many runs at
    once."""
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("pvalues must lie in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def bootstrap_accuracy_ci(
    correct, *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> np.ndarray:
    """Percentile bootstrap interval of accuracy for one or many runs on the same test set.

    correct: boolean (N,) for one run or (R, N) for R runs. The same resampled image sets are used
    for every run (a paired bootstrap), and the result is fixed by `seed`.
    Returns (2,) [low, high] for one run, (R, 2) for R runs.
    """
    c = np.asarray(correct)
    if c.dtype != bool:
        raise ValueError("correct must be boolean (prediction == label)")
    if c.ndim not in (1, 2) or c.shape[-1] == 0:
        raise ValueError(f"correct must have shape (N,) or (R, N) with N > 0, got {c.shape}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    runs = np.atleast_2d(c).astype(np.float32)
    n = runs.shape[1]
    rng = np.random.default_rng(seed)
    # Each resample is a vector of counts (how often each image is drawn); accuracy of every run on
    # every resample is then one matrix product, (B, N) @ (N, R).
    draws = rng.integers(0, n, size=(n_resamples, n)) + (np.arange(n_resamples) * n)[:, None]
    counts = np.bincount(draws.ravel(), minlength=n_resamples * n).reshape(n_resamples, n)
    counts = counts.astype(np.float32)
    accuracies = counts @ runs.T / n
    alpha = (1.0 - confidence) / 2.0
    interval = np.quantile(accuracies.astype(np.float64), [alpha, 1.0 - alpha], axis=0).T
    return interval[0] if c.ndim == 1 else interval


@dataclass(frozen=True)
class Flips:
    """Test images whose outcome changed relative to a baseline.

    fixed: positions (into the aligned test arrays) the baseline got wrong and the run got right;
    broke: positions the baseline got right and the run got wrong. Both sorted ascending.
    """

    fixed: np.ndarray
    broke: np.ndarray

    @property
    def net(self) -> int:
        return int(self.fixed.size) - int(self.broke.size)


def flips_against_baseline(y_true, baseline_pred, run_pred) -> Flips:
    """Which test images a run fixed and broke relative to the baseline; all inputs shape (N,)."""
    y = np.asarray(y_true)
    pb = np.asarray(baseline_pred)
    pr = np.asarray(run_pred)
    if not (y.ndim == pb.ndim == pr.ndim == 1):
        raise ValueError("y_true, baseline_pred and run_pred must be 1-D")
    if not (y.shape == pb.shape == pr.shape):
        raise ValueError(
            f"y_true, baseline_pred and run_pred differ in length: {y.size}, {pb.size}, {pr.size}"
        )
    base_ok = pb == y
    run_ok = pr == y
    return Flips(fixed=np.flatnonzero(~base_ok & run_ok), broke=np.flatnonzero(base_ok & ~run_ok))


# --------------------------------------------------------------------------------------------- #
# Tables over runs
# --------------------------------------------------------------------------------------------- #


def varying_params(params: pd.DataFrame) -> list[str]:
    """Columns of a runs x params table (values as strings) that differ between runs, in order.

    A parameter missing from some runs but present in others counts as varying.
    """
    if params.empty:
        return []
    return [col for col in params.columns if params[col].fillna("<missing>").nunique() > 1]


def run_labels(params: pd.DataFrame, names: Mapping[str, str] | None = None) -> pd.Series:
    """A short label per run: its run name when unique, else the varying params `k=v, ...`."""
    names = dict(names or {})
    vary = varying_params(params)
    labels = {}
    for run_id in params.index:
        name = names.get(run_id)
        if name and list(names.values()).count(name) == 1:
            labels[run_id] = name
        elif vary:
            labels[run_id] = ", ".join(f"{k}={params.at[run_id, k]}" for k in vary)
        else:
            labels[run_id] = run_id[:8]
    series = pd.Series(labels, name="label")
    duplicated = series.duplicated(keep=False)
    series[duplicated] = [f"{label} ({rid[:6]})" for rid, label in series[duplicated].items()]
    return series


# Labels crowd a figure when there are many runs, or long labels, or both somewhat: then runs are
# labelled T07 (a study's trial number) and the runs table says what each label stands for.
SHORT_LABELS_FROM_RUNS = 13
SHORT_LABELS_FROM_CHARS = 41
SHORT_LABELS_FROM = (7, 25)  # runs and characters: both at least this


def short_labels(labels: pd.Series, trial_numbers: Mapping[str, int | None]) -> pd.Series | None:
    """`T07` per run (a study's trial number; `R07`, its position, for runs that are no trial)
    when the given labels would crowd a figure (see SHORT_LABELS_FROM_*). None when the labels
    read well."""
    runs, longest = len(labels), int(labels.str.len().max())
    crowded = (
        runs >= SHORT_LABELS_FROM_RUNS
        or longest >= SHORT_LABELS_FROM_CHARS
        or (runs >= SHORT_LABELS_FROM[0] and longest >= SHORT_LABELS_FROM[1])
    )
    if not crowded:
        return None
    numbers = [trial_numbers.get(run_id) for run_id in labels.index]
    width = max(2, len(str(len(labels) - 1)))
    if all(n is not None for n in numbers) and len(set(numbers)) == len(numbers):
        width = max(width, len(str(max(numbers))))
        short = [f"T{n:0{width}d}" for n in numbers]
    else:
        short = [f"R{i:0{width}d}" for i in range(len(labels))]
    return pd.Series(short, index=labels.index, name="label")


def seed_groups(
    params: pd.DataFrame, values: pd.Series, *, seed_param: str = SEED_PARAM
) -> pd.DataFrame:
    """Group runs whose params are identical except the seed; summarise `values` per group.

    params: runs x params (index = run id, values as strings); values: a metric per run id (e.g.
    final test accuracy). Returns one row per group, largest mean first, with columns `setting`
    (the varying params other than the seed, or "all runs"), `n`, `mean`, `std` (ddof=1; NaN when
    n = 1), `min`, `max`, `seeds` and `run_ids` (tuples).
    """
    if not params.index.is_unique:
        raise ValueError("params must have one row per run (duplicate run ids)")
    values = values.reindex(params.index).astype(float)
    others = [c for c in params.columns if c != seed_param]
    keyed = params[others].fillna("<missing>").astype(str)
    vary = [c for c in varying_params(params) if c != seed_param]
    groups: dict[tuple, list[str]] = {}
    for run_id, row in keyed.iterrows():
        groups.setdefault(tuple(row), []).append(run_id)
    rows = []
    for members in groups.values():
        first = members[0]
        setting = ", ".join(f"{k}={params.at[first, k]}" for k in vary) or "all runs"
        v = values.loc[members].dropna()
        seeds = tuple(params.loc[members, seed_param]) if seed_param in params else ()
        rows.append(
            {
                "setting": setting,
                "n": int(v.size),
                "mean": float(v.mean()) if v.size else np.nan,
                "std": float(v.std(ddof=1)) if v.size > 1 else np.nan,
                "min": float(v.min()) if v.size else np.nan,
                "max": float(v.max()) if v.size else np.nan,
                "seeds": seeds,
                "run_ids": tuple(members),
            }
        )
    table = pd.DataFrame(
        rows, columns=["setting", "n", "mean", "std", "min", "max", "seeds", "run_ids"]
    )
    return table.sort_values("mean", ascending=False, kind="stable").reset_index(drop=True)


def metrics_at_epoch(history: pd.DataFrame, epoch: int, keys: Sequence[str]) -> pd.DataFrame:
    """Values of per-epoch metrics at one epoch, one row per run.

    history: long table with columns `run_id`, `key`, `step` (epoch, from 1), `value`. Returns a
    DataFrame indexed by run id with one column per key; NaN where a run has no value at that
    epoch (it stopped earlier or never logged the metric).
    """
    if epoch < 1:
        raise ValueError(f"epoch must be >= 1 (epochs count from 1), got {epoch}")
    missing = {"run_id", "key", "step", "value"} - set(history.columns)
    if missing:
        raise ValueError(f"history lacks columns {sorted(missing)}")
    runs = pd.unique(history["run_id"])
    at = history[(history["step"] == epoch) & history["key"].isin(keys)]
    # A metric logged twice at one step keeps its last value, as the MLflow UI shows.
    table = at.pivot_table(index="run_id", columns="key", values="value", aggfunc="last")
    return table.reindex(index=runs, columns=list(keys)).rename_axis(index="run_id", columns=None)


def last_common_epoch(history: pd.DataFrame, key: str = contract.TEST_ACCURACY) -> int | None:
    """The latest epoch that every run in `history` logged `key` at (None if there is none)."""
    rows = history[history["key"] == key]
    if rows.empty:
        return None
    return int(rows.groupby("run_id")["step"].max().min())


# --------------------------------------------------------------------------------------------- #
# Confusions across runs
# --------------------------------------------------------------------------------------------- #


def confused_pairs_across_runs(
    confusions: Mapping[str, np.ndarray], *, top_k: int = 10
) -> pd.DataFrame:
    """The most-confused (true, predicted) digit pairs summed over runs.

    confusions: run id -> (C, C) count matrix (rows = true class, columns = predicted).
    Returns the top_k off-diagonal pairs by total count with columns `true`, `pred`, `total`,
    `mean_per_run`, `runs_with_pair` (runs that made the mistake at least once) and `top_in_runs`
    (runs for which it is their single most frequent mistake).
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not confusions:
        raise ValueError("need at least one confusion matrix")
    stack = np.stack([np.asarray(m) for m in confusions.values()])
    if stack.ndim != 3 or stack.shape[1] != stack.shape[2]:
        raise ValueError(f"confusion matrices must be square, got shape {stack.shape[1:]}")
    n_classes = stack.shape[1]
    off = ~np.eye(n_classes, dtype=bool)
    errors = stack * off  # zero the diagonal
    total = errors.sum(axis=0)
    present = (errors > 0).sum(axis=0)
    flat_top = errors.reshape(len(stack), -1).argmax(axis=1)
    has_errors = errors.reshape(len(stack), -1).max(axis=1) > 0
    top_counts = np.bincount(flat_top[has_errors], minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )
    true_idx, pred_idx = np.nonzero(off)
    table = pd.DataFrame(
        {
            "true": true_idx,
            "pred": pred_idx,
            "total": total[true_idx, pred_idx].astype(int),
            "mean_per_run": total[true_idx, pred_idx] / len(stack),
            "runs_with_pair": present[true_idx, pred_idx].astype(int),
            "top_in_runs": top_counts[true_idx, pred_idx].astype(int),
        }
    )
    table = table[table["total"] > 0]
    return (
        table.sort_values(["total", "true", "pred"], ascending=[False, True, True])
        .head(top_k)
        .reset_index(drop=True)
    )


# --------------------------------------------------------------------------------------------- #
# Overfitting onset
# --------------------------------------------------------------------------------------------- #


@dataclass(frozen=True)
class OverfitOnset:
    """Where test loss stops improving while train loss keeps falling.

    best_epoch: epoch of the lowest test loss; onset: the epoch after it (first epoch past the
    minimum); rise: last test loss minus the minimum; train_drop: train loss at best_epoch minus the
    last train loss (positive = still falling).
    """

    best_epoch: int
    onset: int
    last_epoch: int
    best_test_loss: float
    last_test_loss: float
    rise: float
    train_drop: float


def overfit_onset(epochs, train_loss, test_loss, *, min_rise: float = 0.02) -> OverfitOnset | None:
    """Detect overfitting from per-epoch losses (arrays of equal length, epochs ascending).

    A run overfits when its test loss ends at least `min_rise` (relative) above its minimum, reached
    before the last epoch, while the train loss kept falling after that minimum. Returns None when
    the curves do not show that.
    """
    e = np.asarray(epochs)
    tr = np.asarray(train_loss, dtype=float)
    te = np.asarray(test_loss, dtype=float)
    if not (e.shape == tr.shape == te.shape) or e.ndim != 1:
        raise ValueError("epochs, train_loss and test_loss must be 1-D and of equal length")
    if min_rise < 0:
        raise ValueError(f"min_rise must be >= 0, got {min_rise}")
    if e.size < 3 or not np.all(np.isfinite(te)):
        return None
    best = int(np.argmin(te))
    if best == e.size - 1:
        return None
    rise = te[-1] - te[best]
    train_drop = tr[best] - tr[-1]
    if rise <= min_rise * te[best] or train_drop <= 0:
        return None
    return OverfitOnset(
        best_epoch=int(e[best]),
        onset=int(e[best + 1]),
        last_epoch=int(e[-1]),
        best_test_loss=float(te[best]),
        last_test_loss=float(te[-1]),
        rise=float(rise),
        train_drop=float(train_drop),
    )


# --------------------------------------------------------------------------------------------- #
# Significance against the baseline
# --------------------------------------------------------------------------------------------- #


def significance_table(
    correct: Mapping[str, np.ndarray],
    baseline_id: str,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Accuracy, bootstrap interval and McNemar's test against the baseline, one row per run.

    correct: run id -> boolean (N,) array, all on the same test images. Returns a DataFrame indexed
    by run id (input order) with columns `accuracy`, `ci_low`, `ci_high`, `fixed` (= McNemar's c:
    baseline wrong, run right), `broke` (= b: baseline right, run wrong), `pvalue` and `p_holm`
    (Holm-adjusted over the non-baseline runs); the baseline's own test columns are NaN.
    """
    if baseline_id not in correct:
        raise ValueError(f"baseline {baseline_id!r} is not among the runs")
    run_ids = list(correct)
    matrix = np.stack([np.asarray(correct[r]) for r in run_ids])
    if matrix.dtype != bool:
        raise ValueError("correctness arrays must be boolean (prediction == label)")
    intervals = bootstrap_accuracy_ci(
        matrix, n_resamples=n_resamples, confidence=confidence, seed=seed
    )
    table = pd.DataFrame(
        {
            "accuracy": matrix.mean(axis=1),
            "ci_low": intervals[:, 0],
            "ci_high": intervals[:, 1],
        },
        index=pd.Index(run_ids, name="run_id"),
    )
    tests = {
        r: mcnemar_exact(correct[baseline_id], correct[r]) for r in run_ids if r != baseline_id
    }
    table["fixed"] = pd.Series({r: t.c for r, t in tests.items()}, dtype="Int64")
    table["broke"] = pd.Series({r: t.b for r, t in tests.items()}, dtype="Int64")
    table["pvalue"] = pd.Series({r: t.pvalue for r, t in tests.items()}, dtype=float)
    if tests:
        adjusted = holm_adjust([t.pvalue for t in tests.values()])
        table["p_holm"] = pd.Series(dict(zip(tests, adjusted)), dtype=float)
    else:
        table["p_holm"] = np.nan
    return table
