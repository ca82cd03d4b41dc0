"""`mnist-analysis` (also `python -m analysis`): reports from runs stored in MLflow.

`cli` is a click group; each report is a subcommand (`run` here; more are added with
`@cli.command(...)` or `cli.add_command(...)`). Errors a user can cause raise AnalysisError
anywhere in a subcommand; the group turns them into one line on stderr and exit status 1, so new
subcommands get that for free.
Reusable options (`tracking_uri_option`, ...) keep the subcommands' flags identical.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import click

from analysis.runs import AnalysisError


class AnalysisGroup(click.Group):
    """A click group that reports AnalysisError as a clean one-line error."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AnalysisError as err:
            raise click.ClickException(str(err)) from None


tracking_uri_option = click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    default=None,
    metavar="URI",
    help="MLflow tracking store (sqlite:///..., a path, http://...). "
    "Default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.",
)
cache_dir_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where downloaded artifacts are cached by run id. "
    "Default: $MNIST_WORKBENCH_CACHE, else ~/.cache/mnist-workbench.",
)
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="MNIST folder (holding MNIST/raw/) for the image galleries. Default: the run's "
    "mnist.data_dir tag, else $MNIST_DATA_DIR, else ./data.",
)


def notice(message: str) -> None:
    """One line on stderr for something the user should know but that is not an error."""
    click.echo(f"notice: {message}", err=True)


@click.group(cls=AnalysisGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Diagnostics and reports for MNIST workbench runs tracked in MLflow."""
    # a progress bar for every one-file download is noise in a report command's output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@cli.command("run")
@click.argument("refs", nargs=-1, metavar="[RUN]...")
@click.option(
    "--experiment",
    "experiments",
    multiple=True,
    metavar="NAME",
    help="Report every run of this experiment (repeatable).",
)
@click.option(
    "--parent", "parent_run_id", metavar="RUN_ID", help="Report every child run of this sweep."
)
@click.option(
    "--filter",
    "filter_string",
    metavar="EXPR",
    help="Report the runs matching this MLflow filter, e.g. \"params.lr = '0.01'\".",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder. One run: the report itself (default reports/<run id>). "
    "Several runs: one sub-folder per run, <run name>_<id prefix> (default reports/).",
)
@tracking_uri_option
@data_dir_option
@cache_dir_option
@click.option(
    "--log/--no-log",
    default=True,
    show_default=True,
    help="Log the report files to the run under analysis/.",
)
@click.option(
    "--predict",
    is_flag=True,
    help="If a run stored no predictions, compute them with its logged model.",
)
def run_command(
    refs: tuple[str, ...],
    experiments: tuple[str, ...],
    parent_run_id: str | None,
    filter_string: str | None,
    out_dir: Path | None,
    tracking_uri: str | None,
    data_dir: Path | None,
    cache_dir: Path | None,
    log: bool,
    predict: bool,
) -> None:
    """Per-run report: figures (PNG), numbers (CSV, JSON) and one report.html per run.

    RUN is a run id or a run name (e.g. seed000_mlp; the latest run of that name).
    """
    from analysis import report, runs

    if not (refs or experiments or parent_run_id or filter_string):
        raise click.UsageError(
            "name a RUN (id or name) or select runs with --experiment, --parent or --filter"
        )
    started = time.perf_counter()
    client = runs.connect(tracking_uri)
    run_ids = []
    for ref in refs:
        run_id, matches = runs.resolve_run_ref(client, ref)
        if matches > 1:
            notice(f"{matches} runs are named {ref!r}; reporting the latest ({run_id})")
        run_ids.append(run_id)
    if experiments or parent_run_id or filter_string:
        run_ids += runs.find_run_ids(
            client,
            experiments=experiments,
            parent_run_id=parent_run_id,
            filter_string=filter_string,
        )
    run_ids = list(dict.fromkeys(run_ids))
    options = dict(
        data_dir=data_dir,
        cache_dir=cache_dir,
        log=log,
        predict=predict,
        tracking_uri=runs.resolve_tracking_uri(tracking_uri),
    )

    if len(run_ids) == 1:
        html = _report_one(client, run_ids[0], out_dir or Path("reports") / run_ids[0], **options)
        written = [html]
    else:
        # a selection holds sweep parents and perhaps broken runs: report the rest, say what was skipped
        written = []
        for run_id in run_ids:
            try:
                name = runs.get_run(client, run_id).info.run_name or "run"
                folder = (out_dir or Path("reports")) / f"{_safe_name(name)}_{run_id[:8]}"
                written.append(_report_one(client, run_id, folder, **options))
            except AnalysisError as err:
                notice(f"skipped run {run_id}: {err}")
        if not written:
            raise AnalysisError(f"none of the {len(run_ids)} selected runs could be reported")
    where = f"; logged to each run under {report.ARTIFACT_DIR}/" if log else ""
    for html in written:
        click.echo(f"report written to {html}")
    click.echo(f"{len(written)} report(s){where} ({time.perf_counter() - started:.1f} s)")


def _report_one(
    client,
    run_id: str,
    out: Path,
    *,
    data_dir: Path | None,
    cache_dir: Path | None,
    log: bool,
    predict: bool,
    tracking_uri: str,
) -> Path:
    """Load one run, write its report into `out`, log it unless told not to; the HTML's path."""
    from analysis import report, runs

    run = runs.load_run(client, run_id, cache_dir=cache_dir)
    images, extra = _test_images(run, data_dir)
    if run.predictions is None and predict:
        if images is None:
            raise AnalysisError("--predict needs the MNIST test images; pass --data-dir")
        run.predictions = runs.predict_with_logged_model(
            run.run_id, *images, tracking_uri=tracking_uri
        )
        run.notices = [n for n in run.notices if runs.PREDICTIONS_PATH not in n]
        extra.append(
            f"predictions computed now from the logged model "
            f"({runs.MODEL_URI.format(run_id=run.run_id)}), not stored ones"
        )

    pixels = None
    if images is not None and run.predictions is not None:
        pixels, mismatch = _matching_images(run.predictions, *images)
        if mismatch:
            extra.append(mismatch)
    elif run.predictions is None:
        extra = []  # without predictions there are no image galleries: missing images are no news

    written = report.build_run_report(
        run, out, images=pixels, train_labels=_train_labels(run, data_dir), notices=extra
    )
    for line in written.notices:
        notice(line)
    if log:
        report.log_report(client, run.run_id, written)
    return written.html


def _safe_name(name: str) -> str:
    """A run name usable as a folder name (names like `lr=0.01` stay readable)."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("._") or "run"


def _test_images(run, data_dir: Path | None):
    """((images, labels) or None, notices) for the run's test set."""
    from analysis import runs

    folder = runs.resolve_data_dir(data_dir, run)
    try:
        return runs.load_test_set(folder), []
    except AnalysisError as err:
        return None, [f"test images unavailable, image galleries skipped: {err}"]


def _train_labels(run, data_dir: Path | None):
    """Training labels for the dataset view, or None: a nicety, so its absence is not reported."""
    from analysis import runs

    try:
        return runs.load_train_labels(runs.resolve_data_dir(data_dir, run))
    except AnalysisError:
        return None


def _matching_images(predictions, images, labels):
    """The test images if they are the ones the predictions were made on, else (None, why)."""
    index = predictions.index
    if index.max(initial=-1) >= len(images) or index.min(initial=0) < 0:
        return None, (
            f"predictions refer to test image {index.max()} but the data dir holds "
            f"{len(images)}; image galleries skipped (wrong --data-dir?)"
        )
    if not (labels[index] == predictions.labels).all():
        return None, (
            "the labels of the test images in the data dir differ from the stored "
            "predictions' labels; image galleries skipped (wrong --data-dir?)"
        )
    return images, None


from analysis.compare_cli import compare_command  # noqa: E402  (issue 5: comparison reports)

cli.add_command(compare_command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`mnist-analysis`)."""
    cli.main(args=argv, prog_name="mnist-analysis")


if __name__ == "__main__":
    sys.exit(main())
