"""The example project's one model: personal data, encrypted at rest.

``email`` and ``national_id`` are searchable through blind indexes: ``Person.objects.get(email=...)``
finds one person; ``Person.objects.filter(national_id="6789")`` finds everyone whose national id
ends in 6789 (the index covers only the last four digits, the way a support desk asks for them,
and so reveals less than an index of the whole number would).
"""

from django.db import models

from keyrotation.fields import BlindIndexField, EncryptedField


def last_four(value: str) -> str:
    """Normalisation for the national-id index: only the last four digits are searchable."""
    digits = "".join(ch for ch in value if ch.isdigit())
    return digits[-4:]


class Person(models.Model):
    name = models.CharField(max_length=100)
    email = EncryptedField(models.EmailField())
    email_bidx = BlindIndexField(source="email")
    national_id = EncryptedField(models.CharField(max_length=20))
    national_id_last4 = BlindIndexField(source="national_id", normalize=last_four, bytes=8)
    date_of_birth = EncryptedField(models.DateField())
    notes = EncryptedField(models.JSONField(default=dict, blank=True))

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "people"

    def __str__(self) -> str:
        # The primary key only: str() ends up in logs and admin messages, names must not.
        return f"Person #{self.pk}"
