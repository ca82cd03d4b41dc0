"""Time to 99%: experiments/cnn_fast.yaml over N seeds against the seed MLP's training time.

Every run is a tracked run, as `mnist-train run` makes it (`runner.run_training` into a temporary
SQLite store), and its times are the `train_time_s` the run logs (training plus the per-epoch
evaluation). The floor is the seed MLP's 3-epoch run (experiments/seed000_mlp.yaml) trained in
the same process: before the first seed and after every 5 seeds, so that a machine shared with
other jobs slows floor and recipe alike. The load average is printed beside every run.

    .venv/bin/python benchmarks/bench_fast.py --data-dir ../shared/data             # 5 seeds
    .venv/bin/python benchmarks/bench_fast.py --data-dir ../shared/data --seeds 10  # README table
    .venv/bin/python benchmarks/bench_fast.py --data-dir ../shared/data --quick     # smoke run

Targets (issue 19): mean test accuracy >= 0.990 over the seeds, worst seed >= 0.988, and the
mean train_time_s at most 5x the floor.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from mnist_train import contract
from mnist_train.config import ConfigError, RunConfig, read_experiment, resolve
from mnist_train.data import DataError

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "experiments" / "cnn_fast.yaml"
FLOOR = ROOT / "experiments" / "seed000_mlp.yaml"
MEAN_TARGET, WORST_TARGET, RATIO_TARGET = 0.990, 0.988, 5.0
FLOOR_EVERY = 5  # seeds between two floor runs
QUICK = {"max_train": 2000, "max_test": 500, "validation": 500}


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


def tracked_run(config: RunConfig, data_dir: Path) -> dict[str, float]:
    """One run as the CLI makes it; its final metrics from the store."""
    from mlflow.tracking import MlflowClient

    from mnist_train import runner

    with contextlib.redirect_stdout(sys.stderr):  # MLflow may print a line per run
        run_id = runner.run_training(runner.prepare_run(config, data_dir)).run_id
    return MlflowClient().get_run(run_id).data.metrics


def warm_up(configs: list[RunConfig], data_dir: Path) -> float:
    """One tiny run of each config, untimed: lazy imports and the first optimizer step's
    `torch._dynamo` import would otherwise land in the first timed run only."""
    started = time.perf_counter()
    for config in configs:
        tracked_run(replace(config, epochs=1, max_train=500, max_test=200, validation=0), data_dir)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=contract.default_data_dir())
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run on {QUICK} images, 2 seeds"
    )
    parser.add_argument("--json", type=Path, help="write the figures here too (bench_story.py)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    overrides = {"system_metrics": False, "experiment": "bench-fast"}
    if args.quick:
        overrides.update(QUICK)
        args.seeds = min(args.seeds, 2)
    try:
        recipe = resolve(read_experiment(args.recipe), overrides)
        floor = resolve(read_experiment(FLOOR), overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import mlflow  # noqa: F401  (MLflow sets its loggers' levels on import; ours come after)

    logging.getLogger("mlflow").setLevel(logging.ERROR)  # a pickle warning per logged model
    store = Path(tempfile.mkdtemp(prefix="bench_fast_"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch "
        f"{torch.__version__}, {os.cpu_count()} CPUs, {load()}; store {store}/mlflow.db"
    )
    try:
        print(f"warm-up (excluded): {warm_up([floor, recipe], args.data_dir):.1f} s, {load()}")
        floors, rows = [], []

        def floor_run() -> None:
            seconds = tracked_run(floor, args.data_dir)[contract.TRAIN_TIME]
            floors.append(seconds)
            print(f"  floor: seed MLP, 3 epochs  train_time_s {seconds:6.2f}  {load()}", flush=True)

        print(f"\n{args.recipe.name} ({recipe.epochs} epoch(s)), seeds 0-{args.seeds - 1}:")
        floor_run()
        for seed in range(args.seeds):
            metrics = tracked_run(
                replace(recipe, seed=seed, name=f"cnn_fast_seed{seed}"), args.data_dir
            )
            rows.append((seed, metrics[contract.TEST_ACCURACY], metrics[contract.TRAIN_TIME]))
            val = metrics.get(contract.VAL_ACCURACY)
            print(
                f"  seed {seed:2d}  test {rows[-1][1]:.4f}"
                + (f"  val {val:.4f}" if val is not None else "")
                + f"  train_time_s {rows[-1][2]:6.2f}  {load()}",
                flush=True,
            )
            if (seed + 1) % FLOOR_EVERY == 0 or seed == args.seeds - 1:
                floor_run()
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    accuracy = [acc for _, acc, _ in rows]
    seconds = [s for _, _, s in rows]
    worst_seed, worst, _ = min(rows, key=lambda row: row[1])
    mean, spread = statistics.mean(accuracy), statistics.stdev(accuracy) if len(rows) > 1 else 0.0
    reference = statistics.median(floors)
    ratio = statistics.mean(seconds) / reference
    print(
        f"\ntest accuracy  mean {mean:.4f}  std {spread:.4f}  worst {worst:.4f} (seed {worst_seed})"
        f"  n={len(rows)}\n"
        f"train_time_s   mean {statistics.mean(seconds):.2f}  min {min(seconds):.2f}  "
        f"max {max(seconds):.2f}\n"
        f"floor (seed MLP, 3 epochs) median {reference:.2f} s of "
        f"{', '.join(f'{s:.2f}' for s in floors)}; recipe / floor {ratio:.2f}x; {load()}"
    )
    checks = (
        (f"mean >= {MEAN_TARGET}", mean >= MEAN_TARGET),
        (f"worst >= {WORST_TARGET}", worst >= WORST_TARGET),
        (f"time <= {RATIO_TARGET:g}x floor", ratio <= RATIO_TARGET),
    )
    print("targets: " + ", ".join(f"{name} {'met' if ok else 'MISSED'}" for name, ok in checks))
    if args.json:
        figures = {
            "seeds": len(rows),
            "mean": mean,
            "worst": worst,
            "worst_seed": worst_seed,
            "train_s": statistics.mean(seconds),
            "floor_s": reference,
            "ratio": ratio,
            "load": os.getloadavg()[0],
        }
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
