"""Encrypted fields in ordinary ModelAdmins: search, sorting, change-list settings and their checks.

The admins in ``tests/admin_integration_urls.py`` are plain ``admin.ModelAdmin`` classes; the
deliberately bad ones are built per test on a throwaway site (see ``bad_site``), so that they never
reach the system checks of other tests.
"""

import types
import uuid

import pytest
from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth.models import User
from django.core import checks
from django.test import Client, RequestFactory
from django.urls import path, reverse

from keyrotation import admin_integration
from keyrotation.admin import DataKeyAdmin
from keyrotation.admin_integration.changelist import safe_changelist
from keyrotation.models import DataKey
from tests.admin_integration_urls import PersonAdmin
from tests.testapp.models import AllTypes, Note, Person

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.admin_integration_urls")]

ALICE = {"name": "Alice Liddell", "email": "alice@example.com", "ssn": "111-11-1111"}
BOB = {"name": "Bob Smith", "email": "bob.smith@example.com", "ssn": "222-22-2222"}
ROBERT = {"name": "Robert Jones", "email": "bob@example.com", "ssn": "333-33-3333"}


@pytest.fixture
def people(keys):
    return {p["name"]: Person.objects.create(**p) for p in (ALICE, BOB, ROBERT)}


@pytest.fixture
def root():
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.org", "pw"))
    return client


def changelist(client, name, site="integration", **params):
    response = client.get(reverse(f"{site}:testapp_{name}_changelist"), params)
    assert response.status_code == 200
    return response


def names_found(response):
    return {obj.name for obj in response.context["cl"].result_list}


def leaked(body, *rows):
    return [value for row in rows for value in row.values() if value in body]


@pytest.fixture
def bad_site(settings):
    """Build an AdminSite from (model, ModelAdmin) pairs and serve it at /bad-admin/ for one test."""
    sites = []

    def build(*registrations):
        site = admin.AdminSite(name="bad")
        for model, model_admin in registrations:
            site.register(model, model_admin)
        urls = types.ModuleType("bad_admin_urls")
        urls.urlpatterns = [path("bad-admin/", site.urls)]
        settings.ROOT_URLCONF = urls
        sites.append(site)
        return site

    yield build
    for site in sites:
        site._registry.clear()  # the site may outlive the test: leave nothing for later checks


def keyrotation_errors(model_admin_class):
    found = checks.run_checks(tags=[checks.Tags.admin])
    return {m.id: m for m in found if m.obj is model_admin_class and m.id.startswith("keyrotation.")}


# -- search -------------------------------------------------------------------------------------


def test_search_by_part_of_a_name_finds_it(people, root):
    response = changelist(root, "person", q="lidd")
    assert names_found(response) == {"Alice Liddell"}
    assert leaked(response.content.decode(), BOB, ROBERT) == []


def test_search_by_exact_email_in_another_case_finds_the_row(people, root):
    response = changelist(root, "person", q="  ALICE@Example.COM ")
    assert names_found(response) == {"Alice Liddell"}
    body = response.content.decode()
    assert ALICE["email"] in body and leaked(body, BOB, ROBERT) == []


def test_search_by_part_of_an_email_finds_nothing_through_it(people, root):
    assert names_found(changelist(root, "person", q="alice@example")) == set()


def test_search_or_s_the_email_with_the_names(people, root):
    # "bob" is part of Bob Smith's name; Robert's e-mail is bob@example.com but "bob" is not it.
    assert names_found(changelist(root, "person", q="bob")) == {"Bob Smith"}
    # Robert is found by his exact e-mail, Bob Smith by his name: two terms, as Django ANDs them.
    assert names_found(changelist(root, "person", q="bob@example.com")) == {"Robert Jones"}
    assert names_found(changelist(root, "person", q="jones bob@example.com")) == {"Robert Jones"}
    assert names_found(changelist(root, "person", q="smith bob@example.com")) == set()


def test_search_through_a_relation(people, root):
    for person in people.values():
        Note.objects.create(person=person, body=f"about {person.name}")
    response = changelist(root, "note", q="Bob.Smith@example.com")
    assert [n.person.name for n in response.context["cl"].result_list] == ["Bob Smith"]
    assert "about Bob Smith" not in response.content.decode()  # the note body is not listed
    assert len(changelist(root, "note", q="robert").context["cl"].result_list) == 1


def test_autocomplete_searches_the_same_way(people, root):
    params = {"app_label": "testapp", "model_name": "note", "field_name": "person"}
    response = root.get(reverse("integration:autocomplete"), {**params, "term": "Bob@Example.com"})
    assert response.status_code == 200
    assert [r["text"] for r in response.json()["results"]] == ["Robert Jones"]
    assert leaked(response.content.decode(), ALICE, BOB, {"email": ROBERT["email"]}) == []


def test_a_term_the_base_field_rejects_matches_nothing(keys, root):
    uid = uuid.uuid4()
    row = AllTypes.objects.create(uid=uid)
    AllTypes.objects.create(uid=uuid.uuid4())
    for term in ("abc", "2024-13-45", "1e999", "-1"):
        assert list(changelist(root, "alltypes", q=term).context["cl"].result_list) == []
    assert list(changelist(root, "alltypes", q=str(uid).upper()).context["cl"].result_list) == [row]
    assert list(changelist(root, "alltypes", q=str(row.pk)).context["cl"].result_list) == [row]


def test_unservable_search_entries_are_errors_and_match_nothing(people, root, bad_site):
    class BadSearchAdmin(admin.ModelAdmin):
        list_display = ["name"]
        search_fields = ["name", "^email", "@email", "email__icontains", "ssn"]

    bad_site((Person, BadSearchAdmin))
    error = keyrotation_errors(BadSearchAdmin)["keyrotation.E111"]
    for entry in ("'^email'", "'@email'", "'email__icontains'", "'ssn' (no BlindIndexField)"):
        assert entry in error.msg
    assert "'name'" not in error.msg and "BlindIndexField" in error.hint

    assert names_found(changelist(root, "person", site="bad", q="alice")) == {"Alice Liddell"}
    for term in ("alice@example.com", "alice", "111-11-1111"):
        response = changelist(root, "person", site="bad", q=term)
        assert names_found(response) <= {"Alice Liddell"}
        assert leaked(response.content.decode(), BOB, ROBERT) == []
    assert names_found(changelist(root, "person", site="bad", q="111-11-1111")) == set()


def test_search_with_only_unservable_entries_matches_nothing(people, root, bad_site):
    class OnlyUnservableAdmin(admin.ModelAdmin):
        search_fields = ["ssn", "^email"]

    bad_site((Person, OnlyUnservableAdmin))
    assert set(keyrotation_errors(OnlyUnservableAdmin)) == {"keyrotation.E111"}
    assert names_found(changelist(root, "person", site="bad", q="alice@example.com")) == set()
    assert len(names_found(changelist(root, "person", site="bad"))) == 3  # no term: every row


# -- sorting ------------------------------------------------------------------------------------


def test_encrypted_columns_have_no_sort_link(people, root):
    Note.objects.create(person=people["Bob Smith"], body="a note")
    body = changelist(root, "person").content.decode()
    assert 'class="sortable column-name' in body
    assert 'class="column-email"' in body and 'class="column-ssn"' in body
    body = changelist(root, "note").content.decode()
    assert 'class="sortable column-person' in body and 'class="column-person__email"' in body


@pytest.mark.parametrize("order", ["2", "-2", "3.1", "-1.-3", "2.2.2"])
def test_a_crafted_order_on_an_encrypted_column_is_ignored(people, root, order):
    Note.objects.create(person=people["Bob Smith"], body="a note")
    response = changelist(root, "person", o=order)
    assert len(response.context["cl"].result_list) == 3
    changelist(root, "note", o=order)


# -- other change-list settings -----------------------------------------------------------------


def test_list_filter_ordering_date_hierarchy_and_sortable_by_checks(bad_site):
    class BadPersonAdmin(admin.ModelAdmin):
        list_display = ["name", "email"]
        list_filter = ["name", "ssn", ("email", admin.AllValuesFieldListFilter)]
        ordering = ["name", "-email"]
        sortable_by = ["name", "email"]

    class BadAllTypesAdmin(admin.ModelAdmin):
        date_hierarchy = "day"

    bad_site((Person, BadPersonAdmin), (AllTypes, BadAllTypesAdmin))
    person = keyrotation_errors(BadPersonAdmin)
    assert set(person) == {"keyrotation.E112", "keyrotation.E113", "keyrotation.E115"}
    assert "'ssn'" in person["keyrotation.E112"].msg and "'name'" not in person["keyrotation.E112"].msg
    assert "'email'" in person["keyrotation.E112"].msg
    assert "'-email'" in person["keyrotation.E113"].msg and "'name'" not in person["keyrotation.E113"].msg
    assert "'email'" in person["keyrotation.E115"].msg and "'name'" not in person["keyrotation.E115"].msg
    assert all(m.hint and m.level == checks.ERROR for m in person.values())
    assert set(keyrotation_errors(BadAllTypesAdmin)) == {"keyrotation.E114"}


def test_admins_keyrotation_can_serve_raise_no_check_error(bad_site):
    from tests.admin_integration_urls import site

    for model_admin in site._registry.values():
        assert admin_integration.model_admin_errors(model_admin) == []
    bad_site((Person, PersonAdmin))
    assert keyrotation_errors(PersonAdmin) == {}
    assert admin_integration.model_admin_errors(admin.ModelAdmin(Person, admin.site)) == []


def test_encrypted_change_list_settings_are_left_out_at_runtime(people, root, bad_site):
    class BadPersonAdmin(admin.ModelAdmin):
        list_display = ["name", "email"]
        list_filter = ["name", "ssn"]
        ordering = ["-email"]
        search_fields = ["name", "email"]

    class BadAllTypesAdmin(admin.ModelAdmin):
        date_hierarchy = "day"

    bad_site((Person, BadPersonAdmin), (AllTypes, BadAllTypesAdmin))
    response = changelist(root, "person", site="bad")
    assert [spec.title for spec in response.context["cl"].filter_specs] == ["name"]
    assert leaked(response.content.decode(), {"ssn": ALICE["ssn"]}) == []
    assert names_found(changelist(root, "person", site="bad", q="bob.smith@example.com")) == {"Bob Smith"}
    AllTypes.objects.create(day="2024-01-02")
    response = changelist(root, "alltypes", site="bad")
    assert response.context["cl"].date_hierarchy is None and len(response.context["cl"].result_list) == 1


# -- how it hooks in ----------------------------------------------------------------------------


def test_install_is_idempotent_and_leaves_other_admins_alone():
    assert admin_integration.installed()
    before = (admin.ModelAdmin.get_search_results, admin.ModelAdmin.get_changelist)
    admin_integration.install()
    assert (admin.ModelAdmin.get_search_results, admin.ModelAdmin.get_changelist) == before

    request = RequestFactory().get("/")
    assert DataKeyAdmin(DataKey, admin.site).get_changelist(request) is ChangeList
    safe = PersonAdmin(Person, admin.site).get_changelist(request)
    assert issubclass(safe, ChangeList) and safe is not ChangeList
    assert safe_changelist(safe) is safe


def test_opting_out_and_the_explicit_mixin(people, root, settings, bad_site):
    class ExplicitAdmin(admin_integration.AdminIntegrationMixin, admin.ModelAdmin):
        list_display = ["name", "email"]
        search_fields = ["name", "email"]

    class PlainAdmin(admin.ModelAdmin):
        search_fields = ["person__name", "person__email"]

    settings.KEYROTATION = {**settings.KEYROTATION, "ADMIN_INTEGRATION": False}
    bad_site((Person, ExplicitAdmin), (Note, PlainAdmin))
    assert keyrotation_errors(ExplicitAdmin) == {}
    message = keyrotation_errors(PlainAdmin)["keyrotation.E111"].msg
    assert "'person__email' (ADMIN_INTEGRATION is off)" in message and "person__name" not in message
    assert names_found(changelist(root, "person", site="bad", q="ALICE@example.com")) == {"Alice Liddell"}
    assert 'class="column-email"' in changelist(root, "person", site="bad", o="2").content.decode()


def test_a_crafted_filter_value_the_base_field_rejects_is_not_a_500(keys, root):
    AllTypes.objects.create(uid="12345678-1234-5678-1234-567812345678")
    response = root.get(reverse("integration:testapp_alltypes_changelist"), {"uid": "abc"})
    assert response.status_code == 302 and "e=1" in response["Location"]
    found = changelist(root, "alltypes", uid="12345678-1234-5678-1234-567812345678")
    assert len(found.context["cl"].result_list) == 1
