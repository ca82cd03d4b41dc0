"""MNIST held in memory as uint8 tensors, normalised once, and sliced into batches.

The seed notebooks push every image through PIL and `ToTensor` on every pass; here each split is
read once from its IDX files with numpy (torchvision is imported only to download), converted to
float once, and batches are index slices. The shuffle order is drawn exactly as
`DataLoader(dataset, batch_size, shuffle=True)` draws it from the global torch generator, so a
run with the same seed sees the same batches as the notebook did.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from . import idx

STANDARD_MEAN, STANDARD_STD = 0.1307, 0.3081  # the usual full-training-set MNIST statistics
ESTIMATE_IMAGES = 1000  # seed 000 estimates mean and std from the first 1000 training images
# Cross-validation folds come from one fixed permutation, never from a run's seed: the runs of a
# study (other seeds and settings included) cut the same folds, so they partition the images.
FOLDS_SEED = 20_000_521


class DataError(RuntimeError):
    """MNIST is missing, damaged or cannot be downloaded; the message is shown as is."""


@dataclass(frozen=True)
class Split:
    """One MNIST split in memory: `images` uint8 (N, 28, 28), `labels` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> Split:
        """The first `n` images (all of them when `n` is None)."""
        return self if n is None else Split(self.images[:n], self.labels[:n])


def load_split(data_dir: str | Path, *, train: bool, download: bool = True) -> Split:
    """Read one split from `<data_dir>/MNIST/raw/` with the numpy IDX reader (`idx.py`).

    torchvision is imported only to download missing files. Gzipped files are unpacked next to
    themselves once (as torchvision does after a download): the unpacked IDX file is the decoded
    cache, a header and raw uint8 pixels that numpy maps without conversion. A damaged unpacked
    file (or one older than its .gz) is rebuilt from the .gz, never trusted; in a read-only
    folder the .gz is read in memory instead. Headers, sizes, counts and label range are
    checked; any problem is a one-line `DataError` naming the file.
    """
    root = Path(data_dir)
    raw = root / "MNIST" / "raw"
    files = idx.FILES[True] + idx.FILES[False]
    if not all(_present(raw, name) for name in files):
        _download(root, raw, train=train, download=download)
    for split in (True, False):  # all four, as torchvision leaves them after a download
        for name, magic in zip(idx.FILES[split], (idx.IMAGES_MAGIC, idx.LABELS_MAGIC)):
            _unpack_or_repair(raw, name, magic)
    try:
        images, labels = idx.read_split(root, train=train)
    except idx.IdxError as err:
        raise DataError(str(err)) from None
    return Split(torch.from_numpy(images), torch.from_numpy(labels))


def load_mnist(data_dir: str | Path, *, download: bool = True) -> tuple[Split, Split]:
    """(train, test) splits."""
    return (
        load_split(data_dir, train=True, download=download),
        load_split(data_dir, train=False, download=download),
    )


def _present(raw: Path, name: str) -> bool:
    return (raw / name).is_file() or (raw / f"{name}.gz").is_file()


def _download(root: Path, raw: Path, *, train: bool, download: bool) -> None:
    if not download:
        raise DataError(f"MNIST not found in {raw} and download is off")
    if root.exists() and not os.access(root, os.W_OK):
        raise DataError(
            f"MNIST not found in {raw} and {root} is read-only; "
            "pass --data-dir or set MNIST_DATA_DIR to a writable folder or one holding MNIST/raw/"
        )
    from torchvision.datasets import MNIST  # ~2 s to import: only when files are missing

    try:
        MNIST(root=str(root), train=train, download=True)
    except Exception as err:  # torchvision raises bare RuntimeError/URLError after its mirrors
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(
            f"MNIST not found in {raw} and the download failed ({reason}); "
            "pass --data-dir or set MNIST_DATA_DIR to a folder holding MNIST/raw/"
        ) from None


def _unpack_or_repair(raw: Path, name: str, magic: int) -> None:
    """Unpack `<name>.gz` beside itself when the plain file is missing or fails its checks.

    Best effort: when the folder is read-only `idx.read` reads the .gz in memory instead.
    """
    plain, packed = raw / name, raw / f"{name}.gz"
    if not packed.is_file():
        return
    if plain.is_file():
        try:
            idx.check_file(plain, magic)
            if plain.stat().st_mtime_ns >= packed.stat().st_mtime_ns:
                return
        except (idx.IdxError, OSError):
            pass  # damaged, half-copied, or older than its .gz: rebuild it from the .gz
    # a private temporary name, renamed into place: processes unpacking at once never see, or
    # clobber, each other's half-written files
    try:
        fd, partial = tempfile.mkstemp(dir=raw, prefix=f".{name}.")
    except OSError:
        return  # read-only folder: read the .gz in memory
    try:
        with gzip.open(packed, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(partial, plain)
    except (OSError, EOFError) as err:
        os.unlink(partial)
        raise DataError(
            f"{packed}: cannot unpack ({err}); delete it to download it again"
        ) from None


def hold_out(split: Split, n: int) -> tuple[Split, Split]:
    """(the first len - n images, the last n): the classic validation split holds out the last
    5,000 training images, a fixed choice that every run and seed shares."""
    cut = len(split) - n
    return Split(split.images[:cut], split.labels[:cut]), Split(
        split.images[cut:], split.labels[cut:]
    )


def folds(n: int, k: int) -> list[torch.Tensor]:
    """The positions (int64, ascending) of each of `k` folds of images 0..n-1: a permutation drawn
    from FOLDS_SEED (its own generator; the global one, which orders the batches, is untouched)
    cut into `k` parts whose sizes differ by at most one. Together they hold every position once.
    """
    if not 1 <= k <= n:
        raise ValueError(f"{k} folds of {n} images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(FOLDS_SEED))
    return [part.sort().values for part in order.tensor_split(k)]


def hold_out_fold(split: Split, k: int, fold: int) -> tuple[Split, Split, torch.Tensor]:
    """(the images outside fold `fold` of `k`, the fold's images, the fold's positions in
    `split`): cross-validation's training and held-out sets, each in `split`'s order."""
    held = folds(len(split), k)[fold]
    kept = torch.ones(len(split), dtype=torch.bool)
    kept[held] = False
    return (
        Split(split.images[kept], split.labels[kept]),
        Split(split.images[held], split.labels[held]),
        held,
    )


def normalization(train_images: torch.Tensor, method: str) -> tuple[float, float]:
    """(mean, std) applied to pixels scaled to [0, 1]; `none` is (0, 1)."""
    if method == "none":
        return 0.0, 1.0
    if method == "standard":
        return STANDARD_MEAN, STANDARD_STD
    if method == "estimate":
        # as seed 000: every pixel of the first 1000 images, unbiased std, in float32
        sample = train_images[:ESTIMATE_IMAGES].float().div(255)
        return sample.mean().item(), sample.std().item()
    raise ValueError(f"unknown normalisation {method!r}")


def to_inputs(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 784), computed as `ToTensor` then `Normalize` would."""
    # in place on the one new float tensor: the same operations in the same order (so the same
    # bits), without three more 188 MB temporaries for the training set (0.2 s -> 0.05 s)
    x = images.reshape(len(images), -1).to(torch.float32).div_(255)
    if (mean, std) != (0.0, 1.0):
        x.sub_(torch.tensor(mean, dtype=torch.float32)).div_(torch.tensor(std, dtype=torch.float32))
    return x


def epoch_order(n: int) -> torch.Tensor:
    """The sample order of one epoch of `DataLoader(..., shuffle=True)`, drawn the same way.

    A DataLoader iterator first draws a base seed for its workers from the global generator, then
    its RandomSampler draws the seed of a fresh generator that produces the permutation. Drawing
    the same two numbers keeps runs bit-for-bit comparable with the seed notebooks.
    """
    torch.empty((), dtype=torch.int64).random_()  # the DataLoader iterator's worker base seed
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.randperm(n, generator=generator)


def batches(order: torch.Tensor, batch_size: int, *, drop_last: bool) -> Iterator[torch.Tensor]:
    """Consecutive index slices of `order`, as `BatchSampler` forms them."""
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def num_batches(n: int, batch_size: int, *, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)
