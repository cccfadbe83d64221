"""The rotation status page, its JSON twin, and the pause / resume / abort endpoints.

Thin views over ``engine.status()`` and ``engine.pause/resume/abort``. Served under the
ReencryptionRun admin (``<admin>/keyrotation/reencryptionrun/status/``) so they exist on every
AdminSite the admins are registered on. Seeing the page takes the view permission on runs;
the buttons and the control endpoints take ``keyrotation.control_reencryptionrun``.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.views import View

from . import engine
from .engine import runs
from .exceptions import KeyRotationError, RunNotFound

CONTROL_PERMISSION = "keyrotation.control_reencryptionrun"
ACTIONS = {"pause": engine.pause, "resume": engine.resume, "abort": engine.abort}
REFRESH_SECONDS = 3


def _segments(column: dict) -> list[dict]:
    """One bar segment per key version, newest first, with its share of the column's rows."""
    rows = column["rows"]
    out = []
    for version, n in sorted(column["versions"].items(), key=lambda kv: -int(kv[0])):
        out.append(
            {
                "version": version,
                "rows": n,
                "percent": round(100.0 * n / rows, 2) if rows else 0.0,
                "active": int(version) == column["active_version"],
            }
        )
    return out


def _buttons(run: dict | None) -> list[str]:
    if run is None:
        return []
    status = run["status"]
    return [
        a
        for a, ok in (
            ("pause", status == "running"),
            ("resume", status == "paused"),
            ("abort", status in runs.OPEN_STATUSES),
        )
        if ok
    ]


class _AdminView(View):
    model_admin = None

    def dispatch(self, request, *args, **kwargs):
        if not self.model_admin.has_view_permission(request):
            raise PermissionDenied
        return super().dispatch(request, *args, **kwargs)


class StatusView(_AdminView):
    """Census per column and key version, the latest run, and its controls."""

    def get(self, request):
        data = engine.status()
        for column in data["columns"]:
            column["segments"] = _segments(column)
        run = data["run"]
        if run is not None:
            total = run["rows_total"]
            run["percent"] = 100.0 if not total else round(min(100.0, 100.0 * run["rows_done"] / total), 1)
        site = self.model_admin.admin_site
        context = {
            **site.each_context(request),
            "title": "Key rotation status",
            "opts": self.model_admin.model._meta,
            "columns": data["columns"],
            "run": run,
            "can_control": request.user.has_perm(CONTROL_PERMISSION),
            "buttons": _buttons(run),
            "refresh": REFRESH_SECONDS if run and run["status"] in ("running", "paused") else None,
            "json_url": reverse(f"{site.name}:keyrotation_status_json"),
        }
        return TemplateResponse(request, "admin/keyrotation/rotation_status.html", context)


class StatusJSONView(_AdminView):
    """``engine.status()`` as JSON (what the page shows), for scripts and polling."""

    def get(self, request):
        return JsonResponse(engine.status())


class ControlView(_AdminView):
    """POST pause / resume / abort of one run, recorded in the audit trail as ``admin:<user>``."""

    http_method_names = ["post"]

    def post(self, request, run_id: int, action: str):
        if not request.user.has_perm(CONTROL_PERMISSION):
            raise PermissionDenied
        if action not in ACTIONS:
            raise Http404("unknown action")
        actor = f"admin:{request.user.get_username()}"
        try:
            run = ACTIONS[action](run_id, actor=actor)
        except RunNotFound:
            raise Http404("no such run") from None
        except KeyRotationError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Run #{run.pk} is now {run.status}.")
        return HttpResponseRedirect(reverse(f"{self.model_admin.admin_site.name}:keyrotation_status"))
