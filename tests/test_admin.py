"""Admin pages through Django's test client: permissions, content, controls, masking, no leaks."""

import base64
import re
from datetime import timedelta
from html import unescape

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format

from keyrotation import audit, engine, keyring, lifecycle
from keyrotation.models import DataKey, KeyRotationAudit, QuarantinedValue, ReencryptionRun
from tests.testapp.models import Person

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.admin_urls")]

STATUS = "admin:keyrotation_status"


def user(username, *perms, superuser=False):
    if superuser:
        return User.objects.create_superuser(username, f"{username}@example.com", "pw")
    u = User.objects.create_user(username, password="pw", is_staff=True)
    for perm in perms:
        app, codename = perm.split(".")
        u.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    return u


def client_for(u, **kwargs):
    c = Client(**kwargs)
    c.force_login(u)
    return c


@pytest.fixture
def run(keys):
    return ReencryptionRun.objects.create(status="running", scope="*", targets={"default/encrypt": 2})


@pytest.fixture
def viewer():
    return client_for(user("viewer", "keyrotation.view_reencryptionrun", "keyrotation.view_datakey"))


@pytest.fixture
def operator():
    return client_for(
        user("operator", "keyrotation.view_reencryptionrun", "keyrotation.control_reencryptionrun")
    )


@pytest.fixture
def root():
    return client_for(user("root", superuser=True))


def control(client, run, action):
    return client.post(reverse("admin:keyrotation_run_control", args=[run.pk, action]))


def secrets_in(body: bytes) -> list[str]:
    """Every representation of any wrapped key that shows up in ``body``."""
    found = []
    for wrapped in DataKey.objects.exclude(wrapped_key=None).values_list("wrapped_key", flat=True):
        raw = bytes(wrapped)
        for form in (raw.hex(), base64.b64encode(raw).decode(), repr(raw), raw[1:20].hex()):
            if form.encode() in body:
                found.append(form)
    return found


# -- the status page ----------------------------------------------------------------------------


def test_status_page_needs_login_and_permission(run):
    assert Client().get(reverse(STATUS)).status_code == 302  # to the login page
    nobody = client_for(user("nobody"))
    assert nobody.get(reverse(STATUS)).status_code == 403
    assert nobody.get(reverse("admin:keyrotation_status_json")).status_code == 403


def test_viewer_sees_census_and_run_but_no_buttons_and_gets_403(viewer, run):
    Person.objects.create(name="a", email="alice@example.com", ssn="123-45-6789")
    Person.objects.create(name="b", email=None)
    response = viewer.get(reverse(STATUS))
    body = response.content.decode()
    assert response.status_code == 200
    assert "testapp.Person.email" in body and "testapp.Person.email_bidx" in body
    assert 'data-version="1">v1: <b>1</b></span>' in body  # the row with no email is not counted
    assert f">Run {run.pk}</a>" in body and "running" in body
    assert '<meta http-equiv="refresh"' in body  # an open run: the page refreshes itself
    assert 'id="kr-pause"' not in body and 'id="kr-abort"' not in body
    for action in ("pause", "resume", "abort"):
        assert control(viewer, run, action).status_code == 403
    run.refresh_from_db()
    assert run.status == "running"


def test_operator_pauses_resumes_and_aborts_with_its_name_in_the_audit(operator, run):
    body = operator.get(reverse(STATUS)).content.decode()
    assert 'id="kr-pause"' in body and 'id="kr-abort"' in body and 'id="kr-resume"' not in body
    assert 'name="csrfmiddlewaretoken"' in body
    response = control(operator, run, "pause")
    assert response.status_code == 302 and response.url == reverse(STATUS)
    run.refresh_from_db()
    assert run.status == "paused"
    body = operator.get(reverse(STATUS)).content.decode()
    assert 'id="kr-resume"' in body and 'id="kr-pause"' not in body and "is now paused" in body
    control(operator, run, "resume")
    run.refresh_from_db()
    assert run.status == "running"
    control(operator, run, "abort")
    run.refresh_from_db()
    assert run.status == "aborted"
    body = operator.get(reverse(STATUS)).content.decode()
    assert 'id="kr-abort"' not in body and '<meta http-equiv="refresh"' not in body
    actors = set(KeyRotationAudit.objects.filter(action__startswith="run_").values_list("actor", flat=True))
    assert actors == {"admin:operator"}


def test_superuser_controls_and_refused_transition_is_a_message(root, run):
    control(root, run, "abort")
    response = control(root, run, "pause")
    assert response.status_code == 302
    assert "cannot become paused" in root.get(reverse(STATUS)).content.decode()
    # An unknown action never reaches the control view (the URL only admits the three actions).
    unknown = reverse("admin:keyrotation_reencryptionrun_changelist") + f"{run.pk}/explode/"
    assert root.post(unknown).status_code in (301, 302, 404)
    run.refresh_from_db()
    assert run.status == "aborted"  # unchanged
    assert root.post(reverse("admin:keyrotation_run_control", args=[999, "pause"])).status_code == 404


def test_controls_are_post_only_and_need_csrf(run):
    u = user("csrf", superuser=True)
    strict = client_for(u, enforce_csrf_checks=True)
    assert strict.get(reverse("admin:keyrotation_run_control", args=[run.pk, "pause"])).status_code == 405
    assert control(strict, run, "pause").status_code == 403
    run.refresh_from_db()
    assert run.status == "running"


def test_json_endpoint(viewer, run):
    data = viewer.get(reverse("admin:keyrotation_status_json")).json()
    assert data["run"]["id"] == run.pk and data["run"]["status"] == "running"
    assert {c["label"] for c in data["columns"]} >= {"testapp.Person.email", "testapp.Account.username_bidx"}


def test_audit_trail_filters_by_run_as_the_status_page_links_it(root, keys):
    Person.objects.create(name="a", email="alice@example.com")
    lifecycle.rotate("default", "encrypt", actor="test")
    keyring.invalidate()
    first = engine.reencrypt(["testapp.Person"], actor="test").run_id
    Person.objects.create(name="b", email="bob@example.com")
    lifecycle.rotate("default", "encrypt", actor="test")
    keyring.invalidate()
    second = engine.reencrypt(["testapp.Person"], actor="test").run_id
    body = root.get(reverse(STATUS)).content.decode()
    changelist = reverse("admin:keyrotation_keyrotationaudit_changelist")
    assert f'href="{changelist}?run={second}"' in body
    response = root.get(f"{changelist}?run={first}")
    assert response.status_code == 200
    shown = list(response.context["cl"].result_list)
    assert shown and {row.details.get("run") for row in shown} == {first}
    assert {"run_started", "run_finished"} <= {row.action for row in shown}
    assert list(root.get(f"{changelist}?run=nope").context["cl"].result_list) == []


def test_no_run_yet(root, keys):
    body = root.get(reverse(STATUS)).content.decode()
    assert "No re-encryption run yet" in body and "refresh" not in body.split("</head>")[0]


def test_status_page_is_linked_from_the_app_index_and_the_runs_list(root, keys):
    link = reverse(STATUS)
    assert link.encode() in root.get(reverse("admin:app_list", args=["keyrotation"])).content
    assert link.encode() in root.get(reverse("admin:keyrotation_reencryptionrun_changelist")).content


def test_custom_admin_site(run):
    root = client_for(user("root2", superuser=True))
    url = reverse("custom:keyrotation_status")
    assert url.startswith("/custom-admin/")
    body = root.get(url).content.decode()
    assert "Custom admin" in body and "testapp.Person.email" in body
    assert root.post(reverse("custom:keyrotation_run_control", args=[run.pk, "pause"])).url == url


# -- read-only models ---------------------------------------------------------------------------


def test_pages_never_show_wrapped_keys(root, run):
    audit.record("something", actor="x")  # creates the audit chain key too
    key = DataKey.objects.filter(keyring="default").first()
    urls = [
        reverse(STATUS),
        reverse("admin:keyrotation_status_json"),
        reverse("admin:keyrotation_datakey_changelist"),
        reverse("admin:keyrotation_datakey_change", args=[key.pk]),
        reverse("admin:keyrotation_keyrotationaudit_changelist"),
        reverse("admin:keyrotation_reencryptionrun_changelist"),
    ]
    for url in urls:
        response = root.get(url)
        assert response.status_code == 200, url
        assert secrets_in(response.content) == [], url
        assert b"wrapped_key" not in response.content, url


def test_datakey_admin_is_read_only_with_census(root, keys):
    Person.objects.create(name="a", email="alice@example.com")
    key = DataKey.objects.get(keyring="default", purpose="encrypt", version=1)
    changelist = root.get(reverse("admin:keyrotation_datakey_changelist")).content.decode()
    assert reverse("admin:keyrotation_datakey_add") not in changelist and "local:" in changelist
    detail = root.get(reverse("admin:keyrotation_datakey_change", args=[key.pk])).content.decode()
    assert "testapp.Person.email: 1" in detail and 'name="_save"' not in detail
    assert root.get(reverse("admin:keyrotation_datakey_add")).status_code == 403
    change = reverse("admin:keyrotation_datakey_change", args=[key.pk])
    assert root.post(change, {"state": "retired"}).status_code == 403
    assert root.get(reverse("admin:keyrotation_datakey_delete", args=[key.pk])).status_code == 403
    key.refresh_from_db()
    assert key.state == "active"
    filtered = root.get(reverse("admin:keyrotation_datakey_changelist") + "?purpose=index&state=active")
    assert filtered.status_code == 200


def test_audit_admin_shows_chain_status_and_searches_actors(root, keys):
    audit.record("from_admin_test", actor="admin:carol")
    url = reverse("admin:keyrotation_keyrotationaudit_changelist")
    body = root.get(url).content.decode()
    assert "Hash chain verified: 3 rows" in body
    assert reverse("admin:keyrotation_keyrotationaudit_add") not in body
    searched = root.get(url + "?q=carol").content.decode()
    assert "from_admin_test" in searched and "1 key rotation audit entry" in searched
    assert root.get(url + "?action=key_generated&status=ok").status_code == 200
    first = KeyRotationAudit.objects.order_by("id").first()
    with connection.cursor() as cur:
        cur.execute(f"UPDATE {KeyRotationAudit._meta.db_table} SET actor = 'x' WHERE id = %s", [first.pk])
    assert f"Hash chain broken at row #{first.pk}" in root.get(url).content.decode()
    detail = root.get(reverse("admin:keyrotation_keyrotationaudit_change", args=[first.pk]))
    assert detail.status_code == 200 and first.row_hash in detail.content.decode()
    assert root.get(reverse("admin:keyrotation_keyrotationaudit_add")).status_code == 403


def test_runs_and_quarantine_lists(root, run):
    QuarantinedValue.objects.create(
        run=run, label="testapp.Person.email", pk_value="7", key_version=1, reason="does not decrypt"
    )
    body = root.get(reverse("admin:keyrotation_reencryptionrun_changelist")).content.decode()
    assert "<progress" in body and "0/0 rows" in body
    body = root.get(reverse("admin:keyrotation_quarantinedvalue_changelist")).content.decode()
    assert "does not decrypt" in body and reverse("admin:keyrotation_quarantinedvalue_add") not in body


# -- encrypted fields on users' models ----------------------------------------------------------


def test_mask_in_changelist(settings, keys):
    root = client_for(user("root3", superuser=True))
    Person.objects.create(name="alice", email="alice@example.com", ssn="123-45-6789")
    Person.objects.create(name="bob", email=None, ssn=None)
    url = reverse("custom:testapp_person_changelist")
    body = root.get(url).content.decode()
    assert "alice@example.com" in body  # masking is off by default
    settings.KEYROTATION = {**settings.KEYROTATION, "MASK_IN_CHANGELIST": True}
    body = root.get(url).content.decode()
    assert "alice@example.com" not in body and "123-45-6789" not in body
    assert "••••••••" in body and "alice" in body
    assert body.count("••••••••") == 2  # bob's empty values stay empty, not masked
    assert reverse("custom:testapp_person_change", args=[Person.objects.get(name="alice").pk]) in body


def test_change_form_uses_base_widget_and_log_entry_holds_no_plaintext(keys):
    root = client_for(user("root4", superuser=True))
    person = Person.objects.create(name="alice", email="alice@example.com", ssn="123-45-6789")
    url = reverse("custom:testapp_person_change", args=[person.pk])
    form = root.get(url).content.decode()
    assert 'type="email"' in form and 'value="alice@example.com"' in form
    response = root.post(url, {"name": "alice", "email": "alice.new@example.com", "ssn": "987-65-4321"})
    assert response.status_code == 302
    person.refresh_from_db()
    assert person.email == "alice.new@example.com"
    entry = LogEntry.objects.get(object_id=str(person.pk))
    message = entry.change_message + entry.get_change_message() + entry.object_repr
    for plaintext in ("alice@example.com", "alice.new@example.com", "123-45-6789", "987-65-4321"):
        assert plaintext not in message
    assert "Email" in entry.get_change_message() and "Ssn" in entry.get_change_message()


def cells(body: str, column: str) -> list[str]:
    """The text of every ``column`` cell of a change list, top to bottom."""
    return [unescape(c) for c in re.findall(rf'<td class="field-{column}">(.*?)</td>', body)]


def test_datakey_changelist_shows_age_and_rotation_due_date(root, keys, settings):
    from tests.helpers.key_age import make_older, set_policy

    url = reverse("admin:keyrotation_datakey_changelist")
    page = root.get(url + "?keyring=default").content.decode()
    assert cells(page, "active_for") == ["0\xa0minutes", "0\xa0minutes"]  # encrypt v1, index v1
    assert cells(page, "rotation_due") == ["no rotation period"] * 2
    set_policy(settings, {"default": {"encrypt": 30, "index": 365}})
    make_older("default", "encrypt", 45)
    make_older("default", "index", 360)
    lifecycle.rotate("default", "encrypt")
    lifecycle.rollback("default", "encrypt")  # v1 active again (its clock restarts), v2 decrypt-only
    make_older("default", "encrypt", 31)
    page = root.get(url + "?keyring=default").content.decode()
    rows = [
        (k.purpose, k.version, k.state)
        for k in DataKey.objects.filter(keyring="default").order_by("purpose", "-version")
    ]
    assert rows == [("encrypt", 2, "decrypt_only"), ("encrypt", 1, "active"), ("index", 1, "active")]
    v1 = DataKey.objects.get(keyring="default", purpose="encrypt", version=1)
    index = DataKey.objects.get(keyring="default", purpose="index", version=1)

    def due(key, days):
        return date_format(timezone.localtime(key.activated_at + timedelta(days=days)), "DATE_FORMAT")

    assert cells(page, "rotation_due") == ["-", f"{due(v1, 30)} (overdue)", f"{due(index, 365)} (due soon)"]
    ages = cells(page, "active_for")
    assert ages[0] == "-" and ages[1] == "1\xa0month" and ages[2].startswith("11\xa0months")
    chain = root.get(url + "?keyring=_audit_chain").content.decode()
    assert cells(chain, "rotation_due") == ["-"] and cells(chain, "active_for") == ["-"]
    detail = root.get(reverse("admin:keyrotation_datakey_change", args=[v1.pk])).content.decode()
    assert f"{due(v1, 30)} (overdue)" in unescape(detail)
    set_policy(settings, {"default": "1y"})
    page = root.get(url + "?keyring=default").content.decode()
    assert cells(page, "rotation_due")[1] == 'invalid KEYROTATION["ROTATION_PERIOD"] (see `manage.py check`)'


@pytest.mark.django_db
def test_status_page_before_any_key_says_what_to_run(viewer):
    """No keyring yet: the page and its JSON say to run `rotatekeys --init` (503), not a 500."""
    assert not DataKey.objects.exists()
    response = viewer.get(reverse(STATUS))
    assert response.status_code == 503
    assert "rotatekeys --init" in response.content.decode()
    twin = viewer.get(reverse("admin:keyrotation_status_json"))
    assert twin.status_code == 503 and "rotatekeys --init" in twin.json()["error"]
