"""PostgreSQL in the benchmark: a throwaway cluster (``tests.servers.postgres_cluster``), COPY
loading, WAL bytes and HOT updates per step, CPU of every process of the cluster, and the
hand-written ``UPDATE … FROM unnest(…)`` loop with psycopg's binary parameters."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tests import servers

from .base import CLIENT_CPU, DB_CPU, BenchDatabase, Metric, Resealer, one, select_pending, sql

WAL = Metric("wal_per_row", "WAL bytes/row")
HOT = Metric("hot_percent", "HOT updates", 0, " %")


class PostgreSQL(BenchDatabase):
    name = "PostgreSQL"
    slug = "postgresql"
    naive_target = 30.0
    ceiling_target = 0.95
    metrics = (WAL, DB_CPU, CLIENT_CPU, HOT)
    index_metrics = (
        Metric("hot_percent", "HOT updates during re-encryption", 0, " %"),
        Metric("wal_per_row", "WAL bytes per row"),
    )
    cpu_note = "every PostgreSQL process of the cluster"
    backend_noun = "PostgreSQL backend"

    @classmethod
    @contextlib.contextmanager
    def start(cls) -> Iterator[PostgreSQL]:
        with servers.postgres_cluster() as pg:
            yield cls(pg)

    def tune(self) -> None:
        from django.db import connection

        for setting, value in (
            ("full_page_writes", "on"),
            ("shared_buffers", "1GB"),
            ("max_wal_size", "4GB"),
        ):
            sql(f"ALTER SYSTEM SET {setting} = '{value}'", fetch=False)
        connection.close()
        self.server.restart()
        self.postmaster = int((self.server.data / "postmaster.pid").read_text().split()[0])

    def settings_note(self) -> str:
        return (
            "throwaway cluster from `tests/servers.py` (fsync off, "
            "synchronous_commit off) with, for the bench, full_page_writes on, shared_buffers 1GB, "
            "max_wal_size 4GB; autovacuum off on the bench tables (the bench runs `VACUUM (ANALYZE)` "
            "before every step) and a `CHECKPOINT` before every measured step, so WAL includes a full "
            "page image of every page touched."
        )

    def server_version(self) -> tuple[str, str]:
        return "postgresql", one("SELECT version()")

    def driver_version(self) -> tuple[str, str]:
        import psycopg

        return "psycopg", psycopg.__version__

    def load(self, table: str, columns: list[tuple[str, str]], rows: Iterable[tuple]) -> None:
        from django.db import connection

        names = ", ".join(name for name, _ in columns)
        with (
            connection.cursor() as cur,
            cur.cursor.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as cp,
        ):
            cp.set_types([kind for _, kind in columns])
            for row in rows:
                cp.write_row(row)
        if any(name == "id" for name, _ in columns):
            sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")

    def prepare_tables(self, tables: Iterable[str]) -> None:
        for table in tables:
            sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)", fetch=False)

    def warm_up(self, tables: Iterable[str]) -> str:
        for table in tables:
            sql(f"UPDATE {table} SET notes_key_version = notes_key_version", fetch=False)
        return "one new version of every row"

    def settle(self, *tables: str) -> None:
        for t in tables:
            sql(f"VACUUM (ANALYZE) {t}", fetch=False)

    def cpu_seconds(self) -> float:
        """CPU of the whole cluster: live children + the postmaster with its reaped children."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, ppid = int(entry), int(fields[1])
            if ppid == self.postmaster:
                total += int(fields[11]) + int(fields[12])
            elif pid == self.postmaster:
                total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        return total / tick

    def begin_step(self) -> None:
        sql("CHECKPOINT", fetch=False)  # every page's first change in the step writes a full image

    def snapshot(self, table: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"lsn": one("SELECT pg_current_wal_lsn()::text")}
        if table:
            sql("SELECT pg_stat_force_next_flush()")
            sql("SELECT pg_stat_clear_snapshot()")
            time.sleep(1.1)  # other backends flush their statistics at most once a second
            sql("SELECT pg_stat_clear_snapshot()")
            out["upd"], out["hot"] = sql(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = %s", [table]
            )[0]
        return out

    def step_metrics(self, before: dict, after: dict, rows: int) -> dict[str, Any]:
        wal = int(one("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", [after["lsn"], before["lsn"]]))
        updates = after.get("upd", 0) - before.get("upd", 0)
        hot = after.get("hot", 0) - before.get("hot", 0)
        return {
            "wal_per_row": wal / rows if rows else None,
            "hot_percent": 100.0 * hot / updates if updates else None,
        }

    has_fillfactor = True

    def rewrite_with_fillfactor(self, table: str, fillfactor: int) -> None:
        # A new fillfactor applies to pages written from then on; VACUUM FULL rewrites every page
        # (and rebuilds every index) under it.
        sql(f"ALTER TABLE {table} SET (fillfactor = {int(fillfactor)})", fetch=False)
        sql(f"VACUUM (FULL, ANALYZE) {table}", fetch=False)

    def relation_sizes(self, table: str) -> tuple[int, int]:
        return tuple(sql("SELECT pg_relation_size(%s), pg_indexes_size(%s)", [table, table])[0])

    def raw_loop(self, model, columns: tuple[str, ...], crypto_on: bool = True) -> RawLoop:
        return RawLoop(self.url, model, columns, crypto_on)

    @staticmethod
    def backend_task(cursor) -> int | None:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


class RawLoop:
    """Hand-written set-based loop: ``SELECT … FOR UPDATE SKIP LOCKED LIMIT n`` + one
    ``UPDATE … FROM unnest(...)`` per batch, AES-GCM straight from ``cryptography``. Without
    ``crypto_on`` it writes every row back unchanged (PostgreSQL still writes a new row version
    of each: the database's cost of the write)."""

    def __init__(self, dsn: str, model, columns: tuple[str, ...], crypto_on: bool = True, batch: int = 2000):
        import psycopg

        self.conn = psycopg.connect(dsn.replace("postgres://", "postgresql://"), autocommit=True)
        self.table, self.columns = model._meta.db_table, columns
        self.crypto_on, self.batch = crypto_on, batch
        self.resealer = Resealer(model, columns)

    def run(self, target: int, lo: int = 0) -> int:
        t, cols = self.table, self.columns
        select = select_pending(t, cols)
        sets = ", ".join(f"{c} = v.c{k}, {c}_key_version = v.k{k}" for k, c in enumerate(cols))
        arrays = ", ".join("%b::bytea[], %b::smallint[]" for _ in cols)
        names = ", ".join(f"c{k}, k{k}" for k in range(len(cols)))
        update = f"UPDATE {t} AS t SET {sets} FROM unnest(%b::bigint[], {arrays}) AS v(id, {names}) WHERE t.id = v.id"
        done, last = 0, lo
        with self.conn.cursor() as cur:
            while True:
                with self.conn.transaction():
                    cur.execute(select, [*(target for _ in cols), last, self.batch], binary=True)
                    rows = cur.fetchall()
                    if not rows:
                        return done
                    arrays_: list[list] = [[] for _ in range(1 + 2 * len(cols))]
                    for row in rows:
                        if self.crypto_on:
                            row = self.resealer.row(row, target)  # noqa: PLW2901
                        for k, v in enumerate(row):
                            arrays_[k].append(v)
                    cur.execute(update, arrays_, binary=True)
                    done += len(rows)
                    last = rows[-1][0]

    def restore(self, target: int) -> None:
        """After a run without crypto: nothing to put back (it wrote the values it read)."""

    def close(self) -> None:
        self.conn.close()
