"""A view that reads one encrypted attribute: the error-report leak tests make it fail."""

from django.apps import apps
from django.http import HttpResponse
from django.urls import path


def read(request, model, pk, field):
    obj = apps.get_model(model)._default_manager.get(pk=pk)
    return HttpResponse(f"read a {type(getattr(obj, field)).__name__}")


urlpatterns = [path("read/<str:model>/<int:pk>/<str:field>/", read)]
