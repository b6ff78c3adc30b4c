"""The relay over a long link with TLS: the same drain, and the old way, through a proxy that adds a
round-trip time (bench/delayproxy.py, a process of its own) to a throwaway PostgreSQL cluster that
speaks TLS with a self-signed certificate (sslmode=require), at 0, 1, 5 and 20 ms.

Batching should hide the distance: the drain at 5 ms keeps most of its rate at 0 ms, while the old
way (connect, TLS handshake, INSERT, COMMIT per message) pays several round trips per message.
"""

import datetime
import os
import subprocess
import sys
import time

import backlog
import relay as relay_bench
from common import BENCH, free_port, harness, ratio_line

from outbox_relay.outbox import Outbox
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target

RTTS_MS = (0, 1, 5, 20)


def start_tls_pg():
    """A cluster from tests/pgharness.py with ssl=on and a self-signed certificate."""
    pg = harness("pgharness").PgCluster()
    try:
        pg.init()
        write_certificate(pg.datadir, pg._runas)
        pg.start(ssl="on", ssl_cert_file="server.crt", ssl_key_file="server.key")
    except BaseException:
        pg.destroy()
        raise
    return pg


def write_certificate(directory, owner):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    files = {"server.crt": cert.public_bytes(serialization.Encoding.PEM),
             "server.key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())}
    for name, data in files.items():
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o600)
        if owner is not None:
            os.chown(path, owner[0], owner[1])


class Link:
    """A delay proxy process in front of the cluster: `url(db)` goes through it, with TLS."""

    def __init__(self, pg, rtt_ms):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, os.path.join(BENCH, "delayproxy.py"), str(self.port),
                                      str(pg.port), str(rtt_ms / 2)], stdout=subprocess.PIPE)
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the delay proxy did not start")
        self.pg = pg

    def url(self, db):
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}?sslmode=require"

    def close(self):
        self.proc.kill()
        self.proc.wait(10)


def drain_over(link, db, path, n):
    """Our relay draining an outbox of n rows into `db` through the link -> rows/s."""
    target = open_target(link.url(db), pool_size=2)
    target.ensure_schema()
    with Outbox(path) as box:
        start = time.perf_counter()
        totals = Relay(box, target).drain()
        seconds = time.perf_counter() - start
    target.close()
    if totals["new"] != n:
        raise RuntimeError(f"drained {totals['new']} of {n}")
    return n / seconds


def bench_link(workdir, n, old_counts):
    """-> (lines, {rtt: (ours rows/s, old way msgs/s)}) for the chart."""
    pg = start_tls_pg()
    rates = {}
    try:
        for rtt in RTTS_MS:
            db = f"link_{rtt}"
            pg.create_database(db)
            path = os.path.join(workdir, f"link-{rtt}.db")
            backlog.fill(path, n, f"link{rtt}")
            rows = relay_bench.target_rows(path, open_target(pg.url(db)), limit=old_counts[rtt])
            link = Link(pg, rtt)
            try:
                ours = drain_over(link, db, path, n)
                old_db = f"old_{rtt}"
                pg.create_database(old_db)
                relay_bench.make_table(pg.url(old_db), "feishu_messages")
                old = relay_bench.old_way(link.url(old_db), rows, table="feishu_messages")
            finally:
                link.close()
            rates[rtt] = (ours, old)
    finally:
        pg.destroy()
    setup = (f"{n:,} rows drained by Relay(batch_size=500) through bench/delayproxy.py (a separate process) to"
             " a throwaway cluster with ssl=on and a self-signed certificate, sslmode=require")
    lines = [
        ratio_line("relay over a 5 ms RTT link with TLS vs the old way on it", rates[5][0], rates[5][1], "msgs/s",
                   100, note=f"{setup}; old way: connect (TCP, TLS, startup) + INSERT + COMMIT + close per"
                             f" message, {old_counts[5]} messages over the same link"),
        ratio_line("relay over a 5 ms RTT link vs the same at 0 ms", rates[5][0], rates[0][0], "rows/s", 0.8,
                   note=f"both through the proxy with TLS; at 1 ms {rates[1][0]:,.0f}, at 20 ms"
                        f" {rates[20][0]:,.0f} rows/s (old way: " + ", ".join(
                            f"{rtt} ms {rates[rtt][1]:,.1f}/s" for rtt in RTTS_MS) + ")"),
    ]
    return lines, rates
