"""The bench models' rows: what each holds (plaintext made up deterministically from the row
number), bulk loading with valid ciphertexts made by the library, the binary twins of the read
baseline, and the naive ``save()`` loop over every encrypted field.

* ``customer``: ``benchapp.Customer``, two encrypted fields (email + notes, ~270 bytes of
  ciphertext per row) and one blind index;
* ``person``: ``benchapp.Person``, the shape of a real table: six encrypted fields (~600 bytes of
  ciphertext per row), two blind indexes (one unique), plain columns and ordinary indexes.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

WORDS = (
    "account invoice delivery address contact request support order refund payment shipping "
    "customer priority note follow call email update change review pending approved escalated"
).split()
FIRST = "Ada Grace Alan Edsger Barbara Donald Frances Ken Radia Margaret Niklaus Sophie".split()
LAST = "Lovelace Hopper Turing Dijkstra Liskov Knuth Allen Thompson Perlman Hamilton Wirth Wilson".split()
EPOCH = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)


def notes_pool() -> list[str]:
    rng = random.Random(1)
    return [" ".join(rng.choice(WORDS) for _ in range(28)) for _ in range(1000)]


@dataclass(frozen=True)
class Shape:
    """One bench model: ``values(i)`` gives row ``i``'s plain columns and plaintexts."""

    key: str
    model_name: str
    title: str
    #: Plain (unencrypted) columns besides ``id``: (name, kind of ``BenchDatabase.load``).
    plain: tuple[tuple[str, str], ...]
    #: The encrypted fields, in the order the hand-written loop reads them.
    encrypted: tuple[str, ...]
    binary_twin: str
    values: Callable[[int, list[str]], dict[str, Any]]

    def model(self, name: str | None = None):
        from django.apps import apps

        return apps.get_model("benchapp", name or self.model_name)


def _customer(i: int, pool: list[str]) -> dict[str, Any]:
    return {"email": f"customer{i}@example.com", "notes": f"{i}: {pool[i % 1000]}"}


def _person(i: int, pool: list[str]) -> dict[str, Any]:
    return {
        "account_id": i % 5000 + 1,
        "created_at": EPOCH + dt.timedelta(seconds=37 * i),
        "status": ("active", "pending", "closed")[i % 3],
        "email": f"person{i}@example.org",
        "name": f"{FIRST[i % 12]} {LAST[(i // 12) % 12]}-{i}",
        "phone": f"+1 555 {i:07d}",
        "national_id": f"{(i * 7919) % 900 + 100:03d}-{(i // 7) % 90 + 10:02d}-{i % 10000:04d}",
        "date_of_birth": dt.date(1940, 1, 1) + dt.timedelta(days=(97 * i) % 25000),
        "notes": {"channel": ("email", "phone", "mail")[i % 3], "vip": i % 17 == 0,
                  "comment": pool[i % 1000][: 60 + i % 60]},
    }  # fmt: skip


SHAPES: dict[str, Shape] = {
    "customer": Shape(
        "customer", "Customer", "benchapp.Customer: email + notes (~270 bytes of ciphertext per row)",
        (), ("email", "notes"), "CustomerBinary", _customer,
    ),
    "person": Shape(
        "person", "Person",
        "benchapp.Person: 6 encrypted fields, 2 blind indexes (one unique), 5 indexes in all "
        "(~630 bytes of ciphertext per row)",
        (("account_id", "int4"), ("created_at", "timestamptz"), ("status", "text")),
        ("email", "name", "phone", "national_id", "date_of_birth", "notes"), "PersonBinary", _person,
    ),
}  # fmt: skip


def columns(model, shape: Shape) -> list[tuple[str, str]]:
    """The columns :func:`load_encrypted` fills, as (name, kind)."""
    from keyrotation.fields import BlindIndexField

    cols = [("id", "int8"), *shape.plain]
    for name in shape.encrypted:
        cols += [(name, "bytea"), (f"{name}_key_version", "int2")]
    for f in model._meta.concrete_fields:
        if isinstance(f, BlindIndexField):
            cols += [(f.attname, "bytea"), (f"{f.attname}_key_version", "int2")]
    return cols


def load_encrypted(db, shape: Shape, n: int, model_name: str | None = None) -> None:
    """Load ``n`` rows of valid ciphertexts, made by the library under the active versions."""
    from keyrotation import codecs, crypto, keyring
    from keyrotation.fields import BlindIndexField

    model = shape.model(model_name)
    ring_e, ring_i = keyring.get_keyring("default", "encrypt"), keyring.get_keyring("default", "index")
    ve, vi = ring_e.active_version, ring_i.active_version
    enc = []
    for name in shape.encrypted:
        f = model._meta.get_field(name)
        enc.append((name, f.base_field, crypto.Cipher(ring_e.subkey(ve, f.label), ve, f.label)))
    bidx = [
        (f.source, f, ring_i.subkey(vi, f.label), f.index_length())
        for f in model._meta.concrete_fields
        if isinstance(f, BlindIndexField)
    ]
    pool = notes_pool()

    def rows() -> Iterator[tuple]:
        for i in range(1, n + 1):
            v = shape.values(i, pool)
            row: list[Any] = [i, *(v[name] for name, _ in shape.plain)]
            for name, base, cipher in enc:
                row += (cipher.encrypt(codecs.encode(base, v[name])), ve)
            for source, f, subkey, length in bidx:
                row += (crypto.blind_index(subkey, f.index_input(v[source]), length), vi)
            yield tuple(row)

    db.load(model._meta.db_table, columns(model, shape), rows())


def load_binary_twin(shape: Shape, n: int) -> None:
    """Copy the first ``n`` rows of the encrypted table, bytes as they are, into its binary twin."""
    from bench.databases.base import sql

    src, dst = shape.model(), shape.model(shape.binary_twin)
    names = ", ".join(name for name, _ in columns(src, shape))
    sql(
        f"INSERT INTO {dst._meta.db_table} ({names}) SELECT {names} FROM {src._meta.db_table} WHERE id <= %s",
        [n],
        fetch=False,
    )


def naive_loop(model, fields: tuple[str, ...], upto: int, batch: int = 100) -> int:
    """The runbook loop: re-save every object, ``batch`` objects per transaction."""
    from django.db import transaction

    done = 0
    for lo in range(0, upto, batch):
        with transaction.atomic():
            for obj in model.objects.filter(pk__gt=lo, pk__lte=min(lo + batch, upto)).order_by("pk"):
                for name in fields:
                    setattr(obj, name, getattr(obj, name))
                obj.save()
                done += 1
    return done
