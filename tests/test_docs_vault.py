"""The Transit policies of docs/vault.md, installed on a real OpenBao: each token can do what the
page says, and nothing more."""

import re
import uuid
from pathlib import Path

import pytest
from django.core.management import call_command

from keyrotation import keyring
from keyrotation.exceptions import KEKUnavailable
from keyrotation.kek import context_for
from keyrotation.kek.vault import VaultTransitKEK

pytestmark = [pytest.mark.vault, pytest.mark.django_db]
PAGE = Path(__file__).resolve().parent.parent / "docs" / "vault.md"
CTX = context_for("default", "encrypt", 1)


def policies(key_name: str) -> dict[str, str]:
    """The policy blocks of the page (``# keyrotation-...`` first line), with the key name replaced."""
    blocks = re.findall(r"^```text\n(# keyrotation-.*?)^```", PAGE.read_text(), re.S | re.M)
    out = {}
    for block in blocks:
        name = block.splitlines()[0].lstrip("# ").strip()
        out[name] = block.replace("/keyrotation", f"/{key_name}")
    return out


def token_for(vault, name: str, hcl: str) -> str:
    vault.client.sys.create_or_update_policy(name=name, policy=hcl)
    return vault.client.auth.token.create(policies=[name], ttl="10m")["auth"]["client_token"]


@pytest.fixture
def tokens(vault):
    key_name = f"kr-doc-{uuid.uuid4().hex[:8]}"
    docs = policies(key_name)
    assert set(docs) == {"keyrotation-app", "keyrotation-rotation"}
    made = {role: token_for(vault, f"{role}-{key_name}", hcl) for role, hcl in docs.items()}
    return key_name, made


def options(vault, key_name, token):
    return {"BACKEND": "vault", "URL": vault.addr, "TOKEN": token, "KEY_NAME": key_name}


def test_rotation_policy_runs_init_and_kek_rotation(vault, tokens, settings):
    key_name, made = tokens
    settings.KEYROTATION = {
        **settings.KEYROTATION,
        "KEK": options(vault, key_name, made["keyrotation-rotation"]),
    }
    keyring.clear_cache()
    try:
        call_command("rotatekeys", "--init")
        call_command("rotatekeys")
        call_command("rotatekeys", "--rewrap", "--rotate-kek")
        VaultTransitKEK(settings.KEYROTATION["KEK"]).check()

        # The application token, on the keys the rotation job made: it reads and writes values...
        settings.KEYROTATION = {
            **settings.KEYROTATION,
            "KEK": options(vault, key_name, made["keyrotation-app"]),
        }
        keyring.clear_cache()
        token, version = keyring.encrypt("default", "people.Person.email", b"ada@example.com")
        assert version == 2
        assert keyring.decrypt("default", "people.Person.email", token) == b"ada@example.com"
    finally:
        keyring.clear_cache()


def test_app_policy_unwraps_but_cannot_wrap_rewrap_or_rotate(vault, tokens):
    key_name, made = tokens
    job = VaultTransitKEK(options(vault, key_name, made["keyrotation-rotation"]))
    assert job.ensure_key() is True
    wrapped, _ = job.wrap(b"k" * 32, CTX)

    app = VaultTransitKEK(options(vault, key_name, made["keyrotation-app"]))
    app.check()
    assert app.unwrap(wrapped, CTX) == b"k" * 32
    for attempt in (lambda: app.wrap(b"k" * 32, CTX), lambda: app.rewrap(wrapped, CTX), app.rotate):
        with pytest.raises(KEKUnavailable, match="permission denied"):
            attempt()
    with pytest.raises(KEKUnavailable, match="permission denied"):
        VaultTransitKEK(options(vault, f"{key_name}-other", made["keyrotation-app"])).ensure_key()
