"""What stays on disk after adoption and re-encryption, and the report that shows it.

On PostgreSQL the table's files are read byte by byte (the test process can read the data
directory: ``make test``'s throwaway cluster runs as the test's user, or the tests run as root):
the plaintexts of an adopted column, and the ciphertexts of a rotated one, are still there after
``reencrypt``, and gone after the clean-up that ``docs/adoption.md`` gives, step by step.
"""

from __future__ import annotations

import json
import secrets
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections

from keyrotation import engine, keyring, lifecycle, residue
from tests.legacyapp import models as lm
from tests.testapp import models as tm

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = 300


def adopted_contacts(rows: int = ROWS) -> list[str]:
    """``rows`` distinctive plaintexts written into the legacy column, then adopted by reencrypt."""
    tag = secrets.token_hex(6)
    emails = [f"residue-{tag}-{i:04d}@example.org" for i in range(rows)]
    lm.UniqueContact.objects.bulk_create(lm.UniqueContact(email_legacy=e) for e in emails)
    return emails


def only(tables: list[residue.TableResidue], model) -> residue.TableResidue:
    [table] = [t for t in tables if t.model == model._meta.label]
    return table


# -- both backends ---------------------------------------------------------------------------


def test_legacy_values_and_the_indexes_that_cover_them(keys):
    emails = adopted_contacts(40)
    before = only(residue.report([lm.UniqueContact._meta.label]), lm.UniqueContact)
    assert before.vendor == connection.vendor
    [col] = before.legacy_columns
    assert (col.field, col.column, col.present, col.values) == (
        "legacyapp.UniqueContact.email",
        "email_legacy",
        True,
        40,
    )
    assert before.next_step.startswith("run `manage.py reencrypt --model legacyapp.UniqueContact`")
    assert "40 legacy value(s)" in before.next_step
    assert not before.clean
    # The unique constraint covers the legacy column everywhere; PostgreSQL adds a _like index.
    unique = [i for i in before.legacy_indexes if i.constraint]
    assert len(unique) == 1 and unique[0].columns == ("email_legacy",)
    like = [i for i in before.legacy_indexes if i.name and i.name.endswith("_like")]
    assert len(like) == (1 if connection.vendor == "postgresql" else 0)
    # Only legacy columns count: the primary key and the version columns' checks do not.
    assert all(i.columns == ("email_legacy",) for i in before.legacy_indexes)

    assert engine.reencrypt([lm.UniqueContact._meta.label]).ok
    after = only(residue.report([lm.UniqueContact._meta.label]), lm.UniqueContact)
    assert after.legacy_columns[0].values == 0
    assert after.legacy_indexes == before.legacy_indexes
    if connection.vendor == "mysql":  # a unique key is dropped as an index
        assert after.next_step == f"ALTER TABLE legacyapp_uniquecontact DROP INDEX {unique[0].name}"
    elif connection.vendor == "postgresql":
        assert after.next_step == "; ".join(i.drop(after.table) for i in after.legacy_indexes)
        drop = "ALTER TABLE legacyapp_uniquecontact DROP CONSTRAINT legacyapp_uniquecontact_email_legacy_key"
        assert drop in after.next_step
        assert f"DROP INDEX {like[0].name}" in after.next_step
    else:  # SQLite's inline UNIQUE has no name: only dropping the column removes it
        assert after.next_step == (
            "drop the legacy column email_legacy: its unnamed unique constraint goes with it"
        )
    assert not any(e in repr(after) + json.dumps(after.as_dict(), default=str) for e in emails)


def test_a_model_without_adoption_has_no_legacy_part(keys):
    tm.Person.objects.create(name="p", email="p@example.org")
    table = only(residue.report([tm.Person._meta.label]), tm.Person)
    assert table.legacy_columns == [] and table.legacy_indexes == []


def test_every_model_with_encrypted_fields_by_default(keys):
    labels = {t.model for t in residue.report()}
    assert {"testapp.Person", "legacyapp.UniqueContact", "legacyapp.PlainContact"} <= labels
    assert "auth.User" not in labels


# -- SQLite ----------------------------------------------------------------------------------


@pytest.fixture
def sqlite_only():
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's free pages and secure_delete")


def test_sqlite_free_pages_and_secure_delete(keys, sqlite_only):
    big = "x" * 3000
    tm.Person.objects.bulk_create(tm.Person(name=big) for _ in range(200))
    tm.Person.objects.all().delete()
    table = only(residue.report([tm.Person._meta.label]), tm.Person)
    assert table.sqlite.freelist_pages > 0
    assert table.next_step == f"VACUUM: {table.sqlite.freelist_pages:,} free page(s) in the database file"
    assert table.postgresql is None

    with connection.cursor() as cursor:
        cursor.execute("PRAGMA secure_delete = ON")
        cursor.execute("VACUUM")
    table = only(residue.report([tm.Person._meta.label]), tm.Person)
    assert table.sqlite.freelist_pages == 0
    assert table.sqlite.secure_delete is True
    assert table.sqlite.journal_mode == "memory"  # Django's in-memory test database
    assert table.clean and table.next_step == residue.CLEAN
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA secure_delete = OFF")
    assert only(residue.report([tm.Person._meta.label]), tm.Person).sqlite.secure_delete is False


# -- the command -----------------------------------------------------------------------------


def run(*args: str) -> tuple[str, int]:
    out = StringIO()
    try:
        call_command("rotation_residue", *args, stdout=out)
    except SystemExit as exc:
        return out.getvalue(), int(exc.code)
    return out.getvalue(), 0


def test_command_text_shows_what_is_left_and_never_a_value(keys):
    emails = adopted_contacts(12)
    out, code = run("--model", "legacyapp.UniqueContact")
    assert code == 0  # a report exits 0 whatever it finds
    assert out.splitlines()[0] == (
        f"legacyapp.UniqueContact on 'default' ({connection.vendor}, table legacyapp_uniquecontact)"
    )
    assert "  legacy column email_legacy of legacyapp.UniqueContact.email: 12 legacy value(s) left" in out
    assert "  next: run `manage.py reencrypt --model legacyapp.UniqueContact`" in out
    assert "holds a copy of every legacy value" in out
    assert f"not reported ({connection.vendor}): " in out
    assert not any(e in out for e in emails)


def test_command_check_exits_1_while_anything_is_left(keys):
    adopted_contacts(3)
    assert run("--model", "legacyapp.UniqueContact", "--check")[1] == 1
    assert run("--model", "testapp.Person", "--check")[1] == 0  # nothing written: nothing left


def test_command_json_shape(keys):
    adopted_contacts(5)
    out, code = run("--json", "--model", "legacyapp.UniqueContact", "--model", "testapp.Person")
    data = json.loads(out)
    assert code == 0
    assert set(data) == {"clean", "tables"} and data["clean"] is False
    contact, person = data["tables"]
    assert set(contact) == {
        "model",
        "database",
        "vendor",
        "table",
        "legacy_columns",
        "legacy_indexes",
        "postgresql",
        "sqlite",
        "next_step",
        "clean",
        "limits",
    }
    assert contact["model"] == "legacyapp.UniqueContact" and contact["clean"] is False
    assert contact["legacy_columns"] == [
        {"field": "legacyapp.UniqueContact.email", "column": "email_legacy", "present": True, "values": 5}
    ]
    assert {"name", "columns", "constraint"} == set(contact["legacy_indexes"][0])
    assert person["model"] == "testapp.Person" and person["clean"] is True
    if connection.vendor == "mysql":  # InnoDB's storage is not inspected: its limits say so
        assert contact["postgresql"] is None and contact["sqlite"] is None
        assert (
            contact["limits"].startswith("InnoDB's storage is not inspected")
            and "OPTIMIZE TABLE" in contact["limits"]
        )
        return
    storage = "postgresql" if connection.vendor == "postgresql" else "sqlite"
    assert contact[storage] is not None
    assert contact["postgresql" if storage == "sqlite" else "sqlite"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nosuch.Model"], "no model 'nosuch.Model'; expected 'app_label.Model'"),
        (["--model", "legacyapp"], "no model 'legacyapp'; expected 'app_label.Model'"),
        (["--model", "auth.User"], "auth.User has no encrypted fields: nothing to report"),
        (["--database", "nowhere"], "no database alias 'nowhere' in DATABASES"),
    ],
)
def test_command_errors_are_one_line(keys, args, message):
    with pytest.raises(CommandError) as err:
        call_command("rotation_residue", *args, stdout=StringIO())
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_command_help_explains_every_flag():
    from keyrotation.management.commands.rotation_residue import Command

    text = Command().create_parser("manage.py", "rotation_residue").format_help()
    for flag in ("--model", "--database", "--json", "--check"):
        assert flag in text
    assert "never a value" in " ".join(text.split())


# -- PostgreSQL: the bytes on disk -----------------------------------------------------------


def relations(table: str) -> list[str]:
    """The table, its TOAST table and TOAST index, and each of its indexes (as regclass names)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.oid::regclass::text FROM pg_class c WHERE c.oid = to_regclass(%s) "
            "UNION ALL SELECT t.oid::regclass::text FROM pg_class c "
            "JOIN pg_class t ON t.oid = c.reltoastrelid WHERE c.oid = to_regclass(%s) "
            "UNION ALL SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_class c "
            "ON c.reltoastrelid = i.indrelid WHERE c.oid = to_regclass(%s) "
            "UNION ALL SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = to_regclass(%s)",
            [table] * 4,
        )
        return [row[0] for row in cursor.fetchall()]


def files(relation: str) -> list[Path]:
    """Every segment file of ``relation``'s main fork: ``path``, ``path.1``, ..."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('data_directory'), pg_relation_filepath(%s)", [relation])
        data_dir, path = cursor.fetchone()
    base = Path(data_dir) / path
    out, n = [], 1
    if base.exists():
        out.append(base)
    while Path(f"{base}.{n}").exists():
        out.append(Path(f"{base}.{n}"))
        n += 1
    return out


def read(path: Path) -> bytes:
    """The file's bytes; none for a file that no longer exists (a dropped or rewritten relation)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
    except PermissionError:
        pytest.fail(
            f"cannot read {path}: this test reads PostgreSQL's data directory; run it as the "
            "cluster's OS user or as root (make test does)"
        )


def found(needles: list[bytes], paths: list[Path]) -> set[bytes]:
    blob = b"".join(read(p) for p in paths)
    return {n for n in needles if n in blob}


def checkpoint() -> None:
    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")


def sql(statement: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement)


def settled(model, until) -> residue.TableResidue:
    """The model's report once the statistics caught up with ``until`` (they lag; 30 s at most)."""
    connections.close_all()  # a backend sends its pending statistics when it exits
    deadline = time.monotonic() + 30
    while True:
        table = only(residue.report([model._meta.label]), model)
        if until(table) or time.monotonic() > deadline:
            return table
        time.sleep(0.2)


@pytest.fixture
def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("reads PostgreSQL's files")


@pytest.mark.postgres
def test_adopted_plaintext_stays_on_disk_until_the_documented_clean_up(keys, postgres_only):
    model, table = lm.UniqueContact, lm.UniqueContact._meta.db_table
    legacy_field = model._meta.get_field("email_legacy")
    # Autovacuum off for this table, so that what the test sees is what reencrypt left, not a
    # race with the daemon (a plain VACUUM erases nothing anyway: the docs say so).
    sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    try:
        emails = adopted_contacts()
        sample = [e.encode() for e in emails[:: ROWS // 50]]
        assert engine.reencrypt([model._meta.label]).ok
        assert not model.objects.filter(email_legacy__isnull=False).exists()
        checkpoint()

        paths = {rel: files(rel) for rel in relations(table)}
        everything = [p for ps in paths.values() for p in ps]
        assert found(sample, everything) == set(sample), "the adopted plaintexts should still be on disk"
        assert found(sample, paths[table]), "dead row versions in the table hold plaintext"
        before = settled(model, lambda t: t.postgresql and t.postgresql.dead_tuples >= ROWS)
        assert before.postgresql.dead_tuples >= ROWS
        assert {i.name.endswith("_like") for i in before.legacy_indexes} == {True, False}
        for index in before.legacy_indexes:  # each index alone holds every value
            assert found(sample, paths[index.name]) == set(sample)

        # The clean-up, as docs/adoption.md gives it: the statements the report names...
        with connection.cursor() as cursor:
            for statement in before.next_step.split("; "):
                cursor.execute(statement)
        # ...the legacy column (what the migration of RemoveField runs)...
        assert only(residue.report([model._meta.label]), model).next_step.startswith(
            "drop the legacy column(s) email_legacy"
        )
        with connection.schema_editor() as editor:
            editor.remove_field(model, legacy_field)
        dropped = settled(model, lambda t: t.postgresql and t.postgresql.dead_tuples)
        assert dropped.legacy_columns[0].present is False and dropped.legacy_indexes == []
        assert dropped.next_step.startswith(f"VACUUM (FULL, ANALYZE) {table}: ")
        assert found(sample, paths[table]), "a dropped column's values stay in the table's file"
        # ...then rewrite the table and checkpoint.
        sql(f"VACUUM (FULL, ANALYZE) {table}")
        checkpoint()

        after = [p for rel in relations(table) for p in files(rel)]
        assert not found(sample, after), "no sampled plaintext in any file of the table"
        assert not found(sample, everything), "the files before the rewrite are gone or empty"
        report = settled(model, lambda t: t.clean)
        assert report.clean, report
        assert report.postgresql.dead_tuples == 0
        assert report.postgresql.last_analyze is not None
    finally:
        with connection.schema_editor() as editor:
            if "email_legacy" not in {c.name for c in _columns(table)}:
                editor.add_field(model, legacy_field)
        sql(f"ALTER TABLE {table} RESET (autovacuum_enabled)")


def _columns(table: str):
    with connection.cursor() as cursor:
        return connection.introspection.get_table_description(cursor, table)


@pytest.mark.postgres
def test_old_ciphertexts_stay_in_dead_row_versions_until_vacuum_full(keys, postgres_only):
    model, table = tm.Person, tm.Person._meta.db_table
    sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    try:
        tm.Person.objects.bulk_create(tm.Person(name=f"p{i}", ssn=f"{i:03d}-00-0000") for i in range(ROWS))
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT ssn FROM {table} ORDER BY id")  # noqa: S608 - a test table name
            old = [bytes(row[0]) for row in cursor.fetchall()][:: ROWS // 20]
        # An emergency rotation: new data keys, every row re-encrypted under them.
        lifecycle.rotate("default", "encrypt", actor="test")
        lifecycle.rotate("default", "index", actor="test")
        keyring.clear_cache()
        assert engine.reencrypt([model._meta.label]).ok
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT ssn FROM {table}")  # noqa: S608
            live = {bytes(row[0]) for row in cursor.fetchall()}
        assert not live & set(old), "every live row holds a new ciphertext"
        checkpoint()
        # Page pruning may reuse the space of a few dead versions; most keep their bytes.
        kept = found(old, files(table))
        assert len(kept) >= len(old) // 2, f"dead row versions keep old ciphertexts: {len(kept)}/{len(old)}"
        report = settled(model, lambda t: t.postgresql and t.postgresql.dead_tuples >= ROWS)
        assert report.next_step.startswith(f"VACUUM (FULL, ANALYZE) {table}: ")

        sql(f"VACUUM (FULL, ANALYZE) {table}")
        checkpoint()
        assert not found(old, [p for rel in relations(table) for p in files(rel)])
        assert settled(model, lambda t: t.clean).clean
    finally:
        sql(f"ALTER TABLE {table} RESET (autovacuum_enabled)")
