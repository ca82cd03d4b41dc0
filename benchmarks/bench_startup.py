"""Where a command's wall time goes, from the shell prompt back to the prompt (issue 11).

Prints one table of phases, each over `--repeats` runs with min and median seconds:
imports by package (each a fresh `python -c "import X"`, the bare interpreter shown first),
MNIST load (cold: gzip-only files that must be unpacked; warm: unpacked files), SQLite store
creation, and the whole process of each command: `mnist-train run` seed 000 on a fresh and on an
existing store, seed 001 on an existing store, `mnist-analysis run <run>` and `compare` of N runs.
The commands are driven as subprocesses of the worktree's `.venv/bin` scripts in a temporary
working folder with a temporary SQLite store, so the table holds whatever the code does today.

    .venv/bin/python benchmarks/bench_startup.py --data-dir ../shared/data --repeats 2
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IMPORTS = ["torch", "torchvision", "mlflow", "mlflow.pytorch", "mnist_train.cli", "analysis.cli"]
LOAD = (  # prints the seconds load_mnist takes inside the process
    "import sys, time; from mnist_train import data; t = time.perf_counter(); "
    "data.load_mnist(sys.argv[1], download=False); print(time.perf_counter() - t)"
)
STORE = (  # prints the seconds MLflow takes to create (or open) the store
    "import sys, time, mlflow; t = time.perf_counter(); "
    "mlflow.MlflowClient(sys.argv[1]).search_experiments(); print(time.perf_counter() - t)"
)


def wall(cmd: list[str], env: dict, cwd: Path) -> tuple[float, str]:
    """(seconds from start to exit, stdout) of one process; a failure stops the benchmark."""
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return seconds, out.stdout


def gzip_copy(data_dir: Path, target: Path) -> None:
    """`target/MNIST/raw/*.gz` from `data_dir`'s files (either form), as a fresh download has."""
    raw = target / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for src in sorted((data_dir / "MNIST" / "raw").iterdir()):
        if src.name.endswith(".gz"):
            shutil.copy(src, raw)
        elif not (src.parent / f"{src.name}.gz").exists() and not src.name.startswith("."):
            with open(src, "rb") as f, gzip.open(raw / f"{src.name}.gz", "wb", 1) as g:
                shutil.copyfileobj(f, g)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MNIST_DATA_DIR"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-runs", type=int, default=5, help="N runs for `compare`")
    args = parser.parse_args()
    if args.data_dir is None or not (args.data_dir / "MNIST" / "raw").is_dir():
        sys.exit("pass --data-dir (or set MNIST_DATA_DIR) to a folder holding MNIST/raw/")
    data_dir = args.data_dir.resolve()
    rows: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        rows.setdefault(name, []).append(seconds)

    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        work = Path(tmp)
        shutil.copytree(ROOT / "experiments", work / "experiments")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env |= {"MNIST_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
        py = [sys.executable]
        for _ in range(args.repeats):
            add("python -c pass", wall([*py, "-c", "pass"], env, work)[0])
            for module in IMPORTS:
                add(f"import {module}", wall([*py, "-c", f"import {module}"], env, work)[0])
            cold = work / f"cold{len(rows['python -c pass'])}"
            gzip_copy(data_dir, cold)
            add("load_mnist cold (.gz, unpack)", float(wall([*py, "-c", LOAD, cold], env, work)[1]))
            add("load_mnist warm (unpacked)", float(wall([*py, "-c", LOAD, cold], env, work)[1]))
            shutil.rmtree(cold)
            uri = f"sqlite:///{work}/store{len(rows['python -c pass'])}.db"
            add("create sqlite store", float(wall([*py, "-c", STORE, uri], env, work)[1]))
            add("open existing store", float(wall([*py, "-c", STORE, uri], env, work)[1]))

        train = [str(BIN / "mnist-train"), "run", "-q"]
        analysis = str(BIN / "mnist-analysis")
        existing = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{work}/existing.db"}
        wall([*py, "-c", STORE, existing["MLFLOW_TRACKING_URI"]], env, work)  # created up front
        run_ids = []
        for i in range(args.repeats):
            fresh = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{work}/fresh{i}.db"}
            seconds, _ = wall([*train, "experiments/seed000_mlp.yaml"], fresh, work)
            add("mnist-train run seed000 (fresh store)", seconds)
        for _ in range(args.repeats):
            seconds, out = wall([*train, "experiments/seed000_mlp.yaml"], existing, work)
            add("mnist-train run seed000 (existing store)", seconds)
            run_ids.append(out.split()[-1])
        for _ in range(args.repeats):
            seconds, out = wall([*train, "experiments/seed001_softmax.yaml"], existing, work)
            add("mnist-train run seed001 (existing store)", seconds)
            run_ids.append(out.split()[-1])
        while len(run_ids) < args.compare_runs:  # quick extra runs, only for compare
            _, out = wall(
                [*train, "experiments/seed001_softmax.yaml", "--set", "epochs=2"], existing, work
            )
            run_ids.append(out.split()[-1])
        for i in range(args.repeats):
            cmd = [analysis, "run", run_ids[0], "--out", str(work / f"report{i}")]
            add("mnist-analysis run <run>", wall(cmd, existing, work)[0])
        ids = ",".join(run_ids[: args.compare_runs])
        for i in range(args.repeats):
            cmd = [analysis, "compare", "--runs", ids, "--out", str(work / f"compare{i}")]
            add(f"mnist-analysis compare ({args.compare_runs} runs)", wall(cmd, existing, work)[0])

    width = max(map(len, rows)) + 2
    print(f"{'phase':<{width}}{'min s':>8}{'median s':>10}   ({args.repeats} repeats)")
    for name, values in rows.items():
        print(f"{name:<{width}}{min(values):>8.2f}{statistics.median(values):>10.2f}")


if __name__ == "__main__":
    main()
