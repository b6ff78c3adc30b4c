"""The archive at scale (issue 20): search and stats as the table grows, each figure beside its baseline.

    .venv/bin/python bench/archive.py                  # make bench-archive: 100 k, 1 M and 10 M rows
    .venv/bin/python bench/archive.py --quick          # make bench-archive QUICK=1: 100 k rows
    .venv/bin/python bench/archive.py --sizes 100000,1000000

On a throwaway PostgreSQL (tests/pgharness.py), for each size: a synthetic Chinese chat corpus made
inside the server (tests/archivecorpus.py), then the search indexes and the rollup built as init-db
builds them on an existing archive (CONCURRENTLY). Measured per size:
- `search` (archive.search.search_target, --limit 50, newest first) p50/p95 for keywords of 1, 2, 3 and 6
  characters (each length: common and rare words), vs the same table searched as the release before
  did (ILIKE alone: pg_trgm where it can, else a scan);
- `stats --days 30` from the rollup vs counted by scanning;
- sizes on disk of the table, each index and the rollup.
Once: the relay's drain rate into a table with every search index and the rollup's triggers vs a
table with the release's indexes only. --mariadb N,…: the same search and stats on a throwaway MariaDB
(no substring index there: what a user gets). Writes bench/ARCHIVE.md and bench/archive.png (latency
vs rows). On this 2-core machine the whole run takes about 10 minutes: 100 k rows a few seconds, 1 M
about a minute, 10 M 2.5 minutes to make and 6 to index (2026-12-05).
"""

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

import common
from common import Line, limit_line, percentile, ratio_line

from outbox_relay.archive.search import search_target
from outbox_relay.archive.stats import target_stats
from outbox_relay.outbox import Outbox
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target

archivecorpus = common.harness("archivecorpus")

# Keywords by length: a common one and rarer ones (the rarer, the more a scan must read to fill 50).
KEYWORDS = {1: ["测", "罕", "鑫"], 2: ["会议", "罕见", "回滚"], 3: ["辛苦了", "罕见词", "服务器"],
            6: ["代码评审通过", "罕见词语鑫", "测试环境上午"]}
REPEAT = 7  # runs of each keyword (the first warms the cache and is not counted)
CHUNK = 500_000  # rows per INSERT … SELECT


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(pg, rows):
    url = common.fresh_database(pg, f"bench_archive_{rows}")
    target = open_target(url, statement_timeout=3600)
    target.init_db(read_side=False)
    started = time.perf_counter()
    for first in range(1, rows + 1, CHUNK):
        target.query(archivecorpus.fill_sql("postgresql", first, min(rows, first + CHUNK - 1)))
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    report = target.create_read_side(trigram=True)
    indexed = time.perf_counter() - started
    target.query("ANALYZE feishu_messages")
    log(f"{rows:,} rows: made in {loaded:.0f} s, indexes and rollup in {indexed:.0f} s ({report['rollup']})")
    return url, target, loaded, indexed


def timed(fn, repeat=REPEAT):
    times = []
    for i in range(repeat):
        started = time.perf_counter()
        fn()
        if i:
            times.append((time.perf_counter() - started) * 1000)
    return times


def old_search(target, keyword, limit=50):
    """The release before: ILIKE alone (its pg_trgm index where a trigram exists, else a scan)."""
    condition, pattern = target.contains("text", keyword)
    return target.query(f"SELECT message_id, text, created_at FROM {target.quoted} WHERE {condition}"
                        " ORDER BY created_at DESC LIMIT %s", (pattern, limit))


def search_figures(target):
    out = {}
    for length, words in KEYWORDS.items():
        ours, scan = [], []
        for word in words:
            got = [r["message_id"] for r in search_target(target, word, limit=50)]
            want = [r[0] for r in old_search(target, word)]
            assert got == want, (word, "the index must not change the answer")
            ours += timed(lambda w=word: search_target(target, w, limit=50))
            scan += timed(lambda w=word: old_search(target, w), repeat=3)
        out[length] = {"p50": percentile(ours, 50), "p95": percentile(ours, 95),
                       "scan_p50": percentile(scan, 50), "scan_p95": percentile(scan, 95)}
        log(f"  {length}-char: ours p50 {out[length]['p50']:.1f} p95 {out[length]['p95']:.1f} ms;"
            f" scan p50 {out[length]['scan_p50']:.1f} p95 {out[length]['scan_p95']:.1f} ms")
    return out


def stats_figures(target):
    now = archivecorpus.EPOCH_S  # the corpus's newest day: 30 days of it are in the window
    ours = timed(lambda: target_stats(target, days=30, now=now))
    original = type(target).rollup_ready
    type(target).rollup_ready = lambda self, tx: False
    try:
        scan = timed(lambda: target_stats(target, days=30, now=now), repeat=2)
    finally:
        type(target).rollup_ready = original
    return {"p50": percentile(ours, 50), "scan": percentile(scan, 50)}


def sizes(target):
    rows = target.query(
        "SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c WHERE c.relname LIKE 'feishu_message%%'"
        " AND c.relkind IN ('r', 'i') ORDER BY 2 DESC")
    return {name: size for name, size in rows}


def drain_rate(pg, workdir, n, read_side):
    """Messages per second the relay drains from an outbox of n Chinese chat messages."""
    url = common.fresh_database(pg, f"bench_archive_drain_{int(read_side)}")
    target = open_target(url)
    target.init_db(trigram=read_side, read_side=read_side)
    path = os.path.join(workdir, f"drain-{int(read_side)}.db")
    rng = random.Random(20)
    with Outbox(path) as outbox:
        for start in range(0, n, 5000):
            outbox.put_many([{"message_id": f"om_{i}", "chat_id": f"oc_{i % 50}", "sender_id": f"ou_{i % 300}",
                              "msg_type": "text", "create_time": str(1_767_225_600_000 - i * 7000),
                              "content": '{"text": "%s"}' % "".join(rng.choice(archivecorpus.WORDS[:60])
                                                                    for _ in range(3 + i % 12))}
                             for i in range(start, min(n, start + 5000))])
        started = time.perf_counter()
        totals = Relay(outbox, target, batch_size=500).drain()
        rate = totals["delivered"] / (time.perf_counter() - started)
    target.close()
    return rate


def chart(path, figures):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sizes_ = sorted(figures)
    for length in KEYWORDS:
        line = ax.plot(sizes_, [figures[s]["search"][length]["p95"] for s in sizes_], "o-",
                       label=f"{length}-char, n-gram index (p95)")
        ax.plot(sizes_, [figures[s]["search"][length]["scan_p95"] for s in sizes_], "s--",
                color=line[0].get_color(), alpha=0.6, label=f"{length}-char, ILIKE as before (p95)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("messages in the archive")
    ax.set_ylabel("search --limit 50, ms (log)")
    ax.set_title("Search latency against archive size (PostgreSQL, Chinese chat corpus)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def lines_for(figures, drain, quick):
    sizes_ = sorted(figures)
    small, large = sizes_[0], sizes_[-1]
    out = []
    for length in KEYWORDS:
        f = figures[large]["search"][length]
        out.append(Line(f"search {length}-char --limit 50 at {large:,} rows: p50 / p95 ms",
                        f"{f['p50']:.1f} / {f['p95']:.1f}",
                        f"{f['scan_p50']:.1f} / {f['scan_p95']:.1f} (ILIKE as before)",
                        f["scan_p95"] / f["p95"] if f["p95"] else None, "—", None))
    two = figures[large]["search"][2]["p95"]
    out.append(limit_line(f"search 2-char p95 at {large:,} rows", two, "ms", 50, fmt="{:.1f}",
                          note="the issue's goal is at 10 M rows" if large < 10_000_000 else ""))
    if large != small:
        for length in KEYWORDS:
            ratio = figures[large]["search"][length]["p95"] / figures[small]["search"][length]["p95"]
            out.append(limit_line(f"search {length}-char p95, {large:,} vs {small:,} rows", ratio, "×", 3,
                                  fmt="{:.2f}"))
        ratio = figures[large]["stats"]["p50"] / figures[small]["stats"]["p50"]
        out.append(limit_line(f"stats --days 30, {large:,} vs {small:,} rows", ratio, "×", 2, fmt="{:.2f}"))
    for size in sizes_:
        s = figures[size]["stats"]
        out.append(Line(f"stats --days 30 at {size:,} rows, ms", f"{s['p50']:.1f}", f"{s['scan']:.1f} (by scanning)",
                        s["scan"] / s["p50"] if s["p50"] else None))
    out.append(ratio_line("relay drain, every search index + rollup vs the release's indexes", drain[True],
                          drain[False], "msg/s", 0.8))
    sz = figures[large]["sizes"]
    table = sz.get("feishu_messages", 0)
    for name, size in sz.items():
        out.append(Line(f"on disk at {large:,} rows: {name}", f"{size / 2**20:,.1f} MiB",
                        f"{size / table:.2f}× the table" if table and name != "feishu_messages" else "—"))
    return out


def maria_figures(sizes_):
    """MariaDB (no substring index: what a user gets there): search p50/p95 by keyword length and stats,
    on a throwaway mariadbd (tests/mariaharness.py)."""
    import mysql_relay
    # Its temporary files in a directory of its own: on a shared machine another run's sweep of /tmp
    # removed them mid-query (MySQL error 6).
    tmpdir = tempfile.mkdtemp(prefix="outbox-relay-bench-maria-")
    os.chmod(tmpdir, 0o777)  # mariadbd runs as its own user
    server = common.harness("mariaharness").MariaServer.create(tmpdir=tmpdir)
    out = {}
    try:
        for rows in sizes_:
            url = mysql_relay.fresh_database(server, f"bench_archive_{rows}")
            target = open_target(url, statement_timeout=3600)
            try:
                target.init_db(read_side=False)
                for first in range(1, rows + 1, 100_000):
                    target.query(archivecorpus.fill_sql("mysql", first, min(rows, first + 99_999)))
                target.create_read_side()
                target.query("ANALYZE TABLE feishu_messages")
                out[rows] = {"search": {}, "stats": stats_figures(target)}
                for length, words in KEYWORDS.items():
                    times = [ms for w in words
                             for ms in timed(lambda w=w, t=target: search_target(t, w, limit=50), repeat=3)]
                    out[rows]["search"][length] = {"p50": percentile(times, 50), "p95": percentile(times, 95)}
                log(f"MariaDB {rows:,}: {out[rows]}")
            finally:
                target.close()
    finally:
        server.destroy()
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


def maria_lines(figures):
    out = []
    for rows, f in sorted(figures.items()):
        for length in KEYWORDS:
            s = f["search"][length]
            out.append(Line(f"MariaDB search {length}-char --limit 50 at {rows:,} rows: p50 / p95 ms",
                            f"{s['p50']:.1f} / {s['p95']:.1f}", "(no index: this is the scan)"))
        out.append(Line(f"MariaDB stats --days 30 at {rows:,} rows, ms", f"{f['stats']['p50']:.1f}",
                        f"{f['stats']['scan']:.1f} (by scanning)",
                        f["stats"]["scan"] / f["stats"]["p50"] if f["stats"]["p50"] else None))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 k rows only (make bench-archive QUICK=1)")
    parser.add_argument("--sizes", help="comma-separated row counts (default 100000,1000000,10000000)")
    parser.add_argument("--drain", type=int, help="messages the drain comparison relays (default 20,000 / 100,000)")
    parser.add_argument("--results", default=os.path.join(common.BENCH, "ARCHIVE.md"))
    parser.add_argument("--mariadb", help="comma-separated row counts to measure on MariaDB too (e.g. 100000)")
    args = parser.parse_args(argv)
    sizes_ = [int(s) for s in args.sizes.split(",") if s.strip() and s != "0"] if args.sizes else (
        [100_000] if args.quick else [100_000, 1_000_000, 10_000_000])
    drain_n = args.drain or (20_000 if args.quick else 100_000)
    started = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="outbox-relay-bench-archive-")
    pg = common.start_pg()
    figures, drain = {}, {}
    try:
        info = common.machine_info(pg.execute("SHOW server_version")[0][0])
        for size in sizes_:
            url, target, loaded, indexed = build(pg, size)
            try:
                figures[size] = {"search": search_figures(target), "stats": stats_figures(target),
                                 "sizes": sizes(target), "loaded_s": loaded, "indexed_s": indexed}
            finally:
                target.close()
            pg.drop_database(f"bench_archive_{size}", force=True)
        for read_side in (False, True, False, True) if sizes_ else ():  # interleaved, best of two each
            rate = drain_rate(pg, workdir, drain_n, read_side)
            drain[read_side] = max(drain.get(read_side, 0), rate)
            log(f"drain {'with' if read_side else 'without'} search indexes and rollup: {rate:,.0f} msg/s")
    finally:
        pg.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - started
    lines = lines_for(figures, drain, args.quick) if figures else []
    if lines:
        print(common.render(lines), flush=True)
    if args.mariadb:
        lines += maria_lines(maria_figures([int(n) for n in args.mariadb.split(",")]))
    table = common.render(lines)
    print("\n".join(info) + "\n\n" + table + f"\n\ntotal time {elapsed:.0f} s")
    builds = "; ".join(f"{s:,} rows made in {f['loaded_s']:.0f} s, indexed in {f['indexed_s']:.0f} s"
                       for s, f in sorted(figures.items()))
    with open(args.results, "w", encoding="utf-8") as out:
        out.write(f"# The archive at scale (`make bench-archive{' QUICK=1' if args.quick else ''}`)\n\n"
                  + "\n".join(f"- {line}" for line in info) + f"\n- {builds}\n- total time {elapsed / 60:.1f} min\n\n"
                  + table + "\n")
    if len(figures) > 1 and not args.results.startswith("/tmp"):
        chart(os.path.join(common.BENCH, "archive.png"), figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
