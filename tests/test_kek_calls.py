"""KEK call counts (keyrotation.kek.calls): every wrap, unwrap and rewrap that reaches a backend
through the KEKSwitch is counted per backend name, configured KEK and operation, with its
failures by reason; the counts hold names only."""

from __future__ import annotations

import threading

import pytest

from keyrotation import keyring, lifecycle
from keyrotation.exceptions import KEKRefused, KEKUnreachable
from keyrotation.kek import KEKSwitch, context_for, load_backend, load_kek
from keyrotation.kek.calls import COUNTS, Call, CallCounts, reason_of
from keyrotation.kek.local import generate_key
from tests import servers
from tests.testapp.models import Person

CTX = context_for("default", "encrypt", 1)


def local(key: str | None = None) -> dict:
    return {"BACKEND": "local", "KEYS": [key or generate_key()]}


def moved(before: dict, after: dict) -> dict:
    """The counts that changed between two snapshots, as differences (COUNTS is process-wide)."""
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def test_each_operation_is_counted_under_the_configured_backend_name(settings):
    settings.KEYROTATION = {**settings.KEYROTATION, "KEK": local()}
    switch = load_kek()
    before = COUNTS.calls()
    wrapped, kek_id = switch.wrap(b"k" * 32, CTX)
    assert switch.unwrap(wrapped, CTX, kek_id=kek_id) == b"k" * 32
    switch.rewrap(wrapped, CTX, kek_id=kek_id)
    assert moved(before, COUNTS.calls()) == {
        Call("local", "current", "wrap"): 1,
        Call("local", "current", "unwrap"): 1,
        Call("local", "current", "rewrap"): 1,
    }


def test_a_move_from_the_previous_kek_counts_its_two_calls(settings):
    old, new = local(), local()
    wrapped, kek_id = load_backend(old).wrap(b"m" * 32, CTX)
    settings.KEYROTATION = {**settings.KEYROTATION, "KEK": {**new, "PREVIOUS": old}}
    before = COUNTS.calls()
    load_kek().rewrap(wrapped, CTX, kek_id=kek_id)
    assert moved(before, COUNTS.calls()) == {
        Call("local", "previous", "unwrap"): 1,
        Call("local", "current", "wrap"): 1,
    }


def test_a_refusal_is_an_error_with_its_reason_and_still_propagates():
    kek = load_backend(local())
    wrapped, kek_id = kek.wrap(b"r" * 32, CTX)
    switch = KEKSwitch(kek)  # built by hand: named by its class
    name = "keyrotation.kek.local.LocalKEK"
    tampered = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    calls, errors = COUNTS.calls(), COUNTS.errors()
    with pytest.raises(KEKRefused, match="tampered"):
        switch.unwrap(tampered, CTX, kek_id=kek_id)
    assert moved(calls, COUNTS.calls()) == {Call(name, "current", "unwrap"): 1}
    assert moved(errors, COUNTS.errors()) == {(Call(name, "current", "unwrap"), "refused"): 1}
    # A key that the switch can tell no configured KEK wrapped is refused before any call.
    other, other_id = load_backend(local()).wrap(b"o" * 32, CTX)
    calls, errors = COUNTS.calls(), COUNTS.errors()
    with pytest.raises(KEKRefused, match="not the current KEK"):
        switch.unwrap(other, CTX, kek_id=other_id)
    assert moved(calls, COUNTS.calls()) == {} and moved(errors, COUNTS.errors()) == {}


def test_an_unreachable_vault_is_counted_as_unreachable(settings):
    port = servers.free_port()  # nothing listens there
    settings.KEYROTATION = {
        **settings.KEYROTATION,
        "KEK": {"BACKEND": "vault", "URL": f"http://127.0.0.1:{port}", "TOKEN": "t", "TIMEOUT": 1},
    }
    errors = COUNTS.errors()
    with pytest.raises(KEKUnreachable):
        load_kek().wrap(b"v" * 32, CTX)
    assert moved(errors, COUNTS.errors()) == {(Call("vault", "current", "wrap"), "unreachable"): 1}


@pytest.mark.django_db
def test_keys_in_use_go_through_the_counts(keys):
    """The library's own paths (rotation wraps, a read unwraps) reach the KEK through the switch."""
    before = COUNTS.calls()
    lifecycle.rotate("default", "encrypt", actor="test")
    keyring.clear_cache()
    Person.objects.create(name="counted", email="counted@example.org")
    after = moved(before, COUNTS.calls())
    assert after.get(Call("local", "current", "wrap"), 0) >= 1
    assert after.get(Call("local", "current", "unwrap"), 0) >= 1


def test_reasons_and_a_private_counter():
    assert reason_of(KEKRefused("no")) == "refused"
    assert reason_of(KEKUnreachable("later")) == "unreachable"
    assert reason_of(ValueError("bug")) == "other"
    counts = CallCounts()
    call = Call("custom.Backend", "current", "unwrap")

    def hammer():
        for _ in range(500):
            with counts.counting(call):
                pass

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with pytest.raises(RuntimeError), counts.counting(call):
        raise RuntimeError("backend bug")
    assert counts.calls() == {call: 2001}
    assert counts.errors() == {(call, "other"): 1}
    assert repr(counts) == "<KEK call counts: 2001 calls>"
