"""The reports are web pages: open them in a real browser (headless Chromium) and check that every
image decodes, the page logs no console error, and the findings are on the page."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from analysis.cli import cli

CHECK = """
<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = JSON.stringify({images: images.length, broken: broken});
  document.body.appendChild(out);
});
</script>
"""


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    return found


def open_in_browser(chromium: str, page, tmp_path) -> tuple[dict, str, str]:
    """(image check, DOM text, console lines) of `page` as Chromium renders it."""
    checked = tmp_path / f"checked-{page.parent.name}.html"
    checked.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            "--dump-dom",
            checked.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', result.stdout, re.S)
    assert found, "the page never finished loading"
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    return json.loads(found.group(1).replace("&quot;", '"')), result.stdout, "\n".join(console)


def test_per_run_and_comparison_reports_render_in_a_browser(
    chromium, trained_runs, data_dir, tmp_path
):
    common = ["--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"), "--no-log"]
    run = CliRunner().invoke(
        cli, ["run", trained_runs["mlp"], "--out", str(tmp_path / "run"), *common]
    )
    assert run.exit_code == 0, run.output
    compare = CliRunner().invoke(
        cli,
        [
            "compare",
            "--runs",
            ",".join(trained_runs.values()),
            "--out",
            str(tmp_path / "cmp"),
            *common,
        ],
    )
    assert compare.exit_code == 0, compare.output

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    check, dom, console = open_in_browser(chromium, tmp_path / "run" / "report.html", tmp_path)
    assert check["images"] >= 10 and check["broken"] == [], check
    assert not re.search(r"error|failed|uncaught", console, re.I), console
    pair = summary["most_confused_pairs"][0]
    assert "Dataset cartography" in dom and f"{pair['true']}" in dom

    check, dom, console = open_in_browser(chromium, tmp_path / "cmp" / "report.html", tmp_path)
    assert check["images"] >= 4 and check["broken"] == [], check
    assert not re.search(r"error|failed|uncaught", console, re.I), console
    assert "Findings" in dom and "this ranking is on the test set" in dom
