from django.db import migrations, models


def authenticate_existing_states(apps, schema_editor):
    """Authenticate every stored key state as it is now (needs the KEK only if there are keys)."""
    from keyrotation import key_state

    key_state.seal_existing(
        apps.get_model("keyrotation", "KeyRotationAudit"),
        apps.get_model("keyrotation", "DataKey"),
        schema_editor.connection.alias,
    )


class Migration(migrations.Migration):
    """Authenticated key states (see keyrotation.key_state).

    Zero downtime: three nullable or database-defaulted columns (no table rewrite; code from
    before them still inserts rows), then one audit row per keyring and purpose that records and
    authenticates the states as they are. Deploy the new code right after; a lifecycle command run
    by the old code in between leaves states that the new code refuses until
    ``rotatekeys --accept-state``.
    """

    dependencies = [
        ("keyrotation", "0003_audit_chain"),
    ]

    operations = [
        migrations.AddField(
            model_name="datakey",
            name="state_audit_id",
            field=models.BigIntegerField(
                blank=True,
                editable=False,
                help_text="The audit row that last authenticated its state.",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="datakey",
            name="state_mac",
            field=models.CharField(blank=True, db_default="", editable=False, max_length=64),
        ),
        migrations.AddField(
            model_name="datakey",
            name="state_mac_version",
            field=models.PositiveIntegerField(
                blank=True,
                editable=False,
                help_text="Version of the audit chain key that MACs its state.",
                null=True,
            ),
        ),
        migrations.RunPython(authenticate_existing_states, migrations.RunPython.noop),
    ]
