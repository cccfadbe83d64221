"""Make data keys old without waiting: what a key activated that many days ago looks like."""

from __future__ import annotations

from datetime import timedelta


def make_older(keyring: str, purpose: str, days: float) -> None:
    """Move the activation of the active version of (keyring, purpose) ``days`` into the past.

    ``activated_at`` is not covered by the key-state MAC, so the key stays usable.
    """
    from keyrotation.models import DataKey

    key = DataKey.objects.get(keyring=keyring, purpose=purpose, state="active")
    DataKey.objects.filter(pk=key.pk).update(activated_at=key.activated_at - timedelta(days=days))


def set_policy(settings, value) -> None:
    """``KEYROTATION["ROTATION_PERIOD"] = value`` through pytest-django's ``settings`` fixture."""
    settings.KEYROTATION = {**settings.KEYROTATION, "ROTATION_PERIOD": value}
