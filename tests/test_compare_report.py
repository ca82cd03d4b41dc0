"""The comparison report end to end: runs logged to a SQLite store, then `compare` on them."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser

import checks
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from compare_helpers import fake_predictions, fixture_test_labels, log_parent, log_run, with_flips
from mlflow.tracking import MlflowClient

from analysis.cli import compare_command
from analysis.compare_report import compare_runs
from mnist_train.contract import TAG_REPORT as REPORT_TAG

HOSTILE_NAME = "<script>alert(1)</script>"
HOSTILE_PARAM = "<img src=x onerror=alert(2)>"
T0 = 1_700_000_000_000


def binomial_p(b: int, c: int) -> float:
    n = b + c
    probs = [math.comb(n, k) / 2**n for k in range(n + 1)]
    return min(1.0, sum(p for p in probs if p <= probs[b] * (1 + 1e-7)))


@pytest.fixture(scope="module")
def sweep(tracking_uri, data_dir, tmp_path_factory):
    """A sweep parent and six children: three comparable settings, a hostile one, one on a
    different test set and one without predictions."""
    labels = fixture_test_labels()
    base_pred = fake_predictions(labels, accuracy=0.85, seed=0).argmax(axis=1)
    parent = log_parent(tracking_uri, "cmp-sweep", start_time=T0)
    common = dict(labels=labels, parent_run_id=parent)
    preds = {
        "base": base_pred,
        "seed1": with_flips(labels, base_pred, fix=10, brk=8),
        "fast": with_flips(labels, base_pred, fix=40, brk=5),
        "hostile": with_flips(labels, base_pred, fix=2, brk=30),
    }
    ids = {
        "base": log_run(
            tracking_uri,
            "cmp-sweep",
            run_name="lr=0.001 seed0",
            pred=preds["base"],
            params={"lr": "0.001", "seed": "0"},
            train_time_s=20.0,
            start_time=T0 + 1,
            **common,
        ),
        "seed1": log_run(
            tracking_uri,
            "cmp-sweep",
            run_name="lr=0.001 seed1",
            pred=preds["seed1"],
            params={"lr": "0.001", "seed": "1"},
            train_time_s=21.0,
            start_time=T0 + 2,
            **common,
        ),
        "fast": log_run(
            tracking_uri,
            "cmp-sweep",
            run_name="lr=0.01",
            pred=preds["fast"],
            overfit_from=3,
            params={"lr": "0.01", "seed": "0"},
            train_time_s=5.0,
            start_time=T0 + 3,
            **common,
        ),
        "hostile": log_run(
            tracking_uri,
            "cmp-sweep",
            run_name=HOSTILE_NAME,
            pred=preds["hostile"],
            params={"lr": "0.1", "activation": HOSTILE_PARAM},
            start_time=T0 + 4,
            **common,
        ),
        "short": log_run(
            tracking_uri,
            "cmp-sweep",
            run_name="short test set",
            labels=labels[:300],
            pred=base_pred[:300],
            params={"lr": "0.05"},
            start_time=T0 + 5,
            parent_run_id=parent,
        ),
        "nopred": log_run(
            tracking_uri,
            "cmp-sweep",
            run_name="no predictions",
            pred=None,
            params={"lr": "0.2"},
            start_time=T0 + 6,
            **common,
        ),
    }
    out = tmp_path_factory.mktemp("sweep-report")
    result = CliRunner().invoke(
        compare_command, ["--parent", parent, "--out", str(out), "--data-dir", str(data_dir)]
    )
    assert result.exit_code == 0, result.output
    return {
        "parent": parent,
        "ids": ids,
        "labels": labels,
        "preds": preds,
        "out": out,
        "output": result.output,
    }


def test_significance_csv_matches_direct_mcnemar(sweep):
    sig = pd.read_csv(sweep["out"] / "significance.csv")
    ids, labels, preds = sweep["ids"], sweep["labels"], sweep["preds"]
    assert set(sig["run_id"]) == {ids[k] for k in ("base", "seed1", "fast", "hostile")}
    assert (sig["baseline_id"] == ids["base"]).all()  # the sweep's first child
    base_ok = preds["base"] == labels
    for key in ("seed1", "fast", "hostile"):
        row = sig.set_index("run_id").loc[ids[key]]
        run_ok = preds[key] == labels
        b, c = int(np.sum(base_ok & ~run_ok)), int(np.sum(~base_ok & run_ok))
        assert (row.b_broke, row.c_fixed) == (b, c)
        assert row.pvalue == pytest.approx(binomial_p(b, c), rel=1e-9)
        assert row.accuracy == pytest.approx(run_ok.mean())
        assert row.ci_low < row.accuracy < row.ci_high
    fast = sig.set_index("run_id").loc[ids["fast"]]
    assert (fast.c_fixed, fast.b_broke) == (40, 5)
    assert bool(fast.significant) is True


def test_runs_csv_matches_logged_metrics(sweep, tracking_uri):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    table = pd.read_csv(sweep["out"] / "runs.csv", dtype={"lr": str, "seed": str})
    assert len(table) == 6 and set(table["run_id"]) == set(sweep["ids"].values())
    assert {"lr", "seed", "activation"} <= set(table.columns)
    assert "batch_size" not in table.columns  # the same for every run
    for _, row in table.iterrows():
        run = client.get_run(row.run_id)
        history = client.get_metric_history(row.run_id, "test_accuracy")
        assert row.test_accuracy == pytest.approx(max(history, key=lambda m: m.step).value)
        assert row.train_time_s == pytest.approx(run.data.metrics["train_time_s"])
        assert row.overfit_gap == pytest.approx(run.data.metrics["overfit_gap"])
        assert row.num_params == int(run.data.params["num_params"])
        assert row.lr == run.data.params["lr"]
        assert row.baseline == (row.run_id == sweep["ids"]["base"])


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.scripts, self.text = [], [], 0, []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "script" or any(k.startswith("on") for k in attrs):
            self.scripts += 1

    def handle_data(self, data):
        self.text.append(data)


def test_html_parses_embeds_images_and_escapes_hostile_text(sweep):
    html = (sweep["out"] / "report.html").read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(html)
    parser.close()
    assert parser.scripts == 0
    assert HOSTILE_NAME not in html and HOSTILE_PARAM not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    text = " ".join(parser.text)
    assert HOSTILE_NAME in text and HOSTILE_PARAM in text  # shown, as text
    assert len(parser.images) >= 6 + 3 * 2  # figures, then flip tiles of the three other runs
    assert all(src.startswith("data:image/png;base64,") for src in parser.images)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing fetched from outside
    for section in (
        "Findings",
        "Learning curves",
        "Per-class accuracy",
        "Confusion matrices",
        "Flips against the baseline",
        "Significance against the baseline",
        "Runs that differ only by seed",
        "Accuracy against training time",
        "Most-confused digit pairs",
    ):
        assert section in text


def test_incomparable_runs_are_listed_with_reason(sweep):
    html = (sweep["out"] / "report.html").read_text(encoding="utf-8")
    assert "different test set: 300 images, not the baseline&#39;s 500" in html
    assert "no stored predictions" in html
    assert "compared 6 runs" in sweep["output"]


def test_report_logged_to_sweep_parent(sweep, tracking_uri):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    names = {f.path for f in client.list_artifacts(sweep["parent"], "comparison")}
    assert {"comparison/report.html", "comparison/runs.csv", "comparison/significance.csv"} <= names
    figures = {f.path for f in client.list_artifacts(sweep["parent"], "comparison/figures")}
    assert "comparison/figures/confusion_diff.png" in figures
    assert (sweep["out"] / "figures" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_at_epoch_seed_groups_and_findings(sweep, tracking_uri, tmp_path):
    ids = sweep["ids"]
    comparison, path, logged = compare_runs(
        out_dir=tmp_path,
        parent_run_id=sweep["parent"],
        at_epoch=2,
        tracking_uri=tracking_uri,
        log_to_mlflow=False,
    )
    assert logged is None
    at = comparison.at_epoch
    # compare_helpers.curves: test accuracy at epoch e is final - 0.02 * (4 - e)
    final = comparison.final["test_accuracy"]
    np.testing.assert_allclose(
        at.loc[list(ids.values()), "test_accuracy"], final[list(ids.values())] - 0.04
    )
    assert at.loc[ids["fast"], "test_loss"] == pytest.approx(0.5 / 2 + 0.1)
    assert "At epoch 2" in path.read_text(encoding="utf-8")
    groups = comparison.groups.set_index("setting")
    row = groups.loc["activation=relu, lr=0.001"]
    assert row.n == 2
    assert row["mean"] == pytest.approx(final[[ids["base"], ids["seed1"]]].mean())
    assert row["std"] == pytest.approx(final[[ids["base"], ids["seed1"]]].std(ddof=1))
    text = " ".join(comparison.findings)
    assert "activation=relu, lr=0.01 overfits from epoch 3" in text
    assert "lr=0.01 fixed 40 test images and broke 5" in text


def test_experiment_compare_gets_its_own_report_run(sweep, tracking_uri, tmp_path):
    from mlflow import MlflowClient

    ids = sweep["ids"]
    runner = CliRunner()
    args = [
        "--runs",
        f"{ids['base']},{ids['fast']}",
        "--baseline",
        ids["fast"],
        "--out",
        str(tmp_path / "a"),
    ]
    result = runner.invoke(compare_command, args)
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=tracking_uri)
    report_id = re.search(r"logged to MLflow run (\w+)", result.output).group(1)
    run = client.get_run(report_id)
    assert run.data.tags[REPORT_TAG] == "comparison"
    assert run.info.run_name.startswith("compare-")
    # filed apart from the training runs, in "<experiment> reports"
    assert client.get_experiment(run.info.experiment_id).name == "cmp-sweep reports"
    assert "comparison/report.html" in {
        f.path for f in client.list_artifacts(report_id, "comparison")
    }
    sig = pd.read_csv(tmp_path / "a" / "significance.csv")
    assert (sig["baseline_id"] == ids["fast"]).all()
    # a later comparison of the whole experiment finds training runs only (and skips the parent)
    comparison, _, _ = compare_runs(
        out_dir=tmp_path / "b",
        experiments=["cmp-sweep"],
        tracking_uri=tracking_uri,
        log_to_mlflow=False,
    )
    assert set(comparison.run_ids) == set(ids.values())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experiment", "no-such-experiment"], "no experiment named"),
        (["--experiment", "cmp-sweep", "--filter", "params.lr = '9.9'"], "no runs matched"),
        (["--runs", "{base}"], "only one run"),
        (["--runs", "{base},{fast}", "--baseline", "{seed1}"], "is not among the 2 compared runs"),
        (["--runs", "{base},{fast}", "--at-epoch", "0"], "--at-epoch must be >= 1"),
        (["--runs", "{base},{fast}", "--at-epoch", "99"], "beyond the last logged epoch (4)"),
        ([], "choose runs with"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(sweep, tmp_path, args, message):
    args = [a.format(**sweep["ids"]) for a in args]
    result = CliRunner().invoke(compare_command, [*args, "--out", str(tmp_path), "--no-log"])
    checks.assert_one_line_error(result.output, result.exit_code, message)
    assert len(result.output.strip().splitlines()) == 1
    assert isinstance(result.exception, SystemExit)


def test_under_mlflow_run_the_report_goes_to_the_active_run(
    sweep, tracking_uri, tmp_path, monkeypatch
):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.get_experiment_by_name("cmp-sweep").experiment_id
    active = client.create_run(
        experiment_id, run_name="mlflow-run-report"
    ).info.run_id  # as `mlflow run` opens it
    monkeypatch.setenv("MLFLOW_RUN_ID", active)
    comparison, _, logged = compare_runs(
        out_dir=tmp_path, experiments=["cmp-sweep"], tracking_uri=tracking_uri
    )
    assert logged == active
    assert active not in comparison.run_ids and not any(
        e.run_id == active for e in comparison.excluded
    )
    run = client.get_run(active)
    assert run.data.tags[REPORT_TAG] == "comparison"
    assert run.info.status == "RUNNING"  # closing it is mlflow run's job
    assert "comparison/report.html" in {f.path for f in client.list_artifacts(active, "comparison")}
    client.set_terminated(active)


def test_an_out_folder_of_other_files_is_refused_and_only_written_files_are_logged(
    sweep, tmp_path, tracking_uri
):
    """--out . from a home folder or the project root would have put keys or .venv in MLflow."""
    crowded = tmp_path / "home"
    (crowded / ".ssh").mkdir(parents=True)
    (crowded / ".ssh" / "id_rsa").write_text("PRIVATE KEY")
    (crowded / "credentials.json").write_text("{}")
    result = CliRunner().invoke(
        compare_command, ["--parent", sweep["parent"], "--out", str(crowded)]
    )
    checks.assert_one_line_error(
        result.output, result.exit_code, "holds files this report does not write", ".ssh"
    )
    out = tmp_path / "report"
    out.mkdir()
    result = CliRunner().invoke(compare_command, ["--parent", sweep["parent"], "--out", str(out)])
    assert result.exit_code == 0, result.output
    logged = {
        f.path for f in MlflowClient(tracking_uri).list_artifacts(sweep["parent"], "comparison")
    }
    assert logged == {
        "comparison/report.html",
        "comparison/runs.csv",
        "comparison/significance.csv",
        "comparison/figures",
    }
