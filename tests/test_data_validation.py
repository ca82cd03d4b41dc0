"""MNIST read by the numpy IDX reader: identical to torchvision's, and checked where it is read."""

import gzip
import os
import shutil
import sys

import pytest
import torch
from conftest import FIXTURE_DATA

from mnist_train import data, idx

RAW = FIXTURE_DATA / "MNIST" / "raw"


def _plain_copy(root):
    """The fixture unpacked (no .gz) in `<root>/MNIST/raw/`; returns that folder."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for packed in RAW.glob("*.gz"):
        with gzip.open(packed) as f:
            (raw / packed.name[:-3]).write_bytes(f.read())
    return raw


def _gz_copy(root):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for packed in RAW.glob("*.gz"):
        shutil.copy(packed, raw)
    return raw


@pytest.mark.parametrize("train", [True, False])
def test_tensors_are_bit_identical_to_torchvisions(tmp_path, train):
    from torchvision.datasets import MNIST

    _plain_copy(tmp_path)
    ours = data.load_split(tmp_path, train=train, download=False)
    theirs = MNIST(root=str(tmp_path), train=train, download=False)
    assert ours.images.dtype == theirs.data.dtype and ours.labels.dtype == torch.int64
    assert torch.equal(ours.images, theirs.data)
    assert torch.equal(ours.labels, theirs.targets.long())


def test_loading_does_not_import_torchvision(tmp_path):
    import subprocess

    _plain_copy(tmp_path)
    code = (
        "import sys; from mnist_train import data; "
        f"data.load_mnist({str(tmp_path)!r}, download=False); "
        "print('torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_damaged_unpacked_file_is_rebuilt_from_the_gz(tmp_path):
    raw = _gz_copy(tmp_path)
    expected = data.load_split(tmp_path, train=False, download=False)
    plain = raw / "t10k-images-idx3-ubyte"
    good = plain.read_bytes()
    plain.write_bytes(good[:5000])  # a half-copied unpacked file
    again = data.load_split(tmp_path, train=False, download=False)
    assert torch.equal(again.images, expected.images)
    assert plain.read_bytes() == good  # and rewritten
    scrambled = bytearray(good)
    scrambled[:4] = b"\x00\x00\x09\x99"
    plain.write_bytes(bytes(scrambled))
    assert torch.equal(data.load_split(tmp_path, train=False, download=False).images, again.images)
    assert plain.read_bytes() == good


def test_unpacked_file_older_than_its_gz_is_rebuilt(tmp_path):
    raw = _gz_copy(tmp_path)
    data.load_split(tmp_path, train=False, download=False)
    plain = raw / "t10k-labels-idx1-ubyte"
    stale = bytearray(plain.read_bytes())
    stale[8] = (stale[8] + 1) % 10  # a valid file with other labels: only its age tells
    plain.write_bytes(bytes(stale))
    os.utime(plain, ns=(1, 1))
    split = data.load_split(tmp_path, train=False, download=False)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz") as f:
        assert split.labels.tolist() == list(f.read()[8:])


def test_read_only_folder_reads_the_gz_in_memory(tmp_path, monkeypatch):
    raw = _gz_copy(tmp_path)

    def refuse(*args, **kwargs):  # as mkstemp does in a read-only folder (root ignores modes)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(data.tempfile, "mkstemp", refuse)
    split = data.load_split(tmp_path, train=False, download=False)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz") as f:
        assert split.labels.tolist() == list(f.read()[8:])
    assert sorted(p.name for p in raw.iterdir()) == sorted(p.name for p in RAW.glob("*.gz"))


def test_labels_outside_0_to_9_are_a_clear_error(tmp_path):
    raw = _plain_copy(tmp_path)
    labels = raw / "train-labels-idx1-ubyte"
    content = bytearray(labels.read_bytes())
    content[8 + 17] = 11
    labels.write_bytes(bytes(content))
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte: label 11 outside 0-9"):
        data.load_split(tmp_path, train=True, download=False)
    assert len(data.load_split(tmp_path, train=False, download=False)) == 500


def test_image_and_label_counts_must_agree(tmp_path):
    raw = _plain_copy(tmp_path)
    labels = raw / "t10k-labels-idx1-ubyte"
    content = labels.read_bytes()
    n = int.from_bytes(content[4:8], "big") - 7
    labels.write_bytes(content[:4] + n.to_bytes(4, "big") + content[8 : 8 + n])
    with pytest.raises(data.DataError, match=r"500 images but t10k-labels-idx1-ubyte has 493"):
        data.load_split(tmp_path, train=False, download=False)


def test_truncated_gz_is_a_clear_error(tmp_path):
    raw = _gz_copy(tmp_path)
    packed = raw / "t10k-images-idx3-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:2000])
    with pytest.raises(data.DataError, match=r"t10k-images-idx3-ubyte.gz: cannot unpack"):
        data.load_split(tmp_path, train=False, download=False)
    assert not [p for p in raw.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_idx_reader_checks_the_header_of_a_gz(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    with gzip.open(RAW / "t10k-labels-idx1-ubyte.gz") as f:
        content = f.read()
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(content[:-3])
    with pytest.raises(idx.IdxError, match="truncated or padded"):
        idx.read(raw, "t10k-labels-idx1-ubyte", idx.LABELS_MAGIC)


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz\nmore detail")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(data.DataError, match=r"download failed \(Error downloading") as err:
        data.load_split(tmp_path / "absent", train=True)
    assert "\n" not in str(err.value)


def test_missing_files_in_a_read_only_folder_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # root ignores chmod
    with pytest.raises(
        data.DataError, match=r"MNIST not found in .* is read-only; pass --data-dir"
    ):
        data.load_split(tmp_path, train=True)
