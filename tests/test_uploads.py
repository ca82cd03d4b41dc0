"""Checkpoints and epoch records uploaded on a thread while the next epoch trains: in order, off
the epoch's path, and never lost when the store fails."""

import threading

import pytest

from mnist_train.tracking import RunLog, StoreUnavailable, pending_checkpoints
from mnist_train.uploads import Uploads


def files(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(name.encode())
    return [folder / name for name in names]


def test_files_go_up_in_order_and_leave_the_disk_once_uploaded(tmp_path):
    uploaded = []
    uploads = Uploads(lambda path, where: uploaded.append((where, open(path).read())))
    for path in files(tmp_path, "a", "b", "c"):
        uploads.put(path, "here")
    assert uploads.wait() is None
    assert uploaded == [("here", "a"), ("here", "b"), ("here", "c")]
    assert not list(tmp_path.iterdir())
    uploads.close()


def test_waiting_for_a_place_in_line_does_not_wait_for_the_files_after_it(tmp_path):
    release = threading.Event()

    def upload(path, where):
        if path.endswith("slow"):
            assert release.wait(timeout=30)

    uploads = Uploads(upload)
    first, slow = files(tmp_path, "first", "slow")
    place = uploads.put(first, "x")
    uploads.put(slow, "x")
    assert uploads.wait(place) is None  # returns while the second is still being uploaded
    assert not first.exists() and slow.exists()
    release.set()
    assert uploads.wait() is None and not slow.exists()
    uploads.close()


def test_after_a_failed_upload_it_and_every_later_file_stay_on_disk(tmp_path):
    def upload(path, where):
        if path.endswith("b"):
            raise ConnectionError("server gone\nand a traceback-like second line")

    uploads = Uploads(upload)
    a, b, c = files(tmp_path, "a", "b", "c")
    for path in (a, b, c):
        uploads.put(path, "x")
    assert uploads.wait() == "server gone"
    assert not a.exists() and b.exists() and c.exists()
    uploads.close()


def test_a_checkpoint_upload_that_failed_stops_the_run_at_the_next_one_keeping_it(
    tracking_uri, monkeypatch
):
    """The next epoch's checkpoint is written first and is the one named: the newest state is
    kept on this machine, with the earlier one whose upload failed."""
    calls = []

    def upload(self, local, artifact_path=None):
        calls.append(local)
        raise ConnectionError("connection refused")

    monkeypatch.setattr(RunLog, "upload", upload)
    log = RunLog("3" * 32, "0")
    log.log_checkpoint({"epoch": 2}, "epoch_001.pt")  # handed over: the epoch goes on
    with pytest.raises(StoreUnavailable, match="connection refused") as caught:
        log.log_checkpoint({"epoch": 3}, "epoch_002.pt")
    folder = pending_checkpoints("3" * 32)
    assert caught.value.checkpoint == folder / "epoch_002.pt"
    assert (folder / "epoch_001.pt").is_file() and (folder / "epoch_002.pt").is_file()
    assert calls == [str(folder / "epoch_001.pt")]  # the newest was never tried
    with pytest.raises(StoreUnavailable) as settled:
        log.settle_uploads()
    assert settled.value.checkpoint == folder / "epoch_001.pt"  # the newest handed over
