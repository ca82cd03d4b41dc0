"""Plain-language findings of a comparison: each sentence computed from the tables passed in.

Pure, like `analysis.compare`: tables in, a list of sentences out. A part whose inputs are missing
contributes nothing rather than a canned sentence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.stats import OverfitOnset


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _pp(x: float) -> str:
    return f"{100 * x:+.2f} points"


def _name_list(items: Sequence[str], limit: int = 5) -> str:
    items = list(items)
    if len(items) > limit:
        items = items[:limit] + [f"{len(items) - limit} more"]
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


TEST_SET_RANKING = (
    "These runs hold out no validation images, so this ranking is on the test set: choosing the "
    "best run on the data that scores it overstates that run's accuracy (set validation: 5000)."
)


def _replicates_finding(selection: pd.Series, significance) -> str:
    """Runs that differ only in their seed: their spread, not a best seed (which is chance)."""
    n = len(selection)
    text = (
        f"These {n} runs differ only in their seed: validation accuracy {_pct(selection.mean())} "
        f"± {100 * selection.std(ddof=1):.2f} points (mean ± std, from {_pct(selection.min())} "
        f"to {_pct(selection.max())}); which seed does best is chance, so no run is named best."
    )
    if significance is not None and len(significance) == n:
        accuracy = significance["accuracy"]
        text += f" Test accuracy: {_pct(accuracy.mean())} ± {100 * accuracy.std(ddof=1):.2f}."
    return text


def _selected_run_finding(selection: pd.Series, significance, labels) -> str:
    best = selection.idxmax()
    text = (
        f"{labels[best]} is the best run on validation accuracy ({_pct(selection[best])} on the "
        f"held-out validation images); every best mark and ranking here is chosen on validation."
    )
    if significance is not None and best in significance.index:
        row = significance.loc[best]
        text += (
            f" Its test accuracy is {_pct(row.accuracy)} (95% bootstrap interval "
            f"{_pct(row.ci_low)} to {_pct(row.ci_high)})."
        )
    return text


def _best_run_finding(significance, labels, baseline_id) -> str:
    best = significance["accuracy"].idxmax()
    row = significance.loc[best]
    interval = f"95% bootstrap interval {_pct(row.ci_low)} to {_pct(row.ci_high)}"
    if best == baseline_id:
        return (
            f"The baseline {labels[best]} has the highest test accuracy, {_pct(row.accuracy)} "
            f"({interval}); no run beats it."
        )
    base = significance.at[baseline_id, "accuracy"]
    return (
        f"{labels[best]} has the highest test accuracy, {_pct(row.accuracy)} ({interval}), "
        f"{_pp(row.accuracy - base)} against the baseline {labels[baseline_id]} ({_pct(base)})."
    )


def _significance_findings(significance, labels, baseline_id, alpha) -> list[str]:
    others = significance.drop(index=baseline_id)
    if others.empty:
        return []
    base = significance.at[baseline_id, "accuracy"]
    column = "p_holm" if len(others) > 1 else "pvalue"
    how = (
        f"McNemar's exact test, Holm-corrected over {len(others)} comparisons"
        if len(others) > 1
        else "McNemar's exact test"
    )
    sig = others[others[column] < alpha].sort_values(column)
    insig = others[others[column] >= alpha].sort_values(column)
    sentences = []

    def describe(frame):
        return [
            f"{labels[r]} ({_pp(row.accuracy - base)}, p={row[column]:.2g})"
            for r, row in frame.iterrows()
        ]

    level = f"{100 * alpha:g}%"
    if len(sig):
        better = int((sig["accuracy"] > base).sum())
        sentences.append(
            f"At the {level} level ({how}), {len(sig)} of {len(others)} runs differ from the "
            f"baseline {labels[baseline_id]} ({better} better, {len(sig) - better} worse): "
            f"{_name_list(describe(sig))}."
        )
    else:
        sentences.append(
            f"No run differs significantly from the baseline {labels[baseline_id]} at the "
            f"{level} level ({how})."
        )
    if len(insig) and len(sig):
        sentences.append(
            f"Not significant, so not distinguishable from the baseline on this test set: "
            f"{_name_list(describe(insig))}."
        )
    return sentences


def _suspects_finding(suspects: pd.DataFrame, n_runs: int) -> str:
    shown = ", ".join(
        f"#{int(r.index)} ({int(r.given)} → {int(r.suggested)})"
        for r in suspects.head(5).itertuples()
    )
    return (
        f"Confident learning over the {n_runs} runs' averaged probabilities suspects "
        f"{len(suspects)} test labels of being wrong"
        + (f", most of all {shown}" if shown else "")
        + "; `mnist-analysis labels` lists them with a gallery."
    )


def _per_image_finding(per_image: np.ndarray, n_runs: int) -> str:
    never, always = int(np.sum(per_image == 0)), int(np.sum(per_image == 1))
    split = len(per_image) - never - always
    return (
        f"Of the {len(per_image)} test images, {never} are wrong in every one of the {n_runs} "
        f"runs, {always} right in every run, and {split} divide them."
    )


def _churn_finding(churn: pd.Series, significance, labels, baseline_id) -> list[str]:
    others = churn.drop(index=baseline_id, errors="ignore").dropna()
    if others.empty:
        return []
    top = others.idxmax()
    base = significance.at[baseline_id, "accuracy"]
    gap = significance.at[top, "accuracy"] - base
    return [
        f"{labels[top]} changes {_pct(others[top])} of the baseline's test predictions while its "
        f"accuracy differs by {_pp(gap)}: accuracy alone hides how differently two runs decide."
    ]


def _flip_findings(significance, labels, baseline_id) -> list[str]:
    others = significance.drop(index=baseline_id)
    if others.empty:
        return []
    net = others["fixed"].astype(float) - others["broke"].astype(float)
    top = net.idxmax()
    row = others.loc[top]
    counts = (
        f"fixed {int(row.fixed)} test images and broke {int(row.broke)} (net {int(net[top]):+d})"
    )
    if net[top] <= 0:
        return [f"No run gains on the baseline in net; the closest, {labels[top]}, {counts}."]
    sentence = f"Against the baseline, {labels[top]} {counts}"
    if row.broke > 0:
        sentence += (
            f": even the largest net gain comes with {int(row.broke)} images the baseline got right"
        )
    return [sentence + "."]


def _seed_findings(groups: pd.DataFrame) -> list[str]:
    repeated = groups[groups["n"] > 1]
    if repeated.empty:
        return []
    summaries = [
        f"{g.setting}: {_pct(g['mean'])} ± {100 * g['std']:.2f} (n={g.n})"
        for _, g in repeated.iterrows()
    ]
    sentences = [f"Over seeds (mean ± std): {_name_list(summaries, limit=6)}."]
    if len(repeated) > 1:
        gap = repeated["mean"].max() - repeated["mean"].min()
        spread = repeated["std"].max()
        verdict = "larger" if gap > spread else "no larger"
        sentences.append(
            f"The best and worst seeded settings differ by {100 * gap:.2f} points on average, "
            f"{verdict} than the largest seed-to-seed standard deviation ({100 * spread:.2f} "
            f"points)."
        )
    return sentences


def _overfit_findings(
    onsets: Mapping[str, OverfitOnset | None], max_epoch: int | None, curve: str = "test"
) -> list:
    found = {k: v for k, v in onsets.items() if v is not None}
    if not onsets:
        return []
    if not found:
        tail = f" within {max_epoch} epochs" if max_epoch else ""
        return [
            f"No setting overfits{tail}: in none does the {curve} loss climb back above its "
            f"minimum while the train loss keeps falling."
        ]
    ordered = sorted(found.items(), key=lambda kv: (kv[1].onset, kv[0]))
    sentences = []
    for setting, o in ordered[:4]:
        sentences.append(
            f"{setting} overfits from epoch {o.onset}: its {curve} loss is lowest at epoch "
            f"{o.best_epoch} ({o.best_test_loss:.4f}) and rises to {o.last_test_loss:.4f} by epoch "
            f"{o.last_epoch}, while its train loss falls a further {o.train_drop:.4f}."
        )
    if len(ordered) > 4:
        sentences.append(f"{len(ordered) - 4} more settings overfit later than these.")
    return sentences


def _gap_finding(overfit_gap: pd.Series, labels) -> list[str]:
    """Train minus test accuracy of each model of record, said with its sign: with dropout the
    training accuracy (measured while training) is often below the test accuracy, and a
    negative gap is no "narrow" one."""
    gaps = overfit_gap.dropna()
    if len(gaps) < 2 or gaps.nunique() == 1:
        return []
    top, low = gaps.idxmax(), gaps.idxmin()
    text = (
        f"Train minus test accuracy ranges from {_pp(gaps[low])} ({labels[low]}) to "
        f"{_pp(gaps[top])} ({labels[top]})."
    )
    if gaps.max() < 0:
        text += (
            " Every run scores higher on the test images than on its training images as it "
            "trained on them (dropout and the updates within an epoch lower the latter): no run "
            "overfits by this measure."
        )
    return [text]


def _cost_finding(
    accuracy: pd.Series,
    train_time: pd.Series,
    labels,
    tolerance: float,
    epochs: pd.Series | None = None,
) -> list:
    """The cheapest run near the best. Runs trained for different numbers of epochs are
    compared by time per epoch: 3 epochs against 15 says nothing about speed."""
    unit = "s"
    if epochs is not None and epochs.dropna().nunique() > 1:
        train_time, unit = train_time / epochs.replace(0, np.nan), "s an epoch"
    both = pd.concat({"acc": accuracy, "time": train_time}, axis=1).dropna()
    if len(both) < 2:
        return []
    best = both["acc"].idxmax()
    near = both[both["acc"] >= both.at[best, "acc"] - tolerance]
    fastest = near["time"].idxmin()
    best_time = f"{both.at[best, 'time']:.1f} {unit}"
    if fastest == best:
        faster = both[both["time"] < both.at[best, "time"]]
        if faster.empty:
            return [f"{labels[best]} is both the most accurate and the fastest run ({best_time})."]
        return [
            f"{labels[best]} is the most accurate run ({best_time}); the {len(faster)} faster "
            f"run(s) all score more than {100 * tolerance:.1f} points lower."
        ]
    ratio = both.at[best, "time"] / both.at[fastest, "time"]
    return [
        f"{labels[fastest]} comes within {100 * tolerance:.1f} points of the best "
        f"({_pct(both.at[fastest, 'acc'])} vs {_pct(both.at[best, 'acc'])}) in "
        f"{both.at[fastest, 'time']:.1f} {unit}, {ratio:.1f}x faster than {labels[best]} "
        f"({best_time})."
    ]


def _epoch_finding(at_epoch: pd.Series, final: pd.Series, epoch: int, labels) -> list[str]:
    at_epoch, final = at_epoch.dropna(), final.dropna()
    if len(at_epoch) < 2 or final.empty:
        return []
    lead_then, lead_end = at_epoch.idxmax(), final.idxmax()
    if lead_then == lead_end:
        return [
            f"{labels[lead_then]} already leads at epoch {epoch} "
            f"({_pct(at_epoch[lead_then])}) and still leads at the end."
        ]
    return [
        f"At epoch {epoch} {labels[lead_then]} leads ({_pct(at_epoch[lead_then])}), but at the end "
        f"{labels[lead_end]} does ({_pct(final[lead_end])})."
    ]


def _confusion_finding(pairs: pd.DataFrame, n_runs: int) -> list[str]:
    if pairs.empty:
        return []
    top = pairs.iloc[0]
    return [
        f"Across {n_runs} runs the most frequent mistake is a true {int(top.true)} read as "
        f"{int(top.pred)}: {int(top.total)} times in all, {top.mean_per_run:.1f} per run; it is "
        "the "
        f"single most frequent mistake of {int(top.top_in_runs)} of the {n_runs} runs."
    ]


def findings(
    *,
    labels: Mapping[str, str],
    baseline_id: str,
    significance: pd.DataFrame | None,
    groups: pd.DataFrame,
    onsets: Mapping[str, OverfitOnset | None],
    max_epoch: int | None,
    final_accuracy: pd.Series,
    at_epoch_accuracy: pd.Series | None,
    epoch: int | None,
    overfit_gap: pd.Series,
    train_time: pd.Series,
    confused_pairs: pd.DataFrame | None,
    alpha: float = 0.05,
    cost_tolerance: float = 0.005,
    selection: pd.Series | None = None,
    churn: pd.Series | None = None,
    per_image: np.ndarray | None = None,
    suspects: pd.DataFrame | None = None,
    epochs: pd.Series | None = None,
) -> list[str]:
    """Plain-language findings, each sentence computed from the tables passed in.

    significance: output of `compare.significance_table` (None when no predictions are comparable);
    groups: output of `compare.seed_groups`; onsets: setting -> `compare.overfit_onset` result; the
    Series are
    indexed by run id. Parts whose inputs are missing are skipped.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    sentences: list[str] = []
    replicates = len(groups) == 1 and int(groups.iloc[0]["n"]) == len(labels) > 1
    if selection is not None and replicates:
        sentences.append(_replicates_finding(selection, significance))
    elif selection is not None:
        sentences.append(_selected_run_finding(selection, significance, labels))
    elif significance is not None and baseline_id in significance.index:
        sentences.append(
            _best_run_finding(significance, labels, baseline_id) + " " + TEST_SET_RANKING
        )
    else:
        sentences.append(TEST_SET_RANKING)
    if significance is not None and baseline_id in significance.index:
        sentences += _significance_findings(significance, labels, baseline_id, alpha)
        sentences += _flip_findings(significance, labels, baseline_id)
        if churn is not None:
            sentences += _churn_finding(churn, significance, labels, baseline_id)
        if per_image is not None and len(significance) > 1:
            sentences.append(_per_image_finding(per_image, len(significance)))
        if suspects is not None:
            sentences.append(_suspects_finding(suspects, len(significance)))
    sentences += _seed_findings(groups)
    sentences += _overfit_findings(
        onsets, max_epoch, "validation" if selection is not None else "test"
    )
    sentences += _gap_finding(overfit_gap, labels)
    if at_epoch_accuracy is not None and epoch is not None:
        sentences += _epoch_finding(at_epoch_accuracy, final_accuracy, epoch, labels)
    sentences += _cost_finding(final_accuracy, train_time, labels, cost_tolerance, epochs)
    if confused_pairs is not None:
        n_runs = len(significance) if significance is not None else len(labels)
        sentences += _confusion_finding(confused_pairs, n_runs)
    return sentences
