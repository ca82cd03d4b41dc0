"""Who owns a RUNNING run: the owner and heartbeat tags a training process refreshes every
epoch, and the test `--resume` and study workers use to take over a run whose owner is gone."""

from __future__ import annotations

import os
import socket
import time
from datetime import datetime, timezone

from . import contract

HEARTBEAT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # UTC, as the runs table shows it: 2026-11-25T15:20:31Z


def heartbeat_seconds(value: str) -> float | None:
    """Unix seconds of a heartbeat tag (ISO 8601 UTC, or the unix seconds older runs wrote);
    None when it cannot be read."""
    try:
        when = datetime.strptime(value, HEARTBEAT_FORMAT).replace(tzinfo=timezone.utc)
        return when.timestamp()
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return None


def owner_tags() -> dict[str, str]:
    """Who trains a run, and when it last said so (tags refreshed every epoch)."""
    return {
        contract.TAG_OWNER: f"{socket.gethostname()} {os.getpid()}",
        contract.TAG_HEARTBEAT: datetime.now(timezone.utc).strftime(HEARTBEAT_FORMAT),
    }


def abandoned(tags: dict[str, str], *, now: float | None = None) -> str | None:
    """Why a RUNNING run has no live owner (its process on this host is gone, or its host has
    been silent for `HEARTBEAT_STALE_S`), or None when it may still be training."""
    host, _, pid = tags.get(contract.TAG_OWNER, "").partition(" ")
    beat = tags.get(contract.TAG_HEARTBEAT)
    if not host or not pid.isdigit() or beat is None:
        return None  # no ownership recorded: nothing says it is gone
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return f"its process {pid} on this host is gone"
        except PermissionError:
            pass  # alive, someone else's
        return None
    seconds = heartbeat_seconds(beat)
    if seconds is None:
        return f"its heartbeat tag {beat[:40]!r} cannot be read"
    silent = (now or time.time()) - seconds
    if silent > contract.HEARTBEAT_STALE_S:
        return f"no heartbeat from {host} for {silent / 60:.0f} min"
    return None
