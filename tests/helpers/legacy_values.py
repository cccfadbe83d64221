"""Legacy values written the way the legacy libraries write them, for tests that forge or tamper."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC


def django_cryptography_key(secret_key: str) -> bytes:
    """The AES key django-cryptography derives from ``SECRET_KEY``."""
    return PBKDF2HMAC(hashes.SHA256(), 32, b"django-cryptography", 30000).derive(secret_key.encode())


def django_cryptography_value(secret_key: str, data: bytes) -> bytes:
    """A django-cryptography value of the pickle ``data``, signed and encrypted under ``secret_key``:
    ``0x80 | timestamp | IV | AES-CBC(PKCS7(data)) | HMAC-SHA256(secret_key, all before)``."""
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(django_cryptography_key(secret_key)), modes.CBC(iv)).encryptor()
    body = b"\x80" + struct.pack(">Q", 1_700_000_000) + iv
    body += encryptor.update(padder.update(data) + padder.finalize()) + encryptor.finalize()
    return body + hmac.new(secret_key.encode(), body, hashlib.sha256).digest()
