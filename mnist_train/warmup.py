"""Slow first-time work a run needs later, done on a thread while the main thread loads data,
opens the store and trains. Started by the CLI's `run` command (never by `--dry-run`)."""

from __future__ import annotations

import threading

_WARMING: list[threading.Thread] = []


def warm_up_in_background() -> threading.Thread:
    """Do, on a thread, slow first-time work a run needs later, while the main thread loads data,
    opens the store and trains (torch releases the GIL in its kernels; the import lock makes a
    later import wait for this one rather than repeat it): `torch._dynamo`, which the first
    optimizer step imports (~1 s), and `mlflow.pytorch`, which logging the model needs. Started once
    per process."""
    if _WARMING:
        return _WARMING[0]

    def work() -> None:
        import importlib

        for name in ("torch._dynamo", "mlflow.models", "mlflow.pytorch"):  # in order of need
            importlib.import_module(name)

    thread = threading.Thread(target=work, name="warm-up", daemon=True)
    thread.start()
    _WARMING.append(thread)
    return thread
