"""An external anchor for the audit chain's head: what the database alone cannot prove.

The hash chain shows a row edited, deleted or inserted *inside* the trail, but a database writer
who deletes the newest rows, or every row, leaves a shorter chain that still verifies. With
``KEYROTATION["AUDIT_ANCHOR"]`` set, every committed append also writes the new head (the row's
id and ``row_hash``: no secret, a MAC under the chain key) somewhere that writer cannot reach, and
``audit_verify`` fails when the anchored row is no longer in the chain.

The setting is either an absolute file path (:class:`FileAnchor`) or the dotted path of a callable
that returns an object with the :class:`AuditAnchor` methods (for example a class whose ``write``
appends to a write-once object store and whose ``read`` returns the newest head there).

The head is written after the transaction that appended the row commits (a rolled-back append
must not move it). A failed write is logged, never raised: the change it records is committed
already. It leaves the anchor behind the chain, which weakens the check until the next append and
never makes a sound chain fail.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import dataclass
from typing import Protocol

from django.utils.module_loading import import_string

from . import conf
from .exceptions import ConfigurationError

logger = logging.getLogger("keyrotation.audit")


@dataclass(frozen=True, order=True)
class ChainHead:
    """The newest row of the chain: its id and its ``row_hash``."""

    id: int
    row_hash: str

    def __str__(self) -> str:
        return f"#{self.id} {self.row_hash}"


class AuditAnchor(Protocol):
    """Where heads are kept, out of the database's reach."""

    def write(self, head: ChainHead) -> None:
        """Record ``head``, the chain's head after a committed append."""

    def read(self) -> ChainHead | None:
        """The newest head recorded, or None if none was."""


class FileAnchor:
    """A file holding the newest head as JSON, replaced atomically, never moved backwards.

    For one host, or a file system every host shares; several hosts with files of their own each
    anchor the appends made on that host only.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"<FileAnchor {self.path}>"

    def read(self) -> ChainHead | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(text)
            return ChainHead(int(doc["id"]), str(doc["row_hash"]))
        except (ValueError, KeyError, TypeError):
            raise ConfigurationError(f"audit anchor {self.path} does not hold a chain head") from None

    def write(self, head: ChainHead) -> None:
        # A lock file serialises writers on this host; appends commit in chain order, but their
        # on-commit hooks may run out of order, so an older head never replaces a newer one.
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.read()
            if current is not None and current.id >= head.id:
                return
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"id": head.id, "row_hash": head.row_hash}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)


def load() -> AuditAnchor | None:
    """The anchor named by ``KEYROTATION["AUDIT_ANCHOR"]``, or None when it is not set."""
    value = conf.audit_anchor()
    if value is None:
        return None
    if callable(value):
        return value()
    if os.path.isabs(value):
        return FileAnchor(value)
    try:
        factory = import_string(value)
    except ImportError as exc:
        raise ConfigurationError(f'KEYROTATION["AUDIT_ANCHOR"]: cannot import {value!r}: {exc}') from None
    return factory()


def publish(head: ChainHead) -> None:
    """Write ``head`` to the configured anchor, if any; log (never raise) a failure."""
    try:
        anchor = load()
        if anchor is not None:
            anchor.write(head)
    except Exception as exc:  # noqa: BLE001 - the change is committed: report, do not undo
        logger.error("audit anchor not updated to row #%s: %s: %s", head.id, type(exc).__name__, exc)


def compare(anchored: ChainHead, head_id: int | None, anchored_row_hash: str | None) -> str:
    """Why a verified chain disagrees with the ``anchored`` head, or ``""`` when it does not.

    Args:
        anchored: the head read from the anchor.
        head_id: the id of the chain's newest row (None for an empty trail).
        anchored_row_hash: the ``row_hash`` of the chain's row ``anchored.id`` (None if absent).
    """
    if head_id is None:
        return f"the anchor names row #{anchored.id} but the audit trail is empty (every row deleted)"
    if anchored_row_hash is None:
        if head_id < anchored.id:
            return (
                f"the anchor names row #{anchored.id} but the chain ends at row #{head_id} "
                "(the newest rows were deleted)"
            )
        return f"the anchor names row #{anchored.id}, which is not in the chain (deleted)"
    if anchored_row_hash != anchored.row_hash:
        return f"row #{anchored.id} is not the row the anchor recorded (its row_hash differs)"
    return ""


def check(head_id: int | None, using: str | None = None) -> tuple[ChainHead | None, str]:
    """(the anchored head, why the chain ending at row ``head_id`` disagrees with it, or ``""``).

    ``(None, "")`` when no anchor is configured or it holds no head yet.
    """
    anchor = load()
    anchored = anchor.read() if anchor is not None else None
    if anchored is None:
        return None, ""
    from .models import KeyRotationAudit

    row_hash = (
        KeyRotationAudit.objects.using(using)
        .filter(pk=anchored.id)
        .values_list("row_hash", flat=True)
        .first()
    )
    return anchored, compare(anchored, head_id, row_hash)
