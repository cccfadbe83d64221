"""What every benchmarked database supplies to ``bench/run.py`` (:class:`BenchDatabase`), and the
parts they share: SQL helpers on Django's connection, the report's metric columns
(:class:`Metric`) and the hand-written loop's AES-GCM (:class:`Resealer`)."""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

#: Column kinds of :meth:`BenchDatabase.load` (PostgreSQL's binary COPY type names).
KINDS = ("int8", "int4", "int2", "bytea", "text", "timestamptz")


def sql(query: str, params=None, fetch: bool = True):
    """Run ``query`` on Django's default connection; its rows when it returns any."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall() if fetch and cur.description else None


def one(query: str, params=None):
    return sql(query, params)[0][0]


def process_cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of process ``pid`` (all its threads), with its reaped children's when
    ``children``; from ``/proc/<pid>/stat``."""
    fields = _stat_fields(pid)
    return sum(int(x) for x in fields[11 : 15 if children else 13]) / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3, the state, first)."""
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


@dataclass(frozen=True)
class Metric:
    """One column of a re-encryption step in the report: ``key`` in the step's metrics dict,
    its ``title``, the decimals shown and a unit appended to the figure."""

    key: str
    title: str
    digits: int = 0
    suffix: str = ""


DB_CPU = Metric("db_cpu_us_per_row", "DB CPU µs/row", 1)
CLIENT_CPU = Metric("client_cpu_us_per_row", "client CPU µs/row", 1)


class BenchDatabase(ABC):
    """A throwaway server of one database, and everything the benchmark does differently there.

    ``run.py`` enters :meth:`start` (the server lives as long as the context), points Django at
    :attr:`url`, then calls :meth:`tune` once Django is set up.
    """

    #: The product, as the report names it.
    name: ClassVar[str]
    #: Its part of the results file's name (``100k-<slug>-<date>.md``).
    slug: ClassVar[str]
    #: The ``make bench`` arguments that pick it (the report says how it was produced).
    make_args: ClassVar[str] = ""
    #: The target of ``reencrypt`` over the naive ``save()`` loop (ratio of rates).
    naive_target: ClassVar[float]
    #: The target of ``reencrypt`` over the database ceiling (same SQL, no crypto), if any.
    ceiling_target: ClassVar[float | None] = None
    #: Columns of the re-encryption table after the rates, in order.
    metrics: ClassVar[tuple[Metric, ...]]
    #: Rows of the version-column index table after the rate.
    index_metrics: ClassVar[tuple[Metric, ...]]
    #: What "database CPU" counts, for the note under the table.
    cpu_note: ClassVar[str]
    #: What serves the application writer's connection, for the writer's note.
    backend_noun: ClassVar[str]
    #: What the hand-written loop and the ceiling do differently here, for the note under the
    #: re-encryption table (empty: nothing to say).
    contenders_note: ClassVar[str] = ""

    def __init__(self, server) -> None:
        self.server = server

    @classmethod
    @abstractmethod
    @contextlib.contextmanager
    def start(cls) -> Iterator[BenchDatabase]:
        """Start the server; stop it and delete its files on exit."""

    @property
    def url(self) -> str:
        """Its URL for ``BENCH_DATABASE_URL`` (``tests.servers.database_settings`` reads it)."""
        return self.server.url

    @abstractmethod
    def tune(self) -> None:
        """The bench's server settings (memory, log size), applied once Django is set up."""

    @abstractmethod
    def settings_note(self) -> str:
        """One sentence for the report: the server's settings and what runs before each step."""

    @abstractmethod
    def server_version(self) -> tuple[str, str]:
        """(key, value) of the server's version for the report's machine list."""

    @abstractmethod
    def driver_version(self) -> tuple[str, str]:
        """(key, value) of the Python driver's version."""

    @abstractmethod
    def load(self, table: str, columns: list[tuple[str, str]], rows: Iterable[tuple]) -> None:
        """Bulk-load ``rows`` into ``table``; ``columns``: (name, kind) pairs, kind in :data:`KINDS`."""

    def prepare_tables(self, tables: Iterable[str]) -> None:
        """After loading, before the warm-up: per-table settings of the bench (none by default)."""
        return None

    def warm_up(self, tables: Iterable[str]) -> str | None:
        """Make the loaded tables look like tables that lived (None: nothing to do); returns
        what it did, for the log."""
        return None

    @abstractmethod
    def settle(self, *tables: str) -> None:
        """Before a step: clean up after the previous one (old row versions) and refresh the
        planner's statistics, so that each step starts from the same state."""

    @abstractmethod
    def cpu_seconds(self) -> float:
        """CPU seconds the server has used so far (every process or thread of it)."""

    def begin_step(self) -> None:
        """Just before a measured step starts, before its first :meth:`snapshot` (nothing by
        default)."""
        return None

    @abstractmethod
    def snapshot(self, table: str | None) -> dict[str, Any]:
        """The server's counters that :meth:`step_metrics` compares (empty without a table)."""

    @abstractmethod
    def step_metrics(self, before: dict, after: dict, rows: int) -> dict[str, Any]:
        """The database's own metrics of a step from two snapshots (keys of :attr:`metrics`)."""

    #: Whether :meth:`rewrite_with_fillfactor` can run (the fillfactor experiment).
    has_fillfactor: ClassVar[bool] = False

    def rewrite_with_fillfactor(self, table: str, fillfactor: int) -> None:
        """Set the table's fillfactor and rewrite it (and its indexes) so that it takes effect."""
        raise NotImplementedError(f"{self.name} has no fillfactor")

    def relation_sizes(self, table: str) -> tuple[int, int]:
        """(heap bytes, bytes of all its indexes) of ``table``."""
        raise NotImplementedError

    @abstractmethod
    def raw_loop(self, model, columns: tuple[str, ...], crypto_on: bool = True):
        """The hand-written set-based loop on its own connection over the encrypted ``columns``:
        ``.run(target, lo=0)`` moves every row with ``pk > lo`` to ``target`` and returns the count."""

    @staticmethod
    @abstractmethod
    def backend_task(cursor) -> int | None:
        """The OS task (process or thread id) serving this Django connection, for
        ``/proc/<task>/schedstat``; None where the server does not say."""


class Resealer:
    """AES-256-GCM straight from ``cryptography`` with the library's subkeys: what a hand-written
    loop does per value (decrypt under the old version, encrypt under the target).

    ``columns``: the encrypted fields a row holds, in order; a row is ``(pk, value, version, …)``
    with a (value, version) pair per column."""

    def __init__(self, model, columns: tuple[str, ...]) -> None:
        from keyrotation import keyring

        self.columns = columns
        self.labels = {c: f"{model._meta.label}.{c}".encode() for c in columns}
        self.keyring = keyring
        self._aes: dict = {}

    def aes(self, version: int, col: str):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = (version, col)
        if key not in self._aes:
            ring = self.keyring.keyring_for_version("default", "encrypt", version)
            self._aes[key] = AESGCM(ring.subkey(version, self.labels[col].decode()))
        return self._aes[key]

    def reseal(self, token: bytes, version: int, col: str, target: int) -> bytes:
        label = self.labels[col]
        pt = self.aes(version, col).decrypt(token[5:17], token[17:], token[:5] + label)
        header = b"\x01" + target.to_bytes(4, "big")
        nonce = os.urandom(12)
        return header + nonce + self.aes(target, col).encrypt(nonce, pt, header + label)

    def row(self, row: tuple, target: int) -> tuple:
        """``row`` with every value on ``target``."""
        out = [row[0]]
        for k, col in enumerate(self.columns):
            token, version = row[1 + 2 * k], row[2 + 2 * k]
            if version != target:
                token, version = self.reseal(token, version, col, target), target
            out += (token, version)
        return tuple(out)


def select_pending(table: str, columns: tuple[str, ...]) -> str:
    """The hand-written loop's claim (``%s`` placeholders: the target once per column, the last
    pk, the batch size)."""
    read = ", ".join(f"{c}, {c}_key_version" for c in columns)
    pending = " OR ".join(f"{c}_key_version <> %s" for c in columns)
    return (
        f"SELECT id, {read} FROM {table} WHERE ({pending}) AND id > %s "
        "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
    )
