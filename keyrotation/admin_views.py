"""The rotation status page, its JSON twin, and the pause / resume / abort endpoints.

Thin views over :func:`keyrotation.dashboard.build` and ``engine.pause/resume/abort``. Served under the
ReencryptionRun admin (``<admin>/keyrotation/reencryptionrun/status/``) so they exist on every
AdminSite the admins are registered on. Seeing the page takes the view permission on runs;
the buttons and the control endpoints take ``keyrotation.control_reencryptionrun``.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.views import View

from . import dashboard, engine
from .engine import runs
from .exceptions import EngineDatabaseError, KeyRotationError, NoActiveKey, RunNotFound

CONTROL_PERMISSION = "keyrotation.control_reencryptionrun"
ACTIONS = {"pause": engine.pause, "resume": engine.resume, "abort": engine.abort}
REFRESH_SECONDS = 3
CHART_WIDTH, CHART_HEIGHT = 300, 60


def _chart(run: dashboard.RunFigures | None) -> dict | None:
    """The rate chart's geometry (an SVG drawn by the template): one point per interval, scaled
    to the peak rate; None with fewer than two intervals (no line to draw)."""
    if run is None or len(run.rate) < 2:
        return None
    peak = run.peak or 1.0
    n = len(run.rate)
    points = []
    for i, point in enumerate(run.rate):
        x = CHART_WIDTH * i / (n - 1)
        y = CHART_HEIGHT - (CHART_HEIGHT - 4) * point.rows_per_second / peak
        points.append(f"{x:.1f},{y:.1f}")
    line = " ".join(points)
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "line": line,
        "area": f"0,{CHART_HEIGHT} {line} {CHART_WIDTH},{CHART_HEIGHT}",
        "peak": round(run.peak),
    }


def _audit_url(site_name: str) -> str | None:
    """The audit trail's changelist on this admin site, if it is registered there."""
    try:
        return reverse(f"{site_name}:keyrotation_keyrotationaudit_changelist")
    except NoReverseMatch:
        return None


def _buttons(status: str | None) -> list[str]:
    if status is None:
        return []
    return [
        a
        for a, ok in (
            ("pause", status == "running"),
            ("resume", status == "paused"),
            ("abort", status in runs.OPEN_STATUSES),
        )
        if ok
    ]


# Why the page may have nothing to show: no keys yet, or a database out of reach. Both messages
# are safe to show (an EngineDatabaseError names where and the error's class, never its text).
UNAVAILABLE = (NoActiveKey, EngineDatabaseError)


def _unavailable(exc: Exception) -> str:
    if isinstance(exc, NoActiveKey):
        return "There are no data keys yet: run `manage.py rotatekeys --init`, then reload this page."
    return f"The census cannot be read right now: {exc}"


class _AdminView(View):
    model_admin = None

    def dispatch(self, request, *args, **kwargs):
        if not self.model_admin.has_view_permission(request):
            raise PermissionDenied
        return super().dispatch(request, *args, **kwargs)


class StatusView(_AdminView):
    """The overall figures, the census per model and column, the latest run, the keys."""

    def get(self, request):
        site = self.model_admin.admin_site
        try:
            board = dashboard.build()
        except UNAVAILABLE as exc:
            context = {
                **site.each_context(request),
                "title": "Key rotation status",
                "opts": self.model_admin.model._meta,
                "unavailable": _unavailable(exc),
            }
            return TemplateResponse(request, "admin/keyrotation/rotation_status.html", context, status=503)
        run = board.run
        context = {
            **site.each_context(request),
            "title": "Key rotation status",
            "opts": self.model_admin.model._meta,
            "board": board,
            "run": run,
            "chart": _chart(run),
            "can_control": request.user.has_perm(CONTROL_PERMISSION),
            "buttons": _buttons(run.run.status if run else None),
            "refresh": REFRESH_SECONDS if run and run.run.status in ("running", "paused") else None,
            "json_url": reverse(f"{site.name}:keyrotation_status_json"),
            "audit_url": _audit_url(site.name),
        }
        return TemplateResponse(request, "admin/keyrotation/rotation_status.html", context)


class StatusJSONView(_AdminView):
    """What the page shows, as JSON (:meth:`keyrotation.dashboard.Dashboard.as_dict`)."""

    def get(self, request):
        try:
            return JsonResponse(dashboard.build().as_dict())
        except UNAVAILABLE as exc:
            return JsonResponse({"error": _unavailable(exc)}, status=503)



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
