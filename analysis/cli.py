"""`mnist-analysis` (also `python -m analysis`): reports from runs stored in MLflow.

`cli` is a click group; each report is a subcommand (`run`, `compare`; more are added with
`@cli.command(...)` or `cli.add_command(...)`). Errors a user can cause raise AnalysisError
anywhere in a subcommand; AnalysisCommand turns them into one line on stderr and exit status 1,
so new subcommands get that for free.
Reusable options (`tracking_uri_option`, ...) keep the subcommands' flags identical.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import click

from analysis.errors import AnalysisError
from mnist_train import contract, process


class AnalysisCommand(click.Command):
    """A click command that reports AnalysisError as a clean one-line error, also when it is
    invoked on its own rather than through the group."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AnalysisError as err:
            raise click.ClickException(str(err)) from None
        except OSError as err:
            if err.filename is None:
                raise  # not about a file the user named: a bug, keep the traceback
            raise click.ClickException(
                f"cannot write {err.filename}: {err.strerror} (choose another --out)"
            ) from None


class AnalysisGroup(click.Group):
    """The `mnist-analysis` group: every subcommand is an AnalysisCommand."""

    command_class = AnalysisCommand


def _settle_tracking_uri(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    # the one place the analysis' tracking URI is decided; every later MLflow call reads it
    return process.configure(value)


tracking_uri_option = click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    default=None,
    metavar="URI",
    callback=_settle_tracking_uri,
    help="MLflow tracking store (sqlite:///..., a path, http://...). "
    "Default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db.",
)


def _folder_option(flag: str, help: str):
    return click.option(flag, type=click.Path(file_okay=False, path_type=Path), help=help)


cache_dir_option = _folder_option(
    "--cache-dir",
    "Where downloaded artifacts are cached by run id. "
    "Default: $MNIST_WORKBENCH_CACHE, else ~/.cache/mnist-workbench.",
)
data_dir_option = _folder_option(
    "--data-dir",
    "MNIST folder (holding MNIST/raw/) for the image galleries. Default: the run's "
    f"{contract.TAG_DATA_DIR} tag, else $MNIST_DATA_DIR, else ./data.",
)


def log_option(what: str):
    """`--log/--no-log` of a report command: where `what` goes in MLflow."""
    return click.option(
        "--log/--no-log",
        default=True,
        show_default=True,
        help=f"Log {what} to MLflow (the sweep's parent run, else a new report run filed in "
        "'<experiment> reports').",
    )


def selection_options(command):
    """The run selection shared by `compare` and `labels` (their union is selected)."""
    options = [
        click.option(
            "--experiment",
            "experiments",
            multiple=True,
            metavar="NAME",
            help="Every run of this experiment (repeatable).",
        ),
        click.option(
            "--runs",
            "run_ids",
            multiple=True,
            metavar="ID",
            help="These run ids (repeatable; also several ids separated by commas).",
        ),
        click.option(
            "--parent",
            "parent_run_id",
            metavar="SWEEP_RUN_ID",
            help="The child runs of a sweep; the report is logged to the sweep's parent run.",
        ),
        click.option(
            "--filter",
            "filter_string",
            metavar="EXPR",
            help="MLflow search filter, e.g. \"params.lr = '0.01'\" "
            "(within --experiment, else all experiments).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def report_options(out_help: str):
    """`--out` (required) and the store, data and cache options every report command takes."""

    def apply(command):
        for option in (
            cache_dir_option,
            data_dir_option,
            tracking_uri_option,
            click.option(
                "--out", "out_dir", required=True, type=click.Path(file_okay=False), help=out_help
            ),
        ):
            command = option(command)
        return command

    return apply


def notice(message: str) -> None:
    """One line on stderr for something the user should know but that is not an error."""
    click.echo(f"notice: {message}", err=True)


@click.group(cls=AnalysisGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Diagnostics and reports for MNIST workbench runs tracked in MLflow."""


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
    from analysis import runs

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
        # a selection holds sweep parents and perhaps broken runs: report the rest, say what was
        # skipped
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
    where = f"; logged to each run under {contract.ANALYSIS_DIR}/" if log else ""
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
    from analysis import images as mnist_images
    from analysis import report, runs
    from analysis.publish import log_run_report

    run = runs.load_run(client, run_id, cache_dir=cache_dir)
    images, extra = mnist_images.test_images_for(run, data_dir)
    if run.predictions is None and predict:
        if images is None:
            raise AnalysisError("--predict needs the MNIST test images; pass --data-dir")
        from analysis.inference import predict_from_checkpoint

        run.predictions, used = predict_from_checkpoint(client, run, *images, cache_dir=cache_dir)
        run.notices = [n for n in run.notices if contract.PREDICTIONS_PATH not in n]
        extra.append(
            f"predictions computed now from checkpoints/{used} (the model rebuilt from the "
            f"run's configuration), not stored ones; {len(run.predictions)} test images, as the "
            "run was scored"
        )

    pixels = None
    if images is not None and run.predictions is not None:
        pixels, mismatch = mnist_images.matching_images(run.predictions, *images)
        if mismatch:
            extra.append(mismatch)
    elif run.predictions is None:
        extra = []  # without predictions there are no image galleries: missing images are no news

    test_record, train_record, left_out = runs.load_example_records(
        client, run, cache_dir=cache_dir
    )
    extra += [f"{line}; the report's dynamics sections from it are skipped" for line in left_out]
    train_images = None
    if train_record is not None:
        try:
            train_images = mnist_images.load_train_images(
                mnist_images.resolve_data_dir(data_dir, run)
            )
        except AnalysisError:
            pass  # the dynamics figures still come, without their image galleries
        if train_images is not None and train_record.index.max() >= len(train_images):
            extra.append(
                f"the training images at hand are {len(train_images)}, the run's record "
                f"reaches position {int(train_record.index.max())}: no training-image galleries"
            )
            train_images = None
    process.settled()  # imports, store and run in place: the collector resumes for the work
    written = report.build_run_report(
        run,
        out,
        images=pixels,
        train_labels=mnist_images.train_labels_for(run, data_dir),
        notices=extra,
        records=(test_record, train_record),
        train_images=train_images,
    )
    for line in written.notices:
        notice(line)
    if log:
        log_run_report(client, run.run_id, written.files)
    return written.html


def _safe_name(name: str) -> str:
    """A run name usable as a folder name (names like `lr=0.01` stay readable)."""
    # at most 80 characters: a 10,000-character run name is not a file name on any system
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("._")[:80] or "run"


@cli.command("compare")
@selection_options
@click.option(
    "--baseline",
    metavar="RUN_ID",
    help="Run the others are tested against (default: a study's best trial on its objective, "
    "else the oldest run).",
)
@click.option(
    "--at-epoch",
    type=int,
    metavar="N",
    help="Also compare the runs at this epoch (default: the last epoch all runs reached).",
)
@report_options("Folder for report.html, runs.csv, significance.csv and figures/*.png.")
@log_option("the report")
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
    a new run tagged mnist.report=comparison in the experiment '<experiment> reports'. Every
    score is a run's model of record's, and says which epoch.

    \b
    Examples:
      mnist-analysis compare --parent SWEEP_RUN_ID --out reports/try_lr
      mnist-analysis compare --experiment seed-reproductions --out reports/seeds
      mnist-analysis compare --experiment try-lr --filter "params.seed = '0'" \\
        --at-epoch 2 --out reports/lr
    """
    from analysis.compare_report import compare_runs

    ids = [part.strip() for value in run_ids for part in value.split(",") if part.strip()]
    process.settled()  # the collector is back before the work (paused by `main`)
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
    left_out = len(comparison.excluded) + len(comparison.partial)
    baseline = comparison.labels[comparison.baseline_id]
    click.echo(
        f"compared {len(comparison.runs)} runs (baseline {baseline})"
        + (f", {left_out} left out of some parts" if left_out else "")
    )
    click.echo(f"report: {path}")
    if logged:
        click.echo(f"logged to MLflow run {logged} ({contract.COMPARISON_DIR}/report.html)")


@cli.command("labels")
@selection_options
@report_options("Folder for report.html and the CSVs.")
def labels_command(
    experiments, run_ids, parent_run_id, filter_string, out_dir, tracking_uri, data_dir, cache_dir
):
    """Suspected label errors in the test and training sets, found from stored runs.

    Writes label_issues.csv (test set: index, given, suggested, agreement, score, flagged; most
    suspect first), label_issues_train.csv and report.html with galleries. The more runs (a
    seeds sweep, CNNs), the better the list. With --parent the report is logged to the sweep's
    parent run.

    The training set is ranked out of sample when the runs are a cross-validation study (a
    `folds: K` sweep: every training image scored by the model that held it out), else in
    sample from the runs' training records (models that trained on those images); the report
    and the last line say which.
    """
    from analysis.labels_report import run_labels

    if not (experiments or run_ids or parent_run_id or filter_string):
        raise click.UsageError("choose runs with --experiment, --runs, --parent or --filter")
    ids = [part.strip() for value in run_ids for part in value.split(",") if part.strip()]
    process.settled()  # the collector is back before the work (paused by `main`)
    result = run_labels(
        tracking_uri,
        out_dir,
        experiments=experiments,
        run_ids=ids,
        parent_run_id=parent_run_id,
        filter_string=filter_string,
        data_dir=data_dir,
        cache_dir=cache_dir,
    )
    for line in result.notes:
        notice(line)
    click.echo(
        f"{len(result.test)} test and {len(result.train)} training images suspected, "
        f"from {result.n_runs} run(s)"
    )
    training = result.training
    ranked = f"all {len(training.table)} ranked, " if training.out_of_sample else ""
    click.echo(
        f"training set: {ranked}{training.basis} ({training.n_runs} run(s))",
    )
    click.echo(f"report: {result.path}")
    if parent_run_id:
        click.echo(f"logged to MLflow run {parent_run_id} ({contract.ANALYSIS_DIR}/labels/)")


@cli.command("explore")
@selection_options
@click.option(
    "--baseline",
    metavar="RUN_ID",
    help="Run that fixed / broken are judged against (default: as for compare).",
)
@report_options("Folder for explorer.html.")
@log_option("the page")
def explore_command(
    experiments,
    run_ids,
    parent_run_id,
    filter_string,
    baseline,
    out_dir,
    tracking_uri,
    data_dir,
    cache_dir,
    log,
):
    """One offline explorer.html: every test image across the selected runs.

    A sortable table of the test images (each run's prediction, confidence, first right epoch
    and flips, agreement, margin, label-quality score), filters kept in the URL hash, confusion
    matrices whose cells filter the table, and each image's probabilities per run and epoch.
    """
    from analysis.explore import explore_runs

    ids = [part.strip() for value in run_ids for part in value.split(",") if part.strip()]
    process.settled()  # the collector is back before the work (paused by `main`)
    result = explore_runs(
        out_dir=out_dir,
        experiments=experiments,
        run_ids=ids,
        parent_run_id=parent_run_id,
        filter_string=filter_string,
        baseline=baseline,
        tracking_uri=tracking_uri,
        data_dir=data_dir,
        cache_dir=cache_dir,
        log_to_mlflow=log,
    )
    for line in result.notes:
        notice(line)
    size = result.path.stat().st_size / 1e6
    click.echo(f"explored {len(result.view)} test images of {len(result.view.run_ids)} run(s)")
    click.echo(f"explorer: {result.path} ({size:.1f} MB)")
    if result.logged:
        click.echo(f"logged to MLflow run {result.logged} (explorer/explorer.html)")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (`mnist-analysis`)."""
    process.pause_collection()
    process.configure()
    process.finish_process(lambda: cli.main(args=argv, prog_name="mnist-analysis"))


if __name__ == "__main__":
    sys.exit(main())
