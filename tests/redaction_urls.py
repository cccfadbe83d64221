"""Views that fail, for the error-report tests of ``keyrotation.redaction``."""

from django.http import HttpResponseServerError
from django.urls import path


def fails_after_reading_the_form(request):
    request.POST  # noqa: B018 - parsed, as a form view would
    raise ValueError("signup failed")


def fails_before_reading_the_form(request):
    raise ValueError("signup failed")


def server_error(request):
    """The 500 page, from the request the view had: it still holds what was posted."""
    return HttpResponseServerError(f"server error for {request.POST.get('email', '-')}")


urlpatterns = [
    path("read/", fails_after_reading_the_form),
    path("unread/", fails_before_reading_the_form),
]
handler500 = server_error
