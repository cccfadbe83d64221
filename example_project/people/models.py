"""The example project's one model: personal data that the library will encrypt.

The fields are plain for now; they become ``EncryptedField`` (with a blind index on ``email``)
once ``keyrotation.fields`` exists.
"""

from django.db import models


class Person(models.Model):
    name = models.CharField(max_length=100)
    email = models.EmailField()
    national_id = models.CharField(max_length=20)
    date_of_birth = models.DateField()
    notes = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "people"

    def __str__(self) -> str:
        # The primary key only: str() ends up in logs and admin messages, names must not.
        return f"Person #{self.pk}"
