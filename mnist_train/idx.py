"""MNIST's IDX files, read and checked with numpy alone.

`data.py` checks the files with these before torchvision reads them; the analysis package reads
test images and labels with them, without paying for importing torch and torchvision.
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np

from .contract import N_CLASSES

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
ITEM_SHAPES = {IMAGES_MAGIC: (28, 28), LABELS_MAGIC: ()}
FILES = {  # (split is train) -> (images file, labels file)
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class IdxError(ValueError):
    """A file is missing or is not the MNIST IDX file it should be; the message names it."""


def check(path: Path, magic: int, header: bytes, size: int) -> int:
    """Validate an IDX header against MNIST's layout and the file size; returns header length."""
    item_shape = ITEM_SHAPES[magic]
    header_len = 4 * (2 + len(item_shape))
    if len(header) < 8 or int.from_bytes(header[:4], "big") != magic:
        raise IdxError(f"{path}: not an MNIST IDX file (wrong magic number)")
    if len(header) < header_len:
        raise IdxError(f"{path}: truncated ({size} bytes)")
    dims = [int.from_bytes(header[i : i + 4], "big") for i in range(4, header_len, 4)]
    if tuple(dims[1:]) != item_shape:
        raise IdxError(f"{path}: items of shape {tuple(dims[1:])}, expected {item_shape}")
    expected = header_len + dims[0] * math.prod(item_shape)
    if size != expected:
        raise IdxError(f"{path}: truncated or padded ({size} bytes, expected {expected})")
    return header_len


def check_file(path: Path, magic: int) -> None:
    """Validate an uncompressed IDX file from its header and size, without reading it all."""
    with open(path, "rb") as f:
        header = f.read(16)
    check(path, magic, header, path.stat().st_size)


def read(raw: Path, name: str, magic: int) -> np.ndarray:
    """uint8 array of `<raw>/<name>` (or `<name>.gz`): (N, 28, 28) images or (N,) labels."""
    plain, packed = raw / name, raw / f"{name}.gz"
    if plain.is_file():
        # into a bytearray: the array is then writable and torch can share it without a copy
        with open(plain, "rb") as f:
            content, path = bytearray(os.fstat(f.fileno()).st_size), plain
            del content[f.readinto(content) :]  # a file shrinking meanwhile fails the size check
    elif packed.is_file():
        try:
            with gzip.open(packed, "rb") as f:
                content, path = bytearray(f.read()), packed
        except (OSError, EOFError) as err:
            raise IdxError(f"{packed}: cannot unpack ({err})") from None
    else:
        raise IdxError(f"{plain} not found")
    offset = check(path, magic, content[:16], len(content))
    return np.frombuffer(content, dtype=np.uint8, offset=offset).reshape((-1, *ITEM_SHAPES[magic]))


def read_split(data_dir: str | Path, *, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of one split from `<data_dir>/MNIST/raw/`."""
    raw = Path(data_dir) / "MNIST" / "raw"
    images_file, labels_file = FILES[train]
    images = read(raw, images_file, IMAGES_MAGIC)
    labels = read(raw, labels_file, LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise IdxError(
            f"{raw / images_file}: {len(images)} images but {labels_file} has "
            f"{len(labels)} labels; replace both files (delete them to download again)"
        )
    if len(labels) and int(labels.max()) >= N_CLASSES:
        raise IdxError(
            f"{raw / labels_file}: label {int(labels.max())} outside 0-{N_CLASSES - 1}; "
            "replace the file (delete it to download again)"
        )
    return images, labels
