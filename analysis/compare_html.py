"""The comparison report as HTML: figures, table rows, flip gallery, and the Jinja2 template.

`analysis.compare_report` computes a `Comparison`; this module turns it into strings. Every value
shown reaches the page through the template with autoescape on, so run names and params supplied
by users are text, never markup. Images are embedded as base64 PNG: the file opens offline.
"""

from __future__ import annotations

import datetime as dt
import math

import jinja2
import numpy as np
import pandas as pd

from analysis import compare_plots as cp
from analysis.compare_report import ALPHA, EPOCH_TABLE_KEYS, FINAL_COLUMNS, Comparison

CURVE_KEYS = ("test_accuracy", "train_loss", "test_loss")
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


_FINAL_KINDS = {
    "test_accuracy": "pct",
    "train_accuracy": "pct",
    "overfit_gap": "pct",
    "test_loss": "float",
    "train_loss": "float",
    "train_time_s": "s",
    "num_params": "int",
}


def _cell(text: str, *, best: bool = False, title: str = "") -> dict:
    return {"text": text, "best": best, "title": title}


def _runs_rows(c: Comparison) -> tuple[list[str], list[dict]]:
    """Header and rows of the runs table; each cell {text, best, title}."""
    header = ["run", *c.varying, *FINAL_COLUMNS, "epochs", "status"]
    best = {}
    for column, larger in FINAL_COLUMNS.items():
        values = c.final[column].dropna()
        if len(values) > 1 and values.nunique() > 1:
            best[column] = values.max() if larger else values.min()
    rows = []
    for run in c.runs:
        rid = run.run_id
        cells = [_cell(c.labels[rid] + (" (baseline)" if rid == c.baseline_id else ""), title=rid)]
        cells += [
            _cell(str(c.params.at[rid, p]) if pd.notna(c.params.at[rid, p]) else "–")
            for p in c.varying
        ]
        for column in FINAL_COLUMNS:
            value = c.final.at[rid, column]
            cells.append(
                _cell(
                    _fmt(value, _FINAL_KINDS[column]), best=column in best and value == best[column]
                )
            )
        cells.append(_cell(str(c.final.at[rid, "epochs"])))
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
                    _fmt(at[k], "pct" if "accuracy" in k else "float") if at is not None else "–"
                    for k in EPOCH_TABLE_KEYS
                ],
                "final": _fmt(c.final.at[rid, "test_accuracy"], "pct"),
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
                            cp.image_to_base64(test_images[test_idx])
                            if test_images is not None and test_idx < len(test_images)
                            else None
                        ),
                        "caption": f"#{test_idx}: {c.test_labels[pos]}, base {base_pred[pos]} → {run_pred[pos]}",
                    }
                )
            kinds.append({"kind": kind, "count": len(positions), "tiles": tiles})
        sections.append({"label": c.labels[rid], "kinds": kinds, "net": flips.net})
    return sections


def figures(c: Comparison) -> dict[str, str]:
    """Every figure of the report as base64 PNG, by name (figures whose data is missing are absent)."""
    labels, settings = c.labels.to_dict(), c.settings.to_dict()
    out = {}
    if not c.history.empty:
        out["curves"] = cp.figure_to_base64(
            cp.LearningCurvesDisplay(c.history, labels, settings)
            .plot(CURVE_KEYS, at_epoch=c.epoch)
            .figure_
        )
    at, final = c.at_epoch["test_accuracy"], c.final["test_accuracy"].reindex(c.at_epoch.index)
    if c.epoch and at.notna().any() and not np.allclose(at, final, equal_nan=True):
        out["at_epoch"] = cp.figure_to_base64(
            cp.EpochComparisonDisplay(
                c.at_epoch["test_accuracy"], c.final["test_accuracy"], labels, c.epoch
            )
            .plot()
            .figure_
        )
    if c.per_class is not None and len(c.per_class):
        heat = c.per_class.rename(index=labels)
        out["per_class"] = cp.figure_to_base64(cp.PerClassHeatmapDisplay(heat).plot().figure_)
    if c.confusions:
        out["confusion"] = cp.figure_to_base64(
            cp.ConfusionGridDisplay({labels[r]: m for r, m in c.confusions.items()}).plot().figure_,
            tight=False,
        )
        base = c.confusions[c.baseline_id]
        diffs = {labels[r]: m - base for r, m in c.confusions.items() if r != c.baseline_id}
        if diffs:
            out["confusion_diff"] = cp.figure_to_base64(
                cp.ConfusionGridDisplay(diffs, kind="difference").plot().figure_, tight=False
            )
    cost = c.final[["train_time_s"]].copy()
    cost["accuracy"] = c.final["test_accuracy"]
    if c.significance is not None:
        # the interval is of the accuracy on the stored predictions, so plot that accuracy with it
        cost = cost.join(c.significance[["accuracy", "ci_low", "ci_high"]], rsuffix="_predictions")
        cost["accuracy"] = cost["accuracy_predictions"].fillna(cost["accuracy"])
    if cost[["train_time_s", "accuracy"]].notna().all(axis=1).sum() >= 2:
        out["cost"] = cp.figure_to_base64(
            cp.AccuracyCostDisplay(cost, labels, settings).plot().figure_
        )
    return out


def render_html(c: Comparison, images: dict[str, str], gallery: list[dict], *, title: str) -> str:
    """The report as one HTML string; every value goes through Jinja2's autoescape."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("analysis", "templates"),
        autoescape=True,  # run names and params come from users: never trust them as markup
        undefined=jinja2.StrictUndefined,
    )
    header, rows = _runs_rows(c)
    baseline = next(r for r in c.runs if r.run_id == c.baseline_id)
    return env.get_template("compare.html").render(
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
    )
