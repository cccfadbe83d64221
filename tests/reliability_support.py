"""Shared by the reliability tests: trial counts, the trial log printed at the end of the session,
seeding and checking rows, and starting ``manage.py`` commands as killable subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from django.db import connection

from keyrotation import keyring, lifecycle

#: Randomised trials per test: raise for a soak run, e.g. ``KEYROTATION_TRIALS=200 make test``.
TRIALS = int(os.environ.get("KEYROTATION_TRIALS", "20"))


@dataclass
class TrialLog:
    """What the randomised reliability tests did, printed by ``pytest_terminal_summary``."""

    lines: list[str] = field(default_factory=list)

    def add(self, test: str, trials: int, seconds: float, outcomes: Counter | None = None) -> None:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted((outcomes or {}).items()))
        self.lines.append(f"{test}: {trials} trial(s) in {seconds:.1f}s" + (f" ({detail})" if detail else ""))


LOG = TrialLog()


def seed(n: int, prefix: str = "user") -> dict[int, tuple[str, str]]:
    """``n`` people with distinct e-mails and SSNs; returns {pk: (email, ssn)}."""
    from tests.testapp.models import Person

    people = Person.objects.bulk_create(
        Person(name=f"p{i}", email=f"{prefix}{i}@example.com", ssn=f"{i % 1000:03d}-{i % 97:02d}-{i:04d}")
        for i in range(n)
    )
    return {p.pk: (p.email, p.ssn) for p in people}


def rotate() -> int:
    """Rotate both purposes of the default keyring; return the new encrypt version."""
    key = lifecycle.rotate("default", "encrypt", actor="test")
    lifecycle.rotate("default", "index", actor="test")
    keyring.invalidate()
    return key.version


def state() -> dict[int, tuple[str, str]]:
    """{pk: (email, ssn)} read through the ORM with a fresh key cache."""
    from tests.testapp.models import Person

    keyring.clear_cache()
    return {p.pk: (p.email, p.ssn) for p in Person.objects.all()}


def versions() -> set[tuple]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT DISTINCT email_key_version, ssn_key_version, email_bidx_key_version FROM testapp_person"
        )
        return set(cur.fetchall())


def manage(*args: str, env: dict, **kwargs) -> subprocess.Popen:
    """``python -m django <args>`` in its own process group (so SIGKILL reaches its workers)."""
    return subprocess.Popen(
        [sys.executable, "-m", "django", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def kill_group(proc: subprocess.Popen) -> tuple[str, str]:
    """SIGKILL the process and every worker it forked; reap it; return what it printed."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return finish(proc)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    """Wait for ``proc``; return (stdout, stderr), pipes closed."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise


def wait_for(predicate, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
