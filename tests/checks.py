"""Assertions several test modules share."""

from __future__ import annotations


def assert_one_line_error(output: str, exit_code: int, *expected: str, code: int | None = None):
    """A user's mistake: a non-zero exit (`code` when given) and one line, `Error: ...`, holding
    each of `expected`; no traceback."""
    assert exit_code != 0, output
    if code is not None:
        assert exit_code == code, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    for text in expected:
        assert text in lines[0], output
