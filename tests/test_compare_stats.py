"""Pure comparison statistics (analysis.stats) against independent hand computations."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis import findings as compare_findings
from analysis import stats as compare


def exact_two_sided_binomial(b: int, c: int) -> float:
    """Two-sided exact p-value of b successes in b + c fair coin flips, by summing math.comb."""
    n = b + c
    if n == 0:
        return 1.0
    probs = [math.comb(n, k) / 2**n for k in range(n + 1)]
    observed = probs[b]
    # Two-sided: total probability of outcomes no more likely than the observed one.
    return min(1.0, sum(p for p in probs if p <= observed * (1 + 1e-7)))


def correctness(b: int, c: int, both_right: int, both_wrong: int):
    base = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    run = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    return np.array(base), np.array(run)


@pytest.mark.parametrize("b,c", [(0, 0), (3, 0), (7, 2), (12, 25), (40, 41), (100, 60)])
def test_mcnemar_matches_direct_binomial_sum(b, c):
    base, run = correctness(b, c, both_right=50, both_wrong=5)
    result = compare.mcnemar_exact(base, run)
    assert (result.b, result.c) == (b, c)
    assert result.statistic == min(b, c)
    assert result.pvalue == pytest.approx(exact_two_sided_binomial(b, c), rel=1e-9)


def test_mcnemar_ignores_concordant_pairs_and_is_symmetric():
    base, run = correctness(9, 2, both_right=10, both_wrong=0)
    base2, run2 = correctness(9, 2, both_right=5000, both_wrong=300)
    assert compare.mcnemar_exact(base, run).pvalue == compare.mcnemar_exact(base2, run2).pvalue
    swapped = compare.mcnemar_exact(run, base)
    assert (swapped.b, swapped.c) == (2, 9)
    assert swapped.pvalue == compare.mcnemar_exact(base, run).pvalue
    # 9 vs 2 discordant: p = 2 * P(X <= 2), X ~ Bin(11, 1/2) = 2 * 67 / 2048
    assert compare.mcnemar_exact(base, run).pvalue == pytest.approx(134 / 2048)


def test_mcnemar_rejects_bad_input():
    with pytest.raises(ValueError, match="length"):
        compare.mcnemar_exact(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="boolean"):
        compare.mcnemar_exact(np.ones(3), np.ones(3))


def test_flips_against_hand_made_predictions():
    y = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    base = np.array([0, 1, 9, 9, 4, 5, 9, 7])  # wrong at positions 2, 3, 6
    run = np.array([0, 9, 2, 9, 9, 5, 6, 7])  # wrong at positions 1, 3, 4
    flips = compare.flips_against_baseline(y, base, run)
    np.testing.assert_array_equal(flips.fixed, [2, 6])
    np.testing.assert_array_equal(flips.broke, [1, 4])
    assert flips.net == 0
    # A run wrong in a different way on an image the baseline also got wrong is neither.
    other = compare.flips_against_baseline(y, base, np.array([0, 1, 8, 8, 4, 5, 9, 7]))
    assert other.fixed.size == 0 and other.broke.size == 0
    # Flip counts are McNemar's discordant counts.
    m = compare.mcnemar_exact(base == y, run == y)
    assert (m.c, m.b) == (flips.fixed.size, flips.broke.size)


def test_bootstrap_interval_is_deterministic_and_brackets_accuracy():
    rng = np.random.default_rng(1)
    correct = rng.random((3, 2000)) < np.array([[0.9], [0.95], [0.5]])
    ci = compare.bootstrap_accuracy_ci(correct, n_resamples=500, seed=3)
    assert ci.shape == (3, 2)
    np.testing.assert_array_equal(
        ci, compare.bootstrap_accuracy_ci(correct, n_resamples=500, seed=3)
    )
    acc = correct.mean(axis=1)
    assert np.all(ci[:, 0] < acc) and np.all(acc < ci[:, 1])
    # Width close to the normal approximation 2 * 1.96 * sqrt(p (1 - p) / n).
    expected = 2 * 1.96 * np.sqrt(acc * (1 - acc) / correct.shape[1])
    np.testing.assert_allclose(ci[:, 1] - ci[:, 0], expected, rtol=0.2)
    single = compare.bootstrap_accuracy_ci(correct[0], n_resamples=500, seed=3)
    np.testing.assert_array_equal(single, ci[0])


def test_holm_adjustment():
    adjusted = compare.holm_adjust([0.01, 0.04, 0.03, 0.5])
    np.testing.assert_allclose(adjusted, [0.04, 0.09, 0.09, 0.5])


def test_seed_grouping_groups_runs_differing_only_by_seed():
    params = pd.DataFrame(
        {
            "lr": ["0.1", "0.1", "0.1", "0.01", "0.01"],
            "seed": ["0", "1", "2", "0", "1"],
            "epochs": ["3"] * 5,
        },
        index=["a", "b", "c", "d", "e"],
    )
    acc = pd.Series({"a": 0.90, "b": 0.92, "c": 0.94, "d": 0.80, "e": 0.70})
    groups = compare.seed_groups(params, acc)
    assert list(groups["setting"]) == ["lr=0.1", "lr=0.01"]
    assert list(groups["n"]) == [3, 2]
    assert groups.loc[0, "mean"] == pytest.approx(0.92)
    assert groups.loc[0, "std"] == pytest.approx(0.02)
    assert groups.loc[1, "std"] == pytest.approx(np.std([0.8, 0.7], ddof=1))
    assert groups.loc[1, "run_ids"] == ("d", "e")
    assert groups.loc[0, "seeds"] == ("0", "1", "2")


def test_seed_grouping_keeps_different_settings_apart():
    params = pd.DataFrame({"lr": ["0.1", "0.2"], "seed": ["0", "0"]}, index=["a", "b"])
    groups = compare.seed_groups(params, pd.Series({"a": 0.5, "b": 0.6}))
    assert list(groups["n"]) == [1, 1]
    assert groups["std"].isna().all()


def test_varying_params_and_labels():
    params = pd.DataFrame(
        {"lr": ["0.1", "0.01"], "epochs": ["3", "3"], "seed": ["0", "1"]}, index=["r1", "r2"]
    )
    assert compare.varying_params(params) == ["lr", "seed"]
    labels = compare.run_labels(params, {"r1": "same", "r2": "same"})
    assert list(labels) == ["lr=0.1, seed=0", "lr=0.01, seed=1"]


def history_frame():
    rows = []
    for run, accs in {"a": [0.8, 0.9, 0.95], "b": [0.85, 0.88], "c": [0.5, 0.6, 0.7]}.items():
        for epoch, acc in enumerate(accs, start=1):
            rows.append(("test_accuracy", run, epoch, acc))
            rows.append(("test_loss", run, epoch, 1 - acc))
    return pd.DataFrame(rows, columns=["key", "run_id", "step", "value"])


def test_metrics_at_epoch_table():
    history = history_frame()
    table = compare.metrics_at_epoch(history, 2, ["test_accuracy", "test_loss"])
    assert list(table.index) == ["a", "b", "c"]
    assert table.loc["a", "test_accuracy"] == pytest.approx(0.9)
    assert table.loc["b", "test_loss"] == pytest.approx(0.12)
    at3 = compare.metrics_at_epoch(history, 3, ["test_accuracy"])
    assert np.isnan(at3.loc["b", "test_accuracy"])  # run b stopped after 2 epochs
    assert at3.loc["c", "test_accuracy"] == pytest.approx(0.7)
    assert compare.last_common_epoch(history) == 2
    with pytest.raises(ValueError, match="epoch"):
        compare.metrics_at_epoch(history, 0, ["test_accuracy"])


def test_confused_pairs_across_runs():
    a = np.zeros((10, 10), int)
    b = np.zeros((10, 10), int)
    np.fill_diagonal(a, 50)
    a[4, 9], a[7, 1] = 5, 3
    b[4, 9], b[7, 1], b[3, 5] = 1, 6, 2
    pairs = compare.confused_pairs_across_runs({"a": a, "b": b}, top_k=3)
    assert list(zip(pairs["true"], pairs["pred"], pairs["total"])) == [
        (7, 1, 9),
        (4, 9, 6),
        (3, 5, 2),
    ]
    assert list(pairs["top_in_runs"]) == [1, 1, 0]
    assert list(pairs["runs_with_pair"]) == [2, 2, 1]


def test_overfit_onset():
    epochs = np.arange(1, 7)
    train = [0.5, 0.3, 0.2, 0.1, 0.05, 0.02]
    test = [0.40, 0.30, 0.25, 0.27, 0.30, 0.33]
    onset = compare.overfit_onset(epochs, train, test)
    assert (onset.best_epoch, onset.onset, onset.last_epoch) == (3, 4, 6)
    assert onset.rise == pytest.approx(0.08)
    assert compare.overfit_onset(epochs, train, [0.4, 0.3, 0.25, 0.2, 0.15, 0.1]) is None


def test_significance_table_and_findings_are_computed_from_numbers():
    rng = np.random.default_rng(0)
    base = rng.random(1000) < 0.90
    better = base | (rng.random(1000) < 0.6)  # fixes most mistakes, breaks none
    same = base.copy()
    same[:4] = ~same[:4]
    table = compare.significance_table({"base": base, "better": better, "same": same}, "base")
    assert table.loc["better", "broke"] == 0
    assert table.loc["better", "fixed"] == int((~base & better).sum())
    assert table.loc["better", "p_holm"] < 0.05 < table.loc["same", "p_holm"]
    assert np.isnan(table.loc["base", "pvalue"])
    labels = {"base": "baseline-run", "better": "wide", "same": "twin"}
    sentences = compare_findings.findings(
        labels=labels,
        baseline_id="base",
        significance=table,
        groups=compare.seed_groups(pd.DataFrame(index=list(labels)), table["accuracy"]),
        onsets={},
        max_epoch=None,
        final_accuracy=table["accuracy"],
        at_epoch_accuracy=None,
        epoch=None,
        overfit_gap=pd.Series(dtype=float),
        train_time=pd.Series({"base": 10.0, "better": 30.0, "same": 9.0}),
        confused_pairs=None,
    )
    text = " ".join(sentences)
    assert f"{100 * table.loc['better', 'accuracy']:.2f}%" in text
    assert "1 of 2 runs differ" in text
    assert "twin" in text and "Not significant" in text
    assert f"fixed {table.loc['better', 'fixed']} test images and broke 0" in text


def test_findings_do_not_call_a_net_loss_a_gain():
    base = np.array([True] * 80 + [False] * 20)
    worse = base.copy()
    worse[:10] = False  # breaks 10
    worse[80:85] = True  # fixes 5
    table = compare.significance_table({"b": base, "w": worse}, "b")
    labels = {"b": "base", "w": "worse"}
    sentences = compare_findings.findings(
        labels=labels,
        baseline_id="b",
        significance=table,
        groups=compare.seed_groups(pd.DataFrame(index=["b", "w"]), table["accuracy"]),
        onsets={},
        max_epoch=None,
        final_accuracy=table["accuracy"],
        at_epoch_accuracy=None,
        epoch=None,
        overfit_gap=pd.Series(dtype=float),
        train_time=pd.Series({"b": 1.0, "w": 2.0}),
        confused_pairs=None,
    )
    text = " ".join(sentences)
    assert (
        "No run gains on the baseline in net; the closest, worse, fixed 5 test images and broke 10"
        in text
    )
    assert "net gain" not in text.replace("gains on the baseline in net", "")
    assert "base is both the most accurate and the fastest run (1.0 s)" in text


@pytest.mark.parametrize("b, c", [(0, 1), (9, 2), (2, 9), (5, 5), (40, 61), (480, 530), (3, 9000)])
def test_mcnemar_p_value_equals_scipy_binomtest(b, c):
    from scipy.stats import binomtest

    base = np.array([True] * b + [False] * c + [True] * 7)
    run = np.array([False] * b + [True] * c + [True] * 7)
    expected = binomtest(b, b + c, p=0.5).pvalue
    assert compare.mcnemar_exact(base, run).pvalue == pytest.approx(expected, rel=1e-9, abs=1e-300)
