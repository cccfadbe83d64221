"""What an encrypted attribute holds before it is read: a stored token, or "not adopted yet"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import crypto

if TYPE_CHECKING:
    from .encrypted import EncryptedField


class Sealed:
    """A token as stored in the column (not yet decrypted). Its repr shows no byte of it.

    It pickles as the token and its field (a field pickles by reference), never as plaintext.
    """

    __slots__ = ("token", "field", "version")

    def __init__(self, token: bytes, field: EncryptedField, version: int | None = None) -> None:
        if type(token) is not bytes:
            token = bytes(token)
        self.token = token
        self.field = field
        if version is not None:
            self.version = version
        # else ``version`` is parsed from the header when first asked (see __getattr__): the read
        # path finds its cipher by the header's bytes and never asks.

    def __getattr__(self, name: str) -> int | None:
        """``version`` not yet parsed: the key version in the header, ``None`` if it does not parse."""
        if name != "version":
            raise AttributeError(name)
        version = crypto.header_version(self.token)
        self.version = version
        return version

    def __repr__(self) -> str:
        return f"<encrypted {self.field.label} (key version {self.version})>"


class _NotAdopted:
    """The value of an adopting field whose new column is NULL, as loaded (or never assigned).

    Reading the attribute replaces it by the decoded legacy value (or ``None``); writing a row that
    still holds it leaves the legacy column as it is. Any assigned value, ``None`` included, is a
    write of the field: the legacy column is then set to NULL in the same statement.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "<not adopted yet>"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "NOT_ADOPTED"


NOT_ADOPTED = _NotAdopted()
