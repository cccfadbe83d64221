"""The Vault/OpenBao Transit KEK, against a real OpenBao server (no mocks)."""

import base64
import uuid

import hvac
import pytest

from keyrotation import keyring, lifecycle
from keyrotation.exceptions import KEKRefused, KEKUnavailable, KEKUnreachable
from keyrotation.kek import context_for, load_backend
from keyrotation.kek.vault import VaultTransitKEK
from keyrotation.models import DataKey

pytestmark = pytest.mark.vault
CTX = context_for("default", "encrypt", 1)


@pytest.fixture
def vault_options(vault):
    return {
        "BACKEND": "vault",
        "URL": vault.addr,
        "TOKEN": vault.token,
        "KEY_NAME": f"kr-{uuid.uuid4().hex[:8]}",
    }


@pytest.fixture
def vault_settings(settings, vault_options):
    settings.KEYROTATION = {**settings.KEYROTATION, "KEK": vault_options}
    keyring.clear_cache()
    return vault_options


def test_wrap_unwrap_rewrap_roundtrip(vault_options):
    kek = load_backend(vault_options)
    assert kek.ensure_key() is True and kek.ensure_key() is False
    kek.check()
    wrapped, kek_id = kek.wrap(b"k" * 32, CTX)
    assert wrapped.startswith(b"vault:v1:") and kek_id.endswith(":v1")
    assert kek.unwrap(wrapped, CTX) == b"k" * 32
    assert kek.rotate().endswith(":v2")
    rewrapped, new_id = kek.rewrap(wrapped, CTX)
    assert rewrapped.startswith(b"vault:v2:") and new_id.endswith(":v2")
    assert kek.unwrap(rewrapped, CTX) == b"k" * 32


def test_wrapped_key_is_bound_to_its_identity(vault_options):
    kek = load_backend(vault_options)
    kek.ensure_key()
    wrapped, _ = kek.wrap(b"k" * 32, CTX)
    with pytest.raises(KEKUnavailable, match="request rejected"):
        kek.unwrap(wrapped, context_for("default", "encrypt", 2))


def test_non_derived_key_fails_the_check(vault, vault_options):
    vault.client.secrets.transit.create_key(name=vault_options["KEY_NAME"])
    with pytest.raises(KEKRefused, match="not a derived key"):
        load_backend(vault_options).check()


def _non_derived_key(vault, name: str) -> bytes:
    """Create a Transit key without derivation; return a data key wrapped by it (as a version
    that accepted such a key would have stored)."""
    vault.client.secrets.transit.create_key(name=name)  # derived defaults to false
    plaintext = base64.b64encode(b"k" * 32).decode()
    resp = vault.client.secrets.transit.encrypt_data(name=name, plaintext=plaintext)
    return resp["data"]["ciphertext"].encode()


def test_wrap_unwrap_and_rewrap_refuse_a_non_derived_key(vault, vault_options):
    """Transit ignores the context of a key that is not derived: a wrapped key would open on any
    DataKey row. Every KEK operation refuses such a key, with how to create a derived one."""
    wrapped = _non_derived_key(vault, vault_options["KEY_NAME"])
    kek = load_backend(vault_options)
    for attempt in (
        kek.ensure_key,
        lambda: kek.wrap(b"k" * 32, CTX),
        lambda: kek.unwrap(wrapped, CTX),
        lambda: kek.rewrap(wrapped, CTX),
    ):
        with pytest.raises(KEKRefused, match="not a derived key") as info:
            attempt()
        assert "derived=true" in str(info.value) and "derived=True" in str(info.value)


@pytest.mark.django_db(transaction=True)  # the command closes the connections when it exits
def test_init_refuses_a_non_derived_key_with_one_line_and_exit_code_1(vault, vault_settings, capsys):
    from keyrotation.management.commands.rotatekeys import Command

    _non_derived_key(vault, vault_settings["KEY_NAME"])
    with pytest.raises(SystemExit) as exited:
        Command().run_from_argv(["manage.py", "rotatekeys", "--init"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("CommandError: ") and err.count("\n") == 1, err
    assert "not a derived key" in err and "derived=true" in err and "Traceback" not in err
    assert not DataKey.objects.exists()


def test_derived_check_reads_the_key_once_per_backend(vault_options):
    kek = load_backend(vault_options)
    kek.ensure_key()
    kek.wrap(b"k" * 32, CTX)
    wrapped, _ = kek.wrap(b"k" * 32, CTX)
    assert kek.requests == 4  # read (missing), create, two encrypts: no read per wrap
    fresh = load_backend(vault_options)
    fresh.unwrap(wrapped, CTX)
    fresh.unwrap(wrapped, CTX)
    assert fresh.requests == 3  # one read of the key's configuration, two decrypts


def _policy_token(vault, name: str, hcl: str) -> str:
    vault.client.sys.create_or_update_policy(name=name, policy=hcl)
    return vault.client.auth.token.create(policies=[name], ttl="10m")["auth"]["client_token"]


@pytest.fixture
def broken_vault_options(vault, vault_options):
    """Per kind of permanent failure: options that fail that way on a key holding a wrapped key."""
    kek = load_backend(vault_options)
    kek.ensure_key()
    name = vault_options["KEY_NAME"]
    read_only = f'path "transit/keys/{name}" {{ capabilities = ["read"] }}'
    read_only = _policy_token(vault, f"read-{name}", read_only)
    return {
        "invalid token": {**vault_options, "TOKEN": "not-a-token"},
        "denied policy": {**vault_options, "TOKEN": read_only},
        "unknown key": {**vault_options, "KEY_NAME": f"{name}-missing"},
        "unknown mount": {**vault_options, "MOUNT": "no-such-transit"},
    }


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("invalid token", "permission denied"),
        ("denied policy", "permission denied"),
        ("unknown key", "not found"),
        ("unknown mount", "not found"),
    ],
)
def test_permanent_vault_failures_are_refusals(vault_options, broken_vault_options, case, reason):
    wrapped, _ = load_backend(vault_options).wrap(b"k" * 32, CTX)
    with pytest.raises(KEKRefused, match=reason):
        load_backend(broken_vault_options[case]).unwrap(wrapped, CTX)


def test_revoked_token_is_a_clear_error_without_the_token(vault, vault_options):
    kek = load_backend(vault_options)
    kek.ensure_key()
    wrapped, _ = kek.wrap(b"k" * 32, CTX)
    child = vault.client.auth.token.create(policies=["root"], ttl="1h")["auth"]["client_token"]
    revoked = VaultTransitKEK({**vault_options, "TOKEN": child})
    vault.client.auth.token.revoke(child)
    with pytest.raises(KEKUnavailable) as info:
        revoked.unwrap(wrapped, CTX)
    assert "permission denied" in str(info.value)
    assert child not in str(info.value) and vault.token not in str(info.value)


def test_unreachable_vault(vault_options):
    from tests.servers import free_port

    kek = VaultTransitKEK({**vault_options, "URL": f"http://127.0.0.1:{free_port()}", "TIMEOUT": 2})
    with pytest.raises(KEKUnreachable, match="cannot connect"):
        kek.wrap(b"k" * 32, CTX)


@pytest.mark.django_db
def test_rewrap_command_path_keeps_data_readable(vault_settings):
    lifecycle.init("default")
    token, _ = keyring.encrypt("default", "a.B.c", b"payload")
    kek = keyring.kek_backend()
    kek.rotate()
    assert lifecycle.rewrap() == 3  # both data keys and the audit chain key
    assert set(DataKey.objects.values_list("kek_id", flat=True)) == {kek.current_id()}
    assert all(
        bytes(w).startswith(b"vault:v2:") for w in DataKey.objects.values_list("wrapped_key", flat=True)
    )
    keyring.clear_cache()
    assert keyring.decrypt("default", "a.B.c", token) == b"payload"


@pytest.mark.django_db
def test_transit_calls_grow_with_versions_not_rows(vault_settings):
    """Reading 10,000 rows written under two key versions costs one unwrap per version, and one for
    the audit chain key (whose MACs authenticate the key states)."""
    from tests.testapp.models import Person

    lifecycle.init("default")
    Person.objects.bulk_create(Person(name=str(i), email=f"v1-{i}@example.com") for i in range(5000))
    lifecycle.rotate("default", "encrypt")
    keyring.invalidate()
    Person.objects.bulk_create(Person(name=str(i), email=f"v2-{i}@example.com") for i in range(5000))
    assert set(Person.objects.values_list("email_key_version", flat=True).distinct()) == {1, 2}
    keyring.clear_cache()  # a fresh process: nothing unwrapped yet
    kek = keyring.kek_backend()
    emails = [p.email for p in Person.objects.order_by("pk")]
    assert len(emails) == 10_000 and emails[0] == "v1-0@example.com" and emails[-1] == "v2-4999@example.com"
    # the key's configuration once, the audit chain key once, then one unwrap per version
    assert kek.requests == 4


def test_sealed_vault_then_unsealed(openbao_server):
    options = {
        "BACKEND": "vault",
        "URL": openbao_server.addr,
        "TOKEN": openbao_server.token,
        "KEY_NAME": "sealtest",
        "TIMEOUT": 5,
    }
    kek = load_backend(options)
    kek.ensure_key()
    wrapped, _ = kek.wrap(b"k" * 32, CTX)
    hvac.Client(url=openbao_server.addr, token=openbao_server.token).sys.seal()
    with pytest.raises(KEKUnreachable, match="sealed or unavailable"):
        kek.unwrap(wrapped, CTX)
    openbao_server.restart()  # static auto-unseal: comes back unsealed with the same data
    assert load_backend(options).unwrap(wrapped, CTX) == b"k" * 32


def test_forked_processes_do_not_share_the_vault_client(vault_settings, vault_options):
    """A client used before a fork (the run's audit row) must not be shared by the children:
    their requests would interleave on the parent's keep-alive connection."""
    import multiprocessing

    from keyrotation.keyring import _UNWRAPPED

    kek = load_backend(vault_options)
    kek.ensure_key()
    wrapped, _ = kek.wrap(b"k" * 32, CTX)
    _UNWRAPPED._backend = kek
    try:
        assert kek.unwrap(wrapped, CTX) == b"k" * 32  # the pooled connection now exists

        def child(queue):
            backend = _UNWRAPPED.backend()
            try:
                ok = all(backend.unwrap(wrapped, CTX) == b"k" * 32 for _ in range(40))
                queue.put(("ok" if ok else "wrong", backend is kek))
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                queue.put((type(exc).__name__, backend is kek))

        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        procs = [ctx.Process(target=child, args=(queue,)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        results = [queue.get(timeout=5) for _ in procs]
        assert results == [("ok", False)] * 4
    finally:
        _UNWRAPPED._backend = None
