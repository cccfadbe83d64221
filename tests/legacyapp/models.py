"""Models that adopt data written by other libraries (see tests/legacy/make_vectors.py).

Each model keeps the legacy column as the legacy library declared it in the database (a plain
``BinaryField``/``TextField``/``CharField``, null=True) beside the new ``EncryptedField`` that
adopts it. The keys are the fixed test keys of the vectors.
"""

from django.db import models

from keyrotation import legacy
from keyrotation.fields import BlindIndexField, EncryptedField

VECTOR_SECRET_KEY = "legacy-vectors-secret-key"  # noqa: S105 - test vectors only
VECTOR_FIELD_ENCRYPTION_KEY = "Xx5pG0o3a0nJ9yFqkZ8Q1lTnR3m7cW2vB4dE6hK8sUY="  # noqa: S105
VECTOR_SALT_KEY = ["legacy-vectors-salt"]


class PlainContact(models.Model):
    """A plaintext column encrypted in place."""

    email_legacy = models.CharField(max_length=254, null=True, blank=True)
    email = EncryptedField(
        models.EmailField(max_length=254), null=True, blank=True, adopt_from="email_legacy"
    )
    email_bidx = BlindIndexField(source="email")
    visits = models.IntegerField(default=0)


class UniqueContact(models.Model):
    """A unique plaintext column encrypted in place: the legacy column keeps its unique index
    (and, on PostgreSQL, the ``_like`` pattern index a ``CharField`` gets) until it is dropped."""

    email_legacy = models.CharField(max_length=254, null=True, unique=True)
    email = EncryptedField(models.EmailField(max_length=254), null=True, adopt_from="email_legacy")
    email_bidx = BlindIndexField(source="email")


CRYPTO = legacy.DjangoCryptography(secret_key=VECTOR_SECRET_KEY)


class CryptoPerson(models.Model):
    """django-cryptography: bytea/BLOB columns."""

    name_legacy = models.BinaryField(null=True)
    number_legacy = models.BinaryField(null=True)
    moment_legacy = models.BinaryField(null=True)
    day_legacy = models.BinaryField(null=True)
    flag_legacy = models.BinaryField(null=True)
    name = EncryptedField(
        models.CharField(max_length=100), null=True, adopt_from="name_legacy", legacy=CRYPTO
    )
    number = EncryptedField(models.IntegerField(), null=True, adopt_from="number_legacy", legacy=CRYPTO)
    moment = EncryptedField(models.DateTimeField(), null=True, adopt_from="moment_legacy", legacy=CRYPTO)
    day = EncryptedField(models.DateField(), null=True, adopt_from="day_legacy", legacy=CRYPTO)
    flag = EncryptedField(models.BooleanField(), null=True, adopt_from="flag_legacy", legacy=CRYPTO)
    name_bidx = BlindIndexField(source="name")


FERNET = legacy.FernetFields(keys=[VECTOR_SECRET_KEY])


class FernetPerson(models.Model):
    """django-fernet-fields: bytea/BLOB columns holding ASCII Fernet tokens."""

    name_legacy = models.BinaryField(null=True)
    number_legacy = models.BinaryField(null=True)
    moment_legacy = models.BinaryField(null=True)
    day_legacy = models.BinaryField(null=True)
    name = EncryptedField(
        models.CharField(max_length=100), null=True, adopt_from="name_legacy", legacy=FERNET
    )
    number = EncryptedField(models.IntegerField(), null=True, adopt_from="number_legacy", legacy=FERNET)
    moment = EncryptedField(models.DateTimeField(), null=True, adopt_from="moment_legacy", legacy=FERNET)
    day = EncryptedField(models.DateField(), null=True, adopt_from="day_legacy", legacy=FERNET)
    name_bidx = BlindIndexField(source="name")


LANSHARK = legacy.EncryptedModelFields(keys=VECTOR_FIELD_ENCRYPTION_KEY)


class LansharkPerson(models.Model):
    """django-encrypted-model-fields: text columns."""

    name_legacy = models.TextField(null=True)
    number_legacy = models.TextField(null=True)
    moment_legacy = models.TextField(null=True)
    day_legacy = models.TextField(null=True)
    flag_legacy = models.TextField(null=True)
    name = EncryptedField(
        models.CharField(max_length=100), null=True, adopt_from="name_legacy", legacy=LANSHARK
    )
    number = EncryptedField(models.IntegerField(), null=True, adopt_from="number_legacy", legacy=LANSHARK)
    moment = EncryptedField(models.DateTimeField(), null=True, adopt_from="moment_legacy", legacy=LANSHARK)
    day = EncryptedField(models.DateField(), null=True, adopt_from="day_legacy", legacy=LANSHARK)
    flag = EncryptedField(models.BooleanField(), null=True, adopt_from="flag_legacy", legacy=LANSHARK)
    name_bidx = BlindIndexField(source="name")


JAZZBAND = legacy.FernetEncryptedFields(secret_keys=[VECTOR_SECRET_KEY], salts=VECTOR_SALT_KEY)


class JazzbandPerson(models.Model):
    """django-fernet-encrypted-fields: text columns."""

    name_legacy = models.TextField(null=True)
    number_legacy = models.TextField(null=True)
    moment_legacy = models.TextField(null=True)
    day_legacy = models.TextField(null=True)
    flag_legacy = models.TextField(null=True)
    name = EncryptedField(
        models.CharField(max_length=100), null=True, adopt_from="name_legacy", legacy=JAZZBAND
    )
    number = EncryptedField(models.IntegerField(), null=True, adopt_from="number_legacy", legacy=JAZZBAND)
    moment = EncryptedField(models.DateTimeField(), null=True, adopt_from="moment_legacy", legacy=JAZZBAND)
    day = EncryptedField(models.DateField(), null=True, adopt_from="day_legacy", legacy=JAZZBAND)
    flag = EncryptedField(models.BooleanField(), null=True, adopt_from="flag_legacy", legacy=JAZZBAND)
    name_bidx = BlindIndexField(source="name")


class PlainMoreTypes(models.Model):
    """Plain float, time, duration and IP address columns encrypted in place."""

    ratio_legacy = models.FloatField(null=True)
    clock_legacy = models.TimeField(null=True)
    span_legacy = models.DurationField(null=True)
    ip_legacy = models.GenericIPAddressField(null=True)
    ratio = EncryptedField(models.FloatField(), null=True, adopt_from="ratio_legacy")
    clock = EncryptedField(models.TimeField(), null=True, adopt_from="clock_legacy")
    span = EncryptedField(models.DurationField(), null=True, adopt_from="span_legacy")
    ip = EncryptedField(models.GenericIPAddressField(), null=True, adopt_from="ip_legacy")
    ratio_bidx = BlindIndexField(source="ratio")
    ip_bidx = BlindIndexField(source="ip")
