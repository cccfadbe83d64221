"""MariaDB (the engine's MySQL dialect) in the benchmark: a throwaway server
(``tests.servers.mariadb_server``), multi-row INSERTs to load, and per step the redo bytes (the
InnoDB LSN), the rows the server read and updated (``SHOW GLOBAL STATUS``) and the CPU of the
``mariadbd`` process (all its threads, ``/proc/<pid>/stat``).

PostgreSQL's WAL and HOT counters have no equivalent worth a column here: InnoDB updates a row in
place (its old version goes to the undo log, which purge empties), so the redo bytes stand for the
WAL, and there is no heap-only-tuple distinction to count.

The database ceiling (the hand-written loop without crypto) cannot write back the values it read,
as it does on PostgreSQL: MariaDB skips a row whose new values equal its old ones, and would
measure no write at all. It writes each ciphertext with its bytes after the header reversed (same
length, same version: the same write as a re-encryption, no crypto), and
:meth:`RawLoop.restore` reverses them back, unmeasured, before the next step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tests import servers

from .base import (
    CLIENT_CPU,
    DB_CPU,
    BenchDatabase,
    Metric,
    Resealer,
    one,
    process_cpu_seconds,
    select_pending,
    sql,
)

REDO = Metric("redo_per_row", "redo bytes/row")
ROWS_READ = Metric("rows_read_per_row", "rows read/row", 2)
UPDATES = Metric("updates_per_row", "row updates/row", 2)
TMP_WRITES = Metric("tmp_writes_per_row", "temp-table writes/row", 2)
#: ``SHOW GLOBAL STATUS`` counters of a step: the redo log's sequence number (bytes), rows read
#: from tables, row updates by the storage engines, rows written to internal temporary tables.
STATUS = {
    "Innodb_lsn_current": "lsn",
    "Rows_read": "rows_read",
    "Handler_update": "updates",
    "Handler_tmp_write": "tmp_writes",
}
#: The bench's server settings, set with ``SET GLOBAL`` once the server runs (both are dynamic
#: on MariaDB 10.9+): room for the tables in memory, and a redo log that a step never fills.
SETTINGS = (("innodb_buffer_pool_size", 1024**3), ("innodb_log_file_size", 1024**3))
#: Rows per ``executemany`` call when loading (mysqlclient sends them as multi-row INSERTs).
LOAD_CHUNK = 5000


class MariaDB(BenchDatabase):
    name = "MariaDB"
    slug = "mariadb"
    make_args = " DB=mysql"
    naive_target = 15.0
    metrics = (REDO, DB_CPU, CLIENT_CPU, ROWS_READ, UPDATES, TMP_WRITES)
    index_metrics = (
        Metric("redo_per_row", "redo bytes per row"),
        Metric("db_cpu_us_per_row", "DB CPU µs per row", 1),
    )
    cpu_note = "the `mariadbd` process (all its threads)"
    backend_noun = "MariaDB connection thread"
    contenders_note = (
        "The hand-written loop runs the engine's statement shape (the table first by primary key, "
        "the batch's values as `VALUES`, ciphertexts as hex literals) without its guards. The "
        "database ceiling writes each value with its bytes after the header reversed and puts them "
        "back afterwards (unmeasured): MariaDB skips a row whose new values equal its old ones, so "
        "writing back what was read would measure no write at all."
    )

    @classmethod
    @contextlib.contextmanager
    def start(cls) -> Iterator[MariaDB]:
        with servers.mariadb_server() as server:
            yield cls(server)

    def tune(self) -> None:
        for name, value in SETTINGS:
            sql(f"SET GLOBAL {name} = {int(value)}", fetch=False)
        deadline = time.monotonic() + 60
        while int(one("SELECT @@GLOBAL.innodb_buffer_pool_size")) != SETTINGS[0][1]:
            if time.monotonic() > deadline:
                raise RuntimeError("innodb_buffer_pool_size did not reach its bench value in 60 s")
            time.sleep(0.2)  # the buffer pool grows in the background
        self.pid = int(self.server.pidfile.read_text().split()[0])

    def settings_note(self) -> str:
        return (
            "throwaway server from `tests/servers.py` (innodb_flush_log_at_trx_commit 0, doublewrite "
            "off) with, for the bench, innodb_buffer_pool_size 1G and innodb_log_file_size 1G (`SET "
            "GLOBAL`); before every step the bench waits until purge has removed every old row version "
            "(`SET GLOBAL innodb_max_purge_lag_wait = 0`) and runs `ANALYZE TABLE`. The counters are "
            "the server's global ones (`SHOW GLOBAL STATUS`): they include the engine's own progress "
            "writes and the bench's status queries, a few hundred rows per step."
        )

    def server_version(self) -> tuple[str, str]:
        return "mariadb", one("SELECT VERSION()")

    def driver_version(self) -> tuple[str, str]:
        import MySQLdb

        return "mysqlclient", ".".join(str(x) for x in MySQLdb.version_info[:3])

    def load(self, table: str, columns: list[tuple[str, str]], rows: Iterable[tuple]) -> None:
        from django.db import connection

        names = ", ".join(name for name, _ in columns)
        # _binary: a ciphertext is bytes, never text in the connection's character set.
        values = ", ".join("_binary %s" if kind == "bytea" else "%s" for _, kind in columns)
        query = f"INSERT INTO {table} ({names}) VALUES ({values})"
        chunk: list[tuple] = []
        with connection.cursor() as cur:
            for row in rows:
                chunk.append(row)
                if len(chunk) == LOAD_CHUNK:
                    cur.executemany(query, chunk)
                    chunk = []
            if chunk:
                cur.executemany(query, chunk)

    def settle(self, *tables: str) -> None:
        sql("SET GLOBAL innodb_max_purge_lag_wait = 0", fetch=False)  # returns once purge caught up
        for table in tables:
            sql(f"ANALYZE TABLE {table}")

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def snapshot(self, table: str | None) -> dict[str, Any]:
        names = ", ".join(f"'{name}'" for name in STATUS)
        rows = sql(f"SHOW GLOBAL STATUS WHERE Variable_name IN ({names})")
        return {STATUS[name]: int(value) for name, value in rows}

    def step_metrics(self, before: dict, after: dict, rows: int) -> dict[str, Any]:
        def per_row(key: str) -> float | None:
            return (after[key] - before[key]) / rows if rows else None

        return {
            "redo_per_row": per_row("lsn"),
            "rows_read_per_row": per_row("rows_read"),
            "updates_per_row": per_row("updates"),
            "tmp_writes_per_row": per_row("tmp_writes"),
        }

    def raw_loop(self, model, columns: tuple[str, ...], crypto_on: bool = True) -> RawLoop:
        return RawLoop(self.url, model, columns, crypto_on)

    @staticmethod
    def backend_task(cursor) -> int | None:
        # MariaDB names the OS thread of each connection (TID); MySQL has no such column.
        with contextlib.suppress(Exception):
            cursor.execute("SELECT TID FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")
            return int(cursor.fetchone()[0])
        return None


def _flip(token: bytes) -> bytes:
    """The ceiling's stand-in for a new ciphertext: the header kept, the rest reversed (applied
    twice, the original)."""
    return token[:5] + token[:4:-1]


class RawLoop:
    """Hand-written set-based loop: ``SELECT … FOR UPDATE SKIP LOCKED LIMIT n`` + one ``UPDATE``
    per batch, AES-GCM straight from ``cryptography``, mysqlclient on its own connection.

    The ``UPDATE`` is the shape the engine's MariaDB statement has (the table first, by primary
    key, joined to the batch's values as a table value constructor, ciphertexts as hex literals;
    see ``keyrotation/engine/dialects/mysql.py`` for why), without its guards, as the PostgreSQL
    loop is the engine's ``unnest`` statement without them."""

    def __init__(self, url: str, model, columns: tuple[str, ...], crypto_on: bool = True, batch: int = 2000):
        import MySQLdb

        s = servers.database_settings(url)
        self.conn = MySQLdb.connect(
            host=s["HOST"], port=int(s["PORT"]), user=s["USER"], password=s["PASSWORD"],
            database=s["NAME"], charset="utf8mb4", autocommit=False,
        )  # fmt: skip
        self.table, self.columns = model._meta.db_table, columns
        self.crypto_on, self.batch = crypto_on, batch
        self.resealer = Resealer(model, columns)

    def _update(self, rows: list[tuple]) -> str:
        pairs = range(len(self.columns))
        values = ", ".join(
            "("
            + ", ".join([str(row[0]), *(f"X'{row[1 + 2 * k].hex()}', {row[2 + 2 * k]}" for k in pairs)])
            + ")"
            for row in rows
        )
        ids = ", ".join(str(row[0]) for row in rows)
        names = ", ".join(f"c{k}, k{k}" for k in pairs)
        sets = ", ".join(f"t.{c} = v.c{k}, t.{c}_key_version = v.k{k}" for k, c in enumerate(self.columns))
        return (
            "SET STATEMENT in_predicate_conversion_threshold = 0 FOR "
            f"UPDATE {self.table} AS t FORCE INDEX (PRIMARY) STRAIGHT_JOIN "
            f"(WITH v (id, {names}) AS (VALUES {values}) SELECT * FROM v) AS v ON t.id = v.id "
            f"SET {sets} WHERE t.id IN ({ids})"
        )

    def run(self, target: int, lo: int = 0) -> int:
        select = select_pending(self.table, self.columns)
        done, last = 0, lo
        with self.conn.cursor() as cur:
            while True:
                cur.execute(select, [*(target for _ in self.columns), last, self.batch])
                rows = cur.fetchall()
                if not rows:
                    self.conn.commit()
                    return done
                if self.crypto_on:
                    new = [self.resealer.row(row, target) for row in rows]
                else:
                    new = [
                        tuple(v if k == 0 or k % 2 == 0 else _flip(v) for k, v in enumerate(row))
                        for row in rows
                    ]
                cur.execute(self._update(new))
                self.conn.commit()
                done += len(rows)
                last = rows[-1][0]

    def restore(self, target: int) -> None:
        """After a run without crypto: reverse the values back (one more pass, not measured)."""
        if not self.crypto_on:
            self.run(target)

    def close(self) -> None:
        self.conn.close()
