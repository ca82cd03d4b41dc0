"""Slow first-time work a run needs later, done on a thread while the main thread loads data,
opens the store and trains. Started by the CLI's `run` command (never by `--dry-run`)."""

from __future__ import annotations

import threading

_WARMING: list[threading.Thread] = []


def warm_up_in_background() -> threading.Thread:
    """Do, on a thread, slow first-time work a run needs later, while the main thread loads data,
    opens the store and trains (torch releases the GIL in its kernels; the import lock makes a
    later import wait for this one rather than repeat it): `torch._dynamo`, which the first
    optimizer step imports (~1 s), `mlflow.pytorch` (~2-3 s) and the installed-packages map that
    logging the model builds once (~1 s). Started once per process."""
    if _WARMING:
        return _WARMING[0]

    def work() -> None:
        import importlib

        for name in ("torch._dynamo", "mlflow.models", "mlflow.pytorch"):  # in order of need
            importlib.import_module(name)

        try:  # private to MLflow: skipped quietly if it moves
            from mlflow.utils.requirements_utils import _init_packages_to_modules_map

            _init_packages_to_modules_map()
        except Exception:
            pass

    thread = threading.Thread(target=work, name="warm-up", daemon=True)
    thread.start()
    _WARMING.append(thread)
    return thread
