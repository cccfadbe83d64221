"""The rotation status page, its JSON twin, the pause / resume / abort endpoints and the start
button.

Thin views over :func:`keyrotation.dashboard.build`, ``engine.pause/resume/abort`` and
:func:`keyrotation.background.start_reencryption`. Served under the
ReencryptionRun admin (``<admin>/keyrotation/reencryptionrun/status/``) so they exist on every
AdminSite the admins are registered on. Seeing the page takes the view permission on runs;
the buttons and the control endpoints take ``keyrotation.control_reencryptionrun``.
"""

from __future__ import annotations

import logging
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.validators import MaxValueValidator
from django.http import Http404, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.views import View

from . import background, dashboard, engine
from .engine import runs
from .exceptions import EngineDatabaseError, KeyRotationError, NoActiveKey, RunNotFound

logger = logging.getLogger(__name__)

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
            "start": board.start,
            "start_form": StartForm(max_workers=board.start.max_workers) if board.start.possible else None,
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
            data = dashboard.build().as_dict()
        except UNAVAILABLE as exc:
            return JsonResponse({"error": _unavailable(exc)}, status=503)
        # Possible for this user: the dashboard knows the backend and the rows, not who asks.
        allowed = request.user.has_perm(CONTROL_PERMISSION)
        data["start"] = {**data["start"], "can_start": data["start"]["can_start"] and allowed}
        return JsonResponse(data)


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


class StartForm(forms.Form):
    """The start button's options: how many jobs share the run (up to ``max_workers``: 1 where the
    database cannot share a run between jobs), and an optional rate per job."""

    workers = forms.IntegerField(min_value=1, initial=1)
    rate = forms.FloatField(
        required=False, min_value=0.001, help_text="rows per second per job; empty for no limit"
    )

    def __init__(self, *args: Any, max_workers: int = dashboard.MAX_WORKERS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        workers = self.fields["workers"]
        workers.max_value = max_workers
        workers.validators.append(MaxValueValidator(max_workers))
        workers.widget.attrs["max"] = max_workers
        workers.help_text = (
            f"jobs sharing the run (1-{max_workers})"
            if max_workers > 1
            else "one job: this database cannot share a run between jobs (no SKIP LOCKED)"
        )


def _start_error(exc: Exception, backend: str | None) -> str:
    """One line for a start that failed. The messages of this app's errors and of argument checks
    are safe to show; a broker's or a task framework's are not (they may name a broker URL with
    its password), so those are named by their class only."""
    if isinstance(exc, (KeyRotationError, TypeError, ValueError)):
        return f"Nothing was queued: {exc}"
    where = dashboard.BACKEND_NAMES.get(backend or "", backend)
    return (
        f"Nothing was queued: {where} refused the jobs ({type(exc).__name__}). "
        "Check that its broker or task store is reachable, then try again."
    )


class StartView(_AdminView):
    """POST: queue a re-encryption run on the configured task backend. Records nothing itself: the
    engine audits the run when the first job opens it. A run already open refuses a second start,
    and jobs queued by a double click join one run (the engine's open lock)."""

    http_method_names = ["post"]

    def post(self, request):
        if not request.user.has_perm(CONTROL_PERMISSION):
            raise PermissionDenied
        back = HttpResponseRedirect(reverse(f"{self.model_admin.admin_site.name}:keyrotation_status"))
        try:
            option = dashboard.build().start
        except UNAVAILABLE as exc:
            messages.error(request, _unavailable(exc))
            return back
        if option.open_run is not None:
            messages.warning(request, f"Run #{option.open_run} is already open: nothing was queued.")
            return back
        if not option.pending:
            messages.info(request, "Every row is on the active key versions: nothing was queued.")
            return back
        if option.backend is None or option.problem is not None:
            messages.error(request, option.problem or NO_BACKEND)
            return back
        form = StartForm(request.POST, max_workers=option.max_workers)
        if not form.is_valid():
            errors = "; ".join(f"{name}: {' '.join(e)}" for name, e in form.errors.items())
            messages.error(request, f"Nothing was queued: {errors}")
            return back
        try:
            started = background.start_reencryption(
                workers=form.cleaned_data["workers"],
                rate=form.cleaned_data["rate"],
                actor=f"admin:{request.user.get_username()}",
            )
        except Exception as exc:  # noqa: BLE001 - any failure is one line for the operator, never a 500
            logger.warning("start of a re-encryption on %s failed: %s", option.backend, type(exc).__name__)
            messages.error(request, _start_error(exc, option.backend))
            return back
        n = len(started.task_ids)
        messages.success(
            request,
            f"Queued {n} re-encryption job{'s' if n != 1 else ''} on "
            f"{dashboard.BACKEND_NAMES[started.backend]} (ids {', '.join(started.task_ids)}).",
        )
        return back


NO_BACKEND = (
    'No task backend is configured (KEYROTATION["TASK_BACKEND"]): start the run with '
    "manage.py reencrypt (--workers N for several processes)."
)
