"""outbox-relay benchmarks: every figure beside its baseline, measured in the same run on the same data.

    .venv/bin/python bench/run.py            # full run (make bench), writes bench/RESULTS.md
    .venv/bin/python bench/run.py --quick    # small smoke run (make bench QUICK=1, tests/test_bench.py)

Starts its own throwaway PostgreSQL (tests/pgharness.py, as the tests do) and works in a temporary
directory that it removes afterwards. Prints machine info, then one table. Exits non-zero only
when a benchmark could not run; a MISS is a finding, not an error.
"""

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
import traceback

import common
from common import Line

FULL = dict(put=2000, put_rounds=3, json=1000, many=20_000, many_rounds=2, web_seconds=10,
            web_rated_seconds=15, relay=100_000, old_way=1000, e2e_seconds=30, memory=1_000_000, hook=2000,
            mysql=100_000, link=20_000, link_old={0: 300, 1: 200, 5: 80, 20: 25}, chart_puts=2000,
            spool_large=200_000, spool_small=50_000, events=20_000, events_rounds=5, archive_export=1_000_000,
            archive_read=2_000_000, archive_retention=1_000_000, archive_load=300_000, archive_convert=300_000)
QUICK = dict(put=200, put_rounds=1, json=100, many=2000, many_rounds=1, web_seconds=2,
             web_rated_seconds=2, relay=3000, old_way=50, e2e_seconds=3, memory=20_000, hook=100, mysql=3000,
             link=1000, link_old={0: 10, 1: 10, 5: 5, 20: 3}, chart_puts=200, spool_large=3000, spool_small=1000,
             events=1000, events_rounds=2, archive_export=5000, archive_read=10_000, archive_retention=5000,
             archive_load=3000, archive_convert=2000)
SECTIONS = ("ingest", "webhook", "relay", "events", "link", "e2e", "memory", "spool", "hook", "mysql", "partitions")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def web_ready():
    """The webhook app is written alongside these benchmarks; say so instead of failing without it."""
    try:
        from outbox_relay.service import Service  # noqa: F401
        from outbox_relay.service.http import create_app  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "not ready"
        return f"{type(e).__name__}: {e}"
    return None


def run_sections(args, size, workdir, pg):
    import events
    import hook
    import ingest
    import latency
    import link
    import memory
    import relay
    import spool
    import webhook

    def section(name, what, fn, target="—"):
        if name not in args.only:
            return []
        log(f"{name}: {what}")
        started = time.perf_counter()
        try:
            lines = fn()
        except Exception as e:  # noqa: BLE001 - reported in the table and by the exit code
            traceback.print_exc()
            errors.append(name)
            return [Line(f"{name}: {what}", f"n/a (error: {type(e).__name__}: {str(e)[:120]})",
                         target=target)]
        log(f"{name}: done in {time.perf_counter() - started:.1f} s")
        return lines

    errors = []
    lines = []
    lines += section("ingest", f"Outbox.put x{size['put']:,} vs raw sqlite3 / persist-queue / JSON file",
                     lambda: ingest.bench_put(workdir, size["put"], size["put_rounds"], size["json"]))
    lines += section("ingest", f"put_many x{size['many']:,} vs executemany",
                     lambda: ingest.bench_put_many(workdir, size["many"], size["many_rounds"]))
    not_ready = web_ready()
    if not_ready and "webhook" in args.only:
        log(f"webhook: skipped, outbox_relay.web not usable ({not_ready})")
        lines.append(common.na_line("webhook: POST, 16 conns vs bare WSGI + sqlite3", "web not ready",
                                    "≥ 1×"))
        lines.append(common.na_line("webhook: p99 at 500 req/s", "web not ready", "≤ 50 ms"))
    else:
        lines += section("webhook", "POST via wrk and a fixed-rate load generator",
                         lambda: webhook.bench_webhook(workdir, size["web_seconds"],
                                                       size["web_rated_seconds"]))
    lines += section("relay", f"drain {size['relay']:,} into PostgreSQL vs COPY / old way",
                     lambda: relay.bench_relay(workdir, common.fresh_database(pg, "bench_relay"),
                                               size["relay"], size["old_way"]))
    lines += section("events", f"drain {size['events']:,} with 30 % events vs messages only",
                     lambda: events.bench_events(workdir, pg, size["events"], size["events_rounds"]))
    rates = {}

    def link_lines():
        lines, found = link.bench_link(workdir, size["link"], size["link_old"])
        rates.update(found)
        return lines
    lines += section("link", f"drain {size['link']:,} and the old way over 0/1/5/20 ms RTT with TLS", link_lines)
    lines += section("e2e", f"put -> visible, 200 msgs/s for {size['e2e_seconds']} s",
                     lambda: latency.bench_e2e(workdir, common.fresh_database(pg, "bench_e2e"), 200,
                                               size["e2e_seconds"]))
    lines += section("memory", f"peak RSS of `outbox-relay sync` over {size['memory']:,} rows",
                     lambda: memory.bench_memory(workdir, common.fresh_database(pg, "bench_memory"),
                                                 size["memory"]))
    lines += section("spool", f"spool ingestion and status, {size['spool_large']:,} vs {size['spool_small']:,} waiting",
                     lambda: spool.bench_spool(workdir, size["spool_large"], size["spool_small"]))
    lines += section("hook", f"OpenClaw hook under Node, {size['hook']:,} events stopped / running",
                     lambda: hook.bench_hook(workdir, common.fresh_database(pg, "bench_hook"), size["hook"]))
    lines += section("mysql", f"drain {size['mysql']:,} into MariaDB vs LOAD DATA",
                     lambda: bench_mysql(workdir, size["mysql"]))
    lines += section("partitions", f"export of {size['archive_export']:,} rows, search/stats on"
                     f" {size['archive_read']:,} partitioned vs plain, retention of {size['archive_retention']:,}",
                     lambda: bench_archive(workdir, pg, size))
    if rates and not args.quick:
        import chart
        log("chart: put latency percentiles, then bench/chart.png")
        chart.draw(os.path.join(common.BENCH, "chart.png"), rates, chart.put_latencies(workdir, size["chart_puts"]))
    return lines, errors


def bench_archive(workdir, pg, size):
    import partitions
    fresh = common.fresh_database
    return (partitions.bench_export(fresh(pg, "bench_export"), size["archive_export"])
            + partitions.bench_read(fresh(pg, "bench_plain"), fresh(pg, "bench_partitioned"), size["archive_read"])
            + partitions.bench_retention(fresh(pg, "bench_delete"), fresh(pg, "bench_retention"),
                                      size["archive_retention"])
            + partitions.bench_load(workdir, fresh(pg, "bench_load"), size["archive_load"])
            + partitions.bench_convert(workdir, fresh(pg, "bench_convert"), size["archive_convert"]))


def bench_mysql(workdir, n):
    """On a throwaway mariadbd of its own (tests/mariaharness.py), stopped afterwards."""
    import mysql_relay
    log("starting a throwaway MariaDB (tests/mariaharness.py)")
    server = mysql_relay.start_maria()
    try:
        return mysql_relay.bench_mysql_relay(workdir, mysql_relay.fresh_database(server, "bench_relay"), n)
    finally:
        server.destroy()


def notes(lines):
    seen, out = [], []
    for ln in lines:
        if ln.note and ln.note not in seen:
            seen.append(ln.note)
            out.append(f"- {ln.what}: {ln.note}")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every line")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})")
    parser.add_argument("--size", action="append", default=[], metavar="NAME=N",
                        help="one size of the run set to N (e.g. archive_read=10000000: the partitioned vs plain"
                             " reads at 10 M rows); repeatable")
    parser.add_argument("--workdir", help="where outboxes and files go (default: a new temporary directory)")
    parser.add_argument("--results", default=os.path.join(common.BENCH, "RESULTS.md"),
                        help="where a full run writes its table (default bench/RESULTS.md)")
    args = parser.parse_args(argv)
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = args.only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    size = dict(QUICK if args.quick else FULL)
    for item in args.size:
        name, _, value = item.partition("=")
        if name not in size or not value.isdigit():
            parser.error(f"--size {item!r}: NAME=N with NAME one of {', '.join(sorted(size))}")
        size[name] = int(value)
    started = time.perf_counter()
    workdir = args.workdir or tempfile.mkdtemp(prefix="outbox-relay-bench-")
    os.makedirs(workdir, exist_ok=True)
    pg = None
    try:
        log("starting a throwaway PostgreSQL (tests/pgharness.py)")
        pg = common.start_pg()
        pg_version = pg.execute("SHOW server_version")[0][0]
        info = common.machine_info(pg_version)
        info.append("PostgreSQL settings: tests/pgharness.py FAST_SETTINGS (fsync=off, synchronous_commit=on,"
                    " shared_buffers=32MB) - the same server for every PostgreSQL line")
        info.append(f"mode: {'quick (smoke sizes: figures are not meaningful)' if args.quick else 'full'}; "
                    f"work directory filesystem: {common.fs_type(workdir)}")
        print("\n".join(info), flush=True)
        lines, errors = run_sections(args, size, workdir, pg)
    finally:
        if pg is not None:
            pg.destroy()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - started
    table = common.render(lines)
    print()
    print(table)
    print()
    print("\n".join(notes(lines)))
    print(f"\ntotal time {elapsed:.0f} s")
    if not args.quick and args.only == set(SECTIONS) and not errors:
        write_results(args.results, info, table, notes(lines), elapsed)
        log(f"wrote {args.results}")
    if errors:
        log(f"these sections could not run: {', '.join(errors)}")
        return 1
    return 0


def write_results(path, info, table, note_lines, elapsed):
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = [
        "# Benchmark results",
        "",
        f"Last full run: {date}, {elapsed / 60:.1f} minutes. Reproduce with `make bench`"
        " (or `.venv/bin/python bench/run.py`).",
        "",
        "Machine:",
        "",
        *[f"- {line}" for line in info],
        "",
        table,
        "",
        "What each baseline is:",
        "",
        *note_lines,
        "",
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(text))


if __name__ == "__main__":
    sys.exit(main())
