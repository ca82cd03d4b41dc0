"""CSV cells a spreadsheet will not evaluate (OWASP's rule against formula injection).

Run names and parameters come from users and land in `summary.csv`, `runs.csv` and friends. A
cell such as `=1+2` or `@SUM(A1)` is a formula to Excel and LibreOffice, so text starting with
`=`, `+`, `-`, `@`, a tab or a carriage return is prefixed with a single quote. Numbers stay
numbers: ints and floats are never touched, nor is text that reads as a number (`-0.5`, `1e-3`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """`value`, with a leading `'` when it is text a spreadsheet would read as a formula."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        if math.isfinite(float(value)):
            return value  # a number written as text, such as a negative parameter value
    except ValueError:
        pass
    return "'" + value


def safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` whose text cells, column names and index labels are `safe_cell`ed."""
    from pandas.api.types import is_numeric_dtype

    out = frame.copy()
    for column in out.columns:
        if not is_numeric_dtype(out[column]):
            out[column] = out[column].map(safe_cell)
    out.columns = [safe_cell(c) for c in out.columns]
    if not is_numeric_dtype(out.index):
        out.index = out.index.map(safe_cell)
    return out


def rows_to_csv(rows: Iterable[Mapping[str, Any]], fieldnames: list[str]) -> str:
    """CSV text of `rows` (dicts keyed by `fieldnames`), every cell `safe_cell`ed."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([safe_cell(name) for name in fieldnames])
    for row in rows:
        writer.writerow([safe_cell(row.get(name)) for name in fieldnames])
    return buffer.getvalue()
