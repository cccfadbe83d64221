"""Bench models: a two-column customer four ways, and a real-shaped person.

* ``Customer``: encrypted email (+ blind index, itself indexed for lookups) and notes; the
  ``*_key_version`` columns are **not** indexed (the library default).
* ``CustomerIndexed``: identical, plus a B-tree index on each ``*_key_version`` column — what
  ``KEYROTATION["INDEX_VERSION_COLUMNS"] = True`` creates — to measure DESIGN §4's trade-off.
* ``CustomerPlain``: the plaintext twin; ``CustomerFernet``: a django-fernet-fields-style twin;
  ``CustomerBinary``: the same columns as ``Customer`` holding the same bytes, as plain
  ``BinaryField`` and integer columns (the read baseline: fetching the bytes, no field layer).
* ``Person``: the shape of a real table of personal data: six encrypted fields (email, name,
  phone, national id, date of birth, a JSON note), two blind indexes (the email's unique, the
  national id's last four digits indexed), plain columns with ordinary indexes (``account_id``,
  a foreign-key-like integer, and ``created_at``).
* ``PersonFill``: the same shape in its own table, for the fillfactor experiment (its storage
  parameters change between steps; ``Person``'s never do).
* ``PersonBinary``: ``Person``'s columns and bytes without the field layer (read baseline).
"""

from django.db import models

from keyrotation.fields import BlindIndexField, EncryptedField

from .fernet import FernetTextField


def last_four(value: str) -> str:
    """Normalisation of the national-id index: the last four digits only."""
    return "".join(ch for ch in value if ch.isdigit())[-4:]


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


class CustomerBinary(models.Model):
    email = models.BinaryField()
    email_key_version = models.SmallIntegerField(null=True)
    email_bidx = models.BinaryField()  # not indexed: MariaDB cannot index a BLOB, reads do not need it
    email_bidx_key_version = models.SmallIntegerField(null=True)
    notes = models.BinaryField()
    notes_key_version = models.SmallIntegerField(null=True)

    class Meta:
        db_table = "bench_customer_binary"

    def __str__(self) -> str:
        return f"customer {self.pk}"


class PersonShape(models.Model):
    account_id = models.IntegerField(db_index=True)
    created_at = models.DateTimeField(db_index=True)
    status = models.CharField(max_length=16)
    email = EncryptedField(models.EmailField(max_length=254))
    email_bidx = BlindIndexField(source="email", unique=True)
    name = EncryptedField(models.CharField(max_length=100))
    phone = EncryptedField(models.CharField(max_length=32))
    national_id = EncryptedField(models.CharField(max_length=20))
    national_id_last4 = BlindIndexField(source="national_id", normalize=last_four, bytes=8, db_index=True)
    date_of_birth = EncryptedField(models.DateField())
    notes = EncryptedField(models.JSONField(default=dict))

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"person {self.pk}"


class Person(PersonShape):
    class Meta:
        db_table = "bench_person"


class PersonFill(PersonShape):
    class Meta:
        db_table = "bench_person_fill"


class PersonBinary(models.Model):
    account_id = models.IntegerField(db_index=True)
    created_at = models.DateTimeField(db_index=True)
    status = models.CharField(max_length=16)
    email = models.BinaryField()
    email_key_version = models.SmallIntegerField(null=True)
    email_bidx = models.BinaryField()
    email_bidx_key_version = models.SmallIntegerField(null=True)
    name = models.BinaryField()
    name_key_version = models.SmallIntegerField(null=True)
    phone = models.BinaryField()
    phone_key_version = models.SmallIntegerField(null=True)
    national_id = models.BinaryField()
    national_id_key_version = models.SmallIntegerField(null=True)
    national_id_last4 = models.BinaryField()
    national_id_last4_key_version = models.SmallIntegerField(null=True)
    date_of_birth = models.BinaryField()
    date_of_birth_key_version = models.SmallIntegerField(null=True)
    notes = models.BinaryField()
    notes_key_version = models.SmallIntegerField(null=True)

    class Meta:
        db_table = "bench_person_binary"

    def __str__(self) -> str:
        return f"person {self.pk}"
