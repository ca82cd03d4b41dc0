"""How long does one per-run report take? (issue 4 budget: at most 5 s for a finished MLP run)

    .venv/bin/python benchmarks/bench_report.py                    # a contract-shaped run, made
    here
    .venv/bin/python benchmarks/bench_report.py --run-id ID        # an existing run
    ($MLFLOW_TRACKING_URI)

Without --run-id, a finished run shaped like seed 000's MLP is logged to a temporary SQLite store:
3 epochs, 1407 batch_loss steps (60000 / 128 per epoch), 10000 test predictions, and a 10000-image
test set made by repeating the committed fixture slice (real pixels; only the size matters here).

Two figures are printed:
- report: `mnist-analysis run` in this process once imports are warm: connect, load the run
  (predictions from the artifact cache after the first round), read the test images, compute every
  metric, draw and save every figure, write the CSV/JSON/HTML files and log them to the run.
  Median of --repeat rounds; the first (cold-cache) round is shown too.
- command: the same command as a fresh `python -m analysis run` process, start-up and imports
  included (what a user waits for at the shell), as wall time and as CPU time (user + system),
  which other jobs on a shared machine inflate far less.
"""

from __future__ import annotations

import argparse
import gzip
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_RAW = ROOT / "tests" / "fixtures" / "mnist" / "MNIST" / "raw"
N_TEST, EPOCHS, STEPS_PER_EPOCH = 10_000, 3, 469


def make_data_dir(root: Path) -> Path:
    """`root/MNIST/raw/` with a 10000-image test set tiled from the fixture's 500 images."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, header_len in (("t10k-images-idx3-ubyte", 16), ("t10k-labels-idx1-ubyte", 8)):
        content = gzip.decompress((FIXTURE_RAW / f"{name}.gz").read_bytes())
        header, body = bytearray(content[:header_len]), content[header_len:]
        n = int.from_bytes(header[4:8], "big")
        header[4:8] = N_TEST.to_bytes(4, "big")
        (raw / name).write_bytes(
            bytes(header) + (body * (-(-N_TEST // n)))[: len(body) // n * N_TEST]
        )
    return root


def log_mlp_like_run(tracking_uri: str, labels: np.ndarray) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    rng = np.random.default_rng(0)
    client = MlflowClient(tracking_uri)
    run = client.create_run(client.create_experiment("bench-report"), run_name="seed000_mlp")
    run_id, ts = run.info.run_id, int(time.time() * 1000)
    curves = {
        "train_loss": [0.39, 0.18, 0.13],
        "test_loss": [0.21, 0.15, 0.12],
        "train_accuracy": [0.89, 0.95, 0.96],
        "test_accuracy": [0.94, 0.955, 0.964],
        "epoch_time_s": [4.1, 4.0, 4.2],
    }
    metrics = [Metric(k, v, ts, e + 1) for k, vs in curves.items() for e, v in enumerate(vs)]
    steps = EPOCHS * STEPS_PER_EPOCH
    metrics += [
        Metric("batch_loss", float(2.3 * np.exp(-s / 150) + 0.1 + 0.05 * rng.random()), ts, s)
        for s in range(1, steps + 1)
    ]
    for start in range(0, len(metrics), 900):  # MLflow caps a batch at 1000 entries
        client.log_batch(run_id, metrics=metrics[start : start + 900])
    params = {
        "model": "mlp",
        "hidden_sizes": "100",
        "lr": "0.001",
        "batch_size": "128",
        "epochs": "3",
    }
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])

    pred = np.where(rng.random(len(labels)) < 0.965, labels, rng.integers(0, 10, len(labels)))
    logits = rng.normal(0, 1, (len(labels), 10))
    logits[np.arange(len(labels)), pred] += rng.uniform(2, 9, len(labels))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(
            Path(tmp) / "test.npz",
            labels=labels,
            probs=probs.astype(np.float32),
            index=np.arange(len(labels)),
        )
        client.log_artifact(run_id, str(Path(tmp) / "test.npz"), "predictions")
    client.set_terminated(run_id)
    return run_id


def report_once(
    tracking_uri: str, run_id: str, out: Path, data_dir: Path, cache_dir: Path
) -> float:
    """Seconds for one report, as `mnist-analysis run` does it, in this (warm) process."""
    from analysis import cli

    started = time.perf_counter()
    result = cli.cli.main(
        [
            "run",
            run_id,
            "--out",
            str(out),
            "--tracking-uri",
            tracking_uri,
            "--data-dir",
            str(data_dir),
            "--cache-dir",
            str(cache_dir),
        ],
        standalone_mode=False,
    )
    elapsed = time.perf_counter() - started
    del result
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", help="benchmark this existing run instead of a generated one")
    parser.add_argument(
        "--tracking-uri", default=None, help="store of --run-id (default: $MLFLOW_TRACKING_URI)"
    )
    parser.add_argument(
        "--data-dir", default=None, help="MNIST dir for --run-id (default: its tag / env)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="warm rounds (median reported)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.run_id:
            from analysis import runs

            uri, run_id = runs.resolve_tracking_uri(args.tracking_uri), args.run_id
            data_dir = Path(args.data_dir) if args.data_dir else None
        else:
            data_dir = make_data_dir(tmp / "data")
            labels = np.frombuffer(
                (data_dir / "MNIST/raw/t10k-labels-idx1-ubyte").read_bytes(), np.uint8, offset=8
            ).astype(np.int64)
            uri = f"sqlite:///{tmp / 'mlflow.db'}"
            run_id = log_mlp_like_run(uri, labels)
        if data_dir is None:
            from analysis import runs
            from analysis.images import resolve_data_dir

            client = runs.connect(uri)
            data_dir = resolve_data_dir(None, runs.load_run(client, run_id, with_predictions=False))

        cache = tmp / "cache"
        times = [
            report_once(uri, run_id, tmp / f"report{i}", data_dir, cache)
            for i in range(args.repeat + 1)
        ]
        cold, warm = times[0], times[1:]

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "analysis",
                "run",
                run_id,
                "--out",
                str(tmp / "cli"),
                "--tracking-uri",
                uri,
                "--data-dir",
                str(data_dir),
                "--cache-dir",
                str(cache),
            ],
            check=True,
            capture_output=True,
        )
        command = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        command_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    print(f"run {run_id}: {N_TEST if not args.run_id else 'stored'} test predictions")
    print(
        f"report (in process, warm): {statistics.median(warm):.2f} s median of {len(warm)} "
        f"[{', '.join(f'{t:.2f}' for t in warm)}]; first round {cold:.2f} s"
    )
    print(
        f"command (fresh python -m analysis run, imports included): {command:.2f} s wall, "
        f"{command_cpu:.2f} s CPU (the CPU figure is the one to trust on a busy machine)"
    )


if __name__ == "__main__":
    main()
