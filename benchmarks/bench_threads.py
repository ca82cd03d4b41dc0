"""Torch threads per model family: 1 thread, 2 threads and torch's default, on a quiet machine
and while another process holds a core (issue 19, part 2).

For each family's experiment file, one epoch of `train()` (untracked, on the first
`--max-train` images) with each thread count, alternating within every repeat so that drift hits
them alike; medians over repeats. Then the same with a busy-loop process of our own
(`python -c "while True: pass"`) holding a core, stopped at the end. The load average is printed
beside each condition. The project's thread count for a family must not lose more than 20% against
one thread while the other process runs.

    .venv/bin/python benchmarks/bench_threads.py --data-dir ../shared/data   # ~4 min
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

from mnist_train import contract, data
from mnist_train.config import RunConfig, read_experiment, resolve
from mnist_train.runner import build_trainable
from mnist_train.train import EpochRecord, Progress, prepare, train

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {
    "softmax": "seed001_softmax.yaml",
    "mlp": "seed000_mlp.yaml",
    "cnn": "cnn.yaml",
    "cnn_fast": "cnn_fast.yaml",
}
LOSS_LIMIT = 0.20  # the family's setting may be at most 20% slower than 1 thread under load
BUSY_LOOP = "while True: pass"


def epoch_seconds(config: RunConfig, tensors, threads: int) -> float:
    """Seconds of one epoch (training pass plus evaluation) with `threads` torch threads."""
    torch.set_num_threads(threads)
    parts = build_trainable(config, torch.device("cpu"), len(tensors.train_y))
    steps = train(
        parts.model, parts.optimizer, tensors, config, Progress(), scheduler=parts.scheduler
    )
    return sum(r.epoch_time_s for r in steps if isinstance(r, EpochRecord))


def measure(configs, tensors, settings, repeats: int) -> dict[tuple[str, int], float]:
    """Median epoch seconds per (family, threads), thread counts alternating within a repeat."""
    times: dict[tuple[str, int], list[float]] = {}
    for repeat in range(repeats):
        order = settings if repeat % 2 == 0 else settings[::-1]
        for family, config in configs.items():
            for threads in order:
                seconds = epoch_seconds(config, tensors[family], threads)
                times.setdefault((family, threads), []).append(seconds)
    return {key: statistics.median(values) for key, values in times.items()}


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=contract.default_data_dir())
    parser.add_argument(
        "--max-train", type=int, default=12000, help="training images per epoch (default 12000)"
    )
    parser.add_argument("--max-test", type=int, default=2000, help="test images (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="median over N (default 3)")
    parser.add_argument("--families", nargs="+", choices=tuple(FAMILIES), default=list(FAMILIES))
    args = parser.parse_args(argv)
    default_threads = torch.get_num_threads()  # before anything sets it
    settings = sorted({1, 2, default_threads})
    overrides = {
        "max_train": args.max_train,
        "max_test": args.max_test,
        "validation": 0,  # the same images for every family; one epoch, nothing to stop early
        "early_stopping_patience": None,
    }
    configs = {
        family: replace(
            resolve(read_experiment(ROOT / "experiments" / FAMILIES[family]), overrides),
            epochs=1,
            device="cpu",
        )
        for family in args.families
    }
    train_split, test_split = data.load_mnist(args.data_dir, download=False)
    train_split, test_split = train_split.head(args.max_train), test_split.head(args.max_test)
    tensors = {
        family: prepare(train_split, test_split, config, torch.device("cpu"))
        for family, config in configs.items()
    }
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch "
        f"{torch.__version__}, {os.cpu_count()} CPUs, torch's default {default_threads} "
        f"threads; one epoch of {args.max_train} images (+ {args.max_test} test), median of "
        f"{args.repeats}"
    )
    print(f"quiet: load average {load()} before", flush=True)
    quiet = measure(configs, tensors, settings, args.repeats)
    busy_loop = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        print(f"busy: load average {load()} before (busy loop pid {busy_loop.pid})", flush=True)
        busy = measure(configs, tensors, settings, args.repeats)
        print(f"busy: load average {load()} after", flush=True)
    finally:
        busy_loop.kill()
        busy_loop.wait()

    header = (
        f"{'family':<9} {'threads':>11} {'quiet s':>8} {'busy s':>8} {'busy/quiet':>10} "
        f"{'busy vs 1 thread':>16}  project setting"
    )
    print("\n" + header + "\n" + "-" * len(header))
    ok = True
    for family, config in configs.items():
        own = config.threads or default_threads
        for threads in settings:
            label = f"{threads}" + (" (default)" if threads == default_threads else "")
            slower = busy[family, threads] / busy[family, 1] - 1
            mark = ""
            if threads == own:
                met = slower <= LOSS_LIMIT
                ok &= met
                mark = f"<- threads: {config.threads} ({'met' if met else 'MISSED'})"
            calm, held = quiet[family, threads], busy[family, threads]
            print(
                f"{family:<9} {label:>11} {calm:8.2f} {held:8.2f} {held / calm:9.1f}x "
                f"{slower:+15.0%}  {mark}"
            )
    print(
        f"target: each family's setting at most {LOSS_LIMIT:.0%} slower than 1 thread with a "
        f"core held: {'met' if ok else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
