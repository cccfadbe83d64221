"""The fillfactor experiment (``bench/run.py --fillfactor 100,90,80``, PostgreSQL only).

For each fillfactor, on ``benchapp.PersonFill`` (the real-shaped model in its own table):
``ALTER TABLE … SET (fillfactor = N)`` and ``VACUUM FULL`` (the setting only applies to pages
written after it; the rewrite applies it to every page and rebuilds the indexes), then

1. an encrypt-key rotation and ``reencrypt`` (only ciphertexts and ``*_key_version`` columns
   change: no indexed column, so an update can be heap-only when its page has room);
2. ``VACUUM``, an index-key rotation and ``reencrypt`` (the blind indexes change: an indexed
   column changes, so no update can be heap-only, whatever the fillfactor).

Each reports rows/s, WAL bytes/row, HOT share, database CPU, and the growth of the heap and of
the table's indexes during the run. The steps (``Meter``, ``child``, ``rotate``) are
``bench/run.py``'s, passed in.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

TABLE, LABEL = "bench_person_fill", "benchapp.PersonFill"
PURPOSES = (("encrypt", "encrypt key (ciphertexts)"), ("index", "index key (blind indexes)"))


def run(ctx, meter: type, child: Callable, rotate: Callable, log: Callable) -> list[dict]:
    """One dict per repetition: ``{fillfactor: {purpose: metrics}}``."""
    db, out = ctx.db, []
    for rep in range(1, ctx.runs + 1):
        by_ff: dict[str, dict] = {}
        for ff in ctx.fillfactors:
            log(f"fillfactor {rep}: {ff}, VACUUM FULL, encrypt rotation then index rotation")
            db.rewrite_with_fillfactor(TABLE, ff)
            steps = {}
            for purpose, _ in PURPOSES:
                db.settle(TABLE)
                heap0, idx0 = db.relation_sizes(TABLE)
                rotate(purpose)
                with meter(ctx, TABLE) as m:
                    res, ru = child(ctx, "reencrypt", "--model", LABEL)
                assert res["status"] == "finished" and res["rows_done"] == ctx.rows, res
                heap1, idx1 = db.relation_sizes(TABLE)
                steps[purpose] = {
                    **m.metrics(res["rows_done"], res["seconds"], ru["cpu"]),
                    "heap_before": heap0, "heap_after": heap1, "index_before": idx0, "index_after": idx1,
                }  # fmt: skip
            by_ff[str(ff)] = steps
        out.append(by_ff)
    return out


def report(ctx, results: list[dict], fmt: Callable) -> list[str]:
    if not results:
        return []
    mib = 1024 * 1024

    def med(ff: str, purpose: str, key: str) -> float:
        return statistics.median(r[ff][purpose][key] for r in results)

    def growth(ff: str, purpose: str, what: str) -> float:
        return statistics.median(
            100.0 * (r[ff][purpose][f"{what}_after"] / r[ff][purpose][f"{what}_before"] - 1) for r in results
        )

    lines = [
        "",
        f"## Fillfactor (`benchapp.PersonFill`, {ctx.rows:,} rows, medians of {len(results)} runs)",
        "",
        "Each fillfactor: `ALTER TABLE bench_person_fill SET (fillfactor = N)` and `VACUUM (FULL, ANALYZE)` "
        "(the rewrite applies it to every page and rebuilds the 5 indexes), then an encrypt-key rotation and "
        "`reencrypt`, then `VACUUM`, an index-key rotation and `reencrypt`. Sizes are before → after the "
        "`reencrypt` run (the heap's old row versions are still there: no vacuum ran in between). An "
        "index-key rotation rewrites both blind indexes, indexed columns: no update of it can be heap-only "
        "(HOT), whatever room its page has.",
        "",
        "| fillfactor | rotation | rows/s | WAL bytes/row | HOT updates | DB CPU µs/row | client CPU µs/row "
        "| heap MiB before → after | indexes MiB before → after | index growth |",
        "|---:|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for ff in (str(f) for f in ctx.fillfactors):
        for purpose, title in PURPOSES:
            lines.append(
                f"| {ff} | {title} | {fmt(med(ff, purpose, 'rate'))} | {fmt(med(ff, purpose, 'wal_per_row'))} | "
                f"{fmt(med(ff, purpose, 'hot_percent'))} % | {fmt(med(ff, purpose, 'db_cpu_us_per_row'), 1)} | "
                f"{fmt(med(ff, purpose, 'client_cpu_us_per_row'), 1)} | "
                f"{med(ff, purpose, 'heap_before') / mib:.1f} → {med(ff, purpose, 'heap_after') / mib:.1f} | "
                f"{med(ff, purpose, 'index_before') / mib:.1f} → {med(ff, purpose, 'index_after') / mib:.1f} | "
                f"{growth(ff, purpose, 'index'):+.0f} % |"
            )
    return lines
