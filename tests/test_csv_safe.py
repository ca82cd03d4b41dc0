"""CSV cells that a spreadsheet would run as formulas are neutralised; numbers stay numbers."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from mnist_train.csv_safe import rows_to_csv, safe_cell, safe_frame


def test_formula_text_gets_a_quote_and_numbers_stay():
    for text in ("=1+2", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A2)", "\t=1", "\r=1"):
        assert safe_cell(text) == "'" + text
    for value in (-0.5, 3, "-0.5", "1e-3", "+7", "lr=0.01", "seed000_mlp", "", None, float("nan")):
        assert safe_cell(value) is value or safe_cell(value) == value


def test_frame_and_rows_round_trip_through_csv():
    frame = pd.DataFrame(
        {"name": ["=1+2", "ok"], "lr": ["-1e-3", "0.1"], "test_accuracy": [0.97, -0.01]},
        index=pd.Index(["@x", "y"], name="run"),
    )
    read = pd.read_csv(io.StringIO(safe_frame(frame).to_csv()), index_col=0)
    assert read["name"].tolist() == ["'=1+2", "ok"]
    assert read.index.tolist() == ["'@x", "y"]
    np.testing.assert_allclose(read["lr"], [-1e-3, 0.1])  # numbers written as text still parse
    np.testing.assert_allclose(read["test_accuracy"], [0.97, -0.01])
    assert frame.loc["@x", "name"] == "=1+2"  # the input is not modified

    text = rows_to_csv(
        [{"name": "=HYPERLINK(1)", "acc": 0.5}, {"name": "a", "acc": None}], ["name", "acc"]
    )
    assert text.splitlines() == ["name,acc", "'=HYPERLINK(1),0.5", "a,"]
