"""Template filters of the rotation status page (``{% load keyrotation_status %}``)."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone
from django.utils.timesince import timesince

register = template.Library()


@register.filter
def ago(value: datetime | None, now: datetime | None = None) -> str:
    """``just now`` within a minute, else ``3 minutes ago`` (Django's own ``timesince``, which
    needs no extra app); empty for None."""
    if value is None:
        return ""
    now = now or timezone.now()
    if (now - value).total_seconds() < 60:
        return "just now"
    return f"{timesince(value, now)} ago"
