"""An admin site with a plain ModelAdmin for a model with a unique blind index."""

from django.contrib import admin
from django.urls import path

from tests.testapp.models import Account

site = admin.AdminSite(name="uniqueness")
site.register(Account)

urlpatterns = [path("admin/", site.urls)]
