"""The crypto core against the known-answer vectors, plus its input checks."""

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyrotation import crypto

VECTORS = Path(__file__).parent / "vectors"


def load(name):
    return json.loads((VECTORS / f"{name}.json").read_text())


@pytest.mark.parametrize("v", load("encrypt"), ids=lambda v: f"{v['label']}-v{v['version']}")
def test_encrypt_vectors(v):
    dek = bytes.fromhex(v["dek"])
    subkey = crypto.derive_subkey(dek, "encrypt", v["label"])
    assert subkey.hex() == v["subkey"]
    token = crypto._encrypt_from_parts(
        subkey, v["version"], v["label"], bytes.fromhex(v["plaintext"]), bytes.fromhex(v["nonce"])
    )
    assert token.hex() == v["token"]
    assert crypto.token_version(token) == v["version"]
    assert crypto.decrypt(subkey, v["label"], bytes.fromhex(v["token"])).hex() == v["plaintext"]


@pytest.mark.parametrize(
    "v", load("encrypt_bound"), ids=lambda v: f"{v['label']}-v{v['version']}-{v['binding']}"
)
def test_encrypt_bound_vectors(v):
    dek = bytes.fromhex(v["dek"])
    subkey = crypto.derive_subkey(dek, "encrypt", v["label"])
    assert subkey.hex() == v["subkey"]
    binding, plaintext = bytes.fromhex(v["binding"]), bytes.fromhex(v["plaintext"])
    token = crypto._encrypt_bound_from_parts(
        subkey, v["version"], v["label"], binding, plaintext, bytes.fromhex(v["nonce"])
    )
    assert token.hex() == v["token"]
    assert crypto.token_header(token) == (crypto.FORMAT_V2, v["version"])
    assert crypto.token_version(token) == crypto.header_version(token) == v["version"]
    assert crypto.decrypt_bound(subkey, v["label"], binding, token) == plaintext
    cipher = crypto.Cipher(subkey, v["version"], v["label"])
    assert cipher.decrypt_bound(token, binding) == plaintext
    with pytest.raises(crypto.InvalidToken):  # a bound value never opens as format 0x01
        cipher.decrypt(token)
    with pytest.raises(crypto.InvalidToken):
        crypto.decrypt(subkey, v["label"], token)


@pytest.mark.parametrize("v", load("invalid_bound"), ids=lambda v: v["why"])
def test_invalid_bound_vectors(v):
    subkey = crypto.derive_subkey(bytes.fromhex(v["dek"]), "encrypt", v["label"])
    token, binding = bytes.fromhex(v["token"]), bytes.fromhex(v["binding"])
    with pytest.raises(crypto.InvalidToken) as info:
        crypto.decrypt_bound(subkey, v["label"], binding, token)
    assert str(info.value) == ""  # opaque: "another row" looks like any other failure
    version = crypto.header_version(token) or 1
    with pytest.raises(crypto.InvalidToken):
        crypto.Cipher(subkey, version, v["label"]).decrypt_bound(token, binding)


def test_format_0x01_vectors_still_open_with_the_cipher_that_also_opens_0x02():
    for v in load("encrypt"):
        subkey = bytes.fromhex(v["subkey"])
        cipher = crypto.Cipher(subkey, v["version"], v["label"])
        token = bytes.fromhex(v["token"])
        assert crypto.token_header(token) == (crypto.FORMAT_V1, v["version"])
        assert cipher.decrypt(token).hex() == v["plaintext"]
        with pytest.raises(crypto.InvalidToken):
            cipher.decrypt_bound(token, b"")


def test_cipher_bound_batch_matches_one_by_one():
    cipher = crypto.Cipher(bytes(range(32)), 3, "a.B.c")
    bindings = [b"1", b"2", b""]
    tokens = cipher.encrypt_many_bound([b"x", b"y", b"z"], bindings)
    assert [cipher.decrypt_bound(t, b) for t, b in zip(tokens, bindings, strict=True)] == [b"x", b"y", b"z"]
    assert cipher.decrypt_bound(cipher.encrypt_bound(b"w", b"9"), b"9") == b"w"
    with pytest.raises(crypto.InvalidToken):
        cipher.decrypt_bound(tokens[0], bindings[1])


@given(st.binary(max_size=512), st.binary(max_size=64), st.binary(max_size=64))
def test_bound_roundtrip_property_and_other_bindings_fail(plaintext, binding, other):
    key = bytes(range(32))
    token = crypto.encrypt_bound(key, 5, "app.Model.field", binding, plaintext)
    assert len(token) == crypto.MIN_TOKEN_BYTES + len(plaintext)
    assert crypto.decrypt_bound(key, "app.Model.field", binding, token) == plaintext
    if other != binding:
        with pytest.raises(crypto.InvalidToken):
            crypto.decrypt_bound(key, "app.Model.field", other, token)


@pytest.mark.parametrize("v", load("blind_index"), ids=lambda v: v["label"])
def test_blind_index_vectors(v):
    subkey = crypto.derive_subkey(bytes.fromhex(v["dek"]), "index", v["label"])
    assert subkey.hex() == v["subkey"]
    assert crypto.blind_index(subkey, bytes.fromhex(v["value"]), v["length"]).hex() == v["index"]


@pytest.mark.parametrize("v", load("invalid"), ids=lambda v: v["why"])
def test_invalid_vectors(v):
    subkey = crypto.derive_subkey(bytes.fromhex(v["dek"]), "encrypt", v["label"])
    with pytest.raises(crypto.InvalidToken) as info:
        crypto.decrypt(subkey, v["label"], bytes.fromhex(v["token"]))
    assert str(info.value) == ""  # opaque: no detail, no bytes


def test_random_nonces_differ():
    key = bytes(32)
    assert crypto.encrypt(key, 1, "a.B.c", b"x") != crypto.encrypt(key, 1, "a.B.c", b"x")


def test_subkeys_are_separated_by_purpose_and_label():
    dek = bytes(range(32))
    keys = {
        crypto.derive_subkey(dek, p, label) for p in crypto.PURPOSES for label in ("a.B.c", "a.B.d", "a.C.c")
    }
    assert len(keys) == 6


@given(st.binary(max_size=2048), st.integers(1, crypto.MAX_VERSION))
def test_roundtrip_property(plaintext, version):
    key = bytes(range(32))
    token = crypto.encrypt(key, version, "app.Model.field", plaintext)
    assert len(token) == crypto.MIN_TOKEN_BYTES + len(plaintext)
    assert crypto.token_version(token) == version
    assert crypto.decrypt(key, "app.Model.field", token) == plaintext


@given(st.binary(max_size=200))
def test_decoder_only_raises_invalid_token(garbage):
    with pytest.raises(crypto.InvalidToken):
        crypto.decrypt(bytes(32), "app.Model.field", garbage)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: crypto.derive_subkey(b"short", "encrypt", "a.B.c"), ValueError, "dek must be 32 bytes"),
        (lambda: crypto.derive_subkey("x" * 32, "encrypt", "a.B.c"), TypeError, "dek must be bytes"),
        (lambda: crypto.derive_subkey(bytes(32), "sign", "a.B.c"), ValueError, "purpose must be one of"),
        (lambda: crypto.derive_subkey(bytes(32), "encrypt", ""), ValueError, "label must not be empty"),
        (lambda: crypto.encrypt(bytes(32), 0, "a.B.c", b""), ValueError, "version must be between"),
        (lambda: crypto.encrypt(bytes(32), 2**32, "a.B.c", b""), ValueError, "version must be between"),
        (lambda: crypto.encrypt(bytes(32), True, "a.B.c", b""), TypeError, "version must be an int"),
        (lambda: crypto.encrypt(bytes(32), 1, "a.B.c", "text"), TypeError, "plaintext must be bytes"),
        (lambda: crypto._encrypt_from_parts(bytes(32), 1, "a.B.c", b"", b"x"), ValueError, "nonce must be"),
        (lambda: crypto.blind_index(bytes(32), b"v", 3), ValueError, "length must be an int from 4 to 32"),
        (lambda: crypto.encrypt_bound(bytes(32), 1, "a.B.c", "id", b""), TypeError, "binding must be bytes"),
        (
            lambda: crypto.encrypt_bound(bytes(32), 1, "a.B.c", b"1", "x"),
            TypeError,
            "plaintext must be bytes",
        ),
        (
            lambda: crypto.encrypt_bound(bytes(32), 0, "a.B.c", b"1", b""),
            ValueError,
            "version must be between",
        ),
        (lambda: crypto.decrypt_bound(bytes(32), "a.B.c", None, b""), TypeError, "binding must be bytes"),
        (lambda: crypto.blind_index(bytes(32), "v", 8), TypeError, "value must be bytes"),
    ],
)
def test_misuse_is_precise(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_fingerprint_is_stable_and_not_the_key():
    key = bytes(range(32))
    assert crypto.fingerprint(key) == crypto.fingerprint(key)
    assert len(crypto.fingerprint(key)) == 16
    assert key.hex()[:16] not in crypto.fingerprint(key)
