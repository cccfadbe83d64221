"""The example project: migrations complete, and the whole demo rotation runs."""

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"


def env(**extra):
    key = base64.b64encode(os.urandom(32)).decode()
    clean = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    return {**clean, "KEYROTATION_MASTER_KEY": key, **extra}


def test_example_migrations_are_complete():
    proc = subprocess.run(
        [sys.executable, "manage.py", "makemigrations", "--check", "--dry-run"],
        cwd=EXAMPLE,
        env=env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_missing_master_key_is_a_clear_error():
    clean = {k: v for k, v in env().items() if k != "KEYROTATION_MASTER_KEY"}
    proc = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=EXAMPLE, env=clean, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "KEYROTATION_MASTER_KEY is not set" in proc.stderr


@pytest.mark.slow
def test_demo_performs_a_full_rotation(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE / "demo.py")],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "run #1 finished: 2,000 row(s) re-encrypted" in out
    assert "verified 2,000 row(s): 0 failure(s)" in out
    assert "retired default/encrypt v1" in out and "retired default/index v1" in out
    assert "found by email through the blind index: #42" in out
    assert out.count("100.00%") >= 6
