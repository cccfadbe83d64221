"""Which KEK wrapped a data key: what a backend can tell from a ``DataKey.kek_id`` and its bytes.

A backend that can tell has a ``claim(kek_id, wrapped)`` method returning a :class:`Claim`:

* the local backend reads the master-key fingerprint in the wrapped bytes themselves (an
  HMAC-derived id of the key, see :func:`keyrotation.crypto.fingerprint`, never a hash of it):
  ``EXACT`` if it holds that key, ``NO`` otherwise;
* the Vault backend compares the id's address, mount and key name (``vault://<host>:<port>/
  <mount>/<key>:v<N>``) with its own: ``EXACT`` when all match, ``POSSIBLE`` when only the mount
  and key name match (the id names another address for the same server, or was written before ids
  named the address), ``NO`` when the mount or key name differ or the bytes are not Transit's.

A backend without ``claim`` (a custom one) is ``POSSIBLE`` for every key: it is tried.
Claims read configuration and the given strings only: no network call.
"""

from __future__ import annotations

import enum
from typing import Any


class Claim(enum.Enum):
    """How sure a KEK is that it wrapped a given data key."""

    EXACT = "exact"  # the id (or the bytes) names this very KEK
    POSSIBLE = "possible"  # cannot be told apart without trying
    NO = "no"  # certainly another KEK


def claim_of(backend: Any, kek_id: str, wrapped: bytes) -> Claim:
    """``backend.claim(kek_id, wrapped)``, or ``POSSIBLE`` for a backend that cannot tell."""
    claim = getattr(backend, "claim", None)
    if claim is None:
        return Claim.POSSIBLE
    return claim(kek_id or "", bytes(wrapped))
