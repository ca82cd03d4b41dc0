"""Time `mnist-analysis compare` on 5, 20 and 50 runs (issue 5: 20 runs in at most 30 s).

The runs are synthetic but shaped as the contract says (mnist_train/contract.py): flat params, per-
epoch metrics with step = epoch, `batch_loss` per step, `overfit_gap`, `train_time_s` and a full-
size `predictions/test.npz` (10,000 test images), logged to a temporary SQLite store, with a
synthetic MNIST test set for the flip gallery. Each size is timed from a cold artifact cache and
includes logging the report back to MLflow, as the command does.

    .venv/bin/python benchmarks/bench_compare.py [--sizes 5 20 50] [--epochs 10]
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_TEST = 10_000
STEPS_PER_EPOCH = 469  # 60,000 images in batches of 128, as the seed MLP


def write_test_set(data_dir: Path, labels: np.ndarray, seed: int = 0) -> None:
    """Random 28x28 images with the given labels, as gzipped IDX files in torchvision's layout."""
    raw = data_dir / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(seed).integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    header = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in images.shape)
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + images.tobytes())
    header = (2049).to_bytes(4, "big") + len(labels).to_bytes(4, "big")
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(header + labels.astype(np.uint8).tobytes())


def log_runs(uri: str, n_runs: int, n_epochs: int, labels: np.ndarray, tmp: Path) -> list[str]:
    """`n_runs` finished runs: a learning-rate x width grid, three seeds each."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("bench-compare")
    rng = np.random.default_rng(0)
    ids = []
    for i in range(n_runs):
        lr, width, seed = (
            [0.1, 0.01, 0.001, 0.0001][i // 3 % 4],
            [50, 100, 200, 400][i // 12 % 4],
            i % 3,
        )
        accuracy = 0.90 + 0.08 * rng.random()
        start = 1_700_000_000_000 + i * 1000
        run = client.create_run(
            experiment_id, run_name=f"lr={lr} width={width} seed={seed}", start_time=start
        )
        params = {
            "model": "mlp",
            "hidden_sizes": str(width),
            "activation": "relu",
            "dropout": "0.0",
            "optimizer": "adam",
            "lr": str(lr),
            "batch_size": "128",
            "epochs": str(n_epochs),
            "seed": str(seed),
            "normalize": "estimate",
            "num_params": str(795 * width + 10),
        }
        metrics = []
        for e in range(1, n_epochs + 1):
            test_acc = accuracy - 0.05 / e
            metrics += [
                Metric("train_loss", 0.5 / e, start, e),
                Metric("test_loss", 0.3 / e + 0.01 * e, start, e),
                Metric("train_accuracy", min(0.999, test_acc + 0.005 * e), start, e),
                Metric("test_accuracy", test_acc, start, e),
                Metric("epoch_time_s", 3.0, start, e),
            ]
        metrics += [
            Metric("batch_loss", 2.3 / (1 + 0.01 * s), start, s)
            for s in range(1, n_epochs * STEPS_PER_EPOCH + 1)
        ]
        metrics += [
            Metric("overfit_gap", 0.01, start, n_epochs),
            Metric("train_time_s", 30.0 * width / 100, start, n_epochs),
        ]
        for chunk in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(
                run.info.run_id,
                metrics=metrics[chunk : chunk + 1000],
                params=[Param(k, v) for k, v in params.items()] if chunk == 0 else [],
            )
        pred = np.where(
            rng.random(N_TEST) < accuracy, labels, (labels + rng.integers(1, 10, N_TEST)) % 10
        )
        logits = rng.uniform(-2, 2, (N_TEST, 10)).astype(np.float32)
        logits[np.arange(N_TEST), pred] += 6
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        path = tmp / "test.npz"
        np.savez(path, labels=labels, probs=probs.astype(np.float32), index=np.arange(N_TEST))
        client.log_artifact(run.info.run_id, str(path), "predictions")
        client.set_terminated(run.info.run_id, end_time=start + 60_000)
        ids.append(run.info.run_id)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 20, 50])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # as mnist-analysis sets it
        labels = np.random.default_rng(1).integers(0, 10, N_TEST)
        write_test_set(tmp / "data", labels)
        started = time.perf_counter()
        ids = log_runs(uri, max(args.sizes), args.epochs, labels, tmp)
        print(
            f"logged {len(ids)} synthetic runs ({args.epochs} epochs, {N_TEST} test predictions "
            "each) "
            f"in {time.perf_counter() - started:.1f} s"
        )

        from analysis.compare_report import compare_runs

        for size in args.sizes:
            started = time.perf_counter()
            comparison, path, _ = compare_runs(
                out_dir=tmp / f"report-{size}",
                run_ids=ids[:size],
                tracking_uri=uri,
                data_dir=tmp / "data",
                cache_dir=tmp / f"cache-{size}",
            )  # cold cache each time
            seconds = time.perf_counter() - started
            print(
                f"compare {size:3d} runs: {seconds:6.1f} s  ({path.stat().st_size / 1e6:.1f} MB "
                "report, "
                f"{len(comparison.findings)} findings)",
                flush=True,
            )


if __name__ == "__main__":
    main()
