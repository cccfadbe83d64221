"""The "one active key per (keyring, purpose)" rule on MySQL and MariaDB.

Elsewhere ``DataKey``'s conditional ``UniqueConstraint`` (a partial unique index) enforces it.
MySQL and MariaDB have no partial indexes, so Django skips that constraint there. On those two
backends only, this migration adds what they do have: a generated column that is 1 for an active
key and NULL otherwise, and a UNIQUE index on (keyring, purpose, that column). NULLs never
collide in a UNIQUE index, so any number of non-active versions coexist while a second active
one is refused with an IntegrityError, as the partial index does on PostgreSQL and SQLite.

The column is not a model field (the model state is unchanged): the ORM never names it, so
INSERTs and UPDATEs of ``DataKey`` stay as they are, and the database computes it. Both MariaDB
and MySQL index generated columns (the suite runs this on MariaDB); a functional index would need
MySQL 8.0.13 and does not exist on MariaDB.
"""

from django.core.management.base import CommandError
from django.db import migrations

TABLE = "keyrotation_datakey"
COLUMN = "one_active_slot"
INDEX = "keyrotation_datakey_one_active_mysql"


def _is_mysql(schema_editor) -> bool:
    return schema_editor.connection.vendor == "mysql"


def add_one_active_index(apps, schema_editor) -> None:
    if not _is_mysql(schema_editor):
        return
    qn = schema_editor.quote_name
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {qn('keyring')}, {qn('purpose')} FROM {qn(TABLE)} WHERE {qn('state')} = %s "
            f"GROUP BY {qn('keyring')}, {qn('purpose')} HAVING COUNT(*) > 1",
            ["active"],
        )
        doubles = cursor.fetchall()
        # MySQL DDL is not transactional: after a failure between the two statements below, the
        # column exists and the next attempt only builds the index.
        columns = {c.name for c in schema_editor.connection.introspection.get_table_description(cursor, TABLE)}
    if doubles:
        # Only possible if something bypassed the lifecycle; the index cannot be built until a
        # person decides which version stays active.
        names = ", ".join(f"{keyring}/{purpose}" for keyring, purpose in doubles)
        raise CommandError(
            f"cannot enforce one active key per keyring and purpose: more than one active version "
            f"for {names}; set all but one of them to decrypt_only, then migrate again"
        )
    if COLUMN not in columns:
        schema_editor.execute(
            f"ALTER TABLE {qn(TABLE)} ADD COLUMN {qn(COLUMN)} TINYINT "
            f"AS (CASE WHEN {qn('state')} = 'active' THEN 1 ELSE NULL END) VIRTUAL"
        )
    schema_editor.execute(
        f"CREATE UNIQUE INDEX {qn(INDEX)} ON {qn(TABLE)} ({qn('keyring')}, {qn('purpose')}, {qn(COLUMN)})"
    )


def drop_one_active_index(apps, schema_editor) -> None:
    if not _is_mysql(schema_editor):
        return
    qn = schema_editor.quote_name
    schema_editor.execute(f"DROP INDEX {qn(INDEX)} ON {qn(TABLE)}")
    schema_editor.execute(f"ALTER TABLE {qn(TABLE)} DROP COLUMN {qn(COLUMN)}")


class Migration(migrations.Migration):
    dependencies = [
        ("keyrotation", "0005_run_database"),
    ]

    operations = [
        migrations.RunPython(add_one_active_index, drop_one_active_index, atomic=False, elidable=False),
    ]
