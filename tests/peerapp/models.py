"""Models for tests/test_peer_behaviours.py: the field types other encrypted-field libraries test.

One group of models per peer library, declared the way keyrotation documents its fields (options
on the ``EncryptedField``). What does not work today is not declared here, where it would break the
app for the whole suite: base fields ``EncryptedField`` does not support yet (FloatField,
TimeField, GenericIPAddressField) fail at import, and ``auto_now`` / ``auto_now_add`` on the base
field fails in ``deconstruct()`` (so in ``makemigrations`` and ``migrate``). The tests build those
models themselves.
"""

from django.db import models

from keyrotation.fields import BlindIndexField, EncryptedField


class PeerModel(models.Model):
    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{type(self).__name__} {self.pk}"


# -- django-cryptography -------------------------------------------------------------------------


class CryptoInteger(PeerModel):
    field = EncryptedField(models.IntegerField())


class CryptoNullableInteger(PeerModel):
    field = EncryptedField(models.IntegerField(), null=True, blank=True)


class CryptoChar(PeerModel):
    field = EncryptedField(models.CharField(max_length=15))


class CryptoDates(PeerModel):
    moment = EncryptedField(models.DateTimeField())
    day = EncryptedField(models.DateField())


class CryptoOtherTypes(PeerModel):
    uuid = EncryptedField(models.UUIDField())
    decimal = EncryptedField(models.DecimalField(max_digits=5, decimal_places=2))


class PlainToEncrypted(PeerModel):
    """A plaintext column and the encrypted column a data migration copies it into."""

    plain = models.CharField(max_length=15, null=True, blank=True)  # noqa: DJ001 - the legacy column
    secret = EncryptedField(models.CharField(max_length=15), null=True, blank=True)


# -- django-fernet-fields ------------------------------------------------------------------------


class FernetTypes(PeerModel):
    text = EncryptedField(models.TextField())
    char = EncryptedField(models.CharField(max_length=25))
    email = EncryptedField(models.EmailField())
    integer = EncryptedField(models.IntegerField())
    day = EncryptedField(models.DateField())
    moment = EncryptedField(models.DateTimeField())


class FernetNullable(PeerModel):
    value = EncryptedField(models.IntegerField(), null=True)


class FernetIndexed(PeerModel):
    value = EncryptedField(models.CharField(max_length=25))
    value_bidx = BlindIndexField(source="value")


# -- django-fernet-encrypted-fields --------------------------------------------------------------


class JazzTypes(PeerModel):
    char = EncryptedField(models.CharField(max_length=255), null=True, blank=True)
    text = EncryptedField(models.TextField(), null=True, blank=True)
    moment = EncryptedField(models.DateTimeField(), null=True, blank=True)
    integer = EncryptedField(models.IntegerField(), null=True, blank=True)
    day = EncryptedField(models.DateField(), null=True, blank=True)
    email = EncryptedField(models.EmailField(), null=True, blank=True)
    flag = EncryptedField(models.BooleanField(), default=False, null=True)
    data = EncryptedField(models.JSONField(), default=dict, null=True, blank=True)


# -- django-encrypted-model-fields ---------------------------------------------------------------


class LanTypes(PeerModel):
    char = EncryptedField(models.CharField(max_length=100))
    text = EncryptedField(models.TextField())
    day = EncryptedField(models.DateField(), null=True)
    moment = EncryptedField(models.DateTimeField(), null=True)
    flag = EncryptedField(models.BooleanField(), default=True)
    integer = EncryptedField(models.IntegerField(), null=True)
    positive = EncryptedField(models.PositiveIntegerField(), null=True)
    small = EncryptedField(models.SmallIntegerField(), null=True)
    positive_small = EncryptedField(models.PositiveSmallIntegerField(), null=True)
    big = EncryptedField(models.BigIntegerField(), null=True)
