"""Issue 9, items 9-10: what the service says must point the right way, and nothing is accepted
silently: why `sync` stopped, waitress's own 413 in our JSON, a duplicate with other words, a
search list cut at --limit."""

import json
import logging
import socket

from outbox_relay.intake.webhook import WEBHOOK_PATH
from outbox_relay.outbox import Outbox

from cliutil import run_exe
from factories import flat
from serviceutil import post, running_service, scrape


def test_sync_says_it_timed_out(tmp_path):
    path = str(tmp_path / "outbox.db")
    with Outbox(path) as box:
        box.put(flat(1))
    result = run_exe("sync", "--outbox", path, "--target", "postgresql://u@127.0.0.1:1/x",
                     "--connect-timeout", 1, "--timeout", 1)
    assert result.returncode == 1
    assert "1 message(s) still waiting in the outbox (timed out after 1 s before the drain finished)" in result.stderr


def test_waitress_refusing_a_big_body_answers_in_our_json(tmp_path):
    with running_service(tmp_path, max_body=4096) as s:
        port = int(s.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST " + WEBHOOK_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
            raw = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413 ") and b"application/json" in head.lower()
        assert json.loads(body) == {"ok": False, "error": "body is over the limit of 4096 bytes"}


def test_a_duplicate_with_other_content_is_logged_and_counted(tmp_path, caplog):
    with running_service(tmp_path) as s, caplog.at_level(logging.WARNING, logger="outbox_relay"):
        assert post(s.url, flat(1, text="first words")).status == 200
        again = post(s.url, flat(1, text="first words"))
        changed = post(s.url, flat(1, text="other words"))
        assert again.json()["duplicate"] and changed.json()["duplicate"]
        samples = scrape(s.url)
        key = ("outbox_relay_messages_received_total", (("outcome", "duplicate_changed"), ("source", "api")))
        assert samples[key] == 1
    warnings = [r.getMessage() for r in caplog.records if "arrived again with different content" in r.getMessage()]
    assert len(warnings) == 1 and "om_000001" in warnings[0]


def test_search_says_when_the_list_was_cut(tmp_path):
    path = str(tmp_path / "outbox.db")
    with Outbox(path) as box:
        box.put_many([flat(i, text=f"needle {i}") for i in range(5)])
    common = ["--outbox", path, "--target", f"sqlite:///{tmp_path / 'archive.db'}"]
    for limit, cut in ((3, True), (5, False)):
        result = json.loads(run_exe("search", "needle", "--json", "--limit", limit, *common).stdout)
        assert (result["count"], result["truncated"]) == (limit, cut)
    human = run_exe("search", "needle", "--limit", 3, *common).stdout
    assert "3 message(s), the newest 3: more match (raise --limit)" in human
