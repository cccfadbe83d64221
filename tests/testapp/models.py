"""Models used only by the test suite."""

import uuid

from django.core.validators import RegexValidator
from django.db import models

from keyrotation.fields import BlindIndexField, EncryptedField


class Person(models.Model):
    name = models.CharField(max_length=100, blank=True)
    email = EncryptedField(models.EmailField(max_length=254), null=True, blank=True)
    email_bidx = BlindIndexField(source="email")
    ssn = EncryptedField(models.CharField(max_length=11), null=True, blank=True)

    def __str__(self) -> str:
        return self.name


class Note(models.Model):
    person = models.ForeignKey(Person, on_delete=models.CASCADE, related_name="notes")
    body = EncryptedField(models.TextField(), default="")

    def __str__(self) -> str:
        return f"note {self.pk}"


class Account(models.Model):
    username = EncryptedField(models.CharField(max_length=50))
    username_bidx = BlindIndexField(source="username", unique=True, bytes=12)

    def __str__(self) -> str:
        return f"account {self.pk}"


class AllTypes(models.Model):
    char = EncryptedField(models.CharField(max_length=200), null=True)
    text = EncryptedField(models.TextField(), null=True)
    integer = EncryptedField(models.IntegerField(), null=True)
    big = EncryptedField(models.BigIntegerField(), null=True)
    dec = EncryptedField(models.DecimalField(max_digits=30, decimal_places=10), null=True)
    day = EncryptedField(models.DateField(), null=True)
    moment = EncryptedField(models.DateTimeField(), null=True)
    flag = EncryptedField(models.BooleanField(), null=True)
    data = EncryptedField(models.JSONField(), null=True)
    blob = EncryptedField(models.BinaryField(), null=True)
    uid = EncryptedField(models.UUIDField(), null=True)
    uid_bidx = BlindIndexField(source="uid")
    moment_bidx = BlindIndexField(source="moment")

    def __str__(self) -> str:
        return f"alltypes {self.pk}"


class Secret(models.Model):
    """A UUID primary key: chunk cursors that are not integers."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    value = EncryptedField(models.TextField())
    value_bidx = BlindIndexField(source="value")

    def __str__(self) -> str:
        return f"secret {self.pk}"


def _upper_only(value):
    from django.core.exceptions import ValidationError

    if value != value.upper():
        raise ValidationError("must be upper case", code="upper")


TIERS = [("basic", "Basic"), ("pro", "Professional")]


class Profile(models.Model):
    """Ordinary Django options, each given on the base field or on the wrapper."""

    created = EncryptedField(models.DateTimeField(auto_now_add=True))
    updated = EncryptedField(models.DateTimeField(auto_now=True))
    born = EncryptedField(models.DateField(auto_now_add=True), null=True)
    age = EncryptedField(models.IntegerField(null=True, blank=True))
    nickname = EncryptedField(models.CharField(max_length=40, blank=True), null=True)
    tier = EncryptedField(models.CharField(max_length=10), choices=TIERS, default="basic")
    color = EncryptedField(
        models.CharField(max_length=10, choices=[("r", "Red"), ("g", "Green")], blank=True, default="r")
    )
    code = EncryptedField(
        models.CharField(max_length=10, validators=[_upper_only]),
        validators=[RegexValidator(r"^[A-Z0-9]+$", code="alnum")],
        null=True,
        blank=True,
        verbose_name="customer code",
        help_text="Upper case letters and digits.",
    )
    email = EncryptedField(models.EmailField(max_length=254), null=True, blank=True)
    email_bidx = BlindIndexField(source="email", unique=True)

    def __str__(self) -> str:
        return f"profile {self.pk}"


class MoreTypes(models.Model):
    """Float, time, duration and IP address values, and subclasses of the other supported fields."""

    ratio = EncryptedField(models.FloatField(), null=True)
    clock = EncryptedField(models.TimeField(), null=True)
    span = EncryptedField(models.DurationField(), null=True)
    ip = EncryptedField(models.GenericIPAddressField(), null=True)
    ip_unpacked = EncryptedField(models.GenericIPAddressField(unpack_ipv4=True), null=True)
    slug = EncryptedField(models.SlugField(), null=True)  # its default db_index is the base's, not a column's
    url = EncryptedField(models.URLField(), null=True)
    email = EncryptedField(models.EmailField(), null=True)
    path = EncryptedField(models.FilePathField(), null=True)
    small = EncryptedField(models.SmallIntegerField(), null=True)
    positive = EncryptedField(models.PositiveIntegerField(), null=True)
    positive_small = EncryptedField(models.PositiveSmallIntegerField(), null=True)
    positive_big = EncryptedField(models.PositiveBigIntegerField(), null=True)
    ratio_bidx = BlindIndexField(source="ratio")
    ip_bidx = BlindIndexField(source="ip")
    span_bidx = BlindIndexField(source="span")

    def __str__(self) -> str:
        return f"moretypes {self.pk}"


class BoundPerson(models.Model):
    """Values bound to their row (format 0x02): by a client-generated UUID primary key, and by
    another unique field."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    code = models.CharField(max_length=20, unique=True)
    ssn = EncryptedField(models.CharField(max_length=11), null=True, blank=True, bind_to="id")
    ssn_bidx = BlindIndexField(source="ssn")
    notes = EncryptedField(models.TextField(), null=True, blank=True, bind_to="id")  # no blind index
    badge = EncryptedField(models.CharField(max_length=20), null=True, blank=True, bind_to="code")
    pin_legacy = models.IntegerField(null=True, blank=True)  # plaintext being adopted
    pin = EncryptedField(models.IntegerField(), null=True, blank=True, bind_to="id", adopt_from="pin_legacy")

    def __str__(self) -> str:
        return f"bound person {self.pk}"
