"""An epoch's checkpoint and per-example record upload on a thread while the next epoch trains
(`recording.py`): off the epoch's path, each epoch's points written only once the store has the
checkpoint that holds them, nothing lost when an upload fails or the run is stopped at once."""

import threading
import time

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


def test_uploads_leave_the_epoch_and_its_points_wait_for_its_checkpoint(data_dir, monkeypatch):
    """Each checkpoint upload takes 0.4 s here: the next epoch trains meanwhile, and the
    epoch's points reach the metric writer (a helper process, as in a study) only after it is
    stored. The run records exactly what an uninterrupted run without the delay records."""
    events = []  # (what, which, when)
    real_upload, real_step = RunLog.upload, recording.EpochRecorder.step

    def slow_upload(self, local, artifact_path=None):
        epoch = checkpoint_epoch(artifact_path, local)
        if epoch is not None:
            time.sleep(0.4)
        real_upload(self, local, artifact_path)
        if epoch is not None:
            events.append(("stored", epoch, time.perf_counter()))

    def step(self, row):
        events.append(("step", row[3], time.perf_counter()))
        real_step(self, row)

    def write(self, rows, tags=None):
        epochs = {r[3] for r in rows if r[0] == contract.TEST_ACCURACY}
        events.append(("written", max(epochs, default=0), time.perf_counter()))
        real_write(self, rows, tags)

    real_write = recording.SharedHandle.write
    monkeypatch.setattr(tracking, "BACKGROUND_WRITES_FROM", 0)  # a helper process writes
    reference = train_run(tiny_config(name="uploads_plain", epochs=3), data_dir)
    monkeypatch.setattr(RunLog, "upload", slow_upload)
    monkeypatch.setattr(recording.EpochRecorder, "step", step)
    monkeypatch.setattr(recording.SharedHandle, "write", write)
    run_id = train_run(tiny_config(name="uploads_slow", epochs=3), data_dir)

    when = {(what, which): t for what, which, t in events if what != "step"}
    first_step = {
        epoch: min(t for w, s, t in events if w == "step" and s == (epoch - 1) * STEPS + 1)
        for epoch in (2, 3)
    }
    for epoch in (1, 2):  # the next epoch began while this one's checkpoint was uploading
        assert first_step[epoch + 1] < when[("stored", epoch)]
    for epoch in (1, 2, 3):  # and its points were written only once it was stored
        assert when[("stored", epoch)] < when[("written", epoch)]
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
    assert {s for s, _ in history(run_id, "batch_loss")} <= set(range(1, 2 * STEPS + 1))
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
