"""URLs for the admin-integration tests: plain ``ModelAdmin`` classes, written as if keyrotation
did not exist, on their own ``AdminSite``. Every entry here is one keyrotation can serve, so this
site adds no system-check error to the suite (the tests build deliberately bad admins themselves)."""

from django.contrib import admin
from django.urls import path

from tests.testapp.models import AllTypes, Note, Person

site = admin.AdminSite(name="integration")


@admin.register(Person, site=site)
class PersonAdmin(admin.ModelAdmin):
    list_display = ["name", "email", "ssn"]
    search_fields = ["name", "email"]
    ordering = ["name"]


@admin.register(Note, site=site)
class NoteAdmin(admin.ModelAdmin):
    list_display = ["id", "person", "person__email"]
    autocomplete_fields = ["person"]
    search_fields = ["person__name", "person__email"]


@admin.register(AllTypes, site=site)
class AllTypesAdmin(admin.ModelAdmin):
    list_display = ["id", "uid"]
    search_fields = ["id__exact", "uid", "=moment"]


urlpatterns = [path("integration-admin/", site.urls)]
