"""Persistence only: data keys, the audit trail (engine progress models live beside them).

No engine or lifecycle logic here; see ``lifecycle.py``, ``keyring.py`` and ``engine/``.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone


class Purpose(models.TextChoices):
    ENCRYPT = "encrypt", "encrypt (AES-256-GCM)"
    INDEX = "index", "blind index (HMAC-SHA256)"


class KeyState(models.TextChoices):
    ACTIVE = "active", "active"
    DECRYPT_ONLY = "decrypt_only", "decrypt only"
    RETIRED = "retired", "retired"
    DESTROYED = "destroyed", "destroyed"


class DataKey(models.Model):
    """One version of a data key, stored wrapped by the KEK (never in the clear).

    Exactly one ``active`` row per (keyring, purpose), enforced by a partial unique constraint.
    """

    keyring = models.CharField(max_length=64)
    purpose = models.CharField(max_length=16, choices=Purpose.choices)
    version = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=KeyState.choices)
    wrapped_key = models.BinaryField(null=True, editable=False)
    kek_id = models.CharField(
        "KEK id", max_length=200, help_text="Which KEK (and KEK version) wrapped this key."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    activated_at = models.DateTimeField(null=True, blank=True)
    deactivated_at = models.DateTimeField(
        null=True, blank=True, help_text="When it last stopped being the active version."
    )
    retired_at = models.DateTimeField(null=True, blank=True)
    destroyed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "data key"
        ordering = ["keyring", "purpose", "-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["keyring", "purpose", "version"], name="keyrotation_datakey_unique_version"
            ),
            models.UniqueConstraint(
                fields=["keyring", "purpose"],
                condition=Q(state="active"),
                name="keyrotation_datakey_one_active",
            ),
            models.CheckConstraint(condition=Q(version__gte=1), name="keyrotation_datakey_version_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.keyring}/{self.purpose} v{self.version} ({self.state})"


class KeyRotationAudit(models.Model):
    """One row per event in the life of keys and runs. Never holds plaintext or key material."""

    created_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)
    action = models.CharField(max_length=40, db_index=True)
    status = models.CharField(max_length=16, default="ok")
    actor = models.CharField(max_length=150, blank=True)
    host = models.CharField(max_length=255, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    keyring = models.CharField(max_length=64, blank=True)
    purpose = models.CharField(max_length=16, blank=True)
    from_version = models.PositiveIntegerField(null=True, blank=True)
    to_version = models.PositiveIntegerField(null=True, blank=True)
    rows_processed = models.BigIntegerField(null=True, blank=True)
    rows_failed = models.BigIntegerField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64, blank=True, editable=False)
    row_hash = models.CharField(max_length=64, blank=True, editable=False)

    class Meta:
        verbose_name = "key rotation audit entry"
        verbose_name_plural = "key rotation audit trail"
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} {self.keyring}/{self.purpose} ({self.status})"
