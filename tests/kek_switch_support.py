"""A KEK backend plugin (a dotted path in ``KEYROTATION["KEK"]["BACKEND"]``) for the KEK switch
tests: the local backend, out of reach from its N-th wrap on (a KEK that fails half-way through
``rotatekeys --rewrap``). It has no ``claim`` method, as a third-party backend may not."""

from __future__ import annotations

from typing import Any

from keyrotation.exceptions import KEKUnreachable
from keyrotation.kek.local import LocalKEK


class FailingAfterKEK:
    """``LocalKEK`` whose wrap fails once ``FAIL_AFTER`` wraps have succeeded (None: never)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._local = LocalKEK(options)
        self._fail_after = options.get("FAIL_AFTER")
        self.wraps = 0

    def wrap(self, dek: bytes, context: bytes) -> tuple[bytes, str]:
        if self._fail_after is not None and self.wraps >= self._fail_after:
            raise KEKUnreachable("test KEK out of reach")
        self.wraps += 1
        return self._local.wrap(dek, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        return self._local.unwrap(wrapped, context)

    def rewrap(self, wrapped: bytes, context: bytes) -> tuple[bytes, str]:
        return self.wrap(self.unwrap(wrapped, context), context)

    def rotate(self) -> str:
        return self._local.rotate()

    def current_id(self) -> str:
        return self._local.current_id()

    def describe(self) -> str:
        return f"test plugin around {self._local.describe()}"

    def check(self) -> None:
        self._local.check()
