"""The names training and analysis share: metrics, artifacts, tags, defaults (the contract that
docs/ARCHITECTURE.md summarises).

Both sides import this module, and no other module spells these names again. It imports nothing
heavier than the standard library, so the analysis side can use it without importing torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

N_CLASSES = 10  # digits 0-9
IMAGE_SHAPE = (28, 28)
N_PIXELS = 784  # the model's input: float32 (N, 784) pixels

# --- tracking store and data
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's own default, in the working directory
DATA_DIR_ENV = "MNIST_DATA_DIR"
DEFAULT_DATA_DIR = "./data"  # torchvision downloads MNIST here when it is missing
HTTP_PROBE_TIMEOUT_S = 5.0  # an unreachable server should fail in seconds, not after retries
MAX_RUNS = 5000  # most runs one search returns (sweep children, a comparison's selection)

# --- metrics: one table, from which every list, direction and format below is derived
EPOCH, STEP, FINAL, PARAM = "epoch", "step", "final", "param"  # when a metric is logged


@dataclass(frozen=True)
class MetricSpec:
    """One number a run reports. `scope`: per epoch (step = epoch from 1), per optimisation step
    (step = global step), once at the end, or a logged parameter read as a number.
    `higher_is_better`: the direction every ranking, objective and "best" mark uses (None: not
    a score). `fmt`: how tables print it (pct, float, int, s). `split`: the images it is
    measured on, for the scores of the model of record. `optional`: logged only in some setups."""

    name: str
    scope: str
    higher_is_better: bool | None
    fmt: str
    split: str | None = None
    optional: bool = False


TRAIN_LOSS = "train_loss"  # mean cross-entropy over the epoch's training images, as trained
TRAIN_ACCURACY = "train_accuracy"
TEST_LOSS = "test_loss"
TEST_ACCURACY = "test_accuracy"
EPOCH_TIME = "epoch_time_s"
VAL_LOSS = "val_loss"  # with a validation split: what every "best" is chosen on
VAL_ACCURACY = "val_accuracy"
LR = "lr"  # with a learning-rate schedule: the rate of the epoch's last step
BATCH_LOSS = "batch_loss"
OVERFIT_GAP = "overfit_gap"  # last train_accuracy - last test_accuracy
TRAIN_TIME = "train_time_s"
TEST_ACCURACY_UNSCALED = "test_accuracy_unscaled"  # seed 001's evaluation on raw 0-255 pixels
BEST_EPOCH = "best_epoch"  # with early stopping: the best epoch on the validation metric
STOPPED_EPOCH = "stopped_epoch"  # with early stopping: the last epoch trained
PREDICTIONS_EPOCH = "predictions_epoch"  # the model of record: its weights and predictions
NUM_PARAMS = "num_params"  # a parameter, ranked like a cost

TRAIN, VALIDATION, TEST = "train", "validation", "test"  # the splits scores are measured on
# each split as the run's Dataset column and the model's metrics name it (mlflow.log_input)
DATASET_NAMES = {TRAIN: "mnist-train", VALIDATION: "mnist-validation", TEST: "mnist-test"}
DATASET_CONTEXTS = {TRAIN: "training", VALIDATION: "validation", TEST: "testing"}

METRICS = (
    MetricSpec(TRAIN_LOSS, EPOCH, False, "float", TRAIN),
    MetricSpec(TRAIN_ACCURACY, EPOCH, True, "pct", TRAIN),
    MetricSpec(TEST_LOSS, EPOCH, False, "float", TEST),
    MetricSpec(TEST_ACCURACY, EPOCH, True, "pct", TEST),
    MetricSpec(EPOCH_TIME, EPOCH, False, "s"),
    MetricSpec(VAL_LOSS, EPOCH, False, "float", VALIDATION, optional=True),
    MetricSpec(VAL_ACCURACY, EPOCH, True, "pct", VALIDATION, optional=True),
    MetricSpec(LR, EPOCH, None, "float", optional=True),
    MetricSpec(BATCH_LOSS, STEP, False, "float", TRAIN),
    MetricSpec(OVERFIT_GAP, FINAL, False, "pct"),
    MetricSpec(TRAIN_TIME, FINAL, False, "s"),
    MetricSpec(TEST_ACCURACY_UNSCALED, FINAL, True, "pct", TEST, optional=True),
    MetricSpec(BEST_EPOCH, FINAL, None, "int", optional=True),
    MetricSpec(STOPPED_EPOCH, FINAL, None, "int", optional=True),
    MetricSpec(PREDICTIONS_EPOCH, FINAL, None, "int"),
    MetricSpec(NUM_PARAMS, PARAM, False, "int"),
)
METRIC = {m.name: m for m in METRICS}
EPOCH_METRICS = tuple(m.name for m in METRICS if m.scope == EPOCH and not m.optional)
OPTIONAL_EPOCH_METRICS = tuple(m.name for m in METRICS if m.scope == EPOCH and m.optional)
# The model of record's scores: the per-epoch metrics measured on a split, validation first
# (what every choice reads), then test, then train.
SCORES = tuple(
    m.name
    for split in (VALIDATION, TEST, TRAIN)
    for m in METRICS
    if m.scope == EPOCH and m.split == split
)
# At the end of a run its model of record's scores are logged again as `model/<score>` (step =
# the model's epoch): MLflow's runs table shows a metric's last epoch, so these are the columns
# to sort by, while the per-epoch curves stay whole.
RECORD_PREFIX = "model/"


def record_key(score: str) -> str:
    """`model/val_accuracy`: the final metric holding the model of record's `score`."""
    return RECORD_PREFIX + score


def higher_is_better(name: str) -> bool:
    """The direction of a score (a `model/` key reads as its score); ValueError when `name` is
    not a score at all."""
    spec = METRIC.get(name.removeprefix(RECORD_PREFIX))
    if spec is None or spec.higher_is_better is None:
        raise ValueError(f"{name} is not a score with a direction")
    return spec.higher_is_better


def measured_on(name: str) -> str | None:
    """The split a metric is measured on (a `model/` key reads as its score); None for costs
    and unknown names."""
    spec = METRIC.get(name.removeprefix(RECORD_PREFIX))
    return spec.split if spec else None


def metric_format(name: str) -> str:
    """How tables print `name` (pct, float, int, s); float for anything not in the table."""
    spec = METRIC.get(name.removeprefix(RECORD_PREFIX))
    return spec.fmt if spec else "float"


# --- parameters logged beside the config fields
TRAIN_IMAGES = "train_images"  # images trained on
VAL_IMAGES = "val_images"  # images held out of the training set for validation
TEST_IMAGES = "test_images"
NORMALIZE_MEAN, NORMALIZE_STD = "normalize_mean", "normalize_std"  # as applied to [0, 1] pixels
SEED_PARAM = "seed"
NAME_PARAM = "name"
# with cross-validation (a `folds: K` sweep): K, and the fold the run holds out (0 .. K-1)
CV_FOLDS_PARAM = "cv_folds"
CV_FOLD_PARAM = "cv_fold"
# what differs between the folds of one cross-validation and nothing else: runs whose other
# params agree are one replicate, a full set of folds
PER_FOLD_PARAMS = (
    NAME_PARAM,
    CV_FOLD_PARAM,
    TRAIN_IMAGES,
    VAL_IMAGES,
    NORMALIZE_MEAN,
    NORMALIZE_STD,
)

# --- artifacts
PREDICTIONS_PATH = "predictions/test.npz"  # labels int (N,), probs float32 (N, 10), index int (N,)
# with cross-validation: the held-out fold's images at the model of record, the same arrays with
# `index` into the torchvision training set
HELDOUT_PREDICTIONS_PATH = "predictions/heldout.npz"
CHECKPOINT_DIR = "checkpoints"  # epoch_NNN.pt, epoch_NNN_partial.pt
# per-example records: probs float16 (E, N, 10), epochs (E,), index (N,) ...
TEST_BY_EPOCH_PATH = "predictions/test_by_epoch.npz"
# ... and correct bool (E, N), label_prob float16 (E, N), predicted int8 (E, N), epochs (E,),
# index (N,) into the
# torchvision training set; both are assembled at the end from one file per epoch:
TRAIN_DYNAMICS_PATH = "dynamics/train.npz"
EPOCH_RECORD_DIR = "dynamics/epochs"  # epoch_NNN.npz: correct, label_prob, test_probs
MODEL_URI = "models:/{model_id}"  # a logged model (the run's one: `tracking.logged_model_id`)
ANALYSIS_DIR = "analysis"  # per-run report artifacts
COMPARISON_DIR = "comparison"  # comparison report artifacts
# where report runs (a comparison or explorer of runs named one by one) are filed, apart from
# the training runs of `experiment`; a sweep's reports go to its parent run instead
REPORTS_EXPERIMENT = "{experiment} reports"
EXPLORER_PATH = "explorer/explorer.html"  # the explorer page, on a sweep parent or report run

# --- tags (MLflow caps a tag value at 8,000 characters: longer ones are cut to fit)
TAG_VALUE_LIMIT = 8000


def fit_tag(text: str) -> str:
    """`text` cut to what MLflow keeps of a tag value."""
    return text[:TAG_VALUE_LIMIT]


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
TAG_DEVICE = "mnist.device"  # cpu, cuda:0, ...
TAG_GPU_NAME = "mnist.gpu_name"
TAG_TORCH_VERSION = "mnist.torch_version"
TAG_WORKBENCH_VERSION = "mnist.workbench_version"
TAG_PER_EXAMPLE_RECORD = "mnist.per_example_record"  # "incomplete: ..." when epochs are missing
TAG_COMPARISON_REPORT = "mnist.comparison_report"  # on a sweep parent: its report's artifact
TAG_LABELS_REPORT = "mnist.labels_report"  # likewise for the label-issues report
TAG_EXPLORER = "mnist.explorer"  # on the run holding an explorer page: its artifact path
TAG_EXPLORED_RUNS = "mnist.explored_run_ids"  # on an explorer's own report run
TAG_BASELINE_RUN = "mnist.baseline_run_id"  # on a report run
TAG_COMPARED_RUNS = "mnist.compared_run_ids"  # on a report run: comma-separated run ids
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
TRIAL_FAILURE_ATTR = "mnist.failure_reason"  # a failed trial's user attribute: why, in one line
# the Optuna study's own attributes (study.set_user_attr): what the study was made from
STUDY_ATTR_SWEEP = "mnist.sweep"  # the sweep's name
STUDY_ATTR_FINGERPRINT = "mnist.fingerprint"  # of what the study runs (see study.py)
STUDY_ATTR_SETTINGS = "mnist.settings"  # what the fingerprint covers, to say what changed
STUDY_ATTR_FILE = "mnist.sweep_file"
STUDY_ATTR_PARENT = "mnist.parent_run_id"
STUDY_ATTR_TRIALS = "mnist.trials"
STUDY_ATTR_READY = "mnist.ready"  # set by the creator once every trial is queued
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


def mask_url(url: str) -> str:
    """A database or server URL with its password replaced by `***`, for anything shown."""
    url = re.sub(r"^([a-z0-9+]+://[^:/@]+):[^@]*@", r"\1:***@", url, flags=re.I)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url, flags=re.I)
