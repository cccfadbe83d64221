from django.contrib import admin

from .models import Person


@admin.register(Person)
class PersonAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "email", "date_of_birth"]
    search_fields = ["=email"]  # exact match through the blind index
