"""Switching KEKs with ``KEYROTATION["KEK"]["PREVIOUS"]``: local → Vault, Vault → Vault (another
mount, another key), Vault → local, on a real OpenBao and the test database (SQLite or PostgreSQL).

Every switch follows docs/vault.md: set PREVIOUS to the old settings and KEK to the new, create the
Transit key (``rotatekeys --init``), read, ``rotatekeys --rewrap``, check, remove PREVIOUS, read.
"""

from __future__ import annotations

import base64
import io
import json
import os
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from keyrotation import audit_chain, checks, conf, keyring, lifecycle
from keyrotation.exceptions import ConfigurationError, KEKRefused, KEKUnavailable
from keyrotation.kek import Claim, KEKSwitch, Wrapper, context_for, load_backend, load_kek
from keyrotation.kek.local import generate_key
from keyrotation.models import DataKey, KeyRotationAudit
from keyrotation.testing import assert_no_leak
from tests.testapp.models import Person

pytestmark = pytest.mark.django_db(transaction=True)  # the commands close connections on exit

EMAILS = [f"switch-{i}@example.org" for i in range(5)]


# -- helpers -------------------------------------------------------------------------------


def local(key: str | None = None) -> dict:
    return {"BACKEND": "local", "KEYS": [key or generate_key()]}


def vault_kek(vault, mount: str = "transit", key_name: str | None = None, token: str | None = None) -> dict:
    return {
        "BACKEND": "vault",
        "URL": vault.addr,
        "TOKEN": token or vault.token,
        "MOUNT": mount,
        "KEY_NAME": key_name or f"sw-{uuid.uuid4().hex[:8]}",
    }


def use(settings, kek: dict, previous: dict | None = None) -> None:
    """Deploy ``kek`` (with ``previous`` as PREVIOUS): a new process, nothing cached."""
    settings.KEYROTATION = {**settings.KEYROTATION, "KEK": {**kek, "PREVIOUS": previous} if previous else kek}
    keyring.clear_cache()


def command(name: str, *args: str) -> str:
    out = io.StringIO()
    call_command(name, *args, stdout=out)
    return out.getvalue()


def raw_rows() -> list[tuple]:
    with connection.cursor() as cur:
        cur.execute("SELECT id, email, email_key_version, email_bidx FROM testapp_person ORDER BY id")
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in cur.fetchall()]


def reads_work() -> None:
    keyring.clear_cache()  # every data key comes through the KEKs again
    assert [p.email for p in Person.objects.order_by("pk")] == EMAILS
    assert Person.objects.filter(email=EMAILS[2]).count() == 1  # the blind index too


def listed() -> dict[str, tuple[str, str]]:
    """``{"keyring/purpose vN": (wrapped_by, kek_id)}`` from ``rotatekeys --list --json``."""
    keys = json.loads(command("rotatekeys", "--list", "--json"))["keys"]
    return {f"{k['keyring']}/{k['purpose']} v{k['version']}": (k["wrapped_by"], k["kek_id"]) for k in keys}


def kek_messages() -> list:
    return checks.check_kek_of_stored_keys(databases=["default"]) + checks.check_key_states(
        databases=["default"]
    )


def audit_ok() -> None:
    out = command("audit_verify")  # exits 1 on a broken chain or an unauthenticated key state
    assert out.startswith("OK: ") and "every key's state is authenticated" in out, out
    assert checks.check_key_states(databases=["default"]) == []


def start(settings, kek: dict) -> list[tuple]:
    use(settings, kek)
    lifecycle.init("default", actor="test")
    Person.objects.bulk_create(Person(name=str(i), email=e) for i, e in enumerate(EMAILS))
    assert {by for by, _ in listed().values()} == {"current"}
    assert kek_messages() == []
    return raw_rows()


def switch(settings, old: dict, new: dict, before: list[tuple]) -> None:
    """The documented procedure, checked at every step."""
    old_ids = {kek_id for _, kek_id in listed().values()}
    # 1. deploy KEK = new, PREVIOUS = old; create the new Transit key (existing keys untouched)
    use(settings, new, previous=old)
    assert "keys already exist" in command("rotatekeys", "--init")
    reads_work()
    assert {by for by, _ in listed().values()} == {"previous"}
    assert "previous" in command("rotation_status")
    [warning] = kek_messages()
    assert warning.id == "keyrotation.W002" and "rotatekeys --rewrap" in warning.hint
    assert all(kek_id in warning.msg for kek_id in old_ids)
    # 2. rewrap: every key moves, once
    rewraps = KeyRotationAudit.objects.filter(action="kek_rewrapped")
    rewraps_before = rewraps.count()
    out = command("rotatekeys", "--rewrap")
    new_id = load_backend(new).current_id()
    assert f"re-wrapped 3 data key(s) under {new_id}" in out, out
    assert "nothing to re-wrap: all 3 data key(s)" in command("rotatekeys", "--rewrap")
    entry = rewraps.latest("id")
    assert entry.details["kek_after"] == new_id and set(entry.details["kek_before"]) == old_ids
    assert rewraps.count() == rewraps_before + 1  # the no-op run wrote no audit row
    assert listed() == dict.fromkeys(listed(), ("current", new_id))
    status = json.loads(command("rotation_status", "--json"))
    assert {(k["wrapped_by"], k["kek_id"]) for k in status["keys"]} == {("current", new_id)}
    assert kek_messages() == []
    reads_work()
    audit_ok()
    # 3. remove PREVIOUS
    use(settings, new)
    reads_work()
    assert kek_messages() == []
    audit_ok()
    assert raw_rows() == before  # no user row was touched
    assert DataKey.objects.get(keyring=audit_chain.AUDIT_KEYRING).version == 1  # the same chain key


# -- the switches, on the real OpenBao -----------------------------------------------------


@pytest.mark.vault
def test_local_to_vault(vault, settings):
    old = local()
    before = start(settings, old)
    switch(settings, old, vault_kek(vault), before)


@pytest.mark.vault
def test_vault_to_another_mount(vault, settings):
    if "transit2/" not in vault.client.sys.list_mounted_secrets_engines()["data"]:
        vault.client.sys.enable_secrets_engine("transit", path="transit2")
    name = f"sw-{uuid.uuid4().hex[:8]}"
    old = vault_kek(vault, key_name=name)
    before = start(settings, old)
    switch(settings, old, vault_kek(vault, mount="transit2", key_name=name), before)  # same key name


@pytest.mark.vault
def test_vault_to_another_key_then_to_local_for_disaster_recovery(vault, settings):
    first = vault_kek(vault)
    before = start(settings, first)
    second = vault_kek(vault)
    switch(settings, first, second, before)
    switch(settings, second, local(), before)


# -- what goes wrong -----------------------------------------------------------------------


@pytest.mark.vault
def test_previous_removed_too_early_is_one_clear_line(vault, settings, capsys):
    from keyrotation.management.commands.rotatekeys import Command

    old = local()
    start(settings, old)
    use(settings, vault_kek(vault))  # PREVIOUS forgotten
    call_command("rotatekeys", "--init", stdout=io.StringIO())
    before = set(DataKey.objects.values_list("kek_id", "wrapped_key"))
    local_id = load_backend(old).current_id()
    with pytest.raises(SystemExit) as exited:
        Command().run_from_argv(["manage.py", "rotatekeys", "--rewrap"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("CommandError: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"wrapped by {local_id}" in err and 'KEYROTATION["KEK"]["PREVIOUS"] is not set' in err
    assert set(DataKey.objects.values_list("kek_id", "wrapped_key")) == before
    with pytest.raises(KEKRefused, match=f"wrapped by {local_id}.*PREVIOUS"):
        Person.objects.first().email  # noqa: B018
    [error] = checks.check_kek_of_stored_keys(databases=["default"])
    assert error.id == "keyrotation.E006" and local_id in error.msg and "PREVIOUS" in error.hint


@pytest.mark.vault
def test_a_wrong_previous_changes_nothing(vault, settings):
    start(settings, local())
    use(settings, vault_kek(vault), previous=local())  # another local master key
    call_command("rotatekeys", "--init", stdout=io.StringIO())
    before = set(DataKey.objects.values_list("kek_id", "wrapped_key"))
    audits = KeyRotationAudit.objects.count()
    with pytest.raises(CommandError, match="neither the current KEK .* nor KEYROTATION") as info:
        command("rotatekeys", "--rewrap")
    assert "\n" not in str(info.value)
    assert set(DataKey.objects.values_list("kek_id", "wrapped_key")) == before
    assert KeyRotationAudit.objects.count() == audits
    assert {by for by, _ in listed().values()} == {"unknown"}
    assert [m.id for m in checks.check_kek_of_stored_keys(databases=["default"])] == ["keyrotation.E006"]


def test_a_rewrap_that_fails_half_way_changes_nothing_and_runs_again(settings):
    old = local()
    before = start(settings, old)
    key = generate_key()
    flaky = {"BACKEND": "tests.kek_switch_support.FailingAfterKEK", "KEYS": [key], "FAIL_AFTER": 1}
    use(settings, flaky, previous=old)
    stored = set(DataKey.objects.values_list("kek_id", "wrapped_key"))
    with pytest.raises(CommandError, match="test KEK out of reach"):
        command("rotatekeys", "--rewrap")  # the first key re-wraps, the second does not
    assert set(DataKey.objects.values_list("kek_id", "wrapped_key")) == stored  # all or nothing
    assert not KeyRotationAudit.objects.filter(action="kek_rewrapped").exists()
    reads_work()
    # a plugin without claim(): its keys are told apart by the previous KEK's "no"
    assert {by for by, _ in listed().values()} == {"previous"}
    use(settings, {**flaky, "FAIL_AFTER": None}, previous=old)
    assert "re-wrapped 3 data key(s)" in command("rotatekeys", "--rewrap")
    assert {by for by, _ in listed().values()} == {"current"}
    use(settings, {**flaky, "FAIL_AFTER": None})
    reads_work()
    audit_ok()
    assert raw_rows() == before


class Secrets:
    """Keys of the leak test; the repr shows none (the test's frame is in every traceback)."""

    def __init__(self) -> None:
        self.values: list[str | bytes] = []
        self.made: dict[str, dict] = {}

    def __repr__(self) -> str:
        return f"<{len(self.values)} secrets>"


def _read_only_token(vault, key_name: str) -> str:
    policy = f"read-only-{key_name}"
    hcl = f'path "transit/keys/{key_name}" {{ capabilities = ["read"] }}'
    vault.client.sys.create_or_update_policy(name=policy, policy=hcl)
    return vault.client.auth.token.create(policies=[policy], ttl="10m")["auth"]["client_token"]


@pytest.fixture
def switch_secrets(vault, settings):
    """A project on a random local master key, about to move to Vault; every key is a secret.

    ``made``: the old KEK, the new one, and the new one with a token that may read the Transit
    key but not encrypt with it."""
    holder = Secrets()
    master = os.urandom(32)
    holder.values += [master, vault.token]
    old = {"BACKEND": "local", "KEYS": [base64.b64encode(master).decode()]}
    start(settings, old)
    kek = load_backend(old)
    for row in DataKey.objects.all():
        ctx = context_for(row.keyring, row.purpose, row.version)
        holder.values.append(kek.unwrap(bytes(row.wrapped_key), ctx))
    new = vault_kek(vault)
    load_backend(new).ensure_key()
    refused = {**new, "TOKEN": _read_only_token(vault, new["KEY_NAME"])}
    holder.values.append(refused["TOKEN"])
    holder.made.update(old=old, new=new, refused=refused)
    return holder


@pytest.mark.vault
def test_no_key_bytes_in_output_logs_or_exception_frames(switch_secrets, settings):
    """A data key unwrapped by the previous KEK and refused by the new one (its token may read the
    Transit key, not encrypt) passes through the switch: the refusal's frames hold none of it."""
    made = switch_secrets.made.get  # (the dicts themselves must not be locals of this frame)
    with assert_no_leak(switch_secrets.values) as leak:
        use(settings, made("refused"), previous=made("old"))
        with leak.raises(KEKUnavailable, error_reports=True):
            lifecycle.rewrap(actor="test")
        assert "permission denied" in str(leak.exceptions[-1])
        out, err, code = leak.call_command("rotatekeys", "--rewrap")
        assert code == 1
        use(settings, made("new"), previous=made("old"))
        out, err, code = leak.call_command("rotatekeys", "--rewrap")
        assert code == 0 and "re-wrapped 3 data key(s)" in out
        leak.call_command("rotatekeys", "--list")
        leak.call_command("rotation_status", "--json")
        use(settings, made("new"))
        reads_work()
        use(settings, local(), previous=made("old"))  # keys now under Vault: neither KEK has them
        with leak.raises(KEKRefused, error_reports=True):
            Person.objects.first().email  # noqa: B018


# -- settings, identities and routing (no server) ------------------------------------------


def test_previous_is_validated(settings):
    for previous, message in [
        ("local", "must be a KEK options dict"),
        ({"KEYS": [generate_key()]}, "must be a KEK options dict"),
        ({**local(), "PREVIOUS": local()}, 'may not have a "PREVIOUS" of its own'),
    ]:
        settings.KEYROTATION = {**settings.KEYROTATION, "KEK": {**local(), "PREVIOUS": previous}}
        with pytest.raises(ConfigurationError, match=message):
            conf.previous_kek()
        assert [e.id for e in checks.check_settings()] == ["keyrotation.E001"]
    settings.KEYROTATION = {**settings.KEYROTATION, "KEK": {**local(), "PREVIOUS": {"BACKEND": "local"}}}
    [error] = checks.check_settings()
    assert error.id == "keyrotation.E001" and error.msg.startswith('in KEYROTATION["KEK"]["PREVIOUS"]: ')
    settings.KEYROTATION = {**settings.KEYROTATION, "KEK": {**local(), "PREVIOUS": None}}
    assert conf.previous_kek() is None and checks.check_settings() == []
    assert "PREVIOUS" not in conf.current_kek()


def test_vault_ids_name_address_mount_and_key_never_credentials():
    from keyrotation.kek.vault import VaultTransitKEK, address

    assert address("https://user:secret@Vault.Example/") == "vault.example:443"
    assert address("http://[::1]:8200") == "[::1]:8200" and address(None) == "unknown"
    kek = VaultTransitKEK(
        {
            "BACKEND": "vault",
            "URL": "https://u:pw@vault.example:8200",
            "TOKEN": "t0ken",
            "MOUNT": "m",
            "KEY_NAME": "k",
        }
    )
    assert kek.identity == "vault://vault.example:8200/m/k" and "pw" not in kek.identity
    ns = VaultTransitKEK(
        {
            "BACKEND": "vault",
            "URL": "https://vault.example:8200",
            "TOKEN": "t",
            "NAMESPACE": "team/",
            "MOUNT": "m",
            "KEY_NAME": "k",
        }
    )
    assert ns.identity == "vault://vault.example:8200/team/m/k"
    ct = b"vault:v1:abc"
    assert kek.claim("vault://vault.example:8200/m/k:v3", ct) is Claim.EXACT
    assert kek.claim("vault://10.0.0.5:8200/m/k:v3", ct) is Claim.POSSIBLE  # the same server?
    assert kek.claim("vault://vault.example:8200/m/other:v1", ct) is Claim.NO
    assert kek.claim("vault:m/k:v1", ct) is Claim.POSSIBLE  # written before ids named the address
    assert kek.claim("vault:transit/k:v1", ct) is Claim.NO
    assert kek.claim("vault://vault.example:8200/m/k:v1", b"\x01" + b"x" * 40) is Claim.NO
    assert kek.claim("local:0011223344556677", ct) is Claim.NO


def test_routing_by_identity_and_by_trying(settings):
    a, b = load_backend(local()), load_backend(local())
    ctx = context_for("default", "encrypt", 1)
    wrapped_a, id_a = a.wrap(b"k" * 32, ctx)
    wrapped_b, id_b = b.wrap(b"j" * 32, ctx)
    pair = KEKSwitch(b, a)
    assert (
        pair.wrapper(id_a, wrapped_a) is Wrapper.PREVIOUS and pair.wrapper(id_b, wrapped_b) is Wrapper.CURRENT
    )
    assert pair.unwrap(wrapped_a, ctx, kek_id=id_a) == b"k" * 32
    moved, moved_id = pair.rewrap(wrapped_a, ctx, kek_id=id_a)
    assert moved_id == id_b and b.unwrap(moved, ctx) == b"k" * 32
    assert KEKSwitch(b).wrapper(id_a, wrapped_a) is Wrapper.UNKNOWN
    with pytest.raises(KEKRefused, match=f"default/encrypt v1 was wrapped by {id_a}"):
        KEKSwitch(b).unwrap(wrapped_a, ctx, kek_id=id_a)
    # two backends that cannot tell (plugins without claim()): tried in turn, current first
    from tests.kek_switch_support import FailingAfterKEK

    key_a, key_b = generate_key(), generate_key()
    plugin_a = FailingAfterKEK({"KEYS": [key_a]})
    plugin_b = FailingAfterKEK({"KEYS": [key_b]})
    wrapped, _ = plugin_a.wrap(b"p" * 32, ctx)
    blind = KEKSwitch(plugin_b, plugin_a)
    assert blind.wrapper("", wrapped) is Wrapper.EITHER
    assert blind.unwrap(wrapped, ctx) == b"p" * 32
    settings.KEYROTATION = {
        **settings.KEYROTATION,
        "KEK": {**local(key_b), "PREVIOUS": local(key_a)},
    }
    assert load_kek().wrapper("", wrapped) is Wrapper.PREVIOUS
