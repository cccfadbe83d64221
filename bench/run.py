#!/usr/bin/env python3
"""``make bench [DB=mysql] [ROWS=100000] [MODELS=customer,person] [FILLFACTOR=100,90,80]``: speed,
cost and scale of re-encryption and of encrypted reads.

Starts a throwaway database server (``--database``: PostgreSQL by default, or MariaDB with
``mysql``) and an OpenBao server (``tests/servers.py``), loads ``--rows`` rows into each bench
table of the models chosen with ``--models`` (``bench/shapes.py``; COPY on PostgreSQL, multi-row
INSERTs on MariaDB; valid ciphertexts made by the library):

* ``customer``: ``benchapp.Customer``, two encrypted fields and a blind index (the model of the
  earlier records), with its twin whose version columns are indexed;
* ``person``: ``benchapp.Person``, the shape of a real table: six encrypted fields, two blind
  indexes (one unique), plain columns and ordinary indexes; and ``PersonFill``, the same shape in
  its own table for the fillfactor experiment.

Then it repeats ``--runs`` times (ratios are computed inside each repetition, the table shows
medians), on each model:

A  rotate; ``keyrotation.engine.reencrypt``, one worker, in a subprocess (peak RSS, CPU, KEK
   requests against OpenBao, database CPU, and the database's own counters: WAL bytes and HOT
   updates on PostgreSQL, redo bytes and row counters on MariaDB)
B  rotate; the naive Django loop (``obj.f = obj.f`` for every encrypted field, ``obj.save()``, 100
   rows per transaction) on the first ``--naive-rows`` rows, then the hand-written raw-SQL
   set-based loop on the rest
C  rotate; the same raw SQL without crypto (the database ceiling)

and on the customer only:

D  rotate; ``reencrypt --workers 2``
E  ``reencrypt`` on ``benchapp.CustomerIndexed`` (version columns indexed), then census timings
F  rotate; an application process doing single-row ORM updates, idle then during ``reencrypt``
   (with the time it and its backend waited for a CPU, from ``/proc/<pid>/schedstat``)
G  (rows > 100k, first run only) rotate; move all rows but the first 100k with the raw loop; ``reencrypt``
   subprocess with 100k rows to do (peak RSS at 100k)

then, after every repetition, the fillfactor experiment (``bench/fillfactor.py``, PostgreSQL,
``--fillfactor``; an empty list skips it), and before them, ``--runs`` times: ORM reads of
``--read-rows`` rows of each model, encrypted vs a twin holding the same bytes in plain
``BinaryField`` columns (what the field layer adds), and for the customer plaintext and Fernet
twins (with a cProfile of the encrypted read when it misses its target).

What differs between the databases (server, settings, loading, counters, the hand-written loop's
SQL) lives in ``bench/databases/``, one module per database.

Results: a Markdown file per database under ``bench/results/`` (``100k-<database>-<date>.md``)
and the same table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import databases  # noqa: E402
from tests import servers  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# measuring a step


class Meter:
    """Wall time, client and database CPU, and the database's own counters
    (:meth:`~bench.databases.base.BenchDatabase.snapshot`) around one step."""

    def __init__(self, ctx, table: str | None):
        self.db, self.table = ctx.db, table

    def __enter__(self):
        self.db.begin_step()
        self.snap0 = self.db.snapshot(self.table)
        self.cpu0 = self.db.cpu_seconds()
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.self_cpu = (ru.ru_utime + ru.ru_stime) - (self.ru0.ru_utime + self.ru0.ru_stime)
        self.db_cpu = self.db.cpu_seconds() - self.cpu0
        self.snap1 = self.db.snapshot(self.table)

    def metrics(self, rows: int, seconds: float | None = None, client_cpu: float | None = None) -> dict:
        seconds = seconds or self.seconds
        client_cpu = self.self_cpu if client_cpu is None else client_cpu
        return {
            "rows": rows,
            "seconds": seconds,
            "rate": rows / seconds if seconds else 0.0,
            "db_cpu_us_per_row": 1e6 * self.db_cpu / rows if rows else None,
            "client_cpu_us_per_row": 1e6 * client_cpu / rows if rows else None,
            **self.db.step_metrics(self.snap0, self.snap1, rows),
        }


def child(ctx, *argv: str) -> tuple[dict, dict]:
    """Run ``python -m bench.child ...``; return (its JSON, its CPU and peak RSS as a dict).

    The peak RSS is the one the child reports (``peak_rss_kb``): the kernel's ``ru_maxrss`` of a
    spawned child starts from its parent's peak (Python spawns with vfork, and the peak survives
    the exec), so it would report this process's size whenever that is the larger."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.child", *argv], cwd=ROOT, env=ctx.env, stdout=subprocess.PIPE
    )
    out = proc.stdout.read()
    proc.stdout.close()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"bench.child {' '.join(argv)} exited {proc.returncode}")
    res = json.loads(out or b"{}")
    return res, {"maxrss_kb": res.pop("peak_rss_kb"), "cpu": ru.ru_utime + ru.ru_stime}


# ---------------------------------------------------------------------------------------------
# data


def load_twins(db, n: int) -> None:
    from bench.benchapp.fernet import fernet
    from bench.shapes import notes_pool

    pool, f = notes_pool(), fernet()
    db.load(
        "bench_customer_plain",
        [("id", "int8"), ("email", "text"), ("notes", "text")],
        ((i, f"customer{i}@example.com", f"{i}: {pool[i % 1000]}") for i in range(1, n + 1)),
    )
    db.load(
        "bench_customer_fernet",
        [("id", "int8"), ("email", "bytea"), ("notes", "bytea")],
        (
            (i, f.encrypt(f"customer{i}@example.com".encode()), f.encrypt(f"{i}: {pool[i % 1000]}".encode()))
            for i in range(1, n + 1)
        ),
    )


# ---------------------------------------------------------------------------------------------
# the contenders


def rotate(purpose: str = "encrypt") -> int:
    from keyrotation import keyring, lifecycle

    key = lifecycle.rotate(purpose=purpose, actor="bench")
    keyring.invalidate()
    return key.version


def read_rows(model, n: int, attrs: tuple[str, ...] = ("email", "notes")) -> float:
    start = time.perf_counter()
    for obj in model.objects.order_by("pk")[:n].iterator(chunk_size=2000):
        for name in attrs:
            getattr(obj, name)  # the read is the point (EncryptedField decrypts here)
    return time.perf_counter() - start


def timed(fn, *a) -> float:
    start = time.perf_counter()
    fn(*a)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# one repetition


def contenders(ctx, rep: int, shape) -> dict:
    """Steps A–C on one model: ``reencrypt`` (1 worker), the naive loop then the hand-written
    loop, the database ceiling; each after its own rotation of the encrypt key."""
    from bench.shapes import naive_loop

    model, n, out = shape.model(), ctx.rows, {}
    T, label = model._meta.db_table, model._meta.label

    log(f"run {rep}: {shape.key}: A reencrypt, 1 worker")
    ctx.db.settle(T)
    rotate()
    with Meter(ctx, T) as m:
        res, ru = child(ctx, "reencrypt", "--model", label)
    assert res["status"] == "finished" and res["rows_done"] == n, res
    out["engine"] = m.metrics(res["rows_done"], res["seconds"], ru["cpu"])
    out["engine"].update(
        maxrss_kb=ru["maxrss_kb"],
        kek_requests=res["kek_requests"],
        batch_max=res["batch_seconds_max"],
        batch_median=res["batch_seconds_median"],
    )

    log(f"run {rep}: {shape.key}: B naive loop on {ctx.naive_rows} rows, raw-SQL loop on the rest")
    ctx.db.settle(T)
    target = rotate()
    with Meter(ctx, T) as m:
        done = naive_loop(model, shape.encrypted, ctx.naive_rows)
    out["naive"] = m.metrics(done)
    raw = ctx.db.raw_loop(model, shape.encrypted)
    with Meter(ctx, T) as m:
        done = raw.run(target)
    out["raw"] = m.metrics(done)
    raw.close()

    log(f"run {rep}: {shape.key}: C database ceiling (raw SQL, no crypto)")
    ctx.db.settle(T)
    target = rotate()
    raw = ctx.db.raw_loop(model, shape.encrypted, crypto_on=False)
    with Meter(ctx, T) as m:
        done = raw.run(target)
    out["ceiling"] = m.metrics(done)
    raw.restore(target)
    raw.close()
    return out


def repetition(ctx, rep: int) -> dict:
    """One repetition: A–C on every model of ``--models`` (the customer's at the top level, as
    earlier records have them, the others under their key), then D–G on the customer."""
    from bench.shapes import SHAPES

    out: dict = {}
    for key in ctx.models:
        res = contenders(ctx, rep, SHAPES[key])
        if key == "customer":
            out.update(res)
        else:
            out[key] = res
    if "customer" in ctx.models:
        out.update(customer_steps(ctx, rep))
        if out["rss_100k_kb"] is None and ctx.rows == 100_000:
            out["rss_100k_kb"] = out["engine"]["maxrss_kb"]
    out["loadavg_end"] = os.getloadavg()
    return out


def customer_steps(ctx, rep: int) -> dict:
    """Steps D–G, on ``benchapp.Customer`` and its indexed twin."""
    from bench.benchapp.models import Customer, CustomerIndexed
    from keyrotation import census, engine, registry
    from keyrotation.engine import plan as plan_mod

    n, out = ctx.rows, {}
    T, TI = "bench_customer", "bench_customer_indexed"

    log(f"run {rep}: D reencrypt --workers 2")
    ctx.db.settle(T)
    rotate()
    with Meter(ctx, T) as m:
        res, ru = child(ctx, "reencrypt", "--model", "benchapp.Customer", "--workers", "2")
    assert res["status"] == "finished" and res["rows_done"] == n, res
    out["workers2"] = m.metrics(res["rows_done"], res["seconds"], ru["cpu"])
    out["workers2"]["maxrss_kb"] = ru["maxrss_kb"]

    log(f"run {rep}: E reencrypt on the indexed-version-column twin")
    ctx.db.settle(TI)
    with Meter(ctx, TI) as m:
        res, ru = child(ctx, "reencrypt", "--model", "benchapp.CustomerIndexed")
    assert res["status"] == "finished" and res["rows_done"] == n, res
    out["indexed"] = m.metrics(res["rows_done"], res["seconds"], ru["cpu"])

    log(f"run {rep}: census with and without version-column indexes")
    ctx.db.settle(T, TI)
    for key, model in (("census_plain", Customer), ("census_indexed", CustomerIndexed)):
        cols = [c for c in registry.columns() if c.model is model]
        plans = [p for p in plan_mod.build([model._meta.label])]
        out[key] = {
            "census_seconds": statistics.median(
                timed(lambda cols=cols: [census.counts(c) for c in cols]) for _ in range(3)
            ),
            "pending_seconds": statistics.median(
                timed(lambda plans=plans: [p.pending("default") for p in plans]) for _ in range(3)
            ),
        }
    out["status_seconds"] = timed(engine.status)

    log(f"run {rep}: F application writer, idle then during reencrypt")
    ctx.db.settle(T)
    rotate()
    with tempfile.TemporaryDirectory() as tmp:
        stop, samples_file = Path(tmp, "stop"), Path(tmp, "samples.json")
        writer = subprocess.Popen(
            [sys.executable, "-m", "bench.child", "writer", "--rows", str(n), "--stop", str(stop),
             "--out", str(samples_file)],
            cwd=ROOT, env=ctx.env,
        )  # fmt: skip
        time.sleep(2.0)  # Django start-up
        idle_from = time.monotonic()
        time.sleep(ctx.writer_idle)
        busy_from = time.monotonic()
        res, ru = child(ctx, "reencrypt", "--model", "benchapp.Customer")
        busy_to = time.monotonic()
        stop.touch()
        writer.wait(timeout=60)
        samples = json.loads(samples_file.read_text())
    assert res["status"] == "finished", res
    idle = [(s, q) for t, s, q in samples if idle_from <= t < busy_from]
    busy = [(s, q) for t, s, q in samples if busy_from <= t < busy_to]
    out["writer"] = {
        "idle_n": len(idle),
        "busy_n": len(busy),
        **latency_profile("idle", idle),
        **latency_profile("busy", busy),
        "batch_max": res["batch_seconds_max"],
        "batch_median": res["batch_seconds_median"],
        "engine_rate": res["rows_done"] / res["seconds"],
    }

    if n > 100_000 and rep == 1:  # once: RSS needs no median, and this costs a full raw pass
        log(f"run {rep}: G reencrypt with 100k rows to do (peak RSS at 100k)")
        ctx.db.settle(T)
        target = rotate()
        raw = ctx.db.raw_loop(Customer, ("email", "notes"))
        raw.run(target, lo=100_000)
        raw.close()
        res, ru = child(ctx, "reencrypt", "--model", "benchapp.Customer")
        assert res["rows_done"] == 100_000, res
        out["rss_100k_kb"] = ru["maxrss_kb"]
    else:
        out["rss_100k_kb"] = None
    return out


def latency_profile(phase: str, samples: list[tuple[float, float | None]]) -> dict:
    """p50/p99/max of the writer's update latencies, and where the slow ones spent their time:
    ``runq``: seconds the writer and its backend waited for a CPU during the update
    (``bench.child.RunQueueClock``); ``<phase>_without_runq_p99``: p99 of latency minus that wait."""
    lat = sorted(s for s, _ in samples)
    out = {
        f"{phase}_p50": pct(lat, 50),
        f"{phase}_p99": pct(lat, 99),
        f"{phase}_max": lat[-1] if lat else None,
    }
    if samples and all(q is not None for _, q in samples):
        out[f"{phase}_runq_p99"] = pct(sorted(q for _, q in samples), 99)
        out[f"{phase}_without_runq_p99"] = pct(sorted(s - q for s, q in samples), 99)
        slowest = sorted(samples, reverse=True)[: max(1, len(samples) // 100)]
        out[f"{phase}_slowest_runq_share"] = sum(q for _, q in slowest) / sum(s for s, _ in slowest)
    return out


def read_profile(model, n: int, top: int = 12) -> list[dict]:
    """cProfile of one :func:`read_rows` pass: the ``top`` functions by own time."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.runcall(read_rows, model, n)
    stats = pstats.Stats(prof)
    rows = []
    for (path, line, name), (_cc, calls, tottime, cumtime, _) in stats.stats.items():
        where = "~" if path == "~" else f"{Path(path).parent.name}/{Path(path).name}:{line}"
        rows.append({"function": f"{name} ({where})", "calls": calls, "tottime": tottime, "cumtime": cumtime})
    return sorted(rows, key=lambda r: r["tottime"], reverse=True)[:top]


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    k = min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))
    return values[k]


# ---------------------------------------------------------------------------------------------
# report


def machine(ctx) -> dict:
    import cryptography
    import django

    mem_kb = int(
        next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1]
    )
    cpu = next(
        (
            x.split(":", 1)[1].strip()
            for x in Path("/proc/cpuinfo").read_text().splitlines()
            if x.startswith("model name")
        ),
        platform.processor(),
    )
    bao = subprocess.run(
        [servers.find_bao(), "version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    db_key, db_version = ctx.db.server_version()
    driver, driver_version = ctx.db.driver_version()
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "os": platform.platform(),
        db_key: db_version,
        "python": platform.python_version(),
        "django": django.get_version(),
        driver: driver_version,
        "cryptography": cryptography.__version__,
        "openbao": bao,
        "load average at start (1/5/15 min)": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def med(runs: list[dict], *path):
    vals = []
    for r in runs:
        v = r
        for k in path:
            v = v.get(k) if v is not None else None
        if v is not None:
            vals.append(v)
    return statistics.median(vals) if vals else None


def fmt(v, digits=0) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


READ_TARGET_BINARY = 1.3  # encrypted read time / the BinaryField twin's
READ_TARGET_FERNET = 0.5  # encrypted read time / Fernet's
CONTENDERS = (
    ("engine", "`reencrypt`, 1 worker"),
    ("workers2", "`reencrypt --workers 2`"),
    ("naive", "naive Django loop (first {naive:,} rows)"),
    ("raw", "hand-written raw-SQL loop (the other rows)"),
    ("ceiling", "database ceiling (same SQL, no crypto)"),
    ("indexed", "`reencrypt`, 1 worker, version columns indexed"),
)


def rate_ratio(rs: list[dict], a: str, b: str) -> float:
    return statistics.median(r[a]["rate"] / r[b]["rate"] for r in rs)


def reencryption_section(ctx, shape, rs: list[dict]) -> list[str]:
    """The contenders' table and ratios of one model (``rs``: its part of every run)."""
    db = ctx.db
    lines = [
        "",
        f"## Re-encryption: {shape.title}",
        "",
        "Rotate the encrypt key, move every row.",
        "",
        "| contender | rows per run | rows/s (median) | per-run rows/s | "
        + " | ".join(m.title for m in db.metrics)
        + " |",
        "|---|---:|---:|---|" + "---:|" * len(db.metrics),
    ]
    for key, title in CONTENDERS:
        if key not in rs[0]:
            continue
        lines.append(
            f"| {title.format(naive=ctx.naive_rows)} | {fmt(med(rs, key, 'rows'))} | **{fmt(med(rs, key, 'rate'))}** | "
            f"{', '.join(fmt(r[key]['rate']) for r in rs)} | "
            + " | ".join(f"{fmt(med(rs, key, m.key), m.digits)}{m.suffix}" for m in db.metrics)
            + " |"
        )
    lines += [
        "",
        "| ratio (median of per-run ratios) | value |",
        "|---|---:|",
        f"| `reencrypt` / naive loop | {rate_ratio(rs, 'engine', 'naive'):.1f}× |",
        f"| `reencrypt` / raw-SQL loop | {rate_ratio(rs, 'engine', 'raw'):.2f}× |",
        f"| `reencrypt` / database ceiling | {rate_ratio(rs, 'engine', 'ceiling'):.2f}× |",
    ]
    if "workers2" in rs[0]:
        lines.append(f"| `--workers 2` / `--workers 1` | {rate_ratio(rs, 'workers2', 'engine'):.2f}× |")
    if "indexed" in rs[0]:
        lines.append(
            f"| version columns indexed / not indexed (rows/s) | {rate_ratio(rs, 'indexed', 'engine'):.2f}× |"
        )
    return lines


READS = {
    "customer": (
        ("plain", "plaintext columns"),
        ("binary", "BinaryField twin (the same bytes, no field layer)"),
        ("enc", "EncryptedField (decrypt on access)"),
        ("fernet", "Fernet (MultiFernet, decrypt in from_db_value)"),
    ),
    "person": (
        ("binary", "BinaryField twin (the same bytes, no field layer)"),
        ("enc", "EncryptedField (decrypt on access)"),
    ),
}


def read_ratio(reads: list[dict], model: str, a: str, b: str) -> float | None:
    if model not in reads[0] or b not in reads[0][model]:
        return None
    return statistics.median(r[model][a] / r[model][b] for r in reads)


def reads_section(ctx, reads: list[dict]) -> list[str]:
    from bench.shapes import SHAPES

    lines = [
        "",
        f"## Encrypted reads (ORM, {ctx.read_rows:,} rows, reading every encrypted attribute)",
        "",
        "The BinaryField twin has the same columns holding the same bytes (ciphertexts, blind indexes, "
        "version numbers) as plain `BinaryField` and integer fields: the ratio to it is what the field "
        "layer (decryption included) adds to fetching the bytes.",
        "",
        "| model | storage | seconds (median) | per-run | rows/s | vs BinaryField twin | vs plaintext |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for model in ctx.models:
        for key, title in READS[model]:
            secs = statistics.median(r[model][key] for r in reads)
            lines.append(
                f"| {SHAPES[model].model_name} | {title} | {secs:.3f} | "
                f"{', '.join(f'{r[model][key]:.3f}' for r in reads)} | {ctx.read_rows / secs:,.0f} | "
                f"{read_ratio(reads, model, key, 'binary'):.2f}× | {fmt(read_ratio(reads, model, key, 'plain'), 2)}"
                + ("×" if model == "customer" else "")
                + " |"
            )
    return lines


def report(
    ctx, runs: list[dict], reads: list[dict], baseline_rss_kb: int, info: dict, profile: list[dict],
    fill: list[dict],
) -> str:  # fmt: skip
    from bench import fillfactor
    from bench.shapes import SHAPES

    n, db = ctx.rows, ctx.db
    lines = [
        f"# keyrotation benchmark — {n:,} rows, {ctx.runs} runs ({dt.date.today().isoformat()})",
        "",
        f"Produced by `bench/run.py --database {db.slug} --rows {n} "
        f"--runs {ctx.runs} --models {','.join(ctx.models)} --fillfactor '{','.join(map(str, ctx.fillfactors))}'` "
        f"({db.name}). Medians over {ctx.runs} runs; every ratio "
        "is computed inside one run (same table state, same minute) and the median of those ratios "
        "is shown. Rates are rows per second.",
        "",
        "## Machine",
        "",
        *[f"- **{k}**: {v}" for k, v in info.items()],
        "- **load average at the end of each run (1/5/15 min)**: "
        + "; ".join(", ".join(f"{x:.2f}" for x in r["loadavg_end"]) for r in runs),
        f"- **{db.name} settings**: {db.settings_note()}",
        "- **KEK**: OpenBao Transit (real server on loopback) for every step.",
    ]
    for key in ctx.models:
        rs = runs if key == "customer" else [r[key] for r in runs]
        lines += reencryption_section(ctx, SHAPES[key], rs)
    lines += [
        "",
        f"The naive loop runs on a {ctx.naive_rows:,}-row subset (a full pass would take far too long); "
        "ratios are ratios of rates, so the comparison is fair. Database CPU counts "
        f"{db.cpu_note}; client CPU is the measured process (its workers included). HOT updates: "
        "the share of the step's row updates that were heap-only (`n_tup_hot_upd / n_tup_upd`)."
        + (f" {db.contenders_note}" if db.contenders_note else ""),
    ]
    if "customer" in ctx.models:
        lines += customer_sections(ctx, runs, baseline_rss_kb)
    lines += fillfactor.report(ctx, fill, fmt)
    lines += reads_section(ctx, reads)
    lines += ["", "## Targets", "", "| target | status | measured |", "|---|---|---|"]
    for title, ok, measured in targets(ctx, runs, reads):
        status = "n/a at this size" if ok is None else ("**met**" if ok else "**not met**")
        lines.append(f"| {title} | {status} | {measured} |")
    w = lambda k: med(runs, "writer", k)  # noqa: E731
    ms = lambda v: None if v is None else v * 1000  # noqa: E731
    lines += where_the_time_goes(ctx, profile, w if "customer" in ctx.models else None, ms)
    lines += [
        "",
        "## Raw numbers",
        "",
        "```json",
        json.dumps({"runs": runs, "reads": reads, "fillfactor": fill}, indent=1),
        "```",
        "",
    ]
    return "\n".join(lines)


def customer_sections(ctx, runs: list[dict], baseline_rss_kb: int) -> list[str]:
    """Memory and KEK, concurrent writes, version-column index: steps D–G on the customer."""
    n, db = ctx.rows, ctx.db
    w = lambda k: med(runs, "writer", k)  # noqa: E731
    ms = lambda v: None if v is None else v * 1000  # noqa: E731
    pc = lambda v: None if v is None else v * 100  # noqa: E731
    return [
        "",
        "## Memory and KEK (benchapp.Customer)",
        "",
        f"- Peak RSS of the `reencrypt` process: **{fmt(med(runs, 'engine', 'maxrss_kb') / 1024, 1)} MiB** "
        f"with {n:,} rows to do (runs: {', '.join(fmt(r['engine']['maxrss_kb'] / 1024, 1) for r in runs)}), "
        + (
            f"**{fmt(med(runs, 'rss_100k_kb') / 1024, 1)} MiB** with 100,000 rows to do; "
            if med(runs, "rss_100k_kb")
            else ""
        )
        + f"a Django process that only imports the engine and connects: {baseline_rss_kb / 1024:.1f} MiB. "
        f"`--workers 2` (parent + children, largest process): {fmt(med(runs, 'workers2', 'maxrss_kb') / 1024, 1)} MiB.",
        f"- KEK (OpenBao Transit) requests during one {n:,}-row `reencrypt` run: "
        f"**{', '.join(str(r['engine']['kek_requests']) for r in runs)}** (per run); "
        "one unwrap per data-key version the run meets (old encrypt version, new encrypt version, index version).",
        f"- Engine batch time (default batch size): median {fmt(med(runs, 'engine', 'batch_median') * 1000, 0)} ms, "
        f"max {fmt(med(runs, 'engine', 'batch_max') * 1000, 0)} ms.",
        "",
        "## Concurrent application writes",
        "",
        "One process doing `Customer.objects.filter(pk=<random>).update(notes=...)` (ORM, encrypted field, "
        "autocommit) with a 5 ms pause between updates; latencies of the UPDATE statement, first with nothing "
        "else running, then while `reencrypt` (1 worker, default batch size, no rate cap) runs.",
        "",
        "| | samples | p50 ms | p99 ms | max ms | p99 of the time not spent waiting for a CPU, ms | p99 of the wait for a CPU, ms | slowest 1 %: share spent waiting for a CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {title} | {fmt(w(f'{ph}_n'))} | {fmt(ms(w(f'{ph}_p50')), 2)} | {fmt(ms(w(f'{ph}_p99')), 2)} | "
            f"{fmt(ms(w(f'{ph}_max')), 1)} | {fmt(ms(w(f'{ph}_without_runq_p99')), 2)} | "
            f"{fmt(ms(w(f'{ph}_runq_p99')), 2)} | {fmt(pc(w(f'{ph}_slowest_runq_share')), 0)} % |"
            for ph, title in (("idle", "idle"), ("busy", "during `reencrypt`"))
        ],
        "",
        f"The wait for a CPU is the time the writer process and its {db.backend_noun} spent runnable "
        "but not running during the update (`/proc/<pid>/schedstat`); what is left is the database's own "
        "work, lock waits and the network.",
        "",
        f"Longest engine batch (median over runs of each run's longest): {fmt(w('batch_max') * 1000, 0)} ms (median batch "
        f"{fmt(w('batch_median') * 1000, 0)} ms); engine rate with the writer running: {fmt(w('engine_rate'))} rows/s. "
        "The longest application write (the max above, median over runs of each run's longest) bounds its longest lock wait.",
        "",
        "## Version-column index",
        "",
        "| | not indexed (default) | indexed |",
        "|---|---:|---:|",
        f"| re-encryption rows/s (1 worker) | {fmt(med(runs, 'engine', 'rate'))} | {fmt(med(runs, 'indexed', 'rate'))} |",
        *[
            f"| {m.title} | {fmt(med(runs, 'engine', m.key), m.digits)}{m.suffix} | "
            f"{fmt(med(runs, 'indexed', m.key), m.digits)}{m.suffix} |"
            for m in db.index_metrics
        ],
        f"| census of the model's 3 version columns (s) | {fmt(med(runs, 'census_plain', 'census_seconds'), 3)} | {fmt(med(runs, 'census_indexed', 'census_seconds'), 3)} |",
        f"| pending-row count, nothing pending (final sweep check) (s) | {fmt(med(runs, 'census_plain', 'pending_seconds'), 3)} | {fmt(med(runs, 'census_indexed', 'pending_seconds'), 3)} |",
        f"| `engine.status()` (every registered column, every bench table) (s) | {fmt(med(runs, 'status_seconds'), 3)} | |",
    ]


def targets(ctx, runs: list[dict], reads: list[dict]) -> list[tuple[str, bool | None, str]]:
    n, db = ctx.rows, ctx.db
    out = []
    for key in ctx.models:
        rs = runs if key == "customer" else [r[key] for r in runs]
        r_naive, r_raw = rate_ratio(rs, "engine", "naive"), rate_ratio(rs, "engine", "raw")
        out += [
            (f"{key}: `reencrypt` ≥ {db.naive_target:g}× the naive loop", r_naive >= db.naive_target, f"{r_naive:.1f}×"),
            (f"{key}: `reencrypt` ≥ 0.75× the raw-SQL loop", r_raw >= 0.75, f"{r_raw:.2f}×"),
        ]  # fmt: skip
        if db.ceiling_target is not None:
            r_ceiling = rate_ratio(rs, "engine", "ceiling")
            out.append(
                (
                    f"{key}: `reencrypt` ≥ {db.ceiling_target:g}× the database ceiling",
                    r_ceiling >= db.ceiling_target,
                    f"{r_ceiling:.2f}×",
                )
            )
    for key in ctx.models:
        r = read_ratio(reads, key, "enc", "binary")
        out.append(
            (
                f"{key}: encrypted read ≤ {READ_TARGET_BINARY}× the BinaryField twin",
                r <= READ_TARGET_BINARY,
                f"{r:.2f}×",
            )
        )
    if "customer" in ctx.models:
        r = read_ratio(reads, "customer", "enc", "fernet")
        out.append(
            (
                f"customer: encrypted read ≤ {READ_TARGET_FERNET}× Fernet's time",
                r <= READ_TARGET_FERNET,
                f"{r:.2f}×",
            )
        )
        w = lambda k: med(runs, "writer", k)  # noqa: E731
        rss_n, rss_100k = med(runs, "engine", "maxrss_kb"), med(runs, "rss_100k_kb")
        kek = max(r["engine"]["kek_requests"] for r in runs)
        out += [
            (
                f"peak RSS at {n:,} within 10 % of 100k",
                None if n < 1_000_000 or not rss_100k else rss_n <= 1.10 * rss_100k,
                f"{rss_n / 1024:.1f} MiB vs {rss_100k / 1024:.1f} MiB"
                if rss_100k
                else "100k point not measured",
            ),
            ("KEK requests ∝ key versions (a handful)", kek <= 10, f"max {kek} requests per run"),
            (
                "concurrent writers never wait longer than one batch",
                w("busy_max") <= w("batch_max"),
                f"longest write {w('busy_max') * 1000:.0f} ms vs longest batch {w('batch_max') * 1000:.0f} ms",
            ),
            (
                "writer p99 ≤ 2× idle p99 at the default throttle",
                w("busy_p99") <= 2 * w("idle_p99"),
                f"{w('busy_p99') * 1000:.2f} ms vs idle {w('idle_p99') * 1000:.2f} ms ({w('busy_p99') / w('idle_p99'):.1f}×)",
            ),
        ]
    return out


def where_the_time_goes(ctx, profile, w, ms) -> list[str]:
    """The generated profile of every time target not met: where the time goes (``w``: the
    writer's medians, None when the writer did not run)."""
    lines = []
    if profile:
        lines += [
            "",
            f"### Profile: encrypted read ({ctx.profile_rows:,} rows, cProfile, top functions by own time)",
            "",
            "| function | calls | own s | cumulative s |",
            "|---|---:|---:|---:|",
            *[
                f"| `{p['function']}` | {p['calls']:,} | {p['tottime']:.3f} | {p['cumtime']:.3f} |"
                for p in profile
            ],
        ]
    if w is not None and w("busy_p99") > 2 * w("idle_p99") and w("busy_runq_p99") is not None:
        lines += [
            "",
            "### Profile: writer p99 during `reencrypt`",
            "",
            f"- p99 of each update's time minus its wait for a CPU: {ms(w('busy_without_runq_p99')):.2f} ms during the run "
            f"vs {ms(w('idle_without_runq_p99')):.2f} ms idle "
            f"({w('busy_without_runq_p99') / w('idle_without_runq_p99'):.2f}×);",
            f"- p99 of the wait for a CPU alone: {ms(w('busy_runq_p99')):.2f} ms during the run vs "
            f"{ms(w('idle_runq_p99')):.2f} ms idle;",
            f"- the slowest 1 % of updates during the run spent {w('busy_slowest_runq_share') * 100:.0f} % of their time "
            "waiting for a CPU.",
        ]
    return lines


# ---------------------------------------------------------------------------------------------


class Ctx:
    pass


def load_all(ctx) -> list[str]:
    """Load every table the selected models need; returns their names."""
    from bench.shapes import SHAPES, load_binary_twin, load_encrypted

    tables = []
    for key in ctx.models:
        shape = SHAPES[key]
        names = [shape.model_name] + {"customer": ["CustomerIndexed"], "person": ["PersonFill"]}[key]
        for name in names:
            load_encrypted(ctx.db, shape, ctx.rows, name)
            tables.append(shape.model(name)._meta.db_table)
        load_binary_twin(shape, ctx.read_rows)
        tables.append(shape.model(shape.binary_twin)._meta.db_table)
    if "customer" in ctx.models:
        load_twins(ctx.db, ctx.read_rows)
        tables += ["bench_customer_plain", "bench_customer_fernet"]
    return tables


def read_pass(ctx, rep: int) -> dict:
    """One timed ORM read of ``--read-rows`` rows of every read model of the selected models."""
    from bench.shapes import SHAPES

    out: dict = {}
    for key in ctx.models:
        shape = SHAPES[key]
        log(f"reads {rep}: {ctx.read_rows:,} rows of {shape.model_name} x {len(READS[key])} storages")
        names = {
            "plain": "CustomerPlain",
            "fernet": "CustomerFernet",
            "binary": shape.binary_twin,
            "enc": None,
        }
        out[key] = {
            kind: read_rows(shape.model(names[kind]), ctx.read_rows, shape.encrypted)
            for kind, _ in READS[key]
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database",
        choices=sorted(databases.BY_NAME),
        default="postgresql",
        help="the throwaway server to benchmark on (mysql: MariaDB, the engine's MySQL dialect)",
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--naive-rows", type=int, default=20_000)
    parser.add_argument("--read-rows", type=int, default=100_000)
    parser.add_argument("--writer-idle", type=float, default=8.0, help="seconds of idle writer latency")
    parser.add_argument(
        "--models",
        default="customer,person",
        help="comma-separated bench models to run the contenders on: customer (two encrypted fields; "
        "also the workers, version-column index, census and concurrent-writer steps), person (the "
        "real-shaped model)",
    )
    parser.add_argument(
        "--fillfactor",
        default="100,90,80",
        help="comma-separated fillfactors of the experiment on the real-shaped model (PostgreSQL only; "
        "empty: skip it)",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    from bench.shapes import SHAPES

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or any(m not in SHAPES for m in models):
        parser.error(f"--models: a comma-separated list of {', '.join(SHAPES)}")
    try:
        fillfactors = [int(f) for f in args.fillfactor.split(",") if f.strip()]
    except ValueError:
        parser.error("--fillfactor: comma-separated integers between 10 and 100")
    if any(not 10 <= f <= 100 for f in fillfactors):
        parser.error("--fillfactor: comma-separated integers between 10 and 100")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stop the servers
    ctx = Ctx()
    ctx.rows, ctx.runs, ctx.writer_idle = args.rows, args.runs, args.writer_idle
    ctx.naive_rows = min(args.naive_rows, max(100, args.rows // 5))
    ctx.read_rows = min(args.read_rows, args.rows)
    ctx.models = [m for m in SHAPES if m in models]
    ctx.fillfactors = fillfactors if databases.BY_NAME[args.database].has_fillfactor else []
    started = time.monotonic()

    with databases.BY_NAME[args.database].start() as db, servers.openbao_dev_server() as bao:
        bench_env = {
            "BENCH_DATABASE_URL": db.url,
            "BENCH_VAULT_ADDR": bao.addr,
            "BENCH_VAULT_TOKEN": bao.token,
            "DJANGO_SETTINGS_MODULE": "bench.settings",
        }
        os.environ.update(bench_env)
        ctx.env, ctx.db = dict(os.environ), db
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        db.tune()
        call_command("migrate", verbosity=0)
        from keyrotation import lifecycle

        lifecycle.init(actor="bench")
        log(
            f"loading {ctx.rows:,} rows per encrypted table ({', '.join(ctx.models)}), twins of {ctx.read_rows:,} ({db.name})"
        )
        t = time.perf_counter()
        tables = load_all(ctx)
        log(f"loaded in {time.perf_counter() - t:.1f}s")
        db.prepare_tables(tables)
        warmed = db.warm_up([t for t in tables if t not in ("bench_customer_plain", "bench_customer_fernet")])
        if warmed:
            log(f"warm-up pass: {warmed}")
        db.settle(*tables)
        info = machine(ctx)
        baseline = child(ctx, "noop")[1]["maxrss_kb"]

        reads = [read_pass(ctx, rep + 1) for rep in range(ctx.runs)]
        profile = []
        ctx.profile_rows = min(ctx.read_rows, 50_000)
        if "customer" in ctx.models and read_ratio(reads, "customer", "enc", "binary") > READ_TARGET_BINARY:
            log(f"encrypted read target missed: cProfile of one {ctx.profile_rows:,}-row read")
            profile = read_profile(SHAPES["customer"].model(), ctx.profile_rows)
        runs = [repetition(ctx, rep + 1) for rep in range(ctx.runs)]
        from bench import fillfactor

        fill = (
            fillfactor.run(ctx, Meter, child, rotate, log)
            if ctx.fillfactors and "person" in ctx.models
            else []
        )
        text = report(ctx, runs, reads, baseline, info, profile, fill)
        connection.close()

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = f"{ctx.rows // 1_000_000}M" if ctx.rows % 1_000_000 == 0 else f"{ctx.rows // 1000}k"
    path = out_dir / f"{size}-{ctx.db.slug}-{dt.date.today().isoformat()}.md"
    path.write_text(text)
    print(text)
    log(
        f"written {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} in {time.monotonic() - started:.0f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
