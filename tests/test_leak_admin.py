"""Never-leak across a rotation, seen from the admin: every keyrotation admin page, the masked
change list, and Django's LogEntry, with a value quarantined on the way (its row is listed)."""

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.urls import reverse

from keyrotation import engine, keyring, lifecycle
from keyrotation.models import DataKey, KeyRotationAudit, QuarantinedValue, ReencryptionRun
from keyrotation.testing import assert_no_leak
from tests.testapp.models import Person

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.admin_urls")]

CANARIES = ["canary-admin-7f3e@example.com", "918-27-3645", "canary-edited-55aa@example.com"]


def test_admin_pages_never_show_a_canary(keys, settings):
    settings.KEYROTATION = {**settings.KEYROTATION, "MASK_IN_CHANGELIST": True}
    root = User.objects.create_superuser("root", "root@localhost", "pw")
    client = Client()
    client.force_login(root)
    with assert_no_leak(CANARIES) as leak:
        good = Person.objects.create(name="good", email=CANARIES[0], ssn=CANARIES[1])
        bad = Person.objects.create(name="bad", email=CANARIES[0], ssn=CANARIES[1])
        with connection.cursor() as cur:  # tamper with one row so that it is quarantined
            cur.execute("SELECT email FROM testapp_person WHERE id = %s", [bad.pk])
            token = bytes(cur.fetchone()[0])
            cur.execute(
                "UPDATE testapp_person SET email = %s WHERE id = %s",
                [token[:-1] + bytes([token[-1] ^ 1]), bad.pk],
            )
        lifecycle.rotate("default", "encrypt")
        lifecycle.rotate("default", "index")
        keyring.invalidate()
        report = engine.reencrypt(on_error="quarantine")
        assert report.rows_failed == 1
        # An admin edit of the encrypted field: Django writes a LogEntry.
        change = reverse("custom:testapp_person_change", args=[good.pk])
        form = {"name": "good", "email": CANARIES[2], "ssn": CANARIES[1]}
        assert client.post(change, form).status_code == 302
        run = ReencryptionRun.objects.get()
        pages = [
            reverse("admin:keyrotation_status"),
            reverse("admin:keyrotation_status_json"),
            reverse("admin:keyrotation_datakey_changelist"),
            reverse("admin:keyrotation_datakey_change", args=[DataKey.objects.first().pk]),
            reverse("admin:keyrotation_keyrotationaudit_changelist"),
            # the status page's link to the run's audit rows
            reverse("admin:keyrotation_keyrotationaudit_changelist") + f"?run={run.pk}",
            reverse("admin:keyrotation_keyrotationaudit_change", args=[KeyRotationAudit.objects.first().pk]),
            reverse("admin:keyrotation_reencryptionrun_changelist"),
            reverse("admin:keyrotation_reencryptionrun_change", args=[run.pk]),
            reverse("admin:keyrotation_quarantinedvalue_changelist"),
            reverse("custom:testapp_person_changelist"),  # masked
        ]
        for url in pages:
            response = client.get(url)
            assert response.status_code == 200, url
            leak.check_text(response.content.decode(), where=f"admin page {url}")
        # The status page's new parts are there to be checked: keys, retire gate, rate, history.
        status = client.get(reverse("admin:keyrotation_status")).content.decode()
        assert 'id="kr-keys"' in status and "retire refused" in status and 'id="kr-rate-chart"' in status
        assert (
            str(bad.pk)
            in client.get(reverse("admin:keyrotation_quarantinedvalue_changelist")).content.decode()
        )
        for entry in LogEntry.objects.all():
            leak.check_text(f"{entry.change_message} {entry.object_repr}", where="LogEntry")
        assert LogEntry.objects.filter(object_id=str(good.pk)).exists()
    assert QuarantinedValue.objects.count() == 1
