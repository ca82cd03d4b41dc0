"""An epoch's checkpoint and per-example record upload on a thread while the next epoch trains
(`recording.py`): off the epoch's path, each epoch's points written only once the store has the
checkpoint that holds them, nothing lost when an upload fails or the run is stopped at once."""

import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, train_run
from mlflow.tracking import MlflowClient

from mnist_train import contract, recording, tracking
from mnist_train.runner import TrainingStopped
from mnist_train.tracking import RunLog, StoreUnavailable, pending_checkpoints

STEPS = 10  # per epoch of the tiny config: 1,000 images in batches of 100


def history(run_id, key):
    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


def checkpoint_epoch(artifact_path, local):
    """The epoch of a checkpoint being uploaded, else None."""
    if artifact_path != contract.CHECKPOINT_DIR:
        return None
    return int(str(local).rsplit("epoch_", 1)[1][:3])


def epoch_of(row):
    """The epoch a metric point belongs to: a batch loss's by its step, an epoch metric's own."""
    key, _, _, step = row
    return (step - 1) // STEPS + 1 if key == contract.BATCH_LOSS else step


def test_uploads_leave_the_epoch_and_its_points_wait_for_its_checkpoint(data_dir, monkeypatch):
    """Each checkpoint upload takes 0.4 s here: the next epoch trains meanwhile, and every
    point reaches the metric writer (a helper process, as in a study) once, after the store has
    its epoch's checkpoint. The run records what a run without the delay records."""
    stored, steps, written = {}, {}, []  # epoch -> time; step -> time; (row, time)
    real_upload, real_step = RunLog.upload, recording.EpochRecorder.step
    real_write = recording.SharedHandle.write

    def slow_upload(self, local, artifact_path=None):
        epoch = checkpoint_epoch(artifact_path, local)
        if epoch is not None:
            time.sleep(0.4)
        real_upload(self, local, artifact_path)
        if epoch is not None:
            stored[epoch] = time.perf_counter()

    def step(self, row):
        steps[row[3]] = time.perf_counter()
        real_step(self, row)

    def write(self, rows, tags=None):
        written.extend((tuple(row), time.perf_counter()) for row in rows)
        real_write(self, rows, tags)

    monkeypatch.setattr(tracking, "BACKGROUND_WRITES_FROM", 0)  # a helper process writes
    reference = train_run(tiny_config(name="uploads_plain", epochs=3), data_dir)
    monkeypatch.setattr(RunLog, "upload", slow_upload)
    monkeypatch.setattr(recording.EpochRecorder, "step", step)
    monkeypatch.setattr(recording.SharedHandle, "write", write)
    run_id = train_run(tiny_config(name="uploads_slow", epochs=3), data_dir)

    for epoch in (1, 2):  # the next epoch began while this one's checkpoint was uploading
        assert steps[epoch * STEPS + 1] < stored[epoch]
    for row, at in written:  # each point written only once its epoch's checkpoint was stored
        assert stored[epoch_of(row)] < at, row
    handed = [row[3] for row, _ in written if row[0] == contract.BATCH_LOSS]
    assert sorted(handed) == list(range(1, 3 * STEPS + 1))  # every step, each once
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    for key in ("batch_loss", "test_accuracy", "train_loss"):
        assert history(run_id, key) == history(reference, key)
    assert not pending_checkpoints(run_id).exists()  # all uploaded, nothing left behind


def test_a_failed_upload_keeps_the_checkpoint_and_its_points_for_the_resume(data_dir, monkeypatch):
    """Epoch 2's checkpoint cannot be uploaded: the run fails naming it, the store has epoch 1
    only (epoch 2's points wait in the checkpoint, never half-written), and a resume from this
    machine writes them and ends where an uninterrupted run ends, each step logged once."""
    real_upload = RunLog.upload

    def failing_upload(self, local, artifact_path=None):
        if checkpoint_epoch(artifact_path, local) == 2:
            raise ConnectionError("connection refused\nsecond line")
        real_upload(self, local, artifact_path)

    config = tiny_config(name="upload_fails", epochs=3)
    reference = train_run(tiny_config(name="upload_fine", epochs=3), data_dir)
    monkeypatch.setattr(RunLog, "upload", failing_upload)
    with pytest.raises(StoreUnavailable, match="^connection refused$") as failed:
        train_run(config, data_dir)
    kept = failed.value.checkpoint
    assert kept == pending_checkpoints(kept.parent.name) / "epoch_002.pt"
    run_id = kept.parent.name
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED"
    assert [s for s, _ in history(run_id, "test_accuracy")] == [1]
    assert [s for s, _ in history(run_id, "batch_loss")] == list(range(1, STEPS + 1))
    state = torch.load(kept, weights_only=True)
    assert {row[3] for row in state["rows"] if row[0] == "test_accuracy"} == {2}

    monkeypatch.setattr(RunLog, "upload", real_upload)
    assert train_run(config, data_dir, resume_run_id=run_id) == run_id
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    for key in ("batch_loss", "test_accuracy", "train_loss"):
        assert history(run_id, key) == history(reference, key)  # each step once, same values


def test_stopping_at_once_waits_for_no_upload_and_loses_nothing(data_dir, monkeypatch):
    """A second Ctrl-C while epoch 1's checkpoint is still uploading: the run is marked KILLED
    at once, the checkpoint stays on this machine, and the resume ends as an uninterrupted
    run does."""
    release, started, over = threading.Event(), threading.Event(), threading.Event()
    real_upload = RunLog.upload

    def stuck_upload(self, local, artifact_path=None):
        if checkpoint_epoch(artifact_path, local) == 1:
            started.set()
            release.wait(timeout=60)
            over.set()
        real_upload(self, local, artifact_path)

    def stop_at_once(record):
        assert started.wait(timeout=30)
        raise KeyboardInterrupt

    monkeypatch.setattr(tracking, "BACKGROUND_WRITES_FROM", 0)  # a helper process writes
    config = tiny_config(name="stopped_at_once", epochs=2)
    reference = train_run(tiny_config(name="never_stopped", epochs=2), data_dir)
    monkeypatch.setattr(RunLog, "upload", stuck_upload)
    try:
        with pytest.raises(TrainingStopped, match="interrupted") as stopped:
            train_run(config, data_dir, on_epoch=stop_at_once)
        assert not over.is_set()  # it ended with the upload still stuck
        run_id = stopped.value.run_id
        assert MlflowClient().get_run(run_id).info.status == "KILLED"
        assert (pending_checkpoints(run_id) / "epoch_001.pt").is_file()
    finally:
        release.set()
    monkeypatch.setattr(RunLog, "upload", real_upload)
    assert train_run(config, data_dir, resume_run_id=run_id) == run_id
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    for key in ("batch_loss", "test_accuracy", "train_loss"):
        assert history(run_id, key) == history(reference, key)  # each step once, same values


def test_a_resume_reads_the_whole_copy_on_this_machine_before_a_torn_one_in_the_store(
    data_dir, tmp_path
):
    """An upload cut short by the process's death can leave a torn checkpoint in the store; the
    copy still in the cache folder is whole (written beside, then renamed) and is the one read.
    A symbolic link planted there is never read through."""
    import shutil
    from urllib.parse import urlparse

    from mnist_train.tracking import load_latest_checkpoint

    run_id = train_run(tiny_config(name="torn_in_store", epochs=2), data_dir)
    stored = Path(urlparse(MlflowClient().get_run(run_id).info.artifact_uri).path)
    whole = stored / "checkpoints" / "epoch_002.pt"
    local = pending_checkpoints(run_id)
    local.mkdir(parents=True)
    shutil.copy(whole, local / "epoch_002.pt")
    shutil.copy(whole, tmp_path / "elsewhere.pt")  # whole: read through a link, it would load
    whole.write_bytes(whole.read_bytes()[:1000])  # torn, as an upload cut short leaves it
    state = load_latest_checkpoint(run_id)
    assert state["epoch"] == 2 and state["progress"]["step"] == 2 * STEPS

    (local / "epoch_002.pt").unlink()
    (local / "epoch_002.pt").symlink_to(tmp_path / "elsewhere.pt")
    with pytest.raises(Exception, match="torn"):  # the store's torn copy, never the link
        load_latest_checkpoint(run_id)


def test_an_epoch_whose_recording_fails_keeps_its_points_among_the_unwritten():
    """The metric writer fails as epoch 2 ends, while the points of epoch 1 are being handed
    over: a checkpoint kept on this machine then must hold epoch 1's and all of epoch 2's
    points (its batch losses and its epoch metrics), or a resume from it would never log them."""

    class Log:
        files = []

        def epoch_upload_over(self):
            return False  # still uploading at every step: hand-over waits for the epoch's end

        def epoch_stored(self, wait):
            return True

        def log_epoch_files(self, state, name, record):
            self.files.append((name, list(state["rows"])))

    class Writer:
        def write(self, rows, tags=None):
            raise RuntimeError("writing metrics failed: the helper is gone")

        def pending(self):
            return []

        def close(self):
            pass

    unwritten = []
    recorder = recording.EpochRecorder(Log(), Writer(), unwritten)
    first = [("batch_loss", 0.9, 1, 1), ("test_accuracy", 0.5, 1, 1)]
    recorder.step(first[0])
    recorder.epoch(first[1:], {}, "epoch_001.pt", None)
    second = [("batch_loss", 0.7, 2, 2), ("test_accuracy", 0.6, 2, 2)]
    recorder.step(second[0])
    with pytest.raises(RuntimeError, match="helper is gone"):
        recorder.epoch(second[1:], {}, "epoch_002.pt", None)
    with pytest.raises(RuntimeError):  # as the run's failure path calls it (quietly)
        recorder.finish()
    assert sorted(unwritten) == sorted(first + second)
    assert [name for name, _ in Log.files] == ["epoch_001.pt"]  # epoch 2's was never written
