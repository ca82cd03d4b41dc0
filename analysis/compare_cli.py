"""The `mnist-analysis compare` command: options and messages only.

The work is in `analysis.compare_report`, imported when the command runs, so that registering the
command on the `mnist-analysis` group costs nothing for its other subcommands.
"""

from __future__ import annotations

import click

from analysis.runs import AnalysisError


@click.command("compare")
@click.option(
    "--experiment",
    "experiments",
    multiple=True,
    metavar="NAME",
    help="Compare every run of this experiment (repeatable).",
)
@click.option(
    "--runs",
    "run_ids",
    multiple=True,
    metavar="ID",
    help="Compare these run ids (repeatable; also accepts several ids separated by commas).",
)
@click.option(
    "--parent",
    "parent_run_id",
    metavar="SWEEP_RUN_ID",
    help="Compare the child runs of a sweep; the report is logged to the sweep's parent run.",
)
@click.option(
    "--filter",
    "filter_string",
    metavar="EXPR",
    help="MLflow search filter, e.g. \"params.lr = '0.01'\" (within --experiment, else all experiments).",
)
@click.option(
    "--baseline",
    metavar="RUN_ID",
    help="Run the others are tested against (default: the sweep's first child / the oldest run).",
)
@click.option(
    "--at-epoch",
    type=int,
    metavar="N",
    help="Also compare the runs at this epoch (default: the last epoch all runs reached).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for report.html, runs.csv, significance.csv and figures/*.png.",
)
@click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    metavar="URI",
    help="MLflow tracking store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="MNIST folder for the flip gallery images (default: the run's data dir, $MNIST_DATA_DIR, ./data).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where downloaded artifacts are cached by run id (default: ~/.cache/mnist-workbench).",
)
@click.option(
    "--log/--no-log",
    default=True,
    show_default=True,
    help="Log the report to MLflow (the sweep's parent run, else a new report run).",
)
def compare_command(
    experiments,
    run_ids,
    parent_run_id,
    filter_string,
    baseline,
    at_epoch,
    out_dir,
    tracking_uri,
    data_dir,
    cache_dir,
    log,
):
    """Compare 2 to 100 runs: one offline report.html plus runs.csv and significance.csv.

    The report holds the runs table, overlaid learning curves and the comparison at --at-epoch,
    per-class accuracy, confusion matrices and their differences from the baseline, the test
    images each run fixed and broke, McNemar's test and bootstrap intervals, seed groups,
    accuracy against training time, the most-confused digit pairs and findings. It is logged to
    MLflow: to the sweep's parent run with --parent, to the open run under `mlflow run`, else to
    a new run tagged mnist.report=comparison.

    \b
    Examples:
      mnist-analysis compare --parent SWEEP_RUN_ID --out reports/try_lr
      mnist-analysis compare --experiment seed-reproductions --out reports/seeds
      mnist-analysis compare --experiment try-lr --filter "params.seed = '0'" --at-epoch 2 --out reports/lr
    """
    from analysis.compare_report import REPORT_ARTIFACT_DIR, compare_runs

    ids = [part.strip() for value in run_ids for part in value.split(",") if part.strip()]
    try:
        comparison, path, logged = compare_runs(
            out_dir=out_dir,
            experiments=experiments,
            run_ids=ids,
            parent_run_id=parent_run_id,
            filter_string=filter_string,
            baseline=baseline,
            at_epoch=at_epoch,
            tracking_uri=tracking_uri,
            data_dir=data_dir,
            log_to_mlflow=log,
            cache_dir=cache_dir,
        )
    except AnalysisError as err:
        raise click.ClickException(str(err)) from None
    left_out = len(comparison.excluded) + len(comparison.partial)
    click.echo(
        f"compared {len(comparison.runs)} runs (baseline {comparison.labels[comparison.baseline_id]})"
        + (f", {left_out} left out of some parts" if left_out else "")
    )
    click.echo(f"report: {path}")
    if logged:
        click.echo(f"logged to MLflow run {logged} ({REPORT_ARTIFACT_DIR}/report.html)")
