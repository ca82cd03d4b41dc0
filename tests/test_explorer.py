"""`mnist-analysis explore`: the page's arrays, publishing, bad input, and the page itself in
headless Chromium (Playwright), where every `#match-count` is checked against counts computed
here from the predictions stored in MLflow."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from compare_helpers import fake_predictions, fixture_test_labels, log_parent, log_run

from analysis.cli import cli
from analysis.explore import RunArrays, build_view
from mnist_train import contract

# --------------------------------------------------------------------------- the view (pure)


def test_the_view_counts_first_right_epochs_flips_agreement_and_margin():
    given = np.array([0, 1, 2])
    eye = np.eye(10, dtype=np.float32)
    # run a over 3 epochs: image 0 right from epoch 2, image 1 right then wrong then right,
    # image 2 never right
    by_epoch = np.stack([eye[[5, 1, 7]], eye[[0, 3, 7]], eye[[0, 1, 7]]]) * 0.9 + 0.01
    a = RunArrays("a", "run a", by_epoch[-1], by_epoch, np.array([1, 2, 3]))
    b = RunArrays("b", "run b", eye[[0, 1, 3]] * 0.6 + 0.04)  # no per-epoch record
    view = build_view([a, b], given, np.array([10, 11, 12]), baseline=1)
    assert view.first_right[0].tolist() == [2, 1, 0]
    assert view.flips[0].tolist() == [1, 2, 0]
    assert view.first_right[1] is None and view.epoch_given[1] is None
    assert view.predicted[0].tolist() == [0, 1, 7] and view.predicted[1].tolist() == [0, 1, 3]
    assert view.agreement.tolist() == [1.0, 1.0, 0.5]
    # image 2: mean p(given 2) = (0.01 + 0.04) / 2, likeliest other digit 7 or 3 at 0.455 / ...
    mean = (a.probs + b.probs) / 2
    assert view.margin[2] == pytest.approx(mean[2, 2] - np.delete(mean[2], 2).max())
    assert view.margin[0] > 0 > view.margin[2]
    # the per-epoch probability of the given digit and of the final prediction, in 1/255 steps
    assert view.epoch_given[0][:, 0].tolist() == [3, 232, 232]
    assert view.epoch_predicted[0][:, 2].tolist() == [232, 232, 232]
    assert view.probs[1].dtype == np.uint8 and view.probs[1][0, 0] == round(0.64 * 255)


def test_bad_arrays_are_value_errors():
    with pytest.raises(ValueError, match="expected"):
        build_view([RunArrays("a", "a", np.zeros((2, 10)))], np.array([0, 1, 2]), np.arange(3))
    with pytest.raises(ValueError, match="at least one run"):
        build_view([], np.array([0]), np.arange(1))


# --------------------------------------------------------------------------- the command


def invoke(*args: str):
    return CliRunner().invoke(cli, ["explore", *args])


def test_without_a_selection_or_with_unknown_runs_explore_says_so_in_one_line(fake_sweep, tmp_path):
    result = invoke("--out", str(tmp_path / "x"))
    assert result.exit_code != 0
    assert "choose runs with --experiment, --runs, --parent or --filter" in result.output
    result = invoke("--runs", "f" * 32, "--out", str(tmp_path / "x"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert re.search(r"Error: no run with id '?f{32}", result.output), result.output


def test_without_the_test_images_explore_stops_with_one_line(trained_runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke(
        "--runs", ",".join(trained_runs.values()), "--out", str(tmp_path / "x"), "--no-log",
        "--data-dir", str(empty),
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "x" / "explorer.html").exists()


@pytest.fixture(scope="module")
def fake_sweep(tmp_path_factory) -> dict:
    """A sweep parent with 3 hand-made children on the fixture's 500 test images; the children
    store predictions but no per-epoch record."""
    uri = os.environ["MLFLOW_TRACKING_URI"]
    labels = fixture_test_labels()
    parent = log_parent(uri, "explorer-sweep", run_name="explore_sweep")
    children = [
        log_run(
            uri,
            "explorer-sweep",
            run_name=f"seed{seed}",
            labels=labels,
            pred=fake_predictions(labels, accuracy=0.85, seed=seed).argmax(axis=1),
            parent_run_id=parent,
            start_time=1_700_000_000_000 + seed,
        )
        for seed in range(3)
    ]
    return {"parent": parent, "children": children}


def test_a_sweep_s_explorer_is_logged_to_its_parent(fake_sweep, data_dir, tmp_path):
    from mlflow import MlflowClient

    out = tmp_path / "sweep"
    result = invoke(
        "--parent", fake_sweep["parent"], "--out", str(out), "--data-dir", str(data_dir),
        "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "explored 500 test images of 3 run(s)" in result.output
    assert f"kept no {contract.TEST_BY_EPOCH_PATH}" in result.output
    assert f"logged to MLflow run {fake_sweep['parent']}" in result.output
    client = MlflowClient()
    logged = [a.path for a in client.list_artifacts(fake_sweep["parent"], "explorer")]
    assert logged == ["explorer/explorer.html"]
    assert client.get_run(fake_sweep["parent"]).data.tags["mnist.explorer"] == logged[0]
    assert (out / "explorer.html").stat().st_size > 0


def test_runs_given_directly_get_a_report_run_that_later_selections_skip(
    fake_sweep, data_dir, tmp_path
):
    from mlflow import MlflowClient

    ids = fake_sweep["children"][:2]
    common = ["--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache")]
    result = invoke("--runs", ",".join(ids), "--out", str(tmp_path / "a"), *common)
    assert result.exit_code == 0, result.output
    report_id = re.search(r"logged to MLflow run ([0-9a-f]{32})", result.output).group(1)
    assert report_id not in fake_sweep["children"]
    client = MlflowClient()
    report = client.get_run(report_id)
    assert report.data.tags[contract.TAG_REPORT] == "explorer"
    assert client.get_experiment(report.info.experiment_id).name == "explorer-sweep reports"
    assert report.data.tags["mnist.explored_run_ids"] == ",".join(ids)
    assert [a.path for a in client.list_artifacts(report_id, "explorer")] == [
        "explorer/explorer.html"
    ]
    # the report run is filed apart: exploring the experiment again finds its training runs only
    again = invoke(
        "--experiment", "explorer-sweep", "--out", str(tmp_path / "b"), "--no-log", *common
    )
    assert again.exit_code == 0, again.output
    assert "of 3 run(s)" in again.output and "earlier comparison report" not in again.output


# --------------------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI is set but playwright is not installed (pip install -e '.[dev]')")
        pytest.skip("playwright not installed (pip install playwright)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@dataclass
class Stored:
    """The runs' stored predictions, read straight from MLflow, and what the page should count."""

    labels: np.ndarray  # int (N,)
    index: np.ndarray  # int (N,)
    probs: np.ndarray  # float (R, N, 10)
    by_epoch: list  # per run: float (E, N, 10)
    baseline: int

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=2)

    def flagged(self) -> np.ndarray:
        from cleanlab.filter import find_label_issues

        mean = self.probs.mean(axis=0)
        return find_label_issues(self.labels, mean / mean.sum(axis=1, keepdims=True))

    def count(self, hash_: str) -> int:
        """How many images match a page state written as its URL hash."""
        state = dict(part.split("=") for part in hash_.split("&") if part)
        runs = [int(r) for r in state["runs"].split(",")] if "runs" in state else None
        preds = self.preds if runs is None else self.preds[runs]
        wrong = preds != self.labels
        keep = np.ones(len(self.labels), bool)
        if "given" in state:
            keep &= self.labels == int(state["given"])
        if "predicted" in state:
            keep &= (preds == int(state["predicted"])).any(axis=0)
        keep &= {
            None: True,
            "any": wrong.any(axis=0),
            "all": wrong.all(axis=0),
            "none": ~wrong.any(axis=0),
        }[state.get("wrong")]
        if state.get("disagree") == "1":
            keep &= (preds != preds[0]).any(axis=0)
        if state.get("suspect") == "1":
            keep &= self.flagged()
        if "flip" in state:
            others = [r for r in (runs or range(len(self.probs))) if r != self.baseline]
            base_right = self.preds[self.baseline] == self.labels
            run_right = self.preds[others] == self.labels
            fixed = (~base_right & run_right).any(axis=0)
            broken = (base_right & ~run_right).any(axis=0)
            keep &= fixed if state["flip"] == "fixed" else broken
        return int(keep.sum())


@pytest.fixture(scope="module")
def explored(trained_runs, data_dir, tmp_path_factory) -> tuple[Path, Stored]:
    """explorer.html of the two runs trained on the fixture (MLP baseline, softmax), and their
    stored predictions."""
    from mlflow import MlflowClient

    out = tmp_path_factory.mktemp("explorer")
    ids = [trained_runs["mlp"], trained_runs["softmax"]]
    result = invoke(
        "--runs", ",".join(ids), "--baseline", ids[0], "--out", str(out), "--no-log",
        "--data-dir", str(data_dir), "--cache-dir", str(out / "cache"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    client, probs, by_epoch = MlflowClient(), [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k, run_id in enumerate(ids):
            local = client.download_artifacts(run_id, "predictions", f"{tmp}/{k}")
            with np.load(f"{local}/test.npz") as npz:
                labels, index = npz["labels"], npz["index"]
                probs.append(npz["probs"].astype(np.float64))
            with np.load(f"{local}/test_by_epoch.npz") as npz:
                by_epoch.append(npz["probs"].astype(np.float64))
    stored = Stored(labels, index, np.stack(probs), by_epoch, baseline=0)
    return out / "explorer.html", stored


class Page:
    """A Playwright page on the explorer that records every console error."""

    def __init__(self, browser, path: Path):
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else 0)
        self.page.on("pageerror", lambda err: self.errors.append(str(err)))
        self.path = path

    def open(self, hash_: str = "") -> Page:
        self.page.goto(self.path.as_uri() + (f"#{hash_}" if hash_ else ""))
        self.page.wait_for_selector("body[data-ready='1']")
        return self

    def set_hash(self, hash_: str) -> None:
        if self.hash().lstrip("#") == hash_:
            return  # the page shows this state already: setting it again fires no event
        before = self.page.evaluate("window.explorer.applied")
        self.page.evaluate("h => { location.hash = h; }", hash_)
        self.page.wait_for_function(f"window.explorer.applied > {before}")

    def count(self) -> int:
        return int(self.page.inner_text("#match-count"))

    def hash(self) -> str:
        return self.page.evaluate("location.hash")

    def first_row_index(self) -> int:
        return int(self.page.inner_text("#rows .row:not([hidden]) .thumb span >> nth=0"))


HASHES = [
    "",
    "given=3",
    "predicted=5",
    "wrong=any",
    "wrong=all",
    "wrong=none",
    "disagree=1",
    "suspect=1",
    "flip=fixed",
    "flip=broken",
    "given=7&wrong=any",
    "predicted=8&runs=1",
    "wrong=all&runs=0",
    "given=2&disagree=1&wrong=any",
    "suspect=1&wrong=all",
]


def test_every_filter_in_the_url_hash_counts_what_the_stored_predictions_say(browser, explored):
    path, stored = explored
    expected = {h: stored.count(h) for h in HASHES}
    n = len(stored.labels)
    # the filters discriminate on this data: otherwise the comparison below proves little
    assert expected[""] == n and 0 < expected["wrong=any"] < n and 0 < expected["suspect=1"] < n
    assert 0 < expected["disagree=1"] and 0 < expected["flip=fixed"] and 0 < expected["flip=broken"]
    page = Page(browser, path).open()
    for hash_ in HASHES:
        page.set_hash(hash_)
        assert page.count() == expected[hash_], hash_
    # a hash in the address when the page opens is applied too
    page.open("given=7&wrong=any")
    assert page.count() == expected["given=7&wrong=any"]
    assert page.page.input_value("#f-given") == "7" and page.page.input_value("#f-wrong") == "any"
    assert page.errors == []


def test_the_controls_filter_and_write_the_hash(browser, explored):
    path, stored = explored
    page = Page(browser, path).open()
    p = page.page
    p.select_option("#f-given", "4")
    assert page.hash() == "#given=4" and page.count() == stored.count("given=4")
    p.select_option("#f-wrong", "any")
    assert page.count() == stored.count("given=4&wrong=any")
    p.select_option("#f-given", "")
    p.check("#f-disagree")
    assert page.hash() == "#wrong=any&disagree=1"
    assert page.count() == stored.count("wrong=any&disagree=1")
    p.uncheck("#f-disagree")
    p.select_option("#f-wrong", "")
    p.select_option("#f-predicted", "3")
    p.uncheck("#f-run-0")  # only the softmax run's predictions are read now
    assert page.hash() == "#predicted=3&runs=1"
    assert page.count() == stored.count("predicted=3&runs=1")
    p.check("#f-run-0")
    p.select_option("#f-predicted", "")
    p.select_option("#f-flip", "broken")
    assert page.count() == stored.count("flip=broken")
    p.select_option("#f-flip", "")
    p.check("#f-suspect")
    assert page.hash() == "#suspect=1" and page.count() == stored.count("suspect=1")
    p.click("#f-reset")
    assert page.hash() in ("", "#") and page.count() == len(stored.labels)
    assert page.errors == []


def test_a_confusion_cell_lists_its_images(browser, explored):
    path, stored = explored
    preds, labels = stored.preds, stored.labels
    # the softmax run's most frequent mistake, and the same pair summed over both runs
    mistakes = np.zeros((10, 10), int)
    np.add.at(mistakes, (labels, preds[1]), 1)
    np.fill_diagonal(mistakes, 0)
    true, pred = np.unravel_index(mistakes.argmax(), mistakes.shape)
    page = Page(browser, path).open()
    cell = f'#matrix-grid td[data-run="1"][data-given="{true}"][data-predicted="{pred}"]'
    assert int(page.page.inner_text(cell)) == mistakes[true, pred]
    page.page.click(cell)
    assert page.hash() == f"#given={true}&predicted={pred}&runs=1"
    assert page.count() == mistakes[true, pred]
    summed = f'#matrix-grid td[data-run="all"][data-given="{true}"][data-predicted="{pred}"]'
    assert int(page.page.inner_text(summed)) == int(((labels == true) & (preds == pred)).sum())
    page.page.click(summed)
    assert page.count() == stored.count(f"given={true}&predicted={pred}")
    assert page.errors == []


def test_sorting_and_the_detail_panel_show_the_stored_numbers(browser, explored):
    path, stored = explored
    page = Page(browser, path).open()
    p = page.page
    p.click("#head [data-key=score]")
    assert page.hash() == "#sort=score&order=asc"
    # label quality is the averaged probability of the given digit (cleanlab's self-confidence),
    # which the page holds as float32; ties keep the torchvision order both ways
    mean = stored.probs.mean(axis=0)
    quality = mean[np.arange(len(stored.labels)), stored.labels] / mean.sum(axis=1)
    quality = quality.astype(np.float32)
    assert page.first_row_index() == stored.index[np.argmin(quality)]
    p.click("#head [data-key=score]")
    assert page.first_row_index() == stored.index[np.argmax(quality)]

    page.set_hash("wrong=all&sort=score&order=asc")
    first = page.first_row_index()
    p.click("#rows .row:not([hidden]) >> nth=0", position={"x": 40, "y": 10})
    assert p.is_visible("#detail") and page.hash().endswith(f"&sel={first}")
    at = int(np.flatnonzero(stored.index == first)[0])
    given = int(stored.labels[at])
    assert p.inner_text("#detail-text").startswith(f"#{first} · given {given}")
    runs = p.locator("#detail .detail-run")
    assert runs.count() == len(stored.probs)
    for r in range(len(stored.probs)):
        title = runs.nth(r).locator(".bars > div").nth(given).get_attribute("title")
        shown = float(re.fullmatch(rf"digit {given}: ([0-9.]+)%", title).group(1))
        # stored in 1/255 steps, shown to 0.1 points: within half a step and the rounding
        assert shown == pytest.approx(100 * stored.probs[r, at, given], abs=50 / 255 + 0.05)
        # one point per epoch for the given digit and one for the prediction
        assert runs.nth(r).locator("svg circle").count() == 2 * len(stored.by_epoch[r])
    p.keyboard.press("Escape")
    assert not p.is_visible("#detail") and "sel=" not in page.hash()
    assert page.errors == []


def test_the_page_works_inside_mlflow_s_sandboxed_artifact_frame(browser, explored):
    """MLflow shows an HTML artifact as a blob URL in an iframe sandboxed to allow-scripts."""
    path, stored = explored
    page = Page(browser, path)
    page.page.set_content(
        '<iframe id="artifact" sandbox="allow-scripts" width="1200" height="800">'
    )
    page.page.evaluate(
        """html => { document.getElementById("artifact").src =
                     URL.createObjectURL(new Blob([html], {type: "text/html"})); }""",
        path.read_text(),
    )
    frame = page.page.frame_locator("#artifact")
    frame.locator("body[data-ready='1']").wait_for()
    frame.locator("#f-given").select_option("3")
    frame.locator("#f-wrong").select_option("any")
    assert int(frame.locator("#match-count").inner_text()) == stored.count("given=3&wrong=any")
    assert page.errors == []


# --------------------------------------------------------------------------- full data


def log_test_by_epoch(run_id: str, probs: np.ndarray, index: np.ndarray) -> None:
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test_by_epoch.npz"
        epochs = np.arange(1, len(probs) + 1)
        np.savez(path, probs=probs.astype(np.float16), epochs=epochs, index=index)
        MlflowClient().log_artifact(run_id, str(path), "predictions")


@pytest.mark.full_data
def test_five_runs_on_the_full_test_set_fit_in_8_mb_and_open(browser, full_data_dir, tmp_path):
    from mnist_train import idx

    labels = idx.read_split(full_data_dir, train=False)[1]
    uri, index, ids = os.environ["MLFLOW_TRACKING_URI"], np.arange(len(labels)), []
    for seed in range(5):
        by_epoch = np.stack(
            [fake_predictions(labels, accuracy=a, seed=seed) for a in (0.9, 0.95, 0.97)]
        )
        run_id = log_run(
            uri, "explorer-full", run_name=f"full{seed}", labels=labels,
            pred=by_epoch[-1].argmax(axis=1), n_epochs=3,
        )  # fmt: skip
        log_test_by_epoch(run_id, by_epoch, index)
        ids.append(run_id)
    out = tmp_path / "full"
    result = invoke(
        "--runs", ",".join(ids), "--out", str(out), "--no-log", "--data-dir", str(full_data_dir)
    )
    assert result.exit_code == 0, result.output
    assert (out / "explorer.html").stat().st_size <= 8_000_000
    page = Page(browser, out / "explorer.html").open("wrong=any")
    preds = np.stack([fake_predictions(labels, accuracy=0.97, seed=s) for s in range(5)])
    assert page.count() == int((preds.argmax(axis=2) != labels).any(axis=0).sum())
    assert page.errors == []
