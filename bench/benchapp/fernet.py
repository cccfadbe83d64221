"""A Fernet field as django-fernet-fields and its forks implement it (they do not import on
Django 5): a BinaryField whose ``get_db_prep_value`` encrypts with ``MultiFernet`` and whose
``from_db_value`` decrypts every value as the row is loaded. Rotation = a list of keys, newest
first; re-encryption = re-saving every object. Only for the read benchmark."""

from __future__ import annotations

import base64
import functools

from cryptography.fernet import Fernet, MultiFernet
from django.db import models

# Two keys, as during a rotation: the first encrypts, both decrypt.
KEYS = [base64.urlsafe_b64encode(bytes([n]) * 32) for n in (7, 3)]


@functools.cache
def fernet() -> MultiFernet:
    return MultiFernet([Fernet(k) for k in KEYS])


class FernetTextField(models.BinaryField):
    def get_db_prep_value(self, value, connection, prepared=False):
        if value is None:
            return None
        return connection.Database.Binary(fernet().encrypt(str(value).encode("utf-8")))

    def from_db_value(self, value, expression, connection):
        if value is None:
            return None
        return fernet().decrypt(bytes(value)).decode("utf-8")

    def to_python(self, value):
        return value
