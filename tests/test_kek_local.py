"""The local master-key KEK backend."""

import base64

import pytest

from keyrotation.exceptions import ConfigurationError, KEKRefused
from keyrotation.kek import context_for, load_backend
from keyrotation.kek.local import LocalKEK, generate_key

CTX = context_for("default", "encrypt", 1)


def test_wrap_unwrap_roundtrip():
    kek = LocalKEK({"KEYS": [generate_key()]})
    wrapped, kek_id = kek.wrap(b"k" * 32, CTX)
    assert kek_id == kek.current_id() and kek_id.startswith("local:")
    assert b"k" * 32 not in wrapped
    assert kek.unwrap(wrapped, CTX) == b"k" * 32


def test_previous_keys_unwrap_and_first_key_wraps():
    old, new = generate_key(), generate_key()
    wrapped, old_id = LocalKEK({"KEYS": [old]}).wrap(b"k" * 32, CTX)
    both = LocalKEK({"KEYS": [new, old]})
    assert both.unwrap(wrapped, CTX) == b"k" * 32
    rewrapped, new_id = both.rewrap(wrapped, CTX)
    assert new_id != old_id
    assert LocalKEK({"KEYS": [new]}).unwrap(rewrapped, CTX) == b"k" * 32


def test_wrapped_key_is_bound_to_its_identity():
    kek = LocalKEK({"KEYS": [generate_key()]})
    wrapped, _ = kek.wrap(b"k" * 32, CTX)
    with pytest.raises(KEKRefused, match="failed to unwrap"):
        kek.unwrap(wrapped, context_for("default", "encrypt", 2))


def test_wrong_master_key_names_fingerprints_not_bytes():
    key_a, key_b = generate_key(), generate_key()
    wrapped, _ = LocalKEK({"KEYS": [key_a]}).wrap(b"k" * 32, CTX)
    with pytest.raises(KEKRefused) as info:
        LocalKEK({"KEYS": [key_b]}).unwrap(wrapped, CTX)
    message = str(info.value)
    assert "not among" in message
    for secret in (key_a, key_b, base64.b64decode(key_a).hex(), base64.b64decode(key_b).hex()):
        assert secret not in message


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([], "non-empty list"),
        (None, "non-empty list"),
        (["not base64!"], "not valid base64"),
        ([base64.b64encode(b"short").decode()], "must decode to 32 bytes"),
        ([123], "must be a base64 string"),
        ([""], "only empty values"),
    ],
)
def test_bad_configuration_is_precise(keys, message):
    with pytest.raises(ConfigurationError, match=message):
        LocalKEK({"KEYS": keys})


def test_garbled_wrapped_key():
    kek = LocalKEK({"KEYS": [generate_key()]})
    with pytest.raises(KEKRefused, match="not in the local KEK format"):
        kek.unwrap(b"\x09garbage", CTX)


def test_local_kek_cannot_rotate_itself():
    with pytest.raises(ConfigurationError, match="rotated by configuration"):
        LocalKEK({"KEYS": [generate_key()]}).rotate()


def test_repr_has_no_key_material():
    key = generate_key()
    kek = LocalKEK({"KEYS": [key]})
    assert key not in repr(kek) and base64.b64decode(key).hex() not in repr(kek)


def test_load_backend_errors():
    with pytest.raises(ConfigurationError, match="cannot be imported"):
        load_backend({"BACKEND": "nope.Nope"})
    assert isinstance(load_backend({"BACKEND": "local", "KEYS": [generate_key()]}), LocalKEK)
