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
    # The authentication of ``state`` (see keyrotation.key_state): written by the lifecycle in the
    # same transaction as the audit row it names; a row whose MAC does not verify is not used.
    state_audit_id = models.BigIntegerField(
        null=True, blank=True, editable=False, help_text="The audit row that last authenticated its state."
    )
    state_mac_version = models.PositiveIntegerField(
        null=True, blank=True, editable=False, help_text="Version of the audit chain key that MACs its state."
    )
    # A database default, so that an INSERT by code from before this column (a rolling upgrade) works.
    state_mac = models.CharField(max_length=64, blank=True, db_default="", editable=False)

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


class AppendOnlyError(Exception):
    """An audit row was about to be changed or deleted through the ORM (the trail is append-only)."""


_APPEND_ONLY = (
    "the key rotation audit trail is append-only: rows cannot be {what} "
    "(new rows are written by keyrotation.audit.record())"
)


class AuditQuerySet(models.QuerySet):
    """Refuses every bulk write path; reads work as usual."""

    def update(self, **kwargs):
        raise AppendOnlyError(_APPEND_ONLY.format(what="updated"))

    def delete(self):
        raise AppendOnlyError(_APPEND_ONLY.format(what="deleted"))

    def bulk_update(self, objs, fields, batch_size=None):
        raise AppendOnlyError(_APPEND_ONLY.format(what="updated"))

    def bulk_create(self, objs, *args, **kwargs):
        raise AppendOnlyError(_APPEND_ONLY.format(what="bulk-created (they would not be chained)"))

    def update_or_create(self, *args, **kwargs):
        raise AppendOnlyError(_APPEND_ONLY.format(what="updated"))

    def get_or_create(self, *args, **kwargs):
        raise AppendOnlyError(_APPEND_ONLY.format(what="created outside record()"))

    update.queryset_only = True
    delete.queryset_only = True


class KeyRotationAudit(models.Model):
    """One row per event in the life of keys and runs. Never holds plaintext or key material.

    Append-only and tamper-evident: rows are written once by ``keyrotation.audit.record()``,
    sealed into a keyed hash chain (``prev_hash``, ``row_hash``; see ``keyrotation.audit_chain``),
    and never updated or deleted through the ORM.
    """

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
    chain_key_version = models.PositiveIntegerField(
        null=True, blank=True, editable=False, help_text="Version of the audit chain key that sealed it."
    )

    objects = AuditQuerySet.as_manager()

    class Meta:
        verbose_name = "key rotation audit entry"
        verbose_name_plural = "key rotation audit trail"
        ordering = ["-id"]
        constraints = [
            # Two rows claiming the same predecessor would fork the chain: refuse the second.
            models.UniqueConstraint(fields=["prev_hash"], name="keyrotation_audit_no_fork"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} {self.keyring}/{self.purpose} ({self.status})"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError(_APPEND_ONLY.format(what="updated"))
        if not self.row_hash:
            raise AppendOnlyError("audit rows must be written by keyrotation.audit.record() (unsealed row)")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError(_APPEND_ONLY.format(what="deleted"))


class RunStatus(models.TextChoices):
    RUNNING = "running", "running"
    PAUSED = "paused", "paused"
    INTERRUPTED = "interrupted", "interrupted (resumable)"
    FINISHED = "finished", "finished"
    ABORTED = "aborted", "aborted"
    FAILED = "failed", "failed"
    SUPERSEDED = "superseded", "superseded by a newer key version"


class ReencryptionRun(models.Model):
    """One re-encryption of a set of models towards fixed target key versions.

    Any number of processes on any number of hosts join the open run for the same scope and
    database and share its chunks; a project with several databases gets one run per database.
    ``status`` follows ``engine.runs.RUN_TRANSITIONS``. Rows done and the last
    heartbeat are derived from the chunks (``engine.runs.progress``), never stored twice.
    """

    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.RUNNING)
    scope = models.CharField(
        max_length=255, help_text="Which models/fields this run covers ('*' = every registered column)."
    )
    database = models.CharField(
        max_length=100,
        default="default",
        help_text="The database alias whose rows this run re-encrypts (the run is kept with the keys).",
    )
    targets = models.JSONField(default=dict, help_text='Target versions, e.g. {"default/encrypt": 2}.')
    options = models.JSONField(default=dict, blank=True)
    actor = models.CharField(max_length=150, blank=True)
    rows_total = models.BigIntegerField(default=0, help_text="Rows pending when the run was planned.")
    rows_failed = models.BigIntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="Why it failed: model, field, pk, version; never values.")

    class Meta:
        ordering = ["-id"]
        permissions = [("control_reencryptionrun", "Can pause, resume and abort re-encryption runs")]

    def __str__(self) -> str:
        where = "" if self.database == "default" else f" on {self.database}"
        return f"run #{self.pk} {self.scope}{where} ({self.status})"


class ChunkStatus(models.TextChoices):
    PENDING = "pending", "pending"
    RUNNING = "running", "running"
    DONE = "done", "done"


class ReencryptionChunk(models.Model):
    """A primary-key range of one model, claimed by one worker at a time.

    ``cursor`` is the last primary key committed; it moves in the same transaction as each batch,
    so a killed worker's chunk resumes exactly after the last committed row.
    """

    run = models.ForeignKey(ReencryptionRun, on_delete=models.CASCADE, related_name="chunks")
    model = models.CharField(max_length=200, help_text="app_label.ModelName")
    lo = models.JSONField(help_text="Exclusive lower bound of the primary key (null: unbounded).", null=True)
    hi = models.JSONField(help_text="Inclusive upper bound of the primary key (null: unbounded).", null=True)
    cursor = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=ChunkStatus.choices, default=ChunkStatus.PENDING)
    worker = models.CharField(max_length=255, blank=True)
    rows_done = models.BigIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["run", "status"], name="keyrotation_chunk_run_status")]

    def __str__(self) -> str:
        return f"{self.model} ({self.lo}, {self.hi}] {self.status}"


class QuarantinedValue(models.Model):
    """A stored value that failed to decrypt during a run with ``--on-error=quarantine``.

    Records where it is (model, field, pk, key version) and why in words; never the value.
    """

    run = models.ForeignKey(ReencryptionRun, on_delete=models.CASCADE, related_name="quarantined")
    label = models.CharField(max_length=255)
    pk_value = models.CharField("primary key", max_length=255)
    key_version = models.PositiveIntegerField(null=True, blank=True)
    reason = models.CharField(max_length=255)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "label", "pk_value"], name="keyrotation_quarantine_once")
        ]

    def __str__(self) -> str:
        return f"{self.label} pk={self.pk_value} v{self.key_version}: {self.reason}"


class ReencryptionSample(models.Model):
    """Rows one process wrote for a run since its previous sample: the run's rate over time.

    Written with the batch that completes an interval (``engine.samples``), at most one per
    process every few seconds and fewer as the run grows older, so a run keeps a few hundred of
    them whatever its length. They hold counts and times only, and go with their run.
    """

    run = models.ForeignKey(ReencryptionRun, on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField(default=timezone.now)
    rows = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["run", "at", "id"]

    def __str__(self) -> str:
        return f"run #{self.run_id} +{self.rows} at {self.at.isoformat()}"
