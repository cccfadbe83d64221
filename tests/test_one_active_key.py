"""The database refuses a second active version of a data key on every backend.

PostgreSQL and SQLite enforce it with ``DataKey``'s partial unique constraint; MySQL and MariaDB,
which have no partial indexes, with the generated column and UNIQUE index of migration 0006.
"""

from __future__ import annotations

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction

from keyrotation.models import DataKey

pytestmark = pytest.mark.django_db(transaction=True)

PREVIOUS = "0005_run_database"
CURRENT = "0006_one_active_key_on_mysql"
COLUMN = "one_active_slot"
INDEX = "keyrotation_datakey_one_active_mysql"
mysql_only = pytest.mark.skipif(connection.vendor != "mysql", reason="the index exists on MySQL/MariaDB only")


def migrate(target: str) -> None:
    call_command("migrate", "keyrotation", target, verbosity=0)


def migrate_to_latest() -> None:
    """Every migration of the app applied again: going back to PREVIOUS also unapplied the ones
    after CURRENT (a later test needs their tables)."""
    call_command("migrate", "keyrotation", verbosity=0)
    app_tables = {model._meta.db_table for model in apps.get_app_config("keyrotation").get_models()}
    assert app_tables <= set(connection.introspection.table_names())


def key(version: int, state: str = "active", keyring: str = "k1") -> DataKey:
    return DataKey.objects.create(
        keyring=keyring, purpose="encrypt", version=version, state=state, kek_id="x"
    )


def datakey_schema() -> tuple[set[str], dict[str, dict]]:
    """The column names of the DataKey table, and its constraints and indexes by name."""
    table = DataKey._meta.db_table
    with connection.cursor() as cursor:
        columns = {c.name for c in connection.introspection.get_table_description(cursor, table)}
        constraints = connection.introspection.get_constraints(cursor, table)
    return columns, constraints


def second_active_is_refused() -> bool:
    try:
        with transaction.atomic():
            key(2)
    except IntegrityError:
        return True
    DataKey.objects.filter(keyring="k1", version=2).delete()
    return False


def test_a_second_active_version_is_refused_but_other_states_coexist():
    key(1)
    assert second_active_is_refused()
    for version, state in enumerate(["decrypt_only", "decrypt_only", "retired", "destroyed"], start=2):
        key(version, state)
    key(1, keyring="k2")  # another keyring has its own active version
    DataKey.objects.filter(keyring="k1", version=1).update(state="decrypt_only")
    DataKey.objects.filter(keyring="k1", version=2).update(state="active")  # the rotation's order
    assert DataKey.objects.filter(state="active").count() == 2


@pytest.mark.skipif(connection.vendor == "mysql", reason="MySQL/MariaDB have the extra column")
def test_no_extra_column_outside_mysql():
    columns, constraints = datakey_schema()
    assert columns == {f.column for f in DataKey._meta.concrete_fields}
    assert INDEX not in constraints


@mysql_only
def test_the_mysql_index_reverses_and_applies_again():
    key(1)
    columns, constraints = datakey_schema()
    assert COLUMN in columns
    assert constraints[INDEX]["unique"] and constraints[INDEX]["columns"] == ["keyring", "purpose", COLUMN]
    try:
        migrate(PREVIOUS)
        columns, constraints = datakey_schema()
        assert COLUMN not in columns and INDEX not in constraints
        assert not second_active_is_refused()  # what MySQL did before the migration
        migrate(CURRENT)
    finally:
        migrate_to_latest()
    columns, constraints = datakey_schema()
    assert COLUMN in columns and INDEX in constraints
    assert second_active_is_refused()


@mysql_only
def test_two_active_versions_stop_the_migration_until_one_is_demoted():
    try:
        migrate(PREVIOUS)
        key(1)
        key(2)
        with pytest.raises(
            CommandError, match=r"more than one active version for k1/encrypt; set all but one"
        ):
            migrate(CURRENT)
        assert COLUMN not in datakey_schema()[0]
        DataKey.objects.filter(version=1).update(state="decrypt_only")
        migrate(CURRENT)
    finally:
        DataKey.objects.filter(version=1).update(state="decrypt_only")
        migrate_to_latest()
    assert INDEX in datakey_schema()[1]
    with pytest.raises(IntegrityError), transaction.atomic():
        key(3)
