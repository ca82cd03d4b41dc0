"""A local cache of run artifacts, by run id: each file is downloaded from the store once.

Only finished runs are cached (a running or killed run may still gain or replace artifacts).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.errors import AnalysisError, first_line
from mnist_train.contract import default_cache_dir

if TYPE_CHECKING:
    from mlflow import MlflowClient


def fetch_artifact(client: MlflowClient, run, artifact_path: str, *, cache_dir=None) -> Path | None:
    """Local copy of one artifact file of `run`, or None when the run has no such artifact.

    Only runs that have FINISHED are cached (under `<cache_dir>/<run_id>/`, stamped with the run's
    end time): a running or killed run may still gain or replace artifacts, e.g. when it is resumed,
    so it is downloaded afresh each time. Files are moved into the cache only once complete, so an
    interrupted download or a concurrent reader never sees half a file.
    """
    from mlflow.exceptions import MlflowException

    run_id = run.info.run_id
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = root / run_id / artifact_path
    stamp = root / run_id / "run.json"
    cacheable = run.info.status == "FINISHED"
    if cacheable and cached.is_file() and _read_stamp(stamp) == run.info.end_time:
        return cached

    parent, _, name = artifact_path.rpartition("/")
    try:
        listed = {Path(f.path).name for f in client.list_artifacts(run_id, parent or None)}
    except (MlflowException, OSError) as err:
        raise AnalysisError(f"cannot list artifacts of run {run_id}: {first_line(err)}") from None
    if name not in listed:
        return None

    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_id}-", dir=root))
    try:
        downloaded = Path(client.download_artifacts(run_id, artifact_path, dst_path=str(staging)))
        if not cacheable:
            # keep this one download for the caller under a per-run "live" name, replaced each time
            live = root / f"{run_id}.live" / artifact_path
            live.parent.mkdir(parents=True, exist_ok=True)
            os.replace(downloaded, live)
            return live
        cached.parent.mkdir(parents=True, exist_ok=True)
        os.replace(downloaded, cached)
        _write_stamp(stamp, run.info.end_time)
        return cached
    except (MlflowException, OSError) as err:
        raise AnalysisError(
            f"cannot download {artifact_path} of run {run_id}: {first_line(err)}"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_stamp(path: Path) -> int | None:
    try:
        return json.loads(path.read_text())["end_time"]
    except (OSError, ValueError, KeyError):
        return None


def _write_stamp(path: Path, end_time: int | None) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"end_time": end_time}))
    os.replace(partial, path)
