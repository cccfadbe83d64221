"""The commands stop with one line when keyrotation's migrations are not all applied.

(A database that cannot be reached is left to the command's own first query, which reports it in
one line: tests/test_reliability_outages.py stops PostgreSQL and runs these commands.)"""

from __future__ import annotations

import re

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from keyrotation import schema_state

LATEST = schema_state.shipped_migrations()[-1]


@pytest.fixture
def latest_unrecorded(db):
    """The newest shipped migration missing from django_migrations (the test transaction rolls
    the deletion back)."""
    MigrationRecorder(connection).migration_qs.filter(app="keyrotation", name=LATEST).delete()


def test_every_shipped_migration_is_applied_in_the_test_database(db):
    assert schema_state.missing_migrations("default") == []
    schema_state.require_migrated()


def test_the_shipped_migrations_are_the_app_s_migration_modules():
    names = schema_state.shipped_migrations()
    assert names[0] == "0001_initial" and names == sorted(names)
    assert all(name[:4].isdigit() for name in names)


@pytest.mark.parametrize(
    "argv",
    [["reencrypt"], ["reencrypt", "--dry-run"], ["rotatekeys", "--init"], ["rotation_status"]],
    ids=lambda a: " ".join(a),
)
def test_a_command_names_the_missing_migration_and_what_to_run(latest_unrecorded, argv):
    with pytest.raises(CommandError) as raised:
        call_command(*argv)
    message = str(raised.value)
    assert message == (
        f"keyrotation's migrations {LATEST} are not applied on database 'default': "
        "run `manage.py migrate keyrotation --database default` first"
    )


def test_a_project_that_replaces_the_migrations_is_not_checked(latest_unrecorded, settings):
    settings.MIGRATION_MODULES = {"keyrotation": "somewhere.else"}
    schema_state.require_migrated()  # no error


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rotatekeys", "--rollback"], "--rollback needs --purpose encrypt or --purpose index"),
        (["rotatekeys", "--rotate-kek"], "--rotate-kek goes with --rewrap"),
        (["reencrypt", "--run", "1"], "--run names the run for --pause, --resume or --abort"),
    ],
)
def test_a_wrong_combination_of_flags_is_named_before_the_database_is_read(latest_unrecorded, argv, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command(*argv)
