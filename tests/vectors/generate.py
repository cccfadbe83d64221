"""Regenerate the known-answer vectors: ``python -m tests.vectors.generate``.

The vectors pin the stored byte formats (docs/formats.md). They are built here with the raw
primitives of ``cryptography`` following the written spec, not with ``keyrotation.crypto``, so
the tests compare the implementation against the spec rather than against itself. Once committed,
a change to these files is a format change and needs a new format byte.
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
    for name, data in [("encrypt", encrypt), ("blind_index", index), ("invalid", invalid)]:
        (HERE / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
