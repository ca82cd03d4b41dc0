"""A comparison of runs: one frozen `Comparison`, computed once by `build_comparison` (pure).

Runs are selected and loaded through `runs.py` (`load_comparison_runs`); everything after that
is arrays and frames: the statistics come from `stats.py`, the findings from `findings.py`, and
`compare_report.py` draws and writes the report from the finished `Comparison`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import dynamics, label_issues, metrics, stats
from analysis.errors import AnalysisError
from analysis.findings import findings
from analysis.runs import RunData
from mnist_train import contract

MAX_COMPARED_RUNS = 100  # most runs one report compares (a readable page), not a search limit
TOP_RUNS = 8  # figures that draw one line or panel per run show the best this many (+ baseline)
EPOCH_TABLE_KEYS = (
    contract.TEST_ACCURACY,
    contract.TRAIN_ACCURACY,
    contract.TEST_LOSS,
    contract.TRAIN_LOSS,
)
# not settings: the run name is shown as the label; the rest follow from the settings (the size
# of the model, the statistics of its inputs) and would only lengthen every setting's name
LABEL_PARAMS = ("name", contract.NUM_PARAMS, "normalize_mean", "normalize_std")
ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 1000
# The runs table: the model of record's scores, its train-minus-test gap, then costs. The
# directions come from the contract's metrics table.
FINAL_COLUMNS = (*contract.SCORES, contract.OVERFIT_GAP, contract.TRAIN_TIME, contract.NUM_PARAMS)


@dataclass(frozen=True)
class Excluded:
    """A run left out of (part of) the comparison, and why."""

    run_id: str
    label: str
    reason: str


@dataclass(frozen=True)
class PredictionParts:
    """What the stored test predictions add: only runs that share the baseline's test set."""

    comparable: list[str] = field(default_factory=list)  # run ids
    partial: list[Excluded] = field(default_factory=list)  # left out of the prediction parts
    notes: list[str] = field(default_factory=list)
    significance: pd.DataFrame | None = None
    confusions: dict = field(default_factory=dict)  # run id -> (10, 10) counts
    per_class: pd.DataFrame | None = None  # run id x digit
    flips: dict = field(default_factory=dict)  # run id -> stats.Flips
    confused_pairs: pd.DataFrame | None = None
    test_index: np.ndarray | None = None  # the shared `index` array
    test_labels: np.ndarray | None = None
    predicted: dict = field(default_factory=dict)  # run id -> predicted digits (N,)
    churn: pd.Series | None = None  # run id -> share of test predictions unlike the baseline's
    per_image_accuracy: np.ndarray | None = None  # float (N,): share of the runs right on each
    label_issues: pd.DataFrame | None = None  # suspected label errors (label_issues.COLUMNS)


@dataclass(frozen=True)
class Comparison:
    """Everything the report shows, computed once; figures and files are drawn from it."""

    runs: list[RunData]
    baseline_id: str
    labels: pd.Series  # run id -> display label
    settings: pd.Series  # run id -> varying params except the seed ("all runs" when none)
    params: pd.DataFrame  # runs x params (strings), label params dropped
    varying: list[str]
    history: pd.DataFrame  # long: run_id, key, step, value
    epoch: int | None  # the --at-epoch epoch
    at_epoch: pd.DataFrame  # run id x EPOCH_TABLE_KEYS at `epoch`
    final: pd.DataFrame  # run id x FINAL_COLUMNS
    selection: pd.Series | None  # run id -> validation accuracy of the model of record; None
    #                              when not every run has a validation split
    groups: pd.DataFrame  # seed groups (stats.seed_groups)
    onsets: dict  # setting -> stats.OverfitOnset | None
    predictions: PredictionParts
    findings: list[str]
    excluded: list[Excluded] = field(default_factory=list)  # left out entirely
    notes: list[str] = field(default_factory=list)
    # run id -> (run name, setting) behind each short label (T07); None when labels are names
    legend: pd.DataFrame | None = None
    ranked: list[str] = field(default_factory=list)  # run ids, best first (validation, else test)

    @property
    def shown(self) -> list[str]:
        """The runs a per-run figure draws: every run, or the best TOP_RUNS and the baseline."""
        if len(self.ranked) <= TOP_RUNS + 1:
            return list(self.ranked)
        top = self.ranked[:TOP_RUNS]
        return top if self.baseline_id in top else [*top, self.baseline_id]

    @property
    def ranked_on(self) -> str:
        return contract.VAL_ACCURACY if self.selection is not None else contract.TEST_ACCURACY

    @property
    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.runs]

    # the prediction parts, by their short names
    comparable = property(lambda self: self.predictions.comparable)
    partial = property(lambda self: self.predictions.partial)
    significance = property(lambda self: self.predictions.significance)
    confusions = property(lambda self: self.predictions.confusions)
    per_class = property(lambda self: self.predictions.per_class)
    flips = property(lambda self: self.predictions.flips)
    confused_pairs = property(lambda self: self.predictions.confused_pairs)
    test_index = property(lambda self: self.predictions.test_index)
    test_labels = property(lambda self: self.predictions.test_labels)
    predicted = property(lambda self: self.predictions.predicted)


def choose_baseline(
    runs: Sequence[RunData], requested: str | None, preferred: str | None = None
) -> str:
    """The requested baseline (must be among the runs), else `preferred` (a study's best trial on
    its objective) when it is among them with predictions, else the earliest-started run with
    predictions.
    """
    ids = [r.run_id for r in runs]
    if requested is not None:
        matches = [
            i for i in ids if i == requested or (len(requested) >= 6 and i.startswith(requested))
        ]
        if len(matches) != 1:
            raise AnalysisError(f"baseline {requested} is not among the {len(ids)} compared runs")
        return matches[0]
    if any(r.run_id == preferred and r.predictions is not None for r in runs):
        return preferred
    ordered = sorted(runs, key=lambda r: (r.start_time or 0, r.run_id))
    with_predictions = [r for r in ordered if r.predictions is not None]
    return (with_predictions or ordered)[0].run_id


# --------------------------------------------------------------------------- computing


def _history_frame(runs: Sequence[RunData]) -> pd.DataFrame:
    parts = []
    for run in runs:
        if run.epochs.empty:
            continue
        long = (
            run.epochs.rename_axis("step")
            .reset_index()
            .melt(id_vars="step", var_name="key", value_name="value")
            .dropna()
        )
        long.insert(0, "run_id", run.run_id)
        parts.append(long)
    if not parts:
        return pd.DataFrame(columns=["run_id", "key", "step", "value"])
    return pd.concat(parts, ignore_index=True)


def _final_frame(runs: Sequence[RunData]) -> pd.DataFrame:
    """Run id x FINAL_COLUMNS, plus `epoch` (the model of record's) and `epochs` (trained): every
    score is the model of record's, and so is the gap (its train minus test accuracy)."""
    rows = {}
    for run in runs:
        record = run.record
        row = {key: record.scores.get(key, np.nan) for key in contract.SCORES}
        row[contract.OVERFIT_GAP] = row[contract.TRAIN_ACCURACY] - row[contract.TEST_ACCURACY]
        row[contract.TRAIN_TIME] = float(run.metrics.get(contract.TRAIN_TIME, np.nan))
        value = run.params.get(contract.NUM_PARAMS)
        row[contract.NUM_PARAMS] = float(value) if value not in (None, "") else np.nan
        row["epoch"] = record.epoch or 0
        row["epochs"] = record.last_epoch or 0
        rows[run.run_id] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run_id")


def _selection_scores(runs: Sequence[RunData]) -> pd.Series | None:
    """Validation accuracy of each run's model of record, or None unless every run has one: a
    ranking that mixed validation and test scores would compare different things."""
    scores = {run.run_id: run.record.get(contract.VAL_ACCURACY) for run in runs}
    if any(value is None for value in scores.values()):
        return None
    return pd.Series(scores, name=contract.VAL_ACCURACY, dtype=float)


def _labels(runs: Sequence[RunData], params: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame | None]:
    """Run id -> the label figures show, and the legend behind short labels (None without)."""
    labels = stats.run_labels(params, {r.run_id: r.label for r in runs})
    short = stats.short_labels(labels, _trial_numbers(runs))
    if short is None:
        return labels, None
    return short, pd.DataFrame({"label": short, "run": labels}).rename_axis("run_id")


def _record_notes(runs: Sequence[RunData], labels: pd.Series) -> list[str]:
    """A note for each run whose model of record is not its last epoch."""
    notes = []
    for run in runs:
        record = run.record
        if record.epoch is not None and not record.is_last:
            notes.append(
                f"{labels[run.run_id]}: its model of record is epoch {record.epoch}, its best on "
                f"validation (early stopping), not its last epoch {record.last_epoch}; its "
                "scores in every table are that epoch's"
            )
    return notes


def _group_name(run_ids: Sequence[str], labels: pd.Series) -> str:
    """`T07`, or `T03 + T04 (seeds)` for runs that differ only by seed."""
    names = sorted(labels[r] for r in run_ids)
    return names[0] if len(names) == 1 else " + ".join(names) + " (seeds)"


def _trial_numbers(runs: Sequence[RunData]) -> dict[str, int | None]:
    numbers = {}
    for run in runs:
        value = run.tags.get(contract.TAG_TRIAL_NUMBER, "")
        numbers[run.run_id] = int(value) if value.isdigit() else None
    return numbers


def _check_selection(runs: Sequence[RunData], baseline_id: str) -> None:
    if len(runs) < 2:
        raise AnalysisError(f"need at least 2 runs to compare, found {len(runs)}")
    if len(runs) > MAX_COMPARED_RUNS:
        raise AnalysisError(
            f"{len(runs)} runs selected; compare at most {MAX_COMPARED_RUNS} (narrow it with "
            "--filter)"
        )
    if baseline_id not in {r.run_id for r in runs}:
        raise AnalysisError(f"baseline {baseline_id} is not among the compared runs")


def _overfit_onsets(groups: pd.DataFrame, history: pd.DataFrame, held_out: str) -> dict:
    """Setting -> where its mean held-out loss starts rising while training loss falls (None
    when it does not), for each seed group with three epochs or more."""
    onsets = {}
    for _, group in groups.iterrows():
        members = list(group.run_ids)
        train = _mean_curves(history, members, contract.TRAIN_LOSS)
        test = _mean_curves(history, members, held_out)
        both = pd.concat({"train": train, "test": test}, axis=1).dropna()
        if len(both) >= 3:
            onsets[group.setting] = stats.overfit_onset(
                both.index.to_numpy(), both["train"], both["test"]
            )
    return onsets


def _at_epoch_table(
    history: pd.DataFrame, epoch: int | None, ids: list[str], labels: pd.Series
) -> tuple[pd.DataFrame, list[str]]:
    """Run id x EPOCH_TABLE_KEYS at `epoch`, and a note on runs that logged nothing there."""
    if not epoch:
        return pd.DataFrame(index=ids, columns=list(EPOCH_TABLE_KEYS), dtype=float), []
    table = stats.metrics_at_epoch(history, epoch, EPOCH_TABLE_KEYS)
    short = table[contract.TEST_ACCURACY].isna()
    if not short.any():
        return table, []
    return table, [
        f"{int(short.sum())} run(s) logged no test accuracy at epoch {epoch}: "
        + ", ".join(labels[r] for r in table.index[short])
    ]


def _mean_curves(history: pd.DataFrame, run_ids: Sequence[str], key: str) -> pd.Series:
    rows = history[(history["key"] == key) & history["run_id"].isin(run_ids)]
    return rows.groupby("step")["value"].mean()


def build_comparison(
    runs: Sequence[RunData],
    *,
    baseline_id: str,
    at_epoch: int | None = None,
    excluded: Sequence[Excluded] = (),
    notes: Sequence[str] = (),
) -> Comparison:
    """Compute every table of the report from loaded runs (no MLflow, no figures)."""
    _check_selection(runs, baseline_id)
    runs = list(runs)
    ids = [r.run_id for r in runs]
    by_id = {r.run_id: r for r in runs}

    params = pd.DataFrame([r.params for r in runs], index=pd.Index(ids, name="run_id"))
    params = params.drop(columns=[c for c in LABEL_PARAMS if c in params.columns])
    params = params.reindex(columns=sorted(params.columns))
    varying = stats.varying_params(params)
    labels, legend = _labels(runs, params)
    groups_input = stats.seed_groups(params, pd.Series(0.0, index=ids))
    settings = pd.Series(
        {rid: row.setting for _, row in groups_input.iterrows() for rid in row.run_ids}
    )

    history = _history_frame(runs)
    final = _final_frame(runs)
    last_common = stats.last_common_epoch(history)
    epoch = at_epoch if at_epoch is not None else last_common
    max_epoch = int(history["step"].max()) if not history.empty else None
    all_notes = list(notes)
    if at_epoch is not None and max_epoch is not None and at_epoch > max_epoch:
        raise AnalysisError(f"--at-epoch {at_epoch} is beyond the last logged epoch ({max_epoch})")
    at_table, short_notes = _at_epoch_table(history, epoch, ids, labels)
    all_notes += short_notes

    selection = _selection_scores(runs)
    all_notes += _record_notes(runs, labels)
    groups = stats.seed_groups(params, final[contract.TEST_ACCURACY])
    if legend is not None:  # settings are long: name each by its runs' short labels
        groups = groups.assign(
            setting=[_group_name(g.run_ids, labels) for g in groups.itertuples()]
        )
    # overfitting is read on the held-out curve selection uses: validation when every run has it
    held_out = contract.VAL_LOSS if selection is not None else contract.TEST_LOSS
    onsets = _overfit_onsets(groups, history, held_out)

    parts = _prediction_parts(runs, baseline_id, labels)
    # accuracies measured on different test sets (e.g. --max-test) are not ranked together
    test_set = by_id[baseline_id].params.get("test_images")
    ranked = [r.run_id for r in runs if r.params.get("test_images") == test_set]
    if len(ranked) < len(runs):
        all_notes.append(
            f"{len(runs) - len(ranked)} run(s) were scored on another test set than the "
            f"baseline's ({test_set} images) and are left out of the findings' rankings"
        )
    ranking = selection if selection is not None else final[contract.TEST_ACCURACY]
    return Comparison(
        legend=legend,
        ranked=list(ranking.sort_values(ascending=False, kind="stable").index),
        runs=runs,
        baseline_id=baseline_id,
        labels=labels,
        settings=settings,
        params=params,
        varying=varying,
        history=history,
        epoch=epoch,
        at_epoch=at_table,
        final=final,
        selection=selection,
        groups=groups,
        onsets=onsets,
        predictions=parts,
        findings=findings(
            labels=labels,
            baseline_id=baseline_id,
            significance=parts.significance,
            groups=groups,
            onsets=onsets,
            max_epoch=max_epoch,
            final_accuracy=final.loc[ranked, contract.TEST_ACCURACY],
            at_epoch_accuracy=(
                at_table.loc[ranked, contract.TEST_ACCURACY]
                if epoch and epoch != max_epoch
                else None
            ),
            epoch=epoch,
            overfit_gap=final.loc[ranked, contract.OVERFIT_GAP],
            train_time=final.loc[ranked, contract.TRAIN_TIME],
            confused_pairs=parts.confused_pairs,
            alpha=ALPHA,
            selection=selection,
            churn=parts.churn,
            per_image=parts.per_image_accuracy,
            suspects=parts.label_issues,
            epochs=final.loc[ranked, "epochs"],
        ),
        excluded=list(excluded),
        notes=all_notes + parts.notes,
    )


def _prediction_parts(
    runs: Sequence[RunData], baseline_id: str, labels: pd.Series
) -> PredictionParts:
    """The prediction-based parts, for the runs that share the baseline's test set."""
    by_id = {r.run_id: r for r in runs}
    baseline = by_id[baseline_id]
    if baseline.predictions is None:
        why = "baseline has no stored predictions"
        return PredictionParts(partial=[Excluded(r, labels[r], why) for r in by_id])
    reference = baseline.predictions
    partial, correct, per_class, comparable = [], {}, {}, []
    predicted, confusions, flips = {}, {}, {}
    for run_id, run in by_id.items():
        p = run.predictions
        if p is None:
            unusable = [n for n in run.notices if "is left out" in n]
            why = (
                unusable[0] if unusable else f"no stored predictions ({contract.PREDICTIONS_PATH})"
            )
            partial.append(Excluded(run_id, labels[run_id], why))
            continue
        if len(p) != len(reference) or not np.array_equal(p.index, reference.index):
            why = (
                f"different test set: {len(p)} images, not the baseline's {len(reference)} "
                f"(index arrays differ)"
            )
            partial.append(Excluded(run_id, labels[run_id], why))
            continue
        if not np.array_equal(p.labels, reference.labels):
            why = "test labels differ from the baseline's"
            partial.append(Excluded(run_id, labels[run_id], why))
            continue
        comparable.append(run_id)
        y_pred = p.y_pred
        predicted[run_id] = y_pred
        correct[run_id] = y_pred == reference.labels
        confusions[run_id] = metrics.confusion_matrix(reference.labels, y_pred)
        per_class[run_id] = metrics.per_class_accuracy(reference.labels, y_pred)
        flips[run_id] = stats.flips_against_baseline(reference.labels, reference.y_pred, y_pred)
    notes = []
    if len(comparable) < 2:
        notes.append("fewer than two runs share the baseline's test set: no significance tests")
    return PredictionParts(
        comparable=comparable,
        partial=partial,
        notes=notes,
        significance=stats.significance_table(
            correct, baseline_id, n_resamples=BOOTSTRAP_RESAMPLES
        ),
        confusions=confusions,
        per_class=pd.DataFrame.from_dict(
            per_class, orient="index", columns=range(contract.N_CLASSES)
        ),
        flips=flips,
        confused_pairs=stats.confused_pairs_across_runs(confusions, top_k=10),
        test_index=reference.index,
        test_labels=reference.labels,
        predicted=predicted,
        per_image_accuracy=dynamics.per_image_accuracy(reference.labels, list(predicted.values())),
        label_issues=(
            label_issues.test_set_issues(
                reference.labels,
                np.stack([by_id[r].predictions.probs for r in comparable]),
                reference.index,
            )
            if len(comparable) >= 2
            else None
        ),
        churn=pd.Series(
            {
                r: dynamics.churn(reference.labels, reference.y_pred, p)["churn"]
                for r, p in predicted.items()
            },
            dtype=float,
        ),
    )
