#!/usr/bin/env python3
"""Run the whole suite the way CI does: SQLite, then PostgreSQL, then MariaDB, then the docs build.

    python scripts/runtests.py [--skip PHASE]... [--only PHASE]... [-- PYTEST_ARGS...]

Phases: ``sqlite``, ``postgres``, ``mysql``, ``docs``; all run by default (``--only mysql`` or
``make test-mysql`` runs the MariaDB phase alone, ``--skip mysql`` leaves it out).

Starts a throwaway PostgreSQL cluster, MariaDB server and OpenBao server on loopback
(``tests/servers.py``) as the phases need them, unless the environment already names yours:

* ``DATABASE_URL`` (``postgres://...``): used for the PostgreSQL run instead of a new cluster;
* ``KEYROTATION_TEST_MYSQL_URL`` (``mysql://user:pass@host:port/name``): used for the MySQL run
  instead of a new MariaDB (the user must be allowed to create databases);
* ``KEYROTATION_TEST_VAULT_ADDR`` + ``KEYROTATION_TEST_VAULT_TOKEN``: used instead of a new OpenBao;
* ``KEYROTATION_TEST_REDIS_URL`` (``redis://host:port/0``): the Celery tests' broker, instead of a
  new Redis. Without it and without ``redis-server`` (installed here with apt-get when run as root)
  the Celery tests skip, unless ``KEYROTATION_REQUIRE_REDIS=1`` (CI) turns that into a failure.

The MySQL phase first installs the driver (``scripts/mysql_driver.py``: the MariaDB client headers
with apt-get, then mysqlclient). Without the driver or the MariaDB binaries it is reported as
skipped, with the command that installs them, unless ``KEYROTATION_REQUIRE_MYSQL=1`` (CI), which
turns that skip into a failure.

Servers are stopped in a ``finally`` (also on SIGINT/SIGTERM). Exits non-zero if any phase
fails; pytest's "no tests collected" (exit code 5) counts as a failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import mysql_driver  # noqa: E402
from tests import servers  # noqa: E402

PHASES = ("sqlite", "postgres", "mysql", "docs")
TEST_PHASES = ("sqlite", "postgres", "mysql")  # the phases that run pytest
REQUIRE_MYSQL_ENV = "KEYROTATION_REQUIRE_MYSQL"
VAULT_ADDR_ENV, VAULT_TOKEN_ENV = servers.VAULT_ADDR_ENV, servers.VAULT_TOKEN_ENV


def header(title: str) -> None:
    print("\n" + f"{'=' * 24} {title} ".ljust(78, "="), flush=True)


def _terminate(signum, frame):
    # Turn SIGTERM into an exception so every `finally` (server shutdown) runs.
    raise SystemExit(128 + signum)


def ensure_chromium() -> None:
    """Install Debian's chromium and chromium-driver for the browser tests when they are missing.

    Like ``command -v chromium || apt-get install -y chromium chromium-driver`` (with one
    ``apt-get update`` and a retry if the first install fails). Without root or apt-get the
    browser tests skip and say why.
    """
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    header("installing chromium and chromium-driver (browser tests)")
    apt_install(["chromium", "chromium-driver"], "the browser tests will skip")


def ensure_redis() -> None:
    """Install Debian's redis-server for the Celery tests when it is missing (as for chromium).
    Without it they skip, unless ``KEYROTATION_REQUIRE_REDIS=1`` (CI) makes that a failure."""
    if servers.redis_binary() is not None:
        return
    header("installing redis-server (Celery tests: the broker)")
    apt_install(["redis-server"], "the Celery tests will skip, or fail with KEYROTATION_REQUIRE_REDIS=1")


def apt_install(packages: list[str], otherwise: str) -> None:
    """``apt-get install -y PACKAGES``; if that fails, ``dpkg --configure -a`` (an install cut
    short earlier leaves dpkg refusing every other) and ``apt-get update``, then once more."""
    if not shutil.which("apt-get") or os.geteuid() != 0:
        print(f"cannot install {' '.join(packages)} here (needs root and apt-get); {otherwise}", flush=True)
        return
    install = ["apt-get", "install", "-y", "-q", *packages]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if run(install, env) == 0:
        return
    run(["dpkg", "--configure", "-a"], env)
    if run(["apt-get", "update", "-q"], env) == 0:
        run(install, env)


def run(cmd: list[str], env: dict[str, str]) -> int:
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1 :]
    else:
        pytest_args = []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip", action="append", choices=PHASES, default=[],
                        help="skip a phase (repeatable)")
    parser.add_argument("--only", action="append", choices=PHASES, default=[],
                        help="run only this phase (repeatable)")
    args = parser.parse_args(argv)
    phases = select_phases(args.only, args.skip)

    signal.signal(signal.SIGTERM, _terminate)
    # Ctrl-C stops the servers even when started from a shell that ignores SIGINT (`cmd &`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    base_env = dict(os.environ)
    results: list[tuple[str, str, float]] = []

    if set(TEST_PHASES) & set(phases):
        ensure_chromium()
        if not base_env.get(servers.REDIS_URL_ENV):
            ensure_redis()

    with ExitStack() as stack:
        needs_servers = set(TEST_PHASES) & set(phases)
        if needs_servers and not base_env.get(VAULT_ADDR_ENV):
            header("starting OpenBao")
            started = time.monotonic()
            bao = servers.OpenBaoServer()
            stack.callback(_stopping, bao)
            bao.start()
            base_env[VAULT_ADDR_ENV], base_env[VAULT_TOKEN_ENV] = bao.addr, bao.token
            print(f"OpenBao at {bao.addr} (token {bao.token}), Transit at transit/ "
                  f"[{time.monotonic() - started:.1f}s]")
            results.append(("start OpenBao", "ok", time.monotonic() - started))
        elif needs_servers:
            print(f"using the Vault/OpenBao at {base_env[VAULT_ADDR_ENV]} ({VAULT_ADDR_ENV})")

        if needs_servers and not base_env.get(servers.REDIS_URL_ENV) and servers.redis_binary():
            header("starting Redis")
            started = time.monotonic()
            redis = servers.RedisServer()
            stack.callback(_stopping, redis)
            redis.start()
            base_env[servers.REDIS_URL_ENV] = redis.url
            print(f"Redis at {redis.url} [{time.monotonic() - started:.1f}s]")
            results.append(("start Redis", "ok", time.monotonic() - started))
        elif needs_servers and base_env.get(servers.REDIS_URL_ENV):
            print(f"using the Redis at {base_env[servers.REDIS_URL_ENV]} ({servers.REDIS_URL_ENV})")

        database_url = base_env.pop("DATABASE_URL", None)
        if "postgres" in phases and not database_url:
            header("starting PostgreSQL")
            started = time.monotonic()
            pg = servers.PostgresCluster()
            stack.callback(_stopping, pg)
            pg.start()
            database_url = pg.dsn
            print(f"PostgreSQL at {pg.dsn} [{time.monotonic() - started:.1f}s]")
            results.append(("start PostgreSQL", "ok", time.monotonic() - started))
        elif "postgres" in phases:
            print(f"using the PostgreSQL from DATABASE_URL ({database_url.split('@')[-1]})")

        mysql_url: str | None = None
        if "mysql" in phases:
            mysql_url, skipped = start_mysql(stack, base_env, results)
            if skipped:
                phases.remove("mysql")
                required = base_env.get(REQUIRE_MYSQL_ENV) == "1"
                status = f"FAILED ({REQUIRE_MYSQL_ENV}=1: {skipped})" if required else f"skipped: {skipped}"
                results.append(("mysql", status, 0.0))

        pytest = [sys.executable, "-m", "pytest", *pytest_args]
        for phase in phases:
            env = dict(base_env)
            if phase == "sqlite":
                header("pytest on SQLite")
                cmd = pytest
            elif phase == "postgres":
                header("pytest on PostgreSQL")
                env["DATABASE_URL"] = database_url
                cmd = pytest
            elif phase == "mysql":
                header("pytest on MySQL/MariaDB")
                env["DATABASE_URL"] = mysql_url
                cmd = pytest
            else:
                header("docs build (sphinx -W)")
                # -E: read every page again, so warnings of unchanged pages fail the build too.
                cmd = [sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-b", "html",
                       "docs", "docs/_build/html"]
            started = time.monotonic()
            code = run(cmd, env)
            status = "ok" if code == 0 else f"FAILED (exit {code}"
            if code == 5:
                status += ": no tests collected"
            if code:
                status += ")"
            results.append((phase, status, time.monotonic() - started))

    header("summary")
    for name, status, seconds in results:
        print(f"  {name:<18} {status:<36} {seconds:6.1f}s")
    failed = [name for name, status, _ in results if status != "ok" and not status.startswith("skipped")]
    print("ALL OK" if not failed else f"FAILED: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


def select_phases(only: list[str], skip: list[str]) -> list[str]:
    """The phases to run, in order: ``only`` if given, else all of them; minus ``skip``."""
    chosen = set(only) if only else set(PHASES)
    return [p for p in PHASES if p in chosen and p not in skip]


def start_mysql(stack: ExitStack, env: dict[str, str], results: list) -> tuple[str | None, str | None]:
    """The ``mysql://`` URL of the MySQL phase: ``KEYROTATION_TEST_MYSQL_URL``, else a new
    throwaway MariaDB (stopped by ``stack``). Returns (url, None), or (None, why it is skipped)."""
    header("MySQL driver (mysqlclient)")
    if not mysql_driver.ensure():
        return None, "mysqlclient is not installed (see the hint above)"
    url = env.get(servers.MYSQL_URL_ENV)
    if url:
        print(f"using the MySQL from {servers.MYSQL_URL_ENV} ({url.split('@')[-1]})")
        return url, None
    if servers.mariadb_binaries() is None:
        print(servers.MARIADB_HINT, flush=True)
        return None, "no MariaDB binaries (see the hint above)"
    header("starting MariaDB")
    started = time.monotonic()
    server = servers.MariaDBServer()
    stack.callback(_stopping, server)
    server.start()
    print(f"MariaDB at {server.url.split('@')[-1]} [{time.monotonic() - started:.1f}s]")
    results.append(("start MariaDB", "ok", time.monotonic() - started))
    return server.url, None


def _stopping(
    server: servers.PostgresCluster | servers.OpenBaoServer | servers.MariaDBServer | servers.RedisServer,
) -> None:
    print(f"stopping {server.name}", flush=True)
    server.cleanup()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        sys.exit(130)
