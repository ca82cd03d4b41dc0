"""The comparison report of a study: best trial, optimisation history, importances, slices."""

import numpy as np
import pandas as pd
from click.testing import CliRunner
from conftest import TINY

from analysis.figures.study import ImportanceDisplay, OptimizationHistoryDisplay, SliceDisplay
from analysis.study import Study, best_so_far, is_log_scaled, ranked_importance, slice_columns


def table():
    return pd.DataFrame(
        {
            "trial": [0, 1, 2, 3, 4],
            "state": ["COMPLETE", "PRUNED", "COMPLETE", "FAIL", "COMPLETE"],
            "name": [f"trial {i:03d}" for i in range(5)],
            "run_id": [f"r{i}" for i in range(5)],
            "status": ["FINISHED", "KILLED", "FINISHED", "FAILED", "FINISHED"],
            "hidden_sizes": ["[64]", "[128, 128]", "[256, 256]", "[32]", "[512]"],
            "lr": [1e-4, 3e-4, 1e-3, 2e-3, 1e-2],
            "batch_size": [64, 128, 64, 256, 128],
            "val_accuracy": [0.90, np.nan, 0.95, np.nan, 0.93],
            "test_accuracy": [0.89, 0.5, 0.94, np.nan, 0.92],
        }
    )


def study(direction="maximize", best_trial=None):
    return Study(
        "s", "val_accuracy", direction, table(), {"lr": 0.7, "batch_size": 0.3}, best_trial
    )


def test_best_so_far_carries_over_gaps_both_ways():
    values = np.array([0.5, np.nan, 0.7, 0.6, np.nan, 0.8])
    np.testing.assert_allclose(best_so_far(values, "maximize"), [0.5, 0.5, 0.7, 0.7, 0.7, 0.8])
    np.testing.assert_allclose(best_so_far(values, "minimize"), [0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert np.isnan(best_so_far(np.array([np.nan, 1.0]), "maximize")[0])


def test_the_study_knows_its_params_best_trial_and_counts():
    s = study()
    assert s.params == ["hidden_sizes", "lr", "batch_size"]
    assert list(s.complete["trial"]) == [0, 2, 4]
    assert s.best()["trial"] == 2
    assert study("minimize").best()["trial"] == 0
    assert study(best_trial=4).best()["trial"] == 4  # the parent's tag wins when it names one
    assert s.counts() == {"COMPLETE": 3, "PRUNED": 1, "FAIL": 1}
    assert ranked_importance({"b": 0.2, "a": 0.2, "c": 0.6}) == [("c", 0.6), ("a", 0.2), ("b", 0.2)]


def test_slices_read_layer_lists_as_width_and_depth_and_scale_wide_ranges():
    columns = slice_columns(study())
    assert list(columns.columns) == [
        "hidden_sizes: width",
        "hidden_sizes: layers",
        "lr",
        "batch_size",
    ]
    assert list(columns["hidden_sizes: width"]) == [64, 256, 512]
    assert list(columns["hidden_sizes: layers"]) == [1, 2, 1]
    assert is_log_scaled(columns["lr"]) and not is_log_scaled(columns["batch_size"])
    assert not is_log_scaled(pd.Series(["relu", "tanh"]))


def test_history_plots_complete_values_the_best_line_and_marks_the_rest():
    display = OptimizationHistoryDisplay(study()).plot()
    points = display.ax_.collections[0].get_offsets()
    np.testing.assert_allclose(points, [[0, 0.90], [2, 0.95], [4, 0.93]])
    line = display.ax_.lines[0]
    np.testing.assert_allclose(line.get_ydata(), [0.90, 0.90, 0.95, 0.95, 0.95])
    labels = [t.get_text() for t in display.ax_.get_legend().get_texts()]
    assert labels == ["complete", "best so far", "pruned (1)", "fail (1)"]


def test_importance_bars_are_largest_on_top_and_slices_ring_the_best():
    bars = ImportanceDisplay({"lr": 0.7, "batch_size": 0.3}).plot().ax_.patches
    assert [round(b.get_width(), 2) for b in bars] == [0.3, 0.7]  # drawn bottom-up
    display = SliceDisplay(study()).plot()
    visible = [ax for ax in display.axes_ if ax.get_visible()]
    assert [ax.get_xlabel() for ax in visible] == [
        "hidden_sizes: width",
        "hidden_sizes: layers",
        "lr",
        "batch_size",
    ]
    lr = visible[2]
    assert lr.get_xscale() == "log"
    np.testing.assert_allclose(lr.collections[0].get_offsets()[:, 1], [0.90, 0.95, 0.93])
    np.testing.assert_allclose(lr.collections[1].get_offsets(), [[1e-3, 0.95]])  # the ring


def test_compare_parent_of_a_search_shows_the_study(tmp_path, data_dir):
    from mnist_train.cli import cli as train_cli

    fields = {**TINY, "validation": 200}
    head = "".join(f"{key}: {value}\n" for key, value in fields.items())
    path = tmp_path / "reported.yaml"
    path.write_text(
        f"name: reported_search\nexperiment: study-report\n{head}search:\n  trials: 4\n"
        "  pruner: none\n  params:\n    lr: {type: float, low: 1.0e-3, high: 0.1, log: true}\n"
        "    batch_size: [50, 100]\n"
    )
    trained = CliRunner().invoke(train_cli, ["run", str(path), "--data-dir", str(data_dir), "-q"])
    assert trained.exit_code == 0, trained.output
    parent = trained.stdout.split()[0]
    from analysis.cli import cli as analysis_cli

    out = tmp_path / "report"
    result = CliRunner().invoke(
        analysis_cli, ["compare", "--parent", parent, "--out", str(out), "--no-log"]
    )
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    from mlflow import MlflowClient

    tags = MlflowClient().get_run(parent).data.tags
    best = tags["mnist.study.best_trial"]
    assert 'id="study"' in html and f"<strong>trial {best}</strong>" in html
    assert "measured on the validation split" in html
    for name in ("study_history", "study_slices"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000


def test_a_study_without_complete_trials_has_no_best():
    frame = table().assign(state="WAITING")
    assert Study("s", "val_accuracy", "maximize", frame).best() is None
