"""Selecting the runs a comparison or a label-issue report reads: by experiment, id or name,
sweep parent or MLflow filter, leaving out sweep parents and earlier report runs; what to say of
the selected runs that have no usable test predictions."""

from __future__ import annotations

from collections.abc import Sequence

from analysis.comparison import MAX_COMPARED_RUNS, Excluded
from analysis.errors import AnalysisError
from analysis.runs import RunData, left_out
from mnist_train import contract


def load_comparison_runs(
    client,
    *,
    experiments: Sequence[str] = (),
    run_ids: Sequence[str] = (),
    parent_run_id: str | None = None,
    filter_string: str | None = None,
    cache_dir=None,
    skip: Sequence[str] = (),
) -> tuple[list[RunData], list[Excluded], list[str]]:
    """Load the selected runs; returns (runs, runs that could not be loaded, notes).

    Sweep parents and earlier comparison reports are skipped with a note: they are not training
    runs; ids in `skip` are dropped silently. Runs come back oldest first.
    """
    from analysis.runs import find_run_ids, get_run, load_run

    ids = find_run_ids(
        client,
        experiments=experiments,
        run_ids=run_ids,
        parent_run_id=parent_run_id,
        filter_string=filter_string,
    )
    ids = [i for i in ids if i not in skip]
    if (
        len(ids) > 2 * MAX_COMPARED_RUNS
    ):  # fail before loading them all; parents and reports may still drop out
        raise AnalysisError(
            f"{len(ids)} runs selected; compare at most {MAX_COMPARED_RUNS} (narrow it with "
            "--filter)"
        )
    runs, excluded, notes = [], [], []
    skipped_reports = skipped_parents = 0
    for run_id in ids:
        try:
            runs.append(load_run(client, run_id, cache_dir=cache_dir, with_steps=False))
        except AnalysisError as err:
            run = get_run(client, run_id)
            if run.data.tags.get(contract.TAG_REPORT):
                skipped_reports += 1
            elif "sweep parent" in str(err) and run_id not in run_ids:
                skipped_parents += 1
            else:
                excluded.append(Excluded(run_id, run.info.run_name or run_id[:8], str(err)))
    if skipped_reports:
        notes.append(f"skipped {skipped_reports} earlier comparison report run(s)")
    if skipped_parents:
        notes.append(f"skipped {skipped_parents} sweep parent run(s) (their children are compared)")
    runs.sort(key=lambda r: (r.start_time or 0, r.run_id))
    return runs, excluded, notes


def predictions_missing(runs: Sequence[RunData]) -> AnalysisError:
    """The one-line error for a selection none of whose runs has usable test predictions: how
    many, and why for the first few (stored none, or what was wrong with what they stored)."""
    shown = 3
    why = [
        f"{run.label}: {run.left_out.get(contract.PREDICTIONS_PATH, 'stored none')}"
        for run in runs[:shown]
    ]
    more = f"; {len(runs) - shown} more" if len(runs) > shown else ""
    return AnalysisError(
        f"none of the {len(runs)} selected run(s) has usable {contract.PREDICTIONS_PATH}"
        + (f" ({'; '.join(why)}{more})" if why else "")
    )


def predictions_notes(runs: Sequence[RunData]) -> list[str]:
    """Notices for the runs of `runs` without usable test predictions, which a report of test
    predictions leaves out: each that stored unusable ones by name with the reason, then how
    many stored none."""
    lacking = [run for run in runs if run.predictions is None]
    unusable = [run for run in lacking if contract.PREDICTIONS_PATH in run.left_out]
    notes = [
        left_out(
            run.run_name,
            run.run_id,
            contract.PREDICTIONS_PATH,
            run.left_out[contract.PREDICTIONS_PATH],
        )
        + ": the run is left out"
        for run in unusable
    ]
    if len(lacking) > len(unusable):
        notes.append(f"{len(lacking) - len(unusable)} run(s) stored no test predictions: left out")
    return notes
