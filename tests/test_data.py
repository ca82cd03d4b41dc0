import gzip
import shutil

import pytest
import torch
from conftest import FIXTURE_DATA
from torch.utils.data import DataLoader, TensorDataset

from mnist_train import data


@pytest.fixture(scope="module")
def splits(data_dir):
    return data.load_mnist(data_dir, download=False)


def test_fixture_loads_as_uint8_tensors(splits):
    train, test = splits
    assert train.images.shape == (3000, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (500, 28, 28) and test.labels.dtype == torch.int64
    assert set(train.labels.tolist()) == set(range(10))


@pytest.mark.parametrize(
    "n, batch_size, drop_last", [(1000, 128, False), (1000, 100, True), (997, 64, True)]
)
def test_batch_order_is_the_dataloaders(n, batch_size, drop_last):
    dataset = TensorDataset(torch.arange(n))
    torch.manual_seed(123)
    expected = [
        [
            batch[0].tolist()
            for batch in DataLoader(dataset, batch_size, shuffle=True, drop_last=drop_last)
        ]
        for _ in range(3)
    ]
    torch.manual_seed(123)
    ours = [
        [b.tolist() for b in data.batches(data.epoch_order(n), batch_size, drop_last=drop_last)]
        for _ in range(3)
    ]
    assert ours == expected
    # and the global generator is left where the DataLoader leaves it
    torch.manual_seed(123)
    for _ in range(3):
        list(DataLoader(dataset, batch_size, shuffle=True, drop_last=drop_last))
    after_loader = torch.rand(3)
    torch.manual_seed(123)
    for _ in range(3):
        data.epoch_order(n)
    assert torch.equal(torch.rand(3), after_loader)
    assert data.num_batches(n, batch_size, drop_last=drop_last) == len(expected[0])


def test_inputs_match_totensor_and_normalize(splits):
    from PIL import Image
    from torchvision import transforms

    train, _ = splits
    mean, std = data.normalization(train.images, "estimate")
    pipeline = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    expected = torch.stack(
        [pipeline(Image.fromarray(img.numpy(), mode="L")).view(-1) for img in train.images[:50]]
    )
    assert torch.equal(data.to_inputs(train.images[:50], mean, std), expected)
    assert torch.equal(
        data.to_inputs(train.images[:5], 0.0, 1.0), train.images[:5].reshape(5, -1).float() / 255
    )


def test_estimated_normalisation_uses_the_first_1000_images(splits):
    train, _ = splits
    sample = train.images[:1000].float() / 255
    assert data.normalization(train.images, "estimate") == pytest.approx(
        (sample.mean().item(), sample.std().item())
    )
    assert data.normalization(train.images, "standard") == (0.1307, 0.3081)
    assert data.normalization(train.images, "none") == (0.0, 1.0)


def _damaged_copy(data_dir, tmp_path, damage):
    data.load_split(data_dir, train=False, download=False)  # unpack the .gz files first
    target = tmp_path / "d"
    shutil.copytree(data_dir, target, ignore=shutil.ignore_patterns("*.gz"))
    damage(target / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    return target


def test_truncated_file_is_a_clear_error(data_dir, tmp_path):
    def truncate(path):
        path.write_bytes(path.read_bytes()[:5000])

    target = _damaged_copy(data_dir, tmp_path, truncate)
    with pytest.raises(data.DataError, match=r"t10k-images-idx3-ubyte: truncated"):
        data.load_split(target, train=False, download=False)


def test_wrong_magic_is_a_clear_error(data_dir, tmp_path):
    def scramble(path):
        raw = bytearray(path.read_bytes())
        raw[:4] = b"\x00\x00\x09\x99"
        path.write_bytes(bytes(raw))

    target = _damaged_copy(data_dir, tmp_path, scramble)
    with pytest.raises(data.DataError, match="wrong magic number"):
        data.load_split(target, train=False, download=False)


def _gzipped_copy(root):
    """The fixture's .gz files alone, in `<root>/MNIST/raw/`; returns that folder."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for packed in (FIXTURE_DATA / "MNIST" / "raw").glob("*.gz"):
        shutil.copy(packed, raw)
    return raw


def test_gzipped_files_are_unpacked(tmp_path):
    _gzipped_copy(tmp_path)
    split = data.load_split(tmp_path, train=False, download=False)
    with gzip.open(FIXTURE_DATA / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz") as f:
        assert split.labels.tolist() == list(f.read()[8:])


def test_missing_data_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataError, match="MNIST not found"):
        data.load_split(tmp_path, train=True, download=False)


def test_processes_unpacking_at_once_do_not_collide(tmp_path):
    import multiprocessing

    raw = _gzipped_copy(tmp_path)
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        sizes = pool.starmap(_load_test_labels, [(str(tmp_path),)] * 3)
    assert sizes == [500, 500, 500]
    assert sorted(p.name for p in raw.iterdir() if not p.name.endswith(".gz")) == sorted(
        p.name[:-3] for p in raw.glob("*.gz")
    )


def _load_test_labels(root: str) -> int:
    return len(data.load_split(root, train=False, download=False))
