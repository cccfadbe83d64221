"""Migrations that add encrypted fields to a table that already has rows (tests.migrapp).

``0002`` adds ``tier = EncryptedField(CharField, default="basic")`` (NOT NULL) with a blind index,
and a nullable ``note``. The rows that exist get one ciphertext of the default, never the plaintext;
``reencrypt`` then gives each its own ciphertext, version and index.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from keyrotation import crypto, engine, lifecycle
from keyrotation.engine import plan as engine_plan
from tests.migrapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("migrapp", "0001_item")]
AFTER = [("migrapp", "0002_encrypted_tier_and_note")]


def migrate(target: list[tuple[str, str]]) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(target)


def columns() -> set[str]:
    with connection.cursor() as cur:
        return {c.name for c in connection.introspection.get_table_description(cur, "migrapp_item")}


def raw_rows() -> list[tuple]:
    with connection.cursor() as cur:
        cur.execute("SELECT id, tier, tier_key_version, tier_bidx, note FROM migrapp_item ORDER BY id")
        return [(pk, bytes(t) if t is not None else None, v, b, n) for pk, t, v, b, n in cur.fetchall()]


@pytest.fixture
def old_table(keys):
    """The table as it was before 0002, with three rows."""
    migrate(BEFORE)
    assert "tier" not in columns()
    with connection.cursor() as cur:
        for name in ("a", "b", "c"):
            cur.execute("INSERT INTO migrapp_item (name) VALUES (%s)", [name])
    yield
    migrate(AFTER)


def test_adding_a_not_null_encrypted_field_with_a_default_fills_rows_with_ciphertext(old_table):
    migrate(AFTER)
    rows = raw_rows()
    assert len(rows) == 3
    for _pk, token, version, index, note in rows:
        assert token is not None and b"basic" not in token
        assert crypto.token_version(token) == 1
        assert (version, index, note) == (None, None, None)
    assert [(i.name, i.tier, i.note) for i in Item.objects.order_by("pk")] == [
        ("a", "basic", None),
        ("b", "basic", None),
        ("c", "basic", None),
    ]


def test_reencrypt_gives_each_filled_row_its_own_ciphertext_version_and_index(old_table):
    migrate(AFTER)
    pending = {row["label"]: row for row in engine_plan.census_rows()}
    assert pending["migrapp.Item.tier"]["rows"] == 3
    assert pending["migrapp.Item.tier"]["on_active"] == 0
    report = engine.reencrypt(batch_size=2)
    assert report.ok, report.status
    rows = raw_rows()
    tokens = {token for _pk, token, _v, _i, _n in rows}
    assert len(tokens) == 3  # one ciphertext each now
    assert all(version == 1 and index is not None for _pk, _t, version, index, _n in rows)
    assert Item.objects.filter(tier="basic").count() == 3


def test_the_retire_gate_counts_filled_rows_by_their_header(old_table):
    migrate(AFTER)
    lifecycle.rotate("default", "encrypt")
    from keyrotation import census

    assert census.references("default", "encrypt", 1)["migrapp.Item.tier"] == 3
    assert census.references("default", "encrypt", 2)["migrapp.Item.tier"] == 0


def test_the_migration_reverses_and_applies_again(old_table):
    migrate(AFTER)
    migrate(BEFORE)
    assert {"tier", "tier_key_version", "tier_bidx", "note"}.isdisjoint(columns())
    with connection.cursor() as cur:
        cur.execute("SELECT name FROM migrapp_item ORDER BY id")
        assert [r[0] for r in cur.fetchall()] == ["a", "b", "c"]
    migrate(AFTER)
    assert [i.tier for i in Item.objects.order_by("pk")] == ["basic"] * 3


def test_adding_to_an_empty_table_needs_no_key(transactional_db):
    from keyrotation import keyring
    from keyrotation.models import DataKey

    migrate(BEFORE)
    DataKey.objects.all().delete()
    keyring.clear_cache()
    try:
        migrate(AFTER)
        assert raw_rows() == []
    finally:
        migrate(AFTER)
