"""Regenerate the known-answer vectors: ``python -m tests.vectors.generate``.

The vectors pin the stored byte formats (docs/formats.md): 0x01 in ``encrypt.json`` and
``invalid.json``, 0x02 (row-bound) in ``encrypt_bound.json`` and ``invalid_bound.json``. They are
built here with the raw primitives of ``cryptography`` following the written spec, not with
``keyrotation.crypto``, so the tests compare the implementation against the spec rather than
against itself. Once committed, a change to these files is a format change and needs a new format
byte.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HERE = Path(__file__).parent


def subkey(dek: bytes, purpose: str, label: str) -> bytes:
    info = purpose.encode() + b"\x00" + label.encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(dek)


def token(dek: bytes, label: str, version: int, nonce: bytes, plaintext: bytes) -> bytes:
    header = struct.pack(">BI", 1, version)
    return (
        header
        + nonce
        + AESGCM(subkey(dek, "encrypt", label)).encrypt(nonce, plaintext, header + label.encode())
    )


def bound_token(
    dek: bytes, label: str, version: int, binding: bytes, nonce: bytes, plaintext: bytes
) -> bytes:
    """Format 0x02: the AAD adds the length-prefixed label and bound value."""
    header = struct.pack(">BI", 2, version)
    label_bytes = label.encode()
    aad = (
        header + struct.pack(">I", len(label_bytes)) + label_bytes + struct.pack(">I", len(binding)) + binding
    )
    return header + nonce + AESGCM(subkey(dek, "encrypt", label)).encrypt(nonce, plaintext, aad)


def bound_vectors(deks: list[bytes]) -> tuple[list[dict], list[dict]]:
    """``encrypt_bound.json`` and ``invalid_bound.json`` (format 0x02)."""
    cases = [
        (0, "testapp.BoundPerson.ssn", 1, b"00000000-0000-4000-8000-000000000001", b"123-45-6789"),
        (0, "testapp.BoundPerson.ssn", 1, b"00000000-0000-4000-8000-000000000002", b"123-45-6789"),
        (1, "people.Person.notes", 4294967295, b"42", "ünïcödé ✓ 𝄞".encode()),
        (2, "app.Model.f", 7, b"", b""),
        (2, "app.Model.g", 300, "clé-é".encode(), json.dumps({"a": [1, 2, {}]}).encode()),
    ]
    encrypt = []
    for i, (d, label, version, binding, plaintext) in enumerate(cases):
        nonce = hashlib.sha256(b"bound nonce%d" % i).digest()[:12]
        dek = deks[d]
        encrypt.append(
            {
                "dek": dek.hex(),
                "label": label,
                "version": version,
                "binding": binding.hex(),
                "nonce": nonce.hex(),
                "plaintext": plaintext.hex(),
                "subkey": subkey(dek, "encrypt", label).hex(),
                "token": bound_token(dek, label, version, binding, nonce, plaintext).hex(),
            }
        )
    base = encrypt[0]
    tok = bytes.fromhex(base["token"])
    # The same nonce and plaintext sealed as format 0x01: valid 0x01, never a valid 0x02.
    v1 = token(deks[0], base["label"], 1, tok[5:17], bytes.fromhex(base["plaintext"]))
    flipped = bytearray(tok)
    flipped[-1] ^= 1
    invalid = [
        {"why": "bound to another row", "token": tok.hex(), "binding": encrypt[1]["binding"]},
        {"why": "bound value with a byte dropped", "token": tok.hex(), "binding": base["binding"][:-2]},
        {"why": "empty bound value", "token": tok.hex(), "binding": ""},
        {"why": "copied to another column", "token": tok.hex(), "label": "testapp.BoundPerson.name"},
        {"why": "last tag bit flipped", "token": bytes(flipped).hex()},
        {"why": "truncated by one byte", "token": tok[:-1].hex()},
        {"why": "format byte rewritten to 0x01", "token": (b"\x01" + tok[1:]).hex()},
        {"why": "a format 0x01 token", "token": v1.hex()},
        {"why": "format 0x01 token relabelled 0x02", "token": (b"\x02" + v1[1:]).hex()},
        {"why": "unknown format byte", "token": (b"\x03" + tok[1:]).hex()},
        {
            "why": "forged version (header re-written)",
            "token": (tok[:1] + struct.pack(">I", 9) + tok[5:]).hex(),
        },
        {"why": "wrong key", "token": tok.hex(), "dek": deks[1].hex()},
    ]
    for case in invalid:
        case.setdefault("label", base["label"])
        case.setdefault("binding", base["binding"])
        case.setdefault("dek", base["dek"])
        case["error"] = "InvalidToken"
    return encrypt, invalid


def main() -> None:
    deks = [bytes(range(32)), bytes.fromhex("ff" * 32), hashlib.sha256(b"keyrotation vector dek").digest()]
    cases = [
        (0, "people.Person.email", 1, b"alice@example.com"),
        (0, "people.Person.email", 2, b""),
        (1, "people.Person.notes", 4294967295, "ünïcödé ✓ 𝄞".encode()),
        (2, "app.Model.f", 7, b"\x00" * 100),
        (2, "app.Model.g", 300, json.dumps({"a": [1, 2, {}]}).encode()),
    ]
    encrypt = []
    for i, (d, label, version, plaintext) in enumerate(cases):
        nonce = hashlib.sha256(b"nonce%d" % i).digest()[:12]
        dek = deks[d]
        encrypt.append(
            {
                "dek": dek.hex(),
                "label": label,
                "version": version,
                "nonce": nonce.hex(),
                "plaintext": plaintext.hex(),
                "subkey": subkey(dek, "encrypt", label).hex(),
                "token": token(dek, label, version, nonce, plaintext).hex(),
            }
        )
    index = []
    for d, label, value, length in [
        (0, "people.Person.email_bidx", b"alice@example.com", 16),
        (1, "people.Person.national_id_bidx", b"1234", 8),
        (2, "app.Model.f_bidx", b"", 32),
    ]:
        key = subkey(deks[d], "index", label)
        index.append(
            {
                "dek": deks[d].hex(),
                "label": label,
                "value": value.hex(),
                "length": length,
                "subkey": key.hex(),
                "index": hmac.new(key, value, hashlib.sha256).digest()[:length].hex(),
            }
        )
    base = encrypt[0]
    tok = bytes.fromhex(base["token"])
    flipped = bytearray(tok)
    flipped[-1] ^= 1
    body_flip = bytearray(tok)
    body_flip[20] ^= 0x80
    forged = bytearray(tok)
    forged[4] = 9
    invalid = [
        {"why": "last tag bit flipped", "token": bytes(flipped).hex()},
        {"why": "ciphertext bit flipped", "token": bytes(body_flip).hex()},
        {"why": "truncated by one byte", "token": tok[:-1].hex()},
        {"why": "only a header", "token": tok[:5].hex()},
        {"why": "empty", "token": ""},
        {"why": "unknown format byte", "token": (b"\x02" + tok[1:]).hex()},
        {"why": "version zero", "token": (tok[:1] + b"\x00\x00\x00\x00" + tok[5:]).hex()},
        {"why": "forged version (header re-written)", "token": bytes(forged).hex()},
        {"why": "copied to another column", "token": tok.hex(), "label": "people.Person.name"},
        {"why": "wrong key", "token": tok.hex(), "dek": deks[1].hex()},
    ]
    for case in invalid:
        case.setdefault("label", base["label"])
        case.setdefault("dek", base["dek"])
        case["error"] = "InvalidToken"
    encrypt_bound, invalid_bound = bound_vectors(deks)
    for name, data in [
        ("encrypt", encrypt),
        ("blind_index", index),
        ("invalid", invalid),
        ("encrypt_bound", encrypt_bound),
        ("invalid_bound", invalid_bound),
    ]:
        (HERE / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
