"""Admin: read-only keys, audit trail and runs, and the rotation status page.

Everything is read-only: keys change through ``rotatekeys`` (or ``keyrotation.lifecycle``), the
audit trail is append-only, and runs move only through the engine. The one write is pause /
resume / abort of a run from the status page, for users with ``keyrotation.control_reencryptionrun``.

The classes are registered on ``admin.site``; for a custom ``AdminSite`` call :func:`register`.
``wrapped_key`` is excluded from every form, list and page.
"""

from __future__ import annotations

from django.contrib import admin
from django.urls import path, register_converter, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.timesince import timesince

from . import admin_views, audit_chain, census, conf, lifecycle, policy, registry
from .engine import runs
from .engine.overview import RunOverview
from .exceptions import ConfigurationError
from .models import DataKey, KeyRotationAudit, KeyState, QuarantinedValue, ReencryptionRun

MASK = "••••••••"
_PERIOD_NOTES = {
    policy.PeriodState.OK: "",
    policy.PeriodState.DUE_SOON: " (due soon)",
    policy.PeriodState.OVERDUE: " (overdue)",
    policy.PeriodState.NO_POLICY: "",
}


class _RunAction:
    """URL converter for the run controls (``pause``, ``resume``, ``abort``) and nothing else."""

    regex = "pause|resume|abort"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(_RunAction, "keyrotation_run_action")


class ReadOnlyAdmin(admin.ModelAdmin):
    """View permission only: no add, change or delete, whoever the user is."""

    actions = None

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class DataKeyAdmin(ReadOnlyAdmin):
    """Key versions, their state and KEK, and how many rows reference each (the census)."""

    list_display = [
        "keyring",
        "purpose",
        "version",
        "state",
        "kek_id",
        "rows_referencing",
        "active_for",
        "rotation_due",
        "created_at",
        "activated_at",
        "deactivated_at",
        "retired_at",
        "destroyed_at",
    ]
    list_filter = ["keyring", "purpose", "state"]
    fields = [
        "keyring",
        "purpose",
        "version",
        "state",
        "kek_id",
        "census",
        "created_at",
        "activated_at",
        "active_for",
        "rotation_due",
        "deactivated_at",
        "retired_at",
        "destroyed_at",
    ]
    exclude = ["wrapped_key"]
    readonly_fields = fields
    search_fields = ["keyring", "kek_id"]

    def get_queryset(self, request):
        # Never load the wrapped material, not even into memory for a page.
        return super().get_queryset(request).defer("wrapped_key")

    def _references(self, obj) -> dict[str, int]:
        if obj.keyring == audit_chain.AUDIT_KEYRING:
            n = KeyRotationAudit.objects.filter(chain_key_version=obj.version).count()
            return {"audit rows sealed": n}
        return census.references(obj.keyring, obj.purpose, obj.version)

    @admin.display(description="rows referencing")
    def rows_referencing(self, obj):
        return sum(self._references(obj).values())

    @staticmethod
    def _is_policed(obj) -> bool:
        """An active data key: the versions a rotation period applies to (not the audit chain key)."""
        return obj.state == KeyState.ACTIVE and obj.keyring != audit_chain.AUDIT_KEYRING

    @admin.display(description="active for")
    def active_for(self, obj):
        return timesince(lifecycle.active_since(obj)) if self._is_policed(obj) else "-"

    @admin.display(description="rotation due")
    def rotation_due(self, obj):
        if not self._is_policed(obj):
            return "-"
        try:
            age = policy.key_age(obj)
        except ConfigurationError:
            return 'invalid KEYROTATION["ROTATION_PERIOD"] (see `manage.py check`)'
        if age.due_at is None:
            return "no rotation period"
        due_at = timezone.localtime(age.due_at) if timezone.is_aware(age.due_at) else age.due_at
        return f"{date_format(due_at, 'DATE_FORMAT')}{_PERIOD_NOTES[age.state]}"

    @admin.display(description="census")
    def census(self, obj):
        refs = self._references(obj)
        if not refs:
            return "no registered column uses this keyring"
        return format_html(
            "<br>".join(["{}: {}"] * len(refs)), *[x for item in sorted(refs.items()) for x in item]
        )


class RunFilter(admin.SimpleListFilter):
    """Audit rows of one re-encryption run (``?run=<id>``: the status page links to it)."""

    title = "re-encryption run"
    parameter_name = "run"
    RECENT = 10

    def lookups(self, request, model_admin):
        recent = ReencryptionRun.objects.order_by("-id").values_list("pk", "status")[: self.RECENT]
        choices = [(str(pk), f"#{pk} ({status})") for pk, status in recent]
        chosen = self.value()
        if chosen and chosen.isdigit() and chosen not in {pk for pk, _ in choices}:
            choices.append((chosen, f"#{chosen}"))
        return choices

    def queryset(self, request, queryset):
        chosen = self.value()
        if not chosen:
            return queryset
        if not chosen.isdigit():
            return queryset.none()
        return queryset.filter(details__run=int(chosen))


class KeyRotationAuditAdmin(ReadOnlyAdmin):
    """The append-only audit trail, with the state of its hash chain above the list."""

    change_list_template = "admin/keyrotation/keyrotationaudit/change_list.html"
    list_display = [
        "id",
        "created_at",
        "action",
        "status",
        "actor",
        "keyring",
        "purpose",
        "from_version",
        "to_version",
        "rows_processed",
        "short_hash",
    ]
    list_filter = ["action", "status", "keyring", RunFilter]
    date_hierarchy = "created_at"
    search_fields = ["actor"]
    readonly_fields = [f.name for f in KeyRotationAudit._meta.fields]

    @admin.display(description="row hash")
    def short_hash(self, obj):
        return f"{obj.row_hash[:12]}…" if obj.row_hash else "-"

    def changelist_view(self, request, extra_context=None):
        extra = {"chain": audit_chain.verify(), **(extra_context or {})}
        return super().changelist_view(request, extra_context=extra)


class ReencryptionRunAdmin(ReadOnlyAdmin):
    """Runs with their progress; also serves the rotation status page and its controls."""

    change_list_template = "admin/keyrotation/reencryptionrun/change_list.html"
    list_display = ["id", "status", "scope", "actor", "progress", "started_at", "heartbeat", "finished_at"]
    list_filter = ["status"]
    readonly_fields = [f.name for f in ReencryptionRun._meta.fields] + ["progress", "heartbeat"]
    search_fields = ["scope", "actor"]

    @staticmethod
    def _overview(obj) -> RunOverview:
        if not hasattr(obj, "_keyrotation_overview"):
            obj._keyrotation_overview = RunOverview(obj, runs.progress(obj))
        return obj._keyrotation_overview

    @admin.display(description="progress")
    def progress(self, obj):
        overview = self._overview(obj)
        tally = overview.tally
        return format_html(
            '<progress max="100" value="{}"></progress> {} ({}%), {}/{} chunks',
            f"{tally.percent:.1f}",
            tally.text(),
            f"{tally.percent:.1f}",
            overview.progress.chunks_done,
            overview.progress.chunks,
        )

    @admin.display(description="last heartbeat")
    def heartbeat(self, obj):
        return self._overview(obj).progress.heartbeat or "-"

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path(
                "status/", view(admin_views.StatusView.as_view(model_admin=self)), name="keyrotation_status"
            ),
            path(
                "status.json",
                view(admin_views.StatusJSONView.as_view(model_admin=self)),
                name="keyrotation_status_json",
            ),
            path(
                "start/",
                view(admin_views.StartView.as_view(model_admin=self)),
                name="keyrotation_start",
            ),
            path(
                # Only the three actions: a catch-all <str:action> would swallow "<id>/change/".
                "<int:run_id>/<keyrotation_run_action:action>/",
                view(admin_views.ControlView.as_view(model_admin=self)),
                name="keyrotation_run_control",
            ),
            *super().get_urls(),
        ]


class QuarantinedValueAdmin(ReadOnlyAdmin):
    """Values a run could not decrypt (where and why; never the value)."""

    list_display = ["id", "run", "label", "pk_value", "key_version", "reason", "created_at"]
    list_filter = ["label"]
    search_fields = ["label", "pk_value"]
    readonly_fields = [f.name for f in QuarantinedValue._meta.fields]


class EncryptedFieldsAdminMixin:
    """Mask encrypted fields in ``list_display`` when ``KEYROTATION["MASK_IN_CHANGELIST"]`` is on.

    The masked column never decrypts the value: it shows the empty value for rows without one
    (from the ``<field>_key_version`` column) and a fixed mask otherwise, so the length does not
    leak either. Forms keep the base field's widget.

    Example::

        @admin.register(Person)
        class PersonAdmin(EncryptedFieldsAdminMixin, admin.ModelAdmin):
            list_display = ["name", "email"]
    """

    def _encrypted_columns(self) -> dict[str, registry.Column]:
        concrete = self.model._meta.concrete_model
        return {
            c.field_name: c
            for c in registry.columns(purpose="encrypt")
            if c.model._meta.concrete_model is concrete
        }

    def _masked(self, name: str, column: registry.Column):
        field = self.model._meta.get_field(name)
        empty = self.get_empty_value_display()

        def masked(obj):
            return empty if getattr(obj, column.version_attname) is None else MASK

        masked.short_description = field.verbose_name
        masked.__name__ = f"{name}_masked"
        return masked

    def get_list_display(self, request):
        names = super().get_list_display(request)
        if not conf.mask_in_changelist():
            return names
        cols = self._encrypted_columns()
        return [self._masked(n, cols[n]) if isinstance(n, str) and n in cols else n for n in names]

    def get_list_display_links(self, request, list_display):
        links = super().get_list_display_links(request, list_display)
        if not conf.mask_in_changelist() or not links:
            return links
        by_name = {getattr(n, "__name__", n): n for n in list_display}
        return [by_name.get(f"{link}_masked", link) for link in links]


ADMINS = {
    DataKey: DataKeyAdmin,
    KeyRotationAudit: KeyRotationAuditAdmin,
    ReencryptionRun: ReencryptionRunAdmin,
    QuarantinedValue: QuarantinedValueAdmin,
}


def register(site: admin.AdminSite) -> None:
    """Register the keyrotation admins (and the status page) on a custom ``AdminSite``."""
    for model, model_admin in ADMINS.items():
        site.register(model, model_admin)


def status_url(site: admin.AdminSite = admin.site) -> str:
    """URL of the rotation status page on ``site``."""
    return reverse(f"{site.name}:keyrotation_status")


register(admin.site)
