"""A 30-trial search's comparison report reads as well as a two-run one: short labels with the
runs table as their legend, figures that show the best few where all would be noise, no text
drawn over other text, the best trial as the baseline, and findings that say what n allows."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from analysis.cli import cli as analysis_cli
from analysis.compare_report import compare_runs, figure_objects, study_figure_objects
from analysis.figures.common import overlapping_texts
from analysis.runs import connect
from analysis.study import load_study
from mnist_train.cli import cli as train_cli

TRIALS = 30
SEARCH = f"""name: readable
experiment: readability
max_train: 600
max_test: 200
validation: 100
epochs: 2
batch_size: 100
test_batch_size: 200
search:
  trials: {TRIALS}
  pruner: none
  params:
    lr: {{type: float, low: 1.0e-4, high: 0.1, log: true}}
    hidden_size: {{type: int, low: 16, high: 256, log: true}}
    depth: [1, 2, 3]
    dropout: {{type: float, low: 0.0, high: 0.5}}
    weight_decay: {{type: float, low: 1.0e-6, high: 1.0e-2, log: true}}
"""


@pytest.fixture(scope="module")
def search(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("readable")
    path = folder / "readable.yaml"
    path.write_text(SEARCH)
    result = CliRunner().invoke(
        train_cli,
        ["run", str(path), "--data-dir", str(data_dir), "--storage", f"sqlite:///{folder}/o.db"],
    )
    assert result.exit_code == 0, result.output
    parent = result.stdout.split()[0]
    comparison, report, _ = compare_runs(
        out_dir=folder / "report", parent_run_id=parent, log_to_mlflow=False
    )
    return {"parent": parent, "comparison": comparison, "report": report, "log": result.stderr}


def test_each_trial_says_what_it_tries_and_the_study_its_best(search):
    lines = search["log"].splitlines()
    tries = [line for line in lines if line.startswith("trial ") and ": lr=" in line]
    assert len(tries) == TRIALS
    assert all("hidden_sizes=[" in line and "dropout=" in line for line in tries)
    parent = search["parent"]
    assert any(
        line.startswith("study readable: best trial ")
        and f"report: mnist-analysis compare --parent {parent}" in line
        for line in lines
    )


def test_labels_are_short_and_the_runs_table_says_what_they_stand_for(search):
    c = search["comparison"]
    client = MlflowClient()
    for run in c.runs:
        number = int(client.get_run(run.run_id).data.tags["mnist.trial.number"])
        assert c.labels[run.run_id] == f"T{number:02d}"
    assert c.legend is not None and set(c.legend.index) == set(c.run_ids)
    html = search["report"].read_text()
    assert "<th>label</th><th>run</th>" in html
    assert f"show the best {len(c.shown)} of the {TRIALS} runs on val_accuracy" in html


def test_the_baseline_is_the_best_trial_on_the_objective(search):
    c = search["comparison"]
    client = connect()
    study = load_study(client, client.get_run(search["parent"]))
    assert c.baseline_id == str(study.best()["run_id"])
    assert c.ranked[0] == c.baseline_id  # best on validation accuracy, the objective
    assert len(c.shown) == 8 and c.baseline_id in c.shown


def test_no_figure_draws_text_over_text(search):
    c = search["comparison"]
    client = connect()
    study = load_study(client, client.get_run(search["parent"]))
    drawn = {**figure_objects(c), **study_figure_objects(study)}
    assert {"curves", "per_class", "confusion", "cost", "study_history", "study_slices"} <= set(
        drawn
    )
    for name, figure in drawn.items():
        assert overlapping_texts(figure) == [], name


def test_findings_and_importances_say_what_n_allows(search):
    html = search["report"].read_text()
    c = search["comparison"]
    text = " ".join(c.findings)
    assert "trial" not in text.lower() or "T" in text  # runs are named by their short labels
    assert max(len(sentence) for sentence in c.findings) < 600  # no wall of parameters
    if "parameter importances" in html:
        assert "complete trials" in html


def test_compare_from_the_command_line_writes_a_readable_page(search, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        analysis_cli, ["compare", "--parent", search["parent"], "--out", str(out), "--no-log"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "figures" / "curves.png").stat().st_size > 1000
