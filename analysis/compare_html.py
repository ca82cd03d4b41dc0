"""The comparison report as HTML: table rows, the flip gallery, and the page itself.

`analysis.comparison` computes a `Comparison`; this module turns it into strings. Every value
shown reaches the page through the template with autoescape on, so run names and params supplied
by users are text, never markup. Images are embedded as base64 PNG: the file opens offline.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd

from analysis.comparison import ALPHA, EPOCH_TABLE_KEYS, FINAL_COLUMNS, Comparison
from analysis.figures.common import image_to_base64
from analysis.html import render
from analysis.study import Study
from mnist_train import contract

GALLERY_PER_KIND = 6  # fixed / broke images shown per run


def _fmt(value, kind: str = "float") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "p":
        return f"{value:.3g}"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "s":
        return f"{value:.1f}"
    return f"{value:.4f}"


VALIDATION_COLUMNS = tuple(
    k for k in FINAL_COLUMNS if contract.METRIC[k].split == contract.VALIDATION
)


# fANOVA fits a random forest to the complete trials: below this many its importances move a lot
# from one added trial to the next, a rough guide rather than a finding
FEW_FOR_IMPORTANCE = 20


def _cell(text: str, *, best: bool = False, title: str = "", clip: bool = False) -> dict:
    """A table cell; `clip`: cut to the column's width on the page, the whole text on hover."""
    return {"text": text, "best": best, "title": title or (text if clip else ""), "clip": clip}


def _runs_rows(c: Comparison) -> tuple[list[str], list[dict]]:
    """Header and rows of the runs table; each cell {text, best, title}."""
    columns = [k for k in FINAL_COLUMNS if k not in VALIDATION_COLUMNS or c.selection is not None]
    named = c.legend is not None  # short labels (T07): the run's own name beside each
    header = ["label", "run"] if named else ["run"]
    header += [*c.varying, *columns, "epoch", "status"]
    # With a validation split, "best" is chosen on validation only: marking the best test score
    # too would invite choosing on the test set.
    marked = VALIDATION_COLUMNS if c.selection is not None else tuple(FINAL_COLUMNS)
    best = {}
    for column in marked:
        larger = contract.higher_is_better(column)
        values = c.final[column].dropna()
        if len(values) > 1 and values.nunique() > 1:
            best[column] = values.max() if larger else values.min()
    rows = []
    for run in c.runs:
        rid = run.run_id
        chosen = c.selection is not None and rid == c.selection.idxmax()
        name = c.labels[rid] + (" (baseline)" if rid == c.baseline_id else "")
        cells = [_cell(name + (" (best on validation)" if chosen else ""), best=chosen, title=rid)]
        if named:
            cells.append(_cell(str(c.legend.at[rid, "run"]), clip=True))
        cells += [_cell(_param_text(c.params.at[rid, p])) for p in c.varying]
        for column in columns:
            value = c.final.at[rid, column]
            cells.append(
                _cell(
                    _fmt(value, contract.metric_format(column)),
                    best=column in best and value == best[column],
                )
            )
        epoch, epochs = c.final.at[rid, "epoch"], c.final.at[rid, "epochs"]
        cells.append(_cell(f"{epoch} of {epochs}" if epoch != epochs else str(epoch)))
        cells.append(_cell(run.status))
        rows.append({"cells": cells, "baseline": rid == c.baseline_id})
    return header, rows


def _at_epoch_rows(c: Comparison) -> list[dict]:
    rows = []
    for rid in c.run_ids:
        at = c.at_epoch.loc[rid] if rid in c.at_epoch.index else None
        rows.append(
            {
                "label": c.labels[rid],
                "values": [
                    _fmt(at[k], contract.metric_format(k)) if at is not None else "–"
                    for k in EPOCH_TABLE_KEYS
                ],
                "final": f"{_fmt(c.final.at[rid, contract.TEST_ACCURACY], 'pct')} "
                f"(epoch {c.final.at[rid, 'epoch']})",
            }
        )
    return rows


def _significance_rows(c: Comparison) -> list[dict]:
    if c.significance is None:
        return []
    rows = []
    for rid, s in c.significance.iterrows():
        is_base = rid == c.baseline_id
        p = s["p_holm"]
        rows.append(
            {
                "label": c.labels[rid] + (" (baseline)" if is_base else ""),
                "accuracy": _fmt(s["accuracy"], "pct"),
                "interval": f"{_fmt(s['ci_low'], 'pct')} – {_fmt(s['ci_high'], 'pct')}",
                "delta": "–"
                if is_base
                else f"{100 * (s['accuracy'] - c.significance.at[c.baseline_id, 'accuracy']):+.2f}",
                "fixed": "–" if is_base else str(int(s["fixed"])),
                "broke": "–" if is_base else str(int(s["broke"])),
                "pvalue": "–" if is_base else _fmt(s["pvalue"], "p"),
                "p_holm": "–" if is_base else _fmt(p, "p"),
                "significant": (not is_base) and p < ALPHA,
            }
        )
    return rows


def _group_rows(c: Comparison) -> list[dict]:
    return [
        {
            "setting": g.setting,
            "n": g.n,
            "mean": _fmt(g["mean"], "pct"),
            "std": "–" if pd.isna(g["std"]) else f"{100 * g['std']:.2f}",
            "range": f"{_fmt(g['min'], 'pct')} – {_fmt(g['max'], 'pct')}",
            "seeds": ", ".join(str(s) for s in g.seeds),
        }
        for _, g in c.groups.iterrows()
        if g.n > 1
    ]


def _pair_rows(c: Comparison) -> list[dict]:
    if c.confused_pairs is None:
        return []
    return [
        {
            "true": int(p.true),
            "pred": int(p.pred),
            "total": int(p.total),
            "mean": f"{p.mean_per_run:.1f}",
            "runs_with": int(p.runs_with_pair),
            "top_in": int(p.top_in_runs),
        }
        for _, p in c.confused_pairs.iterrows()
    ]


def gallery(c: Comparison, test_images: np.ndarray | None) -> list[dict]:
    """Per non-baseline run: counts of fixed and broke images and a few of each as tiles."""
    if not c.flips:
        return []
    base_pred = c.predicted[c.baseline_id]
    sections = []
    for rid in c.comparable:
        if rid == c.baseline_id:
            continue
        flips, run_pred = c.flips[rid], c.predicted[rid]
        kinds = []
        for kind, positions in (("fixed", flips.fixed), ("broke", flips.broke)):
            tiles = []
            for pos in positions[:GALLERY_PER_KIND]:
                test_idx = int(c.test_index[pos])
                tiles.append(
                    {
                        "image": (
                            image_to_base64(test_images[test_idx])
                            if test_images is not None and test_idx < len(test_images)
                            else None
                        ),
                        "caption": (
                            f"#{test_idx}: {c.test_labels[pos]}, "
                            f"base {base_pred[pos]} → {run_pred[pos]}"
                        ),
                    }
                )
            kinds.append({"kind": kind, "count": len(positions), "tiles": tiles})
        sections.append({"label": c.labels[rid], "kinds": kinds, "net": flips.net})
    return sections


def _param_text(value) -> str:
    """A logged parameter (a string) as the runs table shows it: long floats to 4 digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(value) if len(str(value)) <= 8 or number.is_integer() else f"{number:.4g}"


def _setting(value) -> str:
    """A parameter value as a person reads it: floats to 3 significant digits."""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.3g}"
    return str(value)


def _study_context(study: Study | None) -> dict | None:
    """What the template's study section shows, or None without a study."""
    if study is None:
        return None
    best = study.best()
    counts = study.counts()
    context = {
        "name": study.name,
        "objective": study.objective,
        "direction": study.direction,
        "counts": ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())),
        "n_trials": len(study.trials),
        "n_complete": len(study.complete),
        "few_for_importance": len(study.complete) < FEW_FOR_IMPORTANCE,
        "on_validation": contract.measured_on(study.objective) == contract.VALIDATION,
        "on_test": contract.measured_on(study.objective) == contract.TEST,
        "best": None,
    }
    if best is not None:
        test = best.get(contract.TEST_ACCURACY)
        context["best"] = {
            "trial": int(best["trial"]),
            "name": str(best["name"]),
            "run_id": str(best["run_id"]),
            "value": _fmt(best[study.objective]),
            "test": _fmt(test) if test is not None and not pd.isna(test) else "n/a",
            "params": ", ".join(f"{p} = {_setting(best[p])}" for p in study.params),
        }
    return context


def render_html(
    c: Comparison,
    images: dict[str, str],
    gallery: list[dict],
    *,
    title: str,
    study: Study | None = None,
) -> str:
    """The report as one HTML string; every value goes through Jinja2's autoescape."""
    header, rows = _runs_rows(c)
    baseline = next(r for r in c.runs if r.run_id == c.baseline_id)
    return render(
        "compare.html",
        title=title,
        generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        n_runs=len(c.runs),
        baseline_label=c.labels[c.baseline_id],
        baseline_id=baseline.run_id,
        experiments=sorted({r.experiment_name for r in c.runs}),
        findings=c.findings,
        notes=c.notes,
        excluded=c.excluded,
        partial=c.partial,
        runs_header=header,
        runs_rows=rows,
        epoch=c.epoch,
        epoch_keys=EPOCH_TABLE_KEYS,
        at_epoch_rows=_at_epoch_rows(c),
        significance_rows=_significance_rows(c),
        n_test=len(c.test_labels) if c.test_labels is not None else 0,
        alpha=ALPHA,
        group_rows=_group_rows(c),
        pair_rows=_pair_rows(c),
        n_comparable=len(c.comparable),
        gallery=gallery,
        gallery_per_kind=GALLERY_PER_KIND,
        images=images,
        study=_study_context(study),
        shown_note=_shown_note(c),
    )


def _shown_note(c: Comparison) -> str:
    """What the per-run figures leave out, when they show only the best runs."""
    if len(c.shown) == len(c.runs):
        return ""
    return (
        f"Figures with a line or panel per run show the best {len(c.shown)} of the {len(c.runs)} "
        f"runs on {c.ranked_on} (the baseline included); the tables list them all."
    )
