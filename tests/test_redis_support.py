"""Redis for the Celery tests: the throwaway server of ``tests/servers.py``, and the skip that
``KEYROTATION_REQUIRE_REDIS=1`` (CI) turns into a failure when ``redis-server`` is missing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests import servers

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(servers.redis_binary() is None, reason=servers.REDIS_HINT)
def test_the_throwaway_redis_keeps_nothing_on_disk_and_leaves_nothing_behind():
    with servers.redis_server() as server:
        root, port = server.root, server.port
        assert server.url == f"redis://127.0.0.1:{port}/0"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"CONFIG GET save\r\nCONFIG GET appendonly\r\nCONFIG GET bind\r\n")
            replies = b""
            while replies.count(b"*2") < 3:
                replies += sock.recv(4096)
        assert b"$4\r\nsave\r\n$0\r\n\r\n" in replies  # no snapshots
        assert b"$10\r\nappendonly\r\n$2\r\nno\r\n" in replies
        assert b"$4\r\nbind\r\n$9\r\n127.0.0.1\r\n" in replies
    assert not root.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def _celery_test_without_redis(**env: str) -> subprocess.CompletedProcess:
    """One Celery test in a pytest of its own, where no redis-server is on PATH and no Redis is
    named (on SQLite: it stops before it needs a database)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", servers.REDIS_URL_ENV)}
    clean.pop(servers.REQUIRE_REDIS_ENV, None)
    return subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-q"),
            *("tests/test_contrib_celery.py", "-k", "broker_holds_no_plaintext"),
        ],
        cwd=ROOT,
        env={**clean, "PATH": str(Path(sys.executable).parent), **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_without_redis_server_the_celery_tests_skip_saying_how_to_install_it():
    done = _celery_test_without_redis()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout
    assert "apt-get install -y --no-install-recommends redis-server" in done.stdout


def test_ci_turns_the_missing_redis_server_into_a_failure():
    done = _celery_test_without_redis(**{servers.REQUIRE_REDIS_ENV: "1"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 error" in done.stdout
    assert f"{servers.REQUIRE_REDIS_ENV}=1 and redis-server not found" in done.stdout
