"""Per-example arrays that are wrong, not just unreadable (issue 21): `dynamics/train.npz` and
`predictions/test_by_epoch.npz` checked as `predictions/test.npz` is. A run whose array is wrong
is left out of what needs it, with a notice naming the run and the reason, and the commands go on
with the other runs; their numbers are checked against the good run's stored arrays."""

from __future__ import annotations

import base64
import html
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from checks import assert_one_line_error
from click.testing import CliRunner

from analysis import dynamics, label_issues, records
from analysis.cli import cli
from analysis.errors import AnalysisError
from mnist_train import contract

TRAIN = contract.TRAIN_DYNAMICS_PATH
BY_EPOCH = contract.TEST_BY_EPOCH_PATH
PATHS = (contract.PREDICTIONS_PATH, BY_EPOCH, TRAIN)


# --------------------------------------------------------------------------- the checks (pure)


def fine_training_record(epochs=2, images=6) -> dict:
    rng = np.random.default_rng(0)
    label_prob = rng.random((epochs, images)).astype(np.float16)
    predicted = rng.integers(0, 10, (epochs, images)).astype(np.int8)
    return dict(
        correct=label_prob > 0.5,
        label_prob=label_prob,
        predicted=predicted,
        epochs=np.arange(1, epochs + 1),
        index=np.arange(images),
    )


def test_an_image_an_epoch_did_not_reach_may_have_no_label_probability():
    arrays = fine_training_record()
    arrays["label_prob"][1, 2], arrays["predicted"][1, 2] = np.nan, records.NOT_SEEN
    checked = records.training_record(arrays, logged_epochs=[1, 2], n_images=6, n_drawn=6)
    assert np.isnan(checked.label_prob[1, 2]) and checked.predicted[1, 2] == -1
    assert checked.label_prob.dtype == np.float32 and checked.correct.dtype == bool


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda a: a.pop("correct"), r"no correct array \(it holds epochs, index"),
        (lambda a: a.update(epochs=np.array(["1", "2"])), "epochs holds <U1, not numbers"),
        (lambda a: a.update(epochs=np.array([1.0, 2.5])), "not whole numbers"),
        (lambda a: a.update(correct=np.full((2, 6), 2)), "other than true and false"),
        (lambda a: a.update(index=np.arange(5)), r"disagree \(expected \(E, N\)"),
        (lambda a: a.update(epochs=np.array([2, 1])), "do not ascend from 1"),
        (lambda a: a.update(epochs=np.array([1, 3])), r"not the 2 epoch\(s\) the run logged"),
        (lambda a: a.update(index=np.arange(6) + 3), "2 positions beyond the run's 7 images"),
        (lambda a: a["predicted"].__setitem__((0, 0), 10), "predicted outside 0-9"),
        (lambda a: a["predicted"].__setitem__((0, 0), -1), "predicted is -1 .* for 1 "),
        (lambda a: a["label_prob"].__setitem__((0, 0), np.inf), "1 label_prob values are inf"),
        (lambda a: a["label_prob"].fill(np.nan), "NaN everywhere"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_the_training_record_check_says_what_is_wrong(change, reason):
    arrays = fine_training_record()
    change(arrays)
    with pytest.raises(AnalysisError, match=reason):
        records.training_record(arrays, logged_epochs=[1, 2], n_images=6, n_drawn=7)


def test_the_per_epoch_predictions_check_allows_float16_rounding_only():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (3, 50, 10))
    probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    arrays = dict(probs=probs.astype(np.float16), epochs=np.arange(1, 4), index=np.arange(50))
    checked = records.epoch_predictions(arrays, logged_epochs=[1, 2, 3], n_images=50)
    assert checked.probs.shape == (3, 50, 10) and checked.probs.dtype == np.float32
    arrays["probs"] = (probs * 0.99).astype(np.float16)  # 1% off: not rounding
    with pytest.raises(AnalysisError, match="150 rows of probs do not sum to 1"):
        records.epoch_predictions(arrays, logged_epochs=[1, 2, 3])
    arrays["probs"] = probs.astype(np.float16)
    with pytest.raises(AnalysisError, match="50 images, but the run's test_images param says 40"):
        records.epoch_predictions(arrays, logged_epochs=[1, 2, 3], n_images=40)


# --------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def stored(trained_runs, tmp_path_factory) -> dict:
    """Each fixture run's three per-example files as dicts of arrays, read straight from MLflow."""
    from mlflow import MlflowClient

    client, folder, found = MlflowClient(), tmp_path_factory.mktemp("stored"), {}
    for name, run_id in trained_runs.items():
        found[name] = {}
        for path in PATHS:
            local = client.download_artifacts(run_id, path, str(folder / name))
            with np.load(local) as npz:
                found[name][path] = {key: npz[key] for key in npz.files}
    return found


def copy_run(source: str, experiment: str, name: str, arrays: dict) -> str:
    """A finished run with the params, tags and metric histories of run `source` and the
    per-example files `arrays` (path -> dict of arrays); returns its id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient()
    original = client.get_run(source)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    tags = {contract.TAG_DATA_DIR: original.data.tags[contract.TAG_DATA_DIR]}
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    metrics = [
        Metric(m.key, m.value, m.timestamp, m.step)
        for key in original.data.metrics
        for m in client.get_metric_history(source, key)
    ]
    params = [Param(k, v) for k, v in original.data.params.items()]
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    client.log_batch(run_id, params=params)
    with tempfile.TemporaryDirectory() as tmp:
        for path, contents in arrays.items():
            local = Path(tmp) / Path(path).name
            np.savez(local, **contents)
            client.log_artifact(run_id, str(local), str(Path(path).parent))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def planted(stored: dict, path: str, change) -> dict:
    """The softmax run's files with `change(arrays)` applied to copies of `path`'s arrays."""
    arrays = {p: dict(a) for p, a in stored["softmax"].items()}
    arrays[path] = {key: np.array(value) for key, value in arrays[path].items()}
    change(arrays[path])
    return arrays


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args))


def the_notice(output: str, name: str, run_id: str, path: str, reason: str) -> str:
    """The notice line that names the run, the file and the reason."""
    pattern = rf"run {name} \({run_id[:8]}\): its {re.escape(path)} is left out \(.*{reason}.*\)"
    found = re.search(pattern, output)
    assert found, output
    return found.group(0)


def set_(key, index, value):
    return lambda a: a[key].__setitem__(index, value)


TRAIN_CASES = {
    "NaN label probabilities": (set_("label_prob", (-1, slice(0, 50)), np.nan), "NaN for 50"),
    "label probabilities above 1": (
        lambda a: a.update(label_prob=a["label_prob"].astype(np.float32) * 3),
        r"label_prob outside \[0, 1\]",
    ),
    "a wrong shape": (
        lambda a: a.update(label_prob=a["label_prob"][:1]),
        r"label_prob \(1, 1000\).* disagree",
    ),
    "an index beyond the training images": (
        lambda a: a.update(index=a["index"] + 1),
        "1 positions beyond the run's 1000 images",
    ),
    "other epochs than logged": (
        lambda a: a.update(epochs=a["epochs"] + 1),
        r"not the 2 epoch\(s\) the run logged",
    ),
}


def dynamics_numbers(train: dict, test: dict) -> dict:
    """The run report's dynamics numbers, computed here from the stored arrays."""
    correct = train["correct"]
    predicted = test["probs"].astype(np.float32).argmax(axis=2)
    regions = dynamics.cartography(train["label_prob"], correct)["region"].value_counts()
    return {
        "forgetting_events": int((correct[:-1] & ~correct[1:]).sum()),
        "never_learned": int((~correct.any(axis=0)).sum()),
        "cartography": {k: int(v) for k, v in regions.items()},
        "changed_predictions": int((predicted[1:] != predicted[:-1]).sum()),
    }


def run_reports(trained_runs, bad: str, data_dir, tmp_path) -> tuple:
    """`mnist-analysis run` of the fixture MLP and run `bad`: (result, the two summaries and
    report pages)."""
    out = tmp_path / "reports"
    result = run_cli(
        "run", trained_runs["mlp"], bad, "--out", str(out), "--no-log",
        "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    folders = {run_id: next(out.glob(f"*_{run_id[:8]}")) for run_id in (trained_runs["mlp"], bad)}
    summaries = {k: json.loads((f / "summary.json").read_text()) for k, f in folders.items()}
    pages = {k: page_text(f / "report.html") for k, f in folders.items()}
    return result, summaries, pages, folders


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_a_wrong_training_record_leaves_that_run_out_of_what_needs_it(
    case, trained_runs, stored, data_dir, tmp_path
):
    change, reason = TRAIN_CASES[case]
    bad = copy_run(
        trained_runs["softmax"], "bad-train", "bad_train", planted(stored, TRAIN, change)
    )

    # labels: the other run's record makes the training-set list, both runs the test set's
    out = tmp_path / "labels"
    result = run_cli(
        "labels", "--runs", f"{trained_runs['mlp']},{bad}", "--out", str(out),
        "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    line = the_notice(result.output, "bad_train", bad, TRAIN, reason)
    assert "Traceback" not in result.output
    assert "from 2 run(s)" in result.output and "in-sample" in result.output
    assert "(1 run(s))" in result.output
    assert line in page_text(out / "report.html")
    good = stored["mlp"][TRAIN]
    from mnist_train import idx

    labels = idx.read_split(data_dir, train=True)[1]
    expected = label_issues.train_set_issues(
        labels[good["index"]],
        good["label_prob"][None],
        good["predicted"][None],
        good["index"],
        last=2,
    )
    assert len(expected) > 0  # the comparison below has rows to compare
    written = pd.read_csv(out / "label_issues_train.csv")
    assert written["index"].tolist() == expected["index"].tolist()
    np.testing.assert_allclose(written["score"], expected["score"], rtol=1e-6)
    assert written["suggested"].tolist() == expected["suggested"].tolist()

    # run: the bad run's report goes without its training dynamics and says why
    result, summaries, pages, folders = run_reports(trained_runs, bad, data_dir, tmp_path)
    line = the_notice(result.output, "bad_train", bad, TRAIN, reason)
    assert line in pages[bad] and "Dataset cartography" not in pages[bad]
    assert not (folders[bad] / "cartography.png").exists()
    own = dynamics_numbers(stored["softmax"][TRAIN], stored["softmax"][BY_EPOCH])
    assert summaries[bad]["dynamics"] == {"changed_predictions": own["changed_predictions"]}
    mlp = trained_runs["mlp"]
    assert summaries[mlp]["dynamics"] == dynamics_numbers(good, stored["mlp"][BY_EPOCH])
    assert "Dataset cartography" in pages[mlp] and "left out" not in pages[mlp]


BY_EPOCH_CASES = {
    "NaN probabilities": (set_("probs", (-1, slice(0, 5), 3), np.nan), "5 rows of probs are not"),
    "probabilities above 1": (
        lambda a: a.update(probs=a["probs"] * 2),
        r"probs outside \[0, 1\]",
    ),
    "rows that do not sum to 1": (
        lambda a: a.update(probs=a["probs"] / 2),
        "400 rows of probs do not sum to 1",
    ),
    "a wrong shape": (
        lambda a: a.update(probs=a["probs"][:, :-1]),
        r"probs \(2, 199, 10\).* disagree",
    ),
    "an index that is not the predictions'": (
        lambda a: a.update(index=a["index"][::-1]),
        "index is not that of the run's test predictions",
    ),
}


def page_text(path: Path) -> str:
    return html.unescape(path.read_text())


def explorer_data(path: Path) -> dict:
    text = path.read_text()
    found = re.search(r'<script id="explorer-data" type="application/json">(.*?)</script>', text)
    return json.loads(found.group(1))


@pytest.mark.parametrize("case", list(BY_EPOCH_CASES))
def test_wrong_per_epoch_predictions_leave_that_run_s_epochs_out(
    case, trained_runs, stored, data_dir, tmp_path
):
    change, reason = BY_EPOCH_CASES[case]
    bad = copy_run(
        trained_runs["softmax"], "bad-by-epoch", "bad_epochs", planted(stored, BY_EPOCH, change)
    )
    mlp = trained_runs["mlp"]

    # explore: both runs, the bad one without its per-epoch columns
    out = tmp_path / "explore"
    result = run_cli(
        "explore", "--runs", f"{mlp},{bad}", "--baseline", mlp, "--out", str(out), "--no-log",
        "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    line = the_notice(result.output, "bad_epochs", bad, BY_EPOCH, reason)
    assert "explored 200 test images of 2 run(s)" in result.output
    data = explorer_data(out / "explorer.html")
    assert line in page_text(out / "explorer.html")
    by_id = {run["id"]: run for run in data["runs"]}
    assert by_id[bad]["epochs"] == [] and by_id[bad]["first"] is None
    good = stored["mlp"][BY_EPOCH]
    given = stored["mlp"][contract.PREDICTIONS_PATH]["labels"]
    right = good["probs"].astype(np.float32).argmax(axis=2) == given
    first = np.where(right.any(axis=0), good["epochs"][right.argmax(axis=0)], 0)
    assert by_id[mlp]["epochs"] == [1, 2]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(by_id[mlp]["first"]), "u1"), first)

    # run: the bad run's report goes without its per-epoch test sections and says why
    result, summaries, pages, folders = run_reports(trained_runs, bad, data_dir, tmp_path)
    line = the_notice(result.output, "bad_epochs", bad, BY_EPOCH, reason)
    assert line in pages[bad] and "Confusion matrix at every epoch" not in pages[bad]
    assert not (folders[bad] / "confusion_by_epoch.png").exists()
    own = dynamics_numbers(stored["softmax"][TRAIN], good)
    assert "changed_predictions" not in summaries[bad]["dynamics"]
    assert summaries[bad]["dynamics"]["forgetting_events"] == own["forgetting_events"]
    assert summaries[mlp]["dynamics"] == dynamics_numbers(stored["mlp"][TRAIN], good)
    assert "Confusion matrix at every epoch" in pages[mlp] and "left out" not in pages[mlp]


def test_when_every_training_record_is_wrong_labels_still_ranks_the_test_set(
    trained_runs, stored, data_dir, tmp_path
):
    nan = set_("label_prob", (0, slice(None)), np.nan)
    ids = [
        copy_run(trained_runs[name], "all-bad-train", f"{name}_bad", planted(stored, TRAIN, nan))
        for name in ("mlp", "softmax")
    ]
    out = tmp_path / "labels"
    result = run_cli(
        "labels", "--runs", ",".join(ids), "--out", str(out), "--data-dir", str(data_dir),
        "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name, run_id in zip(("mlp", "softmax"), ids):
        the_notice(result.output, f"{name}_bad", run_id, TRAIN, "NaN for 1000")
    assert "no run has a usable per-example training record" in result.output
    assert "training set: in-sample, from models that trained on these images (0 run(s))" in (
        result.output
    )
    assert pd.read_csv(out / "label_issues.csv")["index"].tolist() != []


def everything_wrong(stored: dict, name: str) -> dict:
    arrays = {p: dict(a) for p, a in stored[name].items()}
    arrays[contract.PREDICTIONS_PATH]["probs"] = arrays[contract.PREDICTIONS_PATH]["probs"] * 2
    arrays[BY_EPOCH]["probs"] = arrays[BY_EPOCH]["probs"] * np.nan
    arrays[TRAIN]["label_prob"] = arrays[TRAIN]["label_prob"][:1]
    return arrays


@pytest.mark.parametrize("command", ["labels", "explore"])
def test_a_store_where_every_run_is_wrong_gives_one_line(
    command, trained_runs, stored, data_dir, tmp_path
):
    experiment = f"all-bad-{command}"
    ids = [
        copy_run(trained_runs[name], experiment, f"{name}_bad", everything_wrong(stored, name))
        for name in ("mlp", "softmax")
    ]
    result = run_cli(
        command, "--runs", ",".join(ids), "--out", str(tmp_path / "out"),
        "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert_one_line_error(
        result.output,
        result.exit_code,
        "none of the 2 selected run(s) has usable predictions/test.npz",
        "mlp_bad: predictions are not usable: probs outside [0, 1]",
        "softmax_bad: predictions are not usable: probs outside [0, 1]",
    )


def test_a_run_with_nothing_but_wrong_arrays_gives_one_line(tracking_uri, stored, tmp_path):
    from analysis_helpers import log_contract_run

    arrays = everything_wrong(stored, "mlp")
    predictions = arrays[contract.PREDICTIONS_PATH]
    run_id = log_contract_run(
        tracking_uri, "all-bad-run", run_name="nothing_usable", params={}, epochs={}, n_steps=0,
        final={}, probs=predictions["probs"], labels=predictions["labels"],
        index=predictions["index"],
    )  # fmt: skip
    result = run_cli("run", run_id, "--out", str(tmp_path / "r"), "--no-log")
    assert_one_line_error(
        result.output,
        result.exit_code,
        f"run {run_id} has none of the workbench metrics, and its predictions/test.npz is left "
        "out (predictions are not usable: probs outside [0, 1]",
    )
