"""URLs for tests/test_contrib_prometheus.py: the snippet of the operations guide, as written there."""

from django.urls import path

from keyrotation.contrib.prometheus import metrics_view

urlpatterns = [
    path("metrics/keyrotation", metrics_view, name="keyrotation-metrics"),
]
