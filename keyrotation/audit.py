"""The one place that writes ``KeyRotationAudit`` rows.

Callers pass identities and counts only; ``details`` must be JSON of ids, counts and versions.
It is checked here for types so a careless caller cannot slip bytes (key material) into it.
"""

from __future__ import annotations

import getpass
import os
import socket
from typing import Any

from .models import KeyRotationAudit

_ALLOWED_LEAVES = (str, int, float, bool, type(None))


def default_actor() -> str:
    """The OS user running this process, for commands run without ``--actor``."""
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):  # pragma: no cover - no passwd entry in some containers
        return f"os:uid={os.getuid()}"


def _check_details(value: Any, path: str = "details") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path} keys must be str")
            _check_details(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_details(item, f"{path}[{i}]")
    elif not isinstance(value, _ALLOWED_LEAVES):
        raise TypeError(f"{path} must hold only JSON scalars, got {type(value).__name__}")


def record(
    action: str,
    *,
    actor: str | None = None,
    keyring: str = "",
    purpose: str = "",
    from_version: int | None = None,
    to_version: int | None = None,
    status: str = "ok",
    rows_processed: int | None = None,
    rows_failed: int | None = None,
    details: dict[str, Any] | None = None,
    using: str | None = None,
) -> KeyRotationAudit:
    """Append one audit row (call inside the transaction of the change it records)."""
    details = details or {}
    _check_details(details)
    return KeyRotationAudit.objects.using(using).create(
        action=action,
        actor=actor or default_actor(),
        host=socket.gethostname()[:255],
        pid=os.getpid(),
        keyring=keyring,
        purpose=purpose,
        from_version=from_version,
        to_version=to_version,
        status=status,
        rows_processed=rows_processed,
        rows_failed=rows_failed,
        details=details,
    )
