"""The webhook baseline: a bare WSGI app on the same server (waitress, same thread count) that
parses the JSON body and does one sqlite3 INSERT + COMMIT per request, with the outbox's own
table and pragmas (WAL, synchronous=FULL). No validation, no normalization, no metrics.

Usage: python bench/bare_server.py DB_PATH PORT THREADS
"""

import json
import sqlite3
import sys
import threading
import time

from waitress.server import create_server

from outbox_relay.schema.outbox import OUTBOX_MIGRATIONS

INSERT = ("INSERT INTO outbox (message_id, chat_id, sender_id, msg_type, created_at, received_at,"
          " updated_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def make_app(path):
    local = threading.local()

    def conn():
        c = getattr(local, "conn", None)
        if c is None:
            c = local.conn = sqlite3.connect(path, isolation_level=None, timeout=30)
            c.execute("PRAGMA synchronous = FULL")
        return c

    def app(environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        ev = json.loads(body)
        msg = ev["event"]["message"]
        now = time.time()
        c = conn()
        c.execute("BEGIN IMMEDIATE")
        c.execute(INSERT, (msg["message_id"], msg.get("chat_id"),
                           ev["event"]["sender"]["sender_id"].get("open_id"), msg.get("message_type"),
                           int(msg["create_time"]), now, now, body.decode()))
        c.execute("COMMIT")
        out = json.dumps({"ok": True, "message_id": msg["message_id"]}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
        return [out]

    return app


def main():
    path, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA auto_vacuum = INCREMENTAL")
    setup.execute("PRAGMA journal_mode = WAL")
    for sql in OUTBOX_MIGRATIONS[0]:
        setup.execute(sql)
    setup.close()
    server = create_server(make_app(path), host="127.0.0.1", port=port, threads=threads,
                           channel_timeout=30)
    print("ready", flush=True)
    server.run()


if __name__ == "__main__":
    main()
