"""A model whose encrypted fields were added by a migration to a table that already had rows."""

from django.db import models

from keyrotation.fields import BlindIndexField, EncryptedField


class Item(models.Model):
    name = models.CharField(max_length=50)
    tier = EncryptedField(models.CharField(max_length=10), default="basic")
    tier_bidx = BlindIndexField(source="tier")
    note = EncryptedField(models.TextField(), null=True)

    def __str__(self) -> str:
        return self.name
