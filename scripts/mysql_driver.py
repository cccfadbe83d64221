#!/usr/bin/env python3
"""Install the MySQL/MariaDB driver (mysqlclient, the ``mysql`` extra) into this Python.

    python scripts/mysql_driver.py [--check]

mysqlclient ships no Linux wheels: pip builds it from source, which needs a C compiler and the
MariaDB (or MySQL) client headers, found through ``pkg-config`` or ``mysql_config``. On Debian and
Ubuntu those come from ``libmariadb-dev`` and ``pkg-config``. This script:

1. does nothing if ``import MySQLdb`` already works;
2. when the client headers are missing and it runs as root (or ``sudo`` works without a password)
   on a machine with ``apt-get``, runs
   ``apt-get install -y --no-install-recommends libmariadb-dev pkg-config`` (plus ``gcc`` when
   there is no C compiler), printing each command;
3. pip-installs the requirement of the ``mysql`` extra.

When it cannot (not root, no apt-get, a build that fails) it prints the exact commands to run
and exits 1. ``--check`` installs nothing: it only says whether the driver imports.
``scripts/runtests.py`` calls :func:`ensure` before its MySQL phase.

Only the standard library is used, so it runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Must match the ``mysql`` extra of pyproject.toml (tests/test_mysql_support.py checks it).
REQUIREMENT = "mysqlclient>=2.2"
APT_PACKAGES = ("libmariadb-dev", "pkg-config")
# The pkg-config names mysqlclient's build looks for.
PKG_CONFIG_NAMES = ("mysqlclient", "mariadb", "libmariadb")
HINT = (
    "install the MariaDB client headers and the driver, then retry:\n"
    "    sudo apt-get install -y --no-install-recommends libmariadb-dev pkg-config gcc\n"
    f'    {Path(sys.executable).name} -m pip install -e ".[mysql]"\n'
    "(other systems: see docs/installation.md, 'MySQL and MariaDB')"
)


def driver_version(python: str = sys.executable) -> str | None:
    """mysqlclient's version as ``python`` imports it, or None if it does not import."""
    proc = subprocess.run(
        [python, "-c", "import MySQLdb; print(MySQLdb.version_info[:3])"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def client_headers_found() -> bool:
    """True if mysqlclient's build can find the client library: a ``*_config`` script, a
    pkg-config entry, or the ``MYSQLCLIENT_CFLAGS``/``MYSQLCLIENT_LDFLAGS`` pair it also reads."""
    if os.environ.get("MYSQLCLIENT_CFLAGS") and os.environ.get("MYSQLCLIENT_LDFLAGS"):
        return True
    if shutil.which("mysql_config") or shutil.which("mariadb_config"):
        return True
    if not shutil.which("pkg-config"):
        return False
    return any(
        subprocess.run(["pkg-config", "--exists", name], check=False).returncode == 0
        for name in PKG_CONFIG_NAMES
    )


def _privilege() -> list[str] | None:
    """The prefix that runs apt-get as root: [] as root, ["sudo", "-n"] with password-less sudo,
    None otherwise."""
    if os.geteuid() == 0:
        return []
    if (
        shutil.which("sudo")
        and subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode == 0
    ):
        return ["sudo", "-n"]
    return None


def _run(cmd: list[str], env: dict[str, str] | None = None) -> int:
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def install_client_headers() -> bool:
    """apt-get install the client headers (and a compiler if none); False if it cannot."""
    prefix = _privilege()
    if prefix is None or not shutil.which("apt-get"):
        print("cannot install the MariaDB client headers here (needs apt-get and root or sudo)", flush=True)
        return False
    packages = list(APT_PACKAGES)
    if not (shutil.which("cc") or shutil.which("gcc")):
        packages.append("gcc")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if _run(install, env) == 0:
        return True
    # A machine whose package lists are stale or absent: update once, then try again.
    return _run([*prefix, "apt-get", "update", "-q"], env) == 0 and _run(install, env) == 0


def ensure(python: str = sys.executable) -> bool:
    """Make ``import MySQLdb`` work in ``python``; print what is done, or the hint. True if it works."""
    if driver_version(python):
        return True
    print("mysqlclient is not installed: installing the `mysql` extra", flush=True)
    if not client_headers_found() and not install_client_headers():
        print(HINT, flush=True)
        return False
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", REQUIREMENT]
    if _run(pip) != 0 or not driver_version(python):
        print(f"building mysqlclient failed (output above); {HINT}", flush=True)
        return False
    print(f"mysqlclient {driver_version(python)} installed", flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="install nothing; exit 0 if the driver imports")
    args = parser.parse_args(argv)
    if args.check:
        version = driver_version()
        print(f"mysqlclient {version}" if version else f"mysqlclient is not installed; {HINT}")
        return 0 if version else 1
    return 0 if ensure() else 1


if __name__ == "__main__":
    sys.exit(main())
