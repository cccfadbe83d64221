"""Bench models: the same customer four ways.

* ``Customer``: encrypted email (+ blind index, itself indexed for lookups) and notes; the
  ``*_key_version`` columns are **not** indexed (the library default).
* ``CustomerIndexed``: identical, plus a B-tree index on each ``*_key_version`` column — what
  ``KEYROTATION["INDEX_VERSION_COLUMNS"] = True`` creates — to measure DESIGN §4's trade-off.
* ``CustomerPlain``: the plaintext twin; ``CustomerFernet``: a django-fernet-fields-style twin.
"""

from django.db import models

from keyrotation.fields import BlindIndexField, EncryptedField

from .fernet import FernetTextField


class Customer(models.Model):
    email = EncryptedField(models.EmailField(max_length=254))
    email_bidx = BlindIndexField(source="email", db_index=True)
    notes = EncryptedField(models.TextField())

    class Meta:
        db_table = "bench_customer"

    def __str__(self) -> str:
        return f"customer {self.pk}"


class CustomerIndexed(models.Model):
    email = EncryptedField(models.EmailField(max_length=254))
    email_bidx = BlindIndexField(source="email", db_index=True)
    notes = EncryptedField(models.TextField())

    class Meta:
        db_table = "bench_customer_indexed"
        indexes = [
            models.Index(fields=["email_key_version"], name="bench_ci_email_kv"),
            models.Index(fields=["email_bidx_key_version"], name="bench_ci_bidx_kv"),
            models.Index(fields=["notes_key_version"], name="bench_ci_notes_kv"),
        ]

    def __str__(self) -> str:
        return f"customer {self.pk}"


class CustomerPlain(models.Model):
    email = models.EmailField(max_length=254, db_index=True)
    notes = models.TextField()

    class Meta:
        db_table = "bench_customer_plain"

    def __str__(self) -> str:
        return f"customer {self.pk}"


class CustomerFernet(models.Model):
    email = FernetTextField()
    notes = FernetTextField()

    class Meta:
        db_table = "bench_customer_fernet"

    def __str__(self) -> str:
        return f"customer {self.pk}"
