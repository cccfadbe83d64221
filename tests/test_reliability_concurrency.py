"""Application writers in other processes update, insert and delete rows while ``reencrypt
--workers 2`` runs (PostgreSQL): no lost update, no resurrected row, no row left behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from keyrotation import engine
from tests.helpers.db import child_env
from tests.reliability_support import LOG, finish, manage, rotate, seed, state, versions

pytestmark = [pytest.mark.server, pytest.mark.django_db(transaction=True)]
WRITERS = 2


def test_writers_update_insert_delete_during_a_two_worker_run(keys):
    started = time.monotonic()
    original = seed(5000)
    target = rotate()
    # Writers start after the rotation (their key cache knows the new version), as in a deployment
    # where CACHE_SECONDS has passed; the run is rate-limited so that it overlaps them throughout.
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.churn", "5", str(k), str(k), str(WRITERS)],
            env=child_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(WRITERS)
    ]
    run = manage(
        "reencrypt", "--workers", "2", "--batch-size", "50", "--rate", "600", "--no-progress", env=child_env()
    )
    out, err = finish(run)
    assert run.returncode == 0, out + err
    results = [json.loads(finish(w)[0]) for w in writers]
    assert all(r["ops"] > 100 for r in results), [r["ops"] for r in results]

    expected = {pk: tuple(v) for pk, v in original.items()}
    for r in results:
        expected.update({int(pk): tuple(v) for pk, v in r["rows"].items()})
        for pk in r["deleted"]:
            expected.pop(pk)
    assert state() == expected  # no lost update, no resurrected row, every insert present
    assert versions() == {(target, target, target)}  # no row left behind
    assert engine.verify()["failure_count"] == 0
    ops = sum(r["ops"] for r in results)
    LOG.add(
        f"concurrency: {WRITERS} writer processes, {ops} writes, during --workers 2",
        1,
        time.monotonic() - started,
    )
