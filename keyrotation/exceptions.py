"""Exceptions raised by keyrotation.

Every message names *where* something failed (keyring, purpose, key version, and for stored
values the model, field and primary key) and never carries plaintext, ciphertext or key bytes.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


class KeyRotationError(Exception):
    """Base class of every error keyrotation raises on purpose."""


class ConfigurationError(KeyRotationError, ImproperlyConfigured):
    """The ``KEYROTATION`` setting, or a field declaration, is not usable."""


class DecryptionError(KeyRotationError):
    """A stored value could not be authenticated or decrypted.

    Deliberately opaque about *why* (wrong key, tampering, truncation, a value copied from another
    column all look the same), but precise about *where*: the context arguments name the column,
    the row and the key version so that an operator can find the value.
    """

    def __init__(
        self,
        message: str = "Decryption failed",
        *,
        label: str | None = None,
        pk: object = None,
        version: int | None = None,
    ) -> None:
        self.label = label
        self.pk = pk
        self.version = version
        parts = [message]
        if label is not None:
            parts.append(f"field={label}")
        if pk is not None:
            parts.append(f"pk={pk!r}")
        if version is not None:
            parts.append(f"key version={version}")
        super().__init__(" ".join(parts) if len(parts) == 1 else f"{parts[0]} ({', '.join(parts[1:])})")


class KeyringError(KeyRotationError):
    """Base of the errors about a key (keyring, purpose, version)."""

    def __init__(self, message: str, *, keyring: str, purpose: str, version: int | None = None):
        self.keyring = keyring
        self.purpose = purpose
        self.version = version
        where = f"keyring={keyring!r} purpose={purpose!r}"
        if version is not None:
            where += f" version={version}"
        super().__init__(f"{message} [{where}]")


class UnknownKeyVersion(KeyringError):
    """A ciphertext or a command named a key version the keyring does not have."""


class KeyStateError(KeyringError):
    """A key is in the wrong lifecycle state for what was asked (e.g. decrypt with a retired key)."""


class NoActiveKey(KeyringError):
    """A keyring has no active key for the purpose: run ``manage.py rotatekeys --init``."""


class KEKUnavailable(KeyRotationError):
    """The key-encryption key could not be reached or refused to unwrap (Vault down, sealed, bad token,
    wrong master key). Carries the backend description, never key material.

    The built-in backends raise one of its two subclasses, which say whether waiting can help:
    :class:`KEKUnreachable` (transient) or :class:`KEKRefused` (permanent). The engine retries the
    first with back-off and fails at once on the second; a plain ``KEKUnavailable`` (a custom
    backend that does not classify its errors) is retried like a transient one.
    """


class KEKUnreachable(KEKUnavailable):
    """Transient: the KEK could not answer right now (connection refused or reset, timeout, Vault
    sealed, a 5xx or 429 response). The same call may succeed later."""


class KEKRefused(KEKUnavailable):
    """Permanent: the KEK answered and refused (permission denied, invalid token, unknown mount or
    key, a Transit key that is not derived, a wrong master key, a wrapped key that does not open).
    Retrying cannot help; the message says what to fix."""


class LegacyDecodeError(KeyRotationError):
    """A legacy value could not be authenticated or turned into a value of the new field.

    The message says why in general terms (bad MAC, wrong key, not a token, unexpected type) and
    never carries a byte of the value.
    """


class RunFailed(KeyRotationError):
    """A re-encryption run stopped on a value it cannot open (``on_error="stop"``) or on a
    database error (:class:`EngineDatabaseError`, also once the retries of a transient one ran
    out). The run is marked ``failed`` with this message."""


class EngineDatabaseError(RunFailed):
    """The database refused the re-encryption engine's work, or kept failing after the retries;
    or a read outside a run (a plan, ``dry_run``, ``pending``, ``verify``, ``status``) could not
    be made.

    Names what the engine was doing (``step``: a batch, the final sweep, a census, a chunk
    claim...), where (run, model, fields, the primary-key range, the key versions it was moving
    rows to, the database aliases), the exception class and the driver's error code (SQLSTATE on
    PostgreSQL, the error number on MySQL/MariaDB, the result-code name on SQLite). Never the
    database's message: servers quote values in it (MySQL's ``Incorrect string value:
    '\\xF0\\x9F…'``, PostgreSQL's ``Failing row contains (…)`` or a trigger's own text), and
    the values of a batch are plaintexts when a legacy column is being adopted. The original
    exception is not chained to this one.
    """

    def __init__(
        self,
        *,
        step: str,
        databases: tuple[str, ...],
        error_class: str,
        code: str | None = None,
        run: int | None = None,
        model: str | None = None,
        fields: tuple[str, ...] = (),
        pks: str | None = None,
        versions: tuple[str, ...] = (),
    ) -> None:
        self.step = step
        self.databases = databases
        self.error_class = error_class
        self.code = code
        self.run = run
        self.model = model
        self.fields = fields
        self.pks = pks
        self.versions = versions
        where = [f"fields {', '.join(fields)}"] if fields else []
        where += [pks] if pks else []
        where += [f"to {', '.join(versions)}"] if versions else []
        on = ", ".join(repr(alias) for alias in databases)
        super().__init__(
            (f"run #{run}: " if run is not None else "")
            + f"database error in {step}"
            + (f" of {model}" if model else "")
            + (f" ({'; '.join(where)})" if where else "")
            + f" on database{'s' if len(databases) > 1 else ''} {on}: {error_class}"
            + (f" ({code})" if code else "")
            + "; the database's message is withheld, as it may quote values"
        )


class RunNotFound(KeyRotationError):
    """No re-encryption run has the id given (to ``pause``, ``resume`` or ``abort``)."""
