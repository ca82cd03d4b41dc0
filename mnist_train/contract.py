"""The names training and analysis share: metrics, artifacts, tags, defaults (the contract that
docs/ARCHITECTURE.md summarises).

Both sides import this module, and no other module spells these names again. It imports nothing
heavier than the standard library, so the analysis side can use it without importing torch.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

N_CLASSES = 10  # digits 0-9
IMAGE_SHAPE = (28, 28)
N_PIXELS = 784  # the model's input: float32 (N, 784) pixels

# --- tracking store and data
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's own default, in the working directory
DATA_DIR_ENV = "MNIST_DATA_DIR"
# MLflow retries an http store 7 times with a 2 s backoff factor and a 120 s timeout: a server
# that stops mid-run kept a run hanging for about 20 minutes, and a server answering 503 cost
# minutes of silence. These bound a failing call to about 30 s; a user's own settings win.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
DEFAULT_DATA_DIR = "./data"  # torchvision downloads MNIST here when it is missing
HTTP_PROBE_TIMEOUT_S = (
    5.0  # an unreachable server should fail in seconds, not after MLflow's retries
)
MAX_RUNS = 5000  # most runs one search returns (sweep children, a comparison's selection)

# --- metrics, per epoch (step = epoch number from 1)
TRAIN_LOSS = "train_loss"
TRAIN_ACCURACY = "train_accuracy"
TEST_LOSS = "test_loss"
TEST_ACCURACY = "test_accuracy"
EPOCH_TIME = "epoch_time_s"
VAL_LOSS = "val_loss"  # with a validation split: what every "best" is chosen on
VAL_ACCURACY = "val_accuracy"
LR = "lr"  # with a learning-rate schedule: the rate of the epoch's last step
EPOCH_METRICS = (TRAIN_LOSS, TRAIN_ACCURACY, TEST_LOSS, TEST_ACCURACY, EPOCH_TIME)
OPTIONAL_EPOCH_METRICS = (VAL_LOSS, VAL_ACCURACY, LR)
# per optimisation step (step = global step)
BATCH_LOSS = "batch_loss"
# once, at the end
OVERFIT_GAP = "overfit_gap"  # last train_accuracy - last test_accuracy
TRAIN_TIME = "train_time_s"
TEST_ACCURACY_UNSCALED = "test_accuracy_unscaled"  # seed 001's evaluation on raw 0-255 pixels
BEST_EPOCH = "best_epoch"  # with early stopping: the epoch the model and predictions come from
STOPPED_EPOCH = "stopped_epoch"  # with early stopping: the last epoch trained
PREDICTIONS_EPOCH = "predictions_epoch"  # the epoch whose model made predictions/test.npz

# --- parameters logged beside the config fields
NUM_PARAMS = "num_params"
VAL_IMAGES = "val_images"  # images held out of the training set for validation
SEED_PARAM = "seed"

# --- artifacts
PREDICTIONS_PATH = "predictions/test.npz"  # labels int (N,), probs float32 (N, 10), index int (N,)
CHECKPOINT_DIR = "checkpoints"  # epoch_NNN.pt, epoch_NNN_partial.pt
# per-example records: probs float16 (E, N, 10), epochs (E,), index (N,) ...
TEST_BY_EPOCH_PATH = "predictions/test_by_epoch.npz"
# ... and correct bool (E, N), label_prob float16 (E, N), predicted int8 (E, N), epochs (E,),
# index (N,) into the
# torchvision training set; both are assembled at the end from one file per epoch:
TRAIN_DYNAMICS_PATH = "dynamics/train.npz"
EPOCH_RECORD_DIR = "dynamics/epochs"  # epoch_NNN.npz: correct, label_prob, test_probs
MODEL_NAME = "model"  # mlflow.pytorch.log_model(name=...)
MODEL_URI = "runs:/{run_id}/" + MODEL_NAME
ANALYSIS_DIR = "analysis"  # per-run report artifacts
COMPARISON_DIR = "comparison"  # comparison report artifacts

# --- tags
TAG_DATA_DIR = "mnist.data_dir"
TAG_SWEEP = "mnist.sweep"  # the sweep's name; marks a run as a sweep parent
TAG_SWEEP_CHILDREN = "mnist.sweep.children"
TAG_SWEEP_FAILED = "mnist.sweep.failed"
TAG_SWEEP_SKIPPED = "mnist.sweep.skipped"
TAG_REPORT = "mnist.report"  # value "comparison" on runs that hold a comparison report
TAG_FAILURE_REASON = "failure_reason"
DIVERGED_PREFIX = "loss became"  # how a failure_reason of a diverged run starts
TAG_OWNER = "mnist.owner"  # "<host> <pid>" of the process training the run
TAG_HEARTBEAT = "mnist.heartbeat"  # unix seconds of the owner's last sign of life
HEARTBEAT_STALE_S = 600  # a RUNNING run silent this long on another host is taken as abandoned
TAG_EPOCHS = "mnist.epochs"  # the epochs a run was trained to, when a resume changed the param
TAG_PARENT = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"  # the run's description in the MLflow UI (markdown)

# --- studies (Optuna): every sweep and search runs as one study, its parent run names it
TAG_STUDY = "mnist.study"  # on the parent and every trial run: the Optuna study's name
TAG_STUDY_STORAGE = "mnist.study.storage"  # on the parent: the storage URL, password masked
TAG_STUDY_OBJECTIVE = "mnist.study.objective"  # on the parent: "val_accuracy maximize"
TAG_BEST_TRIAL = "mnist.study.best_trial"  # on the parent: number of the best trial
TAG_TRIAL_NUMBER = "mnist.trial.number"  # on a trial run
TAG_TRIAL_STATE = "mnist.trial.state"  # on a trial run: RUNNING | COMPLETE | PRUNED | FAIL
TRIAL_RUN_ID_ATTR = "mlflow_run_id"  # the Optuna trial's user attribute: its MLflow run
STUDY_STORAGE_ENV = "MNIST_STUDY_STORAGE"  # default for --storage
STUDY_TRIALS_PATH = "study/trials.csv"  # on the parent: one row per trial
STUDY_IMPORTANCE_PATH = "study/importance.json"  # on the parent: parameter importances
STUDY_HEARTBEAT_S = 5  # a worker's sign of life for its trial, in the study storage
STUDY_GRACE_S = 30  # a trial silent this long is failed and queued again (resuming its run)


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else MLflow's default `sqlite:///mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def default_data_dir() -> Path:
    """$MNIST_DATA_DIR, else `./data`."""
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def default_cache_dir() -> Path:
    """$MNIST_WORKBENCH_CACHE, else $XDG_CACHE_HOME/mnist-workbench, else
    ~/.cache/mnist-workbench: downloaded artifacts, checkpoints not yet uploaded."""
    if os.environ.get("MNIST_WORKBENCH_CACHE"):
        return Path(os.environ["MNIST_WORKBENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnist-workbench"


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def probe_http_store(uri: str, timeout_s: float | None = None) -> str | None:
    """One short request to an http(s) tracking server: None when it answers, else the reason.

    MLflow's own client would retry an unreachable server for minutes. An HTTP error status
    (401, 404, ...) still means the server is there; MLflow reports anything else itself.
    """
    timeout_s = HTTP_PROBE_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def finish_process(command) -> None:
    """Run a click `command` as the whole process, then leave without the interpreter's teardown.

    Tearing down torch, MLflow and SQLAlchemy at exit took 1.5-2 s here, after all the work was
    done and reported. The exit handlers a finished command needs (logging, MLflow's queues)
    still run, and the streams are flushed; then the process ends with the command's exit code.
    """
    import atexit
    import sys

    try:
        command()
        code = 0
    except SystemExit as done:
        code = done.code
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed terminal or pipe: nothing left to tell it
            pass
    os._exit(code or 0)
