"""Is an http(s) tracking server there? One short request, before MLflow's own client would
retry an unreachable server for minutes (standard library only: the analysis uses it too)."""

from __future__ import annotations

import urllib.error
import urllib.request

from . import contract


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def probe_http_store(uri: str, timeout_s: float | None = None) -> str | None:
    """One short request to an http(s) tracking server: None when it answers, else the reason.

    MLflow's own client would retry an unreachable server for minutes. An HTTP error status
    (401, 404, ...) still means the server is there; MLflow reports anything else itself.
    """
    timeout_s = contract.HTTP_PROBE_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))
