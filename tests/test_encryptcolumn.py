"""``manage.py encryptcolumn``, its operations (``keyrotation.migration_operations``), the source
mapping (``keyrotation.adoption_sources``) and the ``migrate`` guard (``keyrotation.migration_guard``).

The whole guide, per source and backend, is ``tests/test_adoption_migrations.py``; here are the
error paths and each operation on its own, on the suite's database.
"""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.apps import apps as global_apps
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, migrations, models
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.state import ModelState, ProjectState
from django.db.migrations.writer import MigrationWriter
from django.db.models.signals import pre_migrate

from keyrotation import adoption_sources
from keyrotation.fields import EncryptedField, KeyVersionField
from keyrotation.migration_guard import UnsafeMigration
from keyrotation.migration_operations import AdoptionIncomplete, FinishAdoption, StartAdoption
from tests.migrapp.models import Item

MIGRATIONS = global_apps.get_app_config("migrapp").path + "/migrations"


def run(*args: str) -> str:
    out = StringIO()
    call_command("encryptcolumn", *args, stdout=out)
    return out.getvalue()


def migration_files() -> set[str]:
    import os

    return set(os.listdir(MIGRATIONS))


# -- the command -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["migrapp.Nope.name", "--from", "plaintext"], "no model migrapp.Nope"),
        (["migrapp.Item.nope", "--from", "plaintext"], "migrapp.Item has no field 'nope'"),
        (["migrapp.Item", "--from", "plaintext"], "expected app_label.Model.field, got 'migrapp.Item'"),
        (["migrapp.Item.tier", "--from", "plaintext"], "migrapp.Item.tier is already an EncryptedField"),
        (["migrapp.Item.id", "--from", "plaintext"], "only a concrete, non-key, non-relation field"),
        (
            ["migrapp.Item.name", "--from", "django-fernet-fields"],
            "migrapp.Item.name: CharField is not a django-fernet-fields field",
        ),
        (
            ["migrapp.Item.name", "--from", "plaintext", "--name", "item"],
            "already has a migration named 'item'",
        ),
        (["migrapp.Item.name", "--from", "plaintext", "--legacy-name", "tier"], "already has a field 'tier'"),
        (["migrapp.Item.name", "--from", "plaintext", "--column", "note"], "already has a column 'note'"),
        (["migrapp.Item.name"], "--from is required"),
        (["migrapp.Item.name", "--finish"], "no adoption in progress for migrapp.Item.name"),
        (["migrapp.Item.tier", "--finish"], "no adoption in progress for migrapp.Item.tier"),
        (["migrapp.Item.name", "--finish", "--from", "plaintext"], "--finish takes none of --from"),
        (
            ["legacyapp.PlainContact.email_legacy", "--from", "plaintext"],
            "legacyapp.PlainContact.email_legacy is already being adopted: use --finish",
        ),
        (
            ["legacyapp.PlainContact.email", "--from", "plaintext"],
            "already an EncryptedField (adopting from email_legacy: use --finish)",
        ),
    ],
)
def test_operator_errors_are_one_line(args, message):
    before = migration_files()
    with pytest.raises(CommandError) as exc:
        run(*args, "--dry-run")
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)
    assert migration_files() == before


def test_an_unknown_source_is_refused_by_the_parser():
    with pytest.raises(CommandError, match="invalid choice: 'django-unknown'"):
        run("migrapp.Item.name", "--from", "django-unknown")


def test_dry_run_prints_the_migration_and_the_model_code_and_writes_nothing():
    before = migration_files()
    out = run("migrapp.Item.name", "--from", "plaintext", "--blind-index", "--dry-run")
    assert migration_files() == before
    assert "0003_adopt_item_name.py (not written: --dry-run)" in out
    assert "keyrotation.migration_operations.StartAdoption(" in out
    assert "field=keyrotation.fields.BlindIndexField(source='name')" in out
    assert (
        "    name_legacy = models.CharField(db_column='name', editable=False, max_length=50, null=True)"
        in out
    )
    assert (
        "    name = EncryptedField(models.CharField(max_length=50), null=True, db_column='name_enc', "
        "adopt_from='name_legacy', legacy=legacy.Plaintext())"
    ) in out
    assert "    name_bidx = BlindIndexField(source='name')" in out
    assert "from keyrotation.fields import BlindIndexField, EncryptedField" in out


def test_json_describes_the_migration_and_the_edit():
    data = json.loads(run("migrapp.Item.name", "--from", "plaintext", "--dry-run", "--json", "--name", "go"))
    assert data["migration"] == "0003_go" and data["written"] is False
    assert data["operations"] == ["Start adopting item.name from its old column, kept as name_legacy"]
    edit = data["model_edit"]
    assert edit["model"] == "migrapp.Item" and edit["replace"] == ["name"]
    assert edit["file"].endswith("tests/migrapp/models.py")
    assert "class Migration(migrations.Migration):" in data["text"]


def test_finish_prints_the_field_without_adopt_from():
    data = json.loads(run("legacyapp.PlainContact.email", "--finish", "--dry-run", "--json"))
    assert data["migration"].endswith("_finish_adopting_plaincontact_email")
    assert "keyrotation.migration_operations.FinishAdoption(" in data["text"]
    edit = data["model_edit"]
    assert edit["replace"] == ["email_legacy", "email"]
    assert edit["lines"] == [
        "email = EncryptedField(models.EmailField(max_length=254), blank=True, null=True)"
    ]


def test_model_changes_without_a_migration_are_refused_first(monkeypatch):
    field = Item._meta.get_field("name")
    monkeypatch.setattr(field, "max_length", 60)
    with pytest.raises(CommandError, match="migrapp has model changes without a migration"):
        run("migrapp.Item.name", "--from", "plaintext", "--dry-run")


# -- the mapping of library fields ----------------------------------------------------------------


def library_field(module: str, name: str, base: type[models.Field], **kwargs) -> models.Field:
    """A field of class ``module.name`` (how the mapping recognises a library's classes)."""
    cls = type(name, (base,), {"__module__": module})
    field = cls(**kwargs)
    field.set_attributes_from_name("secret")
    return field


@pytest.mark.parametrize(
    ("source", "module", "name", "base", "kwargs", "expected"),
    [
        ("django-fernet-fields", "fernet_fields.fields", "EncryptedEmailField", models.EmailField, {},
         "models.EmailField(max_length=254)"),
        ("django-encrypted-model-fields", "encrypted_model_fields.fields", "EncryptedCharField",
         models.CharField, {"max_length": 100}, "models.CharField(max_length=100)"),
        ("django-encrypted-model-fields", "encrypted_model_fields.fields",
         "EncryptedPositiveSmallIntegerField", models.PositiveSmallIntegerField, {"null": True},
         "models.PositiveSmallIntegerField()"),
        ("django-fernet-encrypted-fields", "encrypted_fields.fields", "EncryptedDateTimeField",
         models.DateTimeField, {"blank": True}, "models.DateTimeField()"),
        ("plaintext", "myproject.fields", "LowerEmailField", models.EmailField, {"unique": True},
         "myproject.fields.LowerEmailField(max_length=254)"),
    ],
)  # fmt: skip
def test_library_fields_map_to_the_django_field_they_store(source, module, name, base, kwargs, expected):
    field = library_field(module, name, base, **kwargs)
    wrapped = adoption_sources.base_field(field, adoption_sources.SOURCES[source])
    assert MigrationWriter.serialize(wrapped)[0] == expected


def test_django_cryptography_wraps_the_field_given_to_encrypt():
    inner = models.CharField(max_length=50, null=True)

    class EncryptedCharField(models.CharField):
        def deconstruct(self):
            return self.name, "django_cryptography.fields.encrypt", [inner], {}

    EncryptedCharField.__module__ = "django_cryptography.fields"
    field = EncryptedCharField(max_length=50)
    field.set_attributes_from_name("secret")
    source = adoption_sources.SOURCES["django-cryptography"]
    assert MigrationWriter.serialize(adoption_sources.base_field(field, source))[0] == (
        "models.CharField(max_length=50)"
    )
    assert MigrationWriter.serialize(adoption_sources.legacy_field(field, source))[0] == (
        "models.BinaryField(db_column='secret', null=True)"
    )


@pytest.mark.parametrize(
    ("source", "module", "name", "base", "message"),
    [
        ("django-fernet-encrypted-fields", "encrypted_fields.fields", "EncryptedJSONField", models.JSONField,
         "has no known Django field to wrap (known: EncryptedBooleanField, EncryptedCharField"),
        ("django-fernet-fields", "encrypted_fields.fields", "EncryptedCharField", models.CharField,
         "is not a django-fernet-fields field (it is a django-fernet-encrypted-fields field)"),
        ("plaintext", "fernet_fields.fields", "EncryptedCharField", models.CharField,
         "is not plaintext: use --from django-fernet-fields"),
        ("plaintext", "myproject.fields", "PictureField", models.FileField, "EncryptedField cannot wrap"),
    ],
)  # fmt: skip
def test_unknown_library_fields_are_named(source, module, name, base, message):
    field = library_field(module, name, base)
    with pytest.raises(adoption_sources.UnknownField, match=message.replace("(", r"\(").replace(")", r"\)")):
        adoption_sources.base_field(field, adoption_sources.SOURCES[source])


def test_legacy_fields_have_the_type_of_the_column():
    text = adoption_sources.SOURCES["django-encrypted-model-fields"]
    field = library_field(
        "encrypted_model_fields.fields", "EncryptedCharField", models.CharField, max_length=9
    )
    assert MigrationWriter.serialize(adoption_sources.legacy_field(field, text))[0] == (
        "models.TextField(db_column='secret', editable=False, null=True)"
    )
    slug = models.SlugField(unique=True, default="x")
    slug.set_attributes_from_name("slug")
    plain = adoption_sources.legacy_field(slug, adoption_sources.SOURCES["plaintext"])
    assert (plain.null, plain.unique, plain.db_index, plain.has_default(), plain.db_column) == (
        True,
        False,
        False,
        False,
        "slug",
    )


# -- the operations -----------------------------------------------------------------------------


def start_op(**kw) -> StartAdoption:
    args = {
        "model_name": "thing",
        "name": "email",
        "legacy_name": "email_legacy",
        "field": EncryptedField(models.CharField(max_length=50), null=True, db_column="email_enc"),
        "legacy_field": models.CharField(max_length=50, null=True, db_column="email"),
    }
    return StartAdoption(**{**args, **kw})


def test_operations_deconstruct_to_readable_python():
    for op in (
        start_op(version_field=KeyVersionField(db_index=True)),
        FinishAdoption("thing", "email", "email_legacy"),
    ):
        name, args, kwargs = op.deconstruct()
        again = type(op)(*args, **kwargs)
        assert again.deconstruct()[0] == name == type(op).__name__
        text, imports = MigrationWriter.serialize(op)
        assert text.startswith(f"keyrotation.migration_operations.{name}(")
        assert "import keyrotation.migration_operations" in imports
    assert start_op().describe() == "Start adopting thing.email from its old column, kept as email_legacy"
    assert start_op().migration_name_fragment == "adopt_thing_email"
    finish = FinishAdoption("thing", "email", "email_legacy")
    assert finish.describe() == "Finish adopting thing.email: drop email_legacy once it is empty"
    assert finish.migration_name_fragment == "finish_adopting_thing_email"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"field": models.CharField(max_length=5, null=True)}, "field must be an EncryptedField"),
        ({"field": EncryptedField(models.CharField(max_length=5), db_column="x")}, "must be null=True"),
        ({"legacy_field": models.CharField(max_length=5, db_column="email")}, "plain field with null=True"),
        (
            {"legacy_field": models.CharField(max_length=5, null=True, unique=True, db_column="email")},
            "no index",
        ),
        ({"legacy_field": models.CharField(max_length=5, null=True)}, "must name the old column"),
        (
            {"field": EncryptedField(models.CharField(max_length=5), null=True, db_column="email")},
            "needs a column of its own",
        ),
    ],
)
def test_start_adoption_refuses_a_declaration_that_would_move_the_old_column(kw, message):
    with pytest.raises(TypeError, match=message):
        start_op(**kw)


def thing_state() -> ProjectState:
    state = ProjectState()
    fields = [
        ("id", models.BigAutoField(primary_key=True)),
        ("email", models.CharField(max_length=50, unique=True)),
    ]
    state.add_model(ModelState("adoptunit", "thing", fields))
    return state


def apply(op, state: ProjectState, backwards: bool = False) -> ProjectState:
    new = state.clone()
    op.state_forwards("adoptunit", new)
    if backwards:
        return new
    with connection.schema_editor() as editor:
        op.database_forwards("adoptunit", editor, state, new)
    return new


def sql(query: str, params: tuple = ()) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return list(cursor.fetchall()) if cursor.description else []


def table_columns() -> set[str]:
    with connection.cursor() as cursor:
        return {c.name for c in connection.introspection.get_table_description(cursor, "adoptunit_thing")}


@pytest.fixture
def thing(transactional_db):
    """The table adoptunit_thing (email NOT NULL UNIQUE) with two rows; dropped afterwards."""
    state = thing_state()
    with connection.schema_editor() as editor:
        editor.create_model(state.apps.get_model("adoptunit", "thing"))
    sql("INSERT INTO adoptunit_thing (email) VALUES ('a@x.org'), ('b@x.org')")
    yield state
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE adoptunit_thing")


def test_start_then_finish_then_back(thing):
    start = start_op()
    started = apply(start, thing)
    assert table_columns() == {"id", "email", "email_enc", "email_key_version"}
    assert sql("SELECT email FROM adoptunit_thing ORDER BY id") == [("a@x.org",), ("b@x.org",)]
    sql("INSERT INTO adoptunit_thing (email) VALUES (NULL), ('a@x.org')")  # NOT NULL and UNIQUE are gone
    assert sorted(started.models["adoptunit", "thing"].fields) == [
        "email",
        "email_key_version",
        "email_legacy",
        "id",
    ]

    finish = FinishAdoption("thing", "email", "email_legacy")
    with pytest.raises(AdoptionIncomplete) as exc:
        apply(finish, started)
    assert str(exc.value) == (
        "adoptunit.thing.email: 3 row(s) still hold a legacy value in email_legacy; run `manage.py "
        "reencrypt --model adoptunit.thing` and `--verify` first (nothing was dropped)"
    )
    assert "email" in table_columns()

    sql("UPDATE adoptunit_thing SET email_enc = %s, email = NULL WHERE email IS NOT NULL", (b"adopted",))
    finished = apply(finish, started)
    assert table_columns() == {"id", "email_enc", "email_key_version"}
    with connection.schema_editor() as editor:  # back: the legacy column returns, empty
        finish.database_backwards("adoptunit", editor, finished, started)
    assert "email" in table_columns()

    with pytest.raises(
        AdoptionIncomplete, match="3 row\\(s\\) hold a value only in the new encrypted column"
    ):
        with connection.schema_editor() as editor:
            start.database_backwards("adoptunit", editor, started, thing)
    sql("DELETE FROM adoptunit_thing")
    sql("INSERT INTO adoptunit_thing (email) VALUES ('c@x.org')")
    with connection.schema_editor() as editor:
        start.database_backwards("adoptunit", editor, started, thing)
    assert table_columns() == {"id", "email"}
    assert sql("SELECT email FROM adoptunit_thing") == [("c@x.org",)]


def test_start_refuses_a_legacy_field_of_another_type(thing):
    start = start_op(legacy_field=models.BinaryField(null=True, db_column="email"))
    with pytest.raises(
        AdoptionIncomplete, match="the legacy field must keep the column 'email' and its type"
    ):
        apply(start, thing)
    assert table_columns() == {"id", "email"}


def test_the_new_column_is_added_empty_even_with_a_default(thing):
    enc = EncryptedField(models.CharField(max_length=50), null=True, db_column="email_enc", default="x")
    apply(start_op(field=enc), thing)
    assert sql("SELECT email_enc FROM adoptunit_thing") == [(None,), (None,)]


def test_sqlmigrate_shows_the_start_without_touching_the_old_column(thing):
    new = thing.clone()
    start = start_op()
    start.state_forwards("adoptunit", new)
    with connection.schema_editor(collect_sql=True) as editor:
        start.database_forwards("adoptunit", editor, thing, new)
    text = "\n".join(editor.collected_sql)
    assert "email_enc" in text
    assert 'DROP COLUMN "email"' not in text and "TYPE" not in text.replace("KEY_VERSION", "")


# -- the migrate guard ------------------------------------------------------------------------


def plan_of(*operations) -> list:
    migration = migrations.Migration("0003_bad", "migrapp")
    migration.operations = list(operations)
    return [(migration, False)]


def send(plan) -> None:
    state_apps = MigrationLoader(connection).project_state().apps
    pre_migrate.send(
        sender=global_apps.get_app_config("keyrotation"),
        app_config=global_apps.get_app_config("keyrotation"),
        verbosity=0,
        interactive=False,
        using="default",
        apps=state_apps,
        plan=plan,
    )


ALTER = migrations.AlterField("item", "name", EncryptedField(models.CharField(max_length=50), null=True))


@pytest.mark.django_db(transaction=True)
def test_migrate_refuses_to_alter_a_column_holding_values_into_an_encrypted_field(keys):
    send(plan_of(ALTER))  # an empty table: nothing to lose
    Item.objects.create(name="kept")
    with pytest.raises(UnsafeMigration) as exc:
        send(plan_of(ALTER))
    assert str(exc.value) == (
        "migrapp.0003_bad: migrapp.Item.name holds 1 value(s) and the migration alters it into an "
        "EncryptedField in place, which would destroy them; delete this migration and write the adoption "
        "with `manage.py encryptcolumn migrapp.Item.name --from ...` (see docs/adoption.md)"
    )


@pytest.mark.django_db(transaction=True)
def test_migrate_refuses_to_drop_a_column_replaced_by_an_encrypted_field(keys):
    Item.objects.create(name="kept")
    remove = migrations.RemoveField("item", "name")
    add = migrations.AddField("item", "name", EncryptedField(models.CharField(max_length=50), null=True))
    with pytest.raises(UnsafeMigration, match="drops the column before its values were adopted"):
        send(plan_of(remove, add))
    send(plan_of(remove))  # dropping a column is no concern of keyrotation's
    send([(plan_of(ALTER)[0][0], True)])  # nor is a migration unapplied


def test_indexed_version_columns_are_written_as_the_models_declare_them(settings):
    settings.KEYROTATION = {**settings.KEYROTATION, "INDEX_VERSION_COLUMNS": True}
    text = json.loads(
        run("migrapp.Item.name", "--from", "plaintext", "--blind-index", "--dry-run", "--json")
    )["text"]
    assert "version_field=keyrotation.fields.KeyVersionField(db_index=True)" in text
    assert (
        "name='name_bidx_key_version',\n            field=keyrotation.fields.KeyVersionField(db_index=True)"
        in text
    )
