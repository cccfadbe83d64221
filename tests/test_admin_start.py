"""The status page's **Start re-encryption** button (:class:`keyrotation.admin_views.StartView`)
and its JSON twin's ``start``: permission, CSRF, the hint without a backend, a broker that is down,
a backend that is not installed, and a double click that starts one run."""

from __future__ import annotations

import io
import sys

import pytest
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from keyrotation import keyring, lifecycle
from keyrotation.models import KeyRotationAudit, ReencryptionRun
from tests import servers
from tests.test_admin import client_for, user
from tests.testapp.models import Person

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.admin_urls")]

STATUS = "admin:keyrotation_status"
START = "admin:keyrotation_start"
ROWS = 30
# How many jobs the form offers: SQLite cannot share a run between jobs (no SKIP LOCKED).
MAX_WORKERS = 1 if connection.vendor == "sqlite" else 16


def task_backend(settings, value) -> None:
    settings.KEYROTATION = {**settings.KEYROTATION, "TASK_BACKEND": value}


@pytest.fixture
def pending(keys):
    """ROWS people on v1, then v2 made active: every row is still to re-encrypt."""
    Person.objects.bulk_create(
        Person(name=f"p{i}", email=f"o{i}@example.com", ssn=f"{i:09d}") for i in range(ROWS)
    )
    lifecycle.rotate("default", "encrypt", actor="test")
    lifecycle.rotate("default", "index", actor="test")
    keyring.invalidate()


@pytest.fixture
def operator():
    return client_for(
        user("operator", "keyrotation.view_reencryptionrun", "keyrotation.control_reencryptionrun")
    )


@pytest.fixture
def viewer():
    return client_for(user("viewer", "keyrotation.view_reencryptionrun"))


def start(client, **data):
    """POST the start form and follow its redirect to the status page: the messages shown there."""
    response = client.post(reverse(START), {"workers": "1", **data}, follow=True)
    assert response.redirect_chain == [(reverse(STATUS), 302)]
    assert response.status_code == 200
    return [(m.level_tag, m.message) for m in response.context["messages"]]


def queued() -> int:
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.count()


def page(client) -> str:
    response = client.get(reverse(STATUS))
    assert response.status_code == 200
    return response.content.decode()


def test_without_a_backend_the_page_names_the_command_and_the_setting(operator, pending):
    body = page(operator)
    assert 'id="kr-start-form"' not in body
    assert "manage.py reencrypt" in body and "--workers N" in body and "TASK_BACKEND" in body
    assert operator.get(reverse("admin:keyrotation_status_json")).json()["start"] == {
        "can_start": False,
        "backend": None,
        "problem": None,
        "pending": True,
        "open_run": None,
        "max_workers": MAX_WORKERS,
    }
    [(level, text)] = start(operator)
    assert level == "error" and "manage.py reencrypt" in text and "TASK_BACKEND" in text
    assert not ReencryptionRun.objects.exists()


def test_the_form_needs_the_control_permission_and_a_post_without_it_is_403(
    settings, operator, viewer, pending
):
    task_backend(settings, "django")
    assert 'id="kr-start-form"' in page(operator) and "Django tasks" in page(operator)
    assert 'id="kr-start-form"' not in page(viewer)
    json_url = reverse("admin:keyrotation_status_json")
    assert operator.get(json_url).json()["start"]["can_start"] is True
    assert viewer.get(json_url).json()["start"] == {
        "can_start": False,
        "backend": "django",
        "problem": None,
        "pending": True,
        "open_run": None,
        "max_workers": MAX_WORKERS,
    }
    assert viewer.post(reverse(START), {"workers": "1"}).status_code == 403
    assert operator.get(reverse(START)).status_code == 405
    assert queued() == 0


def test_the_start_needs_csrf(settings, pending):
    task_backend(settings, "django")
    strict = client_for(user("root", superuser=True), enforce_csrf_checks=True)
    assert strict.post(reverse(START), {"workers": "1"}).status_code == 403
    assert queued() == 0


def test_a_double_click_queues_two_jobs_that_make_one_run(settings, operator, pending):
    task_backend(settings, "django")
    for _ in range(2):
        [(level, text)] = start(operator, workers="1", rate="")
        assert level == "success", text
        assert text.startswith("Queued 1 re-encryption job on Django tasks (ids ")
    assert queued() == 2
    assert not KeyRotationAudit.objects.filter(action__startswith="run").exists()  # the view records nothing

    call_command("db_worker", "--batch", "--no-startup-delay", stdout=io.StringIO(), stderr=io.StringIO())

    [run] = ReencryptionRun.objects.all()  # the second job found nothing left and recorded nothing
    assert (run.status, run.actor) == ("finished", "admin:operator")
    assert set(Person.objects.values_list("email_key_version", flat=True)) == {2}
    body = page(operator)
    assert 'id="kr-start-form"' not in body and 'id="kr-start-hint"' not in body  # nothing left to do
    [(level, text)] = start(operator)
    assert level == "info" and queued() == 2


def test_an_open_run_refuses_a_second_start(settings, operator, pending):
    task_backend(settings, "django")
    run = ReencryptionRun.objects.create(status="running", scope="*", targets={"default/encrypt": 2})
    assert 'id="kr-start-form"' not in page(operator)
    [(level, text)] = start(operator)
    assert (level, text) == ("warning", f"Run #{run.pk} is already open: nothing was queued.")
    assert queued() == 0


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"workers": "0"}, "workers: Ensure this value is greater than or equal to 1."),
        (
            {"workers": str(MAX_WORKERS + 1)},
            f"workers: Ensure this value is less than or equal to {MAX_WORKERS}.",
        ),
        ({"workers": "two"}, "workers: Enter a whole number."),
        ({"workers": "1", "rate": "-5"}, "rate: Ensure this value is greater than or equal to 0.001."),
    ],
)
def test_a_bad_form_queues_nothing(settings, operator, pending, data, error):
    task_backend(settings, "django")
    [(level, text)] = start(operator, **data)
    assert (level, text) == ("error", f"Nothing was queued: {error}")
    assert queued() == 0


def test_a_backend_that_is_not_installed_is_a_message(settings, monkeypatch, operator, pending):
    task_backend(settings, "celery")
    monkeypatch.setitem(sys.modules, "celery", None)
    body = page(operator)
    assert 'id="kr-start-form"' not in body and "install celery" in body
    [(level, text)] = start(operator)
    assert level == "error" and "install celery" in text and "\n" not in text
    assert not ReencryptionRun.objects.exists()


@pytest.mark.celery
def test_a_broker_that_is_down_is_one_line_not_a_500(settings, operator, pending, redis_url):
    """Celery publishing to a port nothing listens on raises kombu's OperationalError."""
    from celery import Celery

    from tests.celery_app import app as test_app

    task_backend(settings, "celery")
    down = Celery("keyrotation_down", set_as_current=False)
    down.conf.update(
        broker_url=f"redis://:s3cret@127.0.0.1:{servers.free_port()}/0",
        broker_connection_timeout=1,
        imports=["keyrotation.contrib.celery"],
    )
    down.set_current()
    try:
        [(level, text)] = start(operator, workers=str(MAX_WORKERS))
    finally:
        test_app.set_current()
    assert level == "error"
    assert text == (
        "Nothing was queued: Celery refused the jobs (OperationalError). "
        "Check that its broker or task store is reachable, then try again."
    )
    assert "s3cret" not in text
    assert not ReencryptionRun.objects.exists()


def test_the_form_offers_as_many_jobs_as_the_database_can_share_a_run_between(settings, operator, pending):
    task_backend(settings, "django")
    body = page(operator)
    assert f'max="{MAX_WORKERS}"' in body
    if MAX_WORKERS == 1:
        assert "one job: this database cannot share a run between jobs (no SKIP LOCKED)" in body
    else:
        assert f"jobs sharing the run (1-{MAX_WORKERS})" in body
