"""keyrotation: encrypted Django model fields and blind indexes with zero-downtime key rotation.

The functions of :mod:`keyrotation.api` are available here (``keyrotation.rotate()``,
``keyrotation.reencrypt()``, ``keyrotation.status()``...). They are imported on first use, so
``import keyrotation`` works in settings files, before Django's apps are ready.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("django-keyrotation")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

#: The functions of :mod:`keyrotation.api` that this package re-exports.
API_NAMES = (
    "abort",
    "destroy",
    "due_keys",
    "init",
    "keys",
    "pause",
    "reencrypt",
    "restore",
    "resume",
    "retire",
    "rewrap",
    "rollback",
    "rotate",
    "rotate_if_due",
    "status",
    "verify",
)

__all__ = ["__version__", *API_NAMES]


def __getattr__(name: str) -> Any:
    if name in API_NAMES:
        return getattr(import_module("keyrotation.api"), name)
    raise AttributeError(f"module 'keyrotation' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API_NAMES})
