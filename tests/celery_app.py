"""The Celery app of the Celery tests: their worker processes run
``celery -A tests.celery_app worker``, and the test process sends tasks through it.

The broker and the result store are the Redis at ``KEYROTATION_TEST_REDIS_URL`` (the ``redis_url``
fixture sets it before anything imports this module). The database and the KEK are those of
``tests.settings``, chosen by the environment the test hands to each worker.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

app = Celery("keyrotation_tests")
app.conf.update(
    broker_url=os.environ["KEYROTATION_TEST_REDIS_URL"],
    result_backend=os.environ["KEYROTATION_TEST_REDIS_URL"],
    broker_connection_retry_on_startup=True,
    imports=["keyrotation.contrib.celery"],
    # One task of a fleet per worker process at a time (docs/operations.md).
    worker_prefetch_multiplier=1,
    # Retried tasks come back after 1, 2, 4... seconds, so a test sees a retry quickly.
    task_annotations={"keyrotation.reencrypt": {"retry_backoff": 1, "retry_jitter": False}},
    task_track_started=True,
    result_extended=True,
)
