"""Costs of the training features, measured with `train()` itself (no MLflow), on full MNIST.

1. Epoch time of the CNN of experiments/cnn.yaml next to the seed MLP's, and the CNN's accuracy.
2. The validation pass (5,000 images) as a share of an MLP epoch (target: at most 5%).
3. What early stopping saves on the try_epochs sweep (3, 5, 10 epochs, patience 2 on val_loss).
4. The per-example record: epoch time with and without it (target: at most 5% more) and its
   compressed size per epoch (target: at most 1 MB for 60,000 training images).

    .venv/bin/python benchmarks/bench_train_features.py --data-dir ../shared/data [--repeats 3]

Timings are medians over repeats, taken in one process on a shared machine: compare the ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from mnist_train import contract, data
from mnist_train.config import read_experiment, resolve
from mnist_train.runner import build_trainable
from mnist_train.train import EpochRecord, Progress, infer, prepare, train


def tensors_for(config, train_split, test_split):
    validation = None
    if config.validation:
        train_split, validation = data.hold_out(train_split, config.validation)
    return prepare(train_split, test_split, config, torch.device("cpu"), validation=validation)


def run(config, tensors) -> list[EpochRecord]:
    parts = build_trainable(config, torch.device("cpu"), len(tensors.train_y))
    steps = train(
        parts.model, parts.optimizer, tensors, config, Progress(), scheduler=parts.scheduler
    )
    return [r for r in steps if isinstance(r, EpochRecord)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(contract.default_data_dir()))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    train_split, test_split = data.load_mnist(args.data_dir)

    print("== 1. CNN against the seed MLP (s/epoch, median over epochs and repeats)")
    for path in ("experiments/seed000_mlp.yaml", "experiments/cnn.yaml"):
        config = resolve(read_experiment(path), {"system_metrics": False})
        torch.set_num_threads(config.threads)
        tensors = tensors_for(config, train_split, test_split)
        times, accuracy = [], []
        for _ in range(args.repeats):
            records = run(config, tensors)
            times += [r.epoch_time_s for r in records]
            accuracy.append(records[-1].test_accuracy)
        print(
            f"  {config.name:<12} {statistics.median(times):6.2f} s/epoch  threads {config.threads}"
            f"  {config.epochs} epochs  test accuracy {min(accuracy):.4f}-{max(accuracy):.4f}"
        )

    print("\n== 2. Validation pass (5,000 images) against an MLP epoch")
    config = resolve(read_experiment("experiments/seed000_mlp.yaml"), {"validation": 5000})
    torch.set_num_threads(config.threads)
    tensors = tensors_for(config, train_split, test_split)
    epoch = statistics.median(r.epoch_time_s for r in run(config, tensors))
    parts = build_trainable(config, torch.device("cpu"), len(tensors.train_y))
    passes = []
    for _ in range(10 * args.repeats):
        started = time.perf_counter()
        infer(parts.model, tensors.val_x, config.test_batch_size)
        passes.append(time.perf_counter() - started)
    share = statistics.median(passes) / epoch
    print(
        f"  validation pass {1000 * statistics.median(passes):.1f} ms, MLP epoch {epoch:.3f} s: "
        f"{share:.1%} of an epoch (target <= 5%: {'met' if share <= 0.05 else 'MISSED'})"
    )

    print("\n== 3. Early stopping on the try_epochs sweep (patience 2 on val_loss)")
    sweep = read_experiment("experiments/try_epochs.yaml")
    for epochs in sweep.sweep["grid"]["epochs"]:
        base = resolve(sweep, {"epochs": epochs})
        stopping = dataclasses.replace(base, early_stopping_patience=2)
        tensors = tensors_for(base, train_split, test_split)
        full, early = run(base, tensors), run(stopping, tensors)
        best = min(early, key=lambda r: r.val_loss)
        print(
            f"  epochs={epochs:<3} full: {len(full)} epochs "
            f"{sum(r.epoch_time_s for r in full):5.1f} s"
            f"  test {full[-1].test_accuracy:.4f} | early stopping: {len(early)} epochs "
            f"{sum(r.epoch_time_s for r in early):5.1f} s, best epoch {best.epoch} "
            f"test {best.test_accuracy:.4f}"
        )
    per_example_record(args, train_split, test_split)


def per_example_record(args, train_split, test_split) -> None:
    import io

    import numpy as np

    print("\n== 4. Per-example record: MLP epoch time without / with it, bytes per epoch")
    base = resolve(read_experiment("experiments/seed000_mlp.yaml"), {"epochs": 2})
    torch.set_num_threads(base.threads)
    tensors = tensors_for(base, train_split, test_split)
    times = {False: [], True: []}
    record = None
    for _ in range(args.repeats):
        for on in (False, True):  # alternating, so drift hits both alike
            records = run(dataclasses.replace(base, per_example_record=on), tensors)
            times[on] += [r.epoch_time_s for r in records]
            record = records[-1] if on else record
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"  without {off:.3f} s/epoch, with {on:.3f} s/epoch: {on / off - 1:+.1%} "
        f"(target <= +5%: {'met' if on / off - 1 <= 0.05 else 'MISSED'})"
    )
    for name, values in (
        (
            "training record (correct + label_prob)",
            {"c": record.train_correct, "p": record.train_label_prob},
        ),
        ("test probabilities (float16)", {"p": record.test_probs.astype(np.float16)}),
    ):
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **values)
        print(f"  {name}: {len(buffer.getvalue()) / 1e3:.0f} kB per epoch")


if __name__ == "__main__":
    main()
