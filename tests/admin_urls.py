"""URLs for the admin tests: the default site, plus a custom AdminSite built with keyrotation's helper
and an admin for the test app's Person (encrypted fields, masked in its change list when enabled)."""

from django.contrib import admin
from django.urls import path

import keyrotation.admin
from tests.testapp.models import Person


class CustomSite(admin.AdminSite):
    site_header = "Custom admin"


custom_site = CustomSite(name="custom")
keyrotation.admin.register(custom_site)


@admin.register(Person, site=custom_site)
class PersonAdmin(keyrotation.admin.EncryptedFieldsAdminMixin, admin.ModelAdmin):
    list_display = ["name", "email", "ssn"]
    list_display_links = ["email"]
    fields = ["name", "email", "ssn"]


urlpatterns = [path("admin/", admin.site.urls), path("custom-admin/", custom_site.urls)]
