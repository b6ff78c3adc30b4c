"""The webhook, /healthz and /metrics through a real waitress server on a local port.

Each test runs the Service (relay thread + HTTP) in this process on a port the kernel picks
(serviceutil.running_service); test_service.py has the tests that need a separate process.
"""

import json
import os
import socket
import sqlite3
import time
import uuid

import falcon.testing
import pytest

from outbox_relay.config import Config
from outbox_relay.errors import OutboxUnavailable
from outbox_relay.intake import envelope as feishu
from outbox_relay.intake.webhook import WEBHOOK_PATH
from outbox_relay.outbox import Outbox
from outbox_relay.outbox.sqlitefile import SqliteFile
from outbox_relay.service.http import create_app

from factories import (
    FEISHU_BODY,
    FEISHU_ENCRYPTED,
    FEISHU_KEY,
    FEISHU_NONCE,
    FEISHU_SIGNATURE,
    FEISHU_TIMESTAMP,
    FEISHU_TOKEN,
    flat_message,
    sample,
    sample_bytes,
)
from serverproc import wait_until
from serviceutil import health, metric, outbox_ids, post, received, request, running_service, scrape, write_lock


def stored(running, message_id):
    """The Message stored for message_id (as a dict), or None."""
    row = outbox_ids(running.cfg.outbox).get(message_id)
    if row is None:
        return None
    conn = sqlite3.connect(running.cfg.outbox)
    try:
        (payload,) = conn.execute("SELECT payload FROM outbox WHERE message_id = ?", (message_id,)).fetchone()
    finally:
        conn.close()
    return json.loads(payload)


def signed(body, key=FEISHU_KEY, timestamp=None, nonce=None):
    """Headers Feishu would send with `body` (bytes), signed now with a nonce of its own."""
    timestamp = str(int(time.time())) if timestamp is None else timestamp
    nonce = uuid.uuid4().hex[:16] if nonce is None else nonce
    return {feishu.HEADER_TIMESTAMP: timestamp, feishu.HEADER_NONCE: nonce,
            feishu.HEADER_SIGNATURE: feishu.signature(timestamp, nonce, key, body)}


def encrypted(event, key=FEISHU_KEY):
    return json.dumps({"encrypt": feishu.encrypt(json.dumps(event, ensure_ascii=False), key)}).encode()


def raw_http(port, data, read_timeout=5.0):
    """Send bytes as they are (no client library to tidy them up); return the raw response head."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(data)
        out = b""
        while b"\r\n\r\n" not in out:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def status_of(raw):
    return int(raw.split(b" ", 2)[1])


def port_of(running):
    return int(running.url.rsplit(":", 1)[1])


# -- the samples ------------------------------------------------------------------------------------

EXPECTED = {
    "flat_message.json": ("om_flat_0001", "api", "测试消息"),
    "openclaw_message_received.json": ("om_openclaw_0001", "openclaw", "明天的会议改到下午三点"),
    "v1_text.json": ("om_36686ee62209da697d8775375d0c8e88", "feishu.v1", "@小助手 消息内容"),
    "v2_image.json": ("om_image_0001", "feishu.v2", "[image]"),
    "v2_post.json": ("om_post_0001", "feishu.v2", "周报\n第一行 超链接@Tom\n[image]\n[SMILE]\nfunc main() {}"),
    "v2_text.json": ("om_5ce6d572455d361153b7cb51da133945", "feishu.v2", "@Tom hello"),
}


def test_each_sample_is_stored_once_and_a_repeat_is_a_duplicate(tmp_path):
    with running_service(tmp_path) as s:
        for name, (message_id, source, text) in EXPECTED.items():
            r = post(s.url, sample_bytes(name))  # the file's exact bytes
            assert r.status == 200, (name, r)
            assert r.json() == {"ok": True, "message_id": message_id, "duplicate": False}
            m = stored(s, message_id)
            assert (m["source"], m["text"]) == (source, text), name
            assert m["raw"] == sample(name)
        for name, (message_id, _, _) in EXPECTED.items():
            r = post(s.url, sample_bytes(name))
            assert r.status == 200 and r.json() == {"ok": True, "message_id": message_id, "duplicate": True}
        assert sorted(outbox_ids(s.cfg.outbox)) == sorted(m for m, _, _ in EXPECTED.values())

        r = post(s.url, sample_bytes("url_verification.json"))
        assert r.status == 200 and r.json() == {"challenge": "ajls384kdjx98XX"}
        assert len(outbox_ids(s.cfg.outbox)) == len(EXPECTED)


# -- Feishu crypto and tokens ----------------------------------------------------------------------------

VECTOR_HEADERS = {feishu.HEADER_TIMESTAMP: FEISHU_TIMESTAMP, feishu.HEADER_NONCE: FEISHU_NONCE,
                  feishu.HEADER_SIGNATURE: FEISHU_SIGNATURE}


def test_feishu_vectors_and_tampering_through_the_server(tmp_path):
    assert feishu.decrypt(FEISHU_ENCRYPTED, FEISHU_KEY) == "hello world"
    expected = VECTOR_HEADERS[feishu.HEADER_SIGNATURE]
    assert feishu.signature(FEISHU_TIMESTAMP, FEISHU_NONCE, FEISHU_KEY, FEISHU_BODY) == expected
    # Feishu's vector was signed in 2020: a replay window that wide lets it through the server.
    with running_service(tmp_path, feishu_encrypt_key=FEISHU_KEY, feishu_replay_window=2 * 10**9) as s:
        # The vector's signature is accepted and its body decrypts, to "hello world": not an event.
        r = post(s.url, FEISHU_BODY, VECTOR_HEADERS)
        assert r.status == 400, r
        assert r.json()["error"] == "decrypted event is not valid JSON: Expecting value"
        # One byte changed after signing, a wrong signature, no signature: 401.
        tampered = FEISHU_BODY.replace(b"P37w", b"P38w")
        assert post(s.url, tampered, VECTOR_HEADERS).status == 401
        wrong = dict(VECTOR_HEADERS, **{feishu.HEADER_SIGNATURE: "0" * 64})
        assert post(s.url, FEISHU_BODY, wrong).status == 401
        latin1 = dict(VECTOR_HEADERS, **{feishu.HEADER_SIGNATURE: "\u00e9" * 64})
        assert post(s.url, FEISHU_BODY, latin1).status == 401

        # A real encrypted, signed event is stored.
        body = encrypted(sample("v2_text.json"))
        r = post(s.url, body, signed(body))
        assert r.status == 200 and r.json()["message_id"] == "om_5ce6d572455d361153b7cb51da133945"
        # Tampered / wrongly signed / unsigned encrypted events: 401, nothing stored.
        other = encrypted(sample("v2_image.json"))
        for headers, body_sent in ((signed(body), other),                 # someone else's signature
                                   (signed(other, key="wrong key"), other),
                                   ({}, other)):                          # Feishu always signs these
            r = post(s.url, body_sent, headers)
            assert r.status == 401 and r.json()["ok"] is False, r
        # Plain unsigned JSON is not a Feishu credential either.
        assert post(s.url, sample_bytes("v2_image.json")).status == 401
        assert "om_image_0001" not in outbox_ids(s.cfg.outbox)
        # url_verification arrives encrypted and unsigned (Feishu's design): decrypting proves it.
        r = post(s.url, encrypted(sample("url_verification.json")))
        assert r.status == 200 and r.json() == {"challenge": "ajls384kdjx98XX"}
        assert list(outbox_ids(s.cfg.outbox)) == ["om_5ce6d572455d361153b7cb51da133945"]


def test_verification_token(tmp_path):
    with running_service(tmp_path, feishu_verification_token=FEISHU_TOKEN) as s:
        assert post(s.url, sample_bytes("v2_text.json")).status == 200
        forged = sample("v2_image.json")
        forged["header"]["token"] = "not-the-token"
        r = post(s.url, forged)
        assert r.status == 401 and r.json()["error"] == "verification token does not match"
        assert "www-authenticate" not in r.headers  # no bearer token configured: none to ask for
        assert post(s.url, sample_bytes("v1_text.json")).status == 401  # its token is another app's
        assert post(s.url, sample_bytes("flat_message.json")).status == 401  # no token at all
        assert post(s.url, sample_bytes("url_verification.json")).json() == {"challenge": "ajls384kdjx98XX"}
        assert list(outbox_ids(s.cfg.outbox)) == ["om_5ce6d572455d361153b7cb51da133945"]


def test_bearer_senders_and_feishu_senders_coexist(tmp_path, caplog):
    secret = "s3cret-bearer-token"
    caplog.set_level("DEBUG", logger="outbox_relay")
    with running_service(tmp_path, auth_token=secret, feishu_verification_token=FEISHU_TOKEN) as s:
        bearer = {"Authorization": f"Bearer {secret}"}
        # OpenClaw: bearer token, no Feishu token in the event -> stored.
        assert post(s.url, sample_bytes("openclaw_message_received.json"), bearer).status == 200
        # Feishu: no bearer (it cannot send one), its verification token -> stored.
        assert post(s.url, sample_bytes("v2_text.json")).status == 200
        answers = [
            post(s.url, flat_message("om_no_auth")),                                          # nothing
            post(s.url, flat_message("om_wrong"), {"Authorization": "Bearer nope"}),          # wrong token
            post(s.url, flat_message("om_basic"), {"Authorization": f"Basic {secret}"}),      # wrong scheme
            post(s.url, sample_bytes("v2_image.json"), {"Authorization": "Bearer nope"}),  # wrong, token or not
        ]
        for r in answers:
            assert r.status == 401 and r.json()["ok"] is False, r
            assert secret not in r.body.decode()
        assert all(r.headers["www-authenticate"] == 'Bearer realm="outbox-relay"' for r in answers)
        assert answers[0].json()["error"] == ("event carries no verification token"
                                              " (or send Authorization: Bearer <auth_token>)")
        assert sorted(outbox_ids(s.cfg.outbox)) == ["om_5ce6d572455d361153b7cb51da133945", "om_openclaw_0001"]
    assert secret not in caplog.text and FEISHU_TOKEN not in caplog.text
    assert "wrong bearer token" in caplog.text

    # Only a bearer token configured: Feishu's unsigned events cannot prove themselves.
    with running_service(tmp_path / "b", auth_token=secret) as s:
        r = post(s.url, sample_bytes("v2_text.json"))
        assert r.status == 401 and "not authenticated" in r.json()["error"]
        assert post(s.url, sample_bytes("v2_text.json"), {"Authorization": f"bearer {secret}"}).status == 200


# -- bad requests ------------------------------------------------------------------------------------------

V2_CONTENT_NOT_JSON = sample("v2_text.json")
V2_CONTENT_NOT_JSON["event"]["message"]["content"] = "hello, not json"
V2_NO_MESSAGE_ID = sample("v2_text.json")
del V2_NO_MESSAGE_ID["event"]["message"]["message_id"]

BAD_BODIES = [
    # name, body, headers, status, words in the error
    ("invalid JSON", b'{"message_id": "om_1", ', None, 400, "not valid JSON"),
    ("JSON array", b'[{"message_id": "om_1"}]', None, 400, "must be a JSON object"),
    ("JSON string", b'"om_1"', None, 400, "must be a JSON object"),
    ("empty body", b"", None, 400, "empty"),
    ("only whitespace", b" \r\n ", None, 400, "empty"),
    ("invalid UTF-8", b'{"message_id": "om_\xff\xfe"}', None, 400, "UTF-8"),
    ("UTF-16", '{"message_id": "om_1"}'.encode("utf-16"), None, 400, "UTF-8"),
    ("NaN", b'{"message_id": "om_1", "n": NaN}', None, 400, "not valid JSON"),
    ("missing message_id", json.dumps({"chat_id": "oc_1", "text": "hi"}).encode(), None, 400,
     "no message_id"),
    ("v2 missing message_id", json.dumps(V2_NO_MESSAGE_ID).encode(), None, 400,
     "missing event.message.message_id"),
    ("content not JSON", json.dumps(V2_CONTENT_NOT_JSON).encode(), None, 400,
     "event.message.content is not valid JSON"),
    ("flat content not JSON", json.dumps(dict(flat_message("om_1"), content="{oops")).encode(), None, 400,
     "content is not valid JSON"),
    ("nested too deeply", b'{"message_id": "om_1", "x": ' + b"[" * 100 + b"]" * 100 + b"}", None, 400,
     "nested too deeply"),
    ("encrypted, no key configured", FEISHU_BODY, None, 400, "no encrypt key is configured"),
    ("message_id an object", b'{"message_id": {"a": 1}}', None, 400, "message_id must be a string"),
    ("wrong content type", b'{"message_id": "om_1"}', {"Content-Type": "text/plain"}, 415,
     "application/json"),
    ("form post", b"message_id=om_1", {"Content-Type": "application/x-www-form-urlencoded"}, 415,
     "application/json"),
    ("not UTF-8 charset", b'{"message_id": "om_1"}', {"Content-Type": "application/json; charset=latin-1"},
     415, "UTF-8"),
]


def _bad_head(port, head, body=b'{"message_id":"om_hdr"}'):
    return raw_http(port, head.replace(b"{n}", str(len(body)).encode()) + body)


# Requests a client library would refuse to send: waitress refuses them before the app runs.
POST_LINE = b"POST " + WEBHOOK_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
HEADER_ATTACKS = [
    ("bare CR splits a header",
     POST_LINE + b"Content-Type: application/json\r\nX-A: a\rSet-Cookie: x=1\r\nContent-Length: {n}\r\n\r\n"),
    ("bare LF splits a header",
     POST_LINE + b"Content-Type: application/json\r\nX-A: a\nSet-Cookie: x=1\r\nContent-Length: {n}\r\n\r\n"),
    ("NUL in a header", POST_LINE + b"Content-Type: application/json\r\nX-A: a\x00b\r\nContent-Length: {n}\r\n\r\n"),
    ("two Content-Lengths",
     POST_LINE + b"Content-Type: application/json\r\nContent-Length: {n}\r\nContent-Length: 3\r\n\r\n"),
    ("negative Content-Length", POST_LINE + b"Content-Type: application/json\r\nContent-Length: -{n}\r\n\r\n"),
    ("space before the colon", POST_LINE + b"Content-Type : application/json\r\nContent-Length: {n}\r\n\r\n"),
]


def test_bad_requests_get_the_right_4xx_and_store_nothing(tmp_path):
    with running_service(tmp_path) as s:
        for name, body, headers, status, words in BAD_BODIES:
            r = post(s.url, body, headers)
            assert r.status == status, (name, r)
            assert r.headers["content-type"] == "application/json", name
            answer = r.json()
            assert answer["ok"] is False and words in answer["error"], (name, answer)
        port = port_of(s)
        for name, head in HEADER_ATTACKS:
            response = _bad_head(port, head)
            assert status_of(response) == 400, (name, response)
            head = response.split(b"\r\n\r\n", 1)[0].lower()
            assert b"\r\nset-cookie" not in head, (name, head)  # nothing injected into the answer
        # An encoded CRLF in the path stays in the path: 404, nothing injected.
        r = request(s.url, "POST", WEBHOOK_PATH + "%0d%0aSet-Cookie:%20x=1", b"{}",
                    {"Content-Type": "application/json"})
        assert r.status == 404 and "set-cookie" not in r.headers
        assert outbox_ids(s.cfg.outbox) == {}
        h = health(s.url)
        assert h.status == 200, h
        samples = scrape(s.url)
        assert received(samples, "unknown", "invalid") >= 8
        assert received(samples, "unknown", "unsupported_media_type") == 3
        # And it still takes good messages.
        assert post(s.url, flat_message("om_after_the_battery")).status == 200


def test_content_type_is_lenient_where_it_is_safe(tmp_path):
    with running_service(tmp_path) as s:
        assert post(s.url, flat_message("om_ct_1"), content_type="application/json; charset=UTF-8").status == 200
        assert post(s.url, flat_message("om_ct_2"), content_type="Application/JSON").status == 200
        assert post(s.url, flat_message("om_ct_3"), content_type=None).status == 200  # urllib and curl -T omit it


def test_oversized_bodies_are_refused_without_being_read(tmp_path):
    with running_service(tmp_path) as s:
        port = port_of(s)
        # 2 MiB announced, 64 KiB sent: the 413 comes back without waiting for the rest.
        head = (b"POST " + WEBHOOK_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 2097152\r\n\r\n")
        response = raw_http(port, head + b"x" * 65536)
        assert status_of(response) == 413 and b"connection: close" in response.lower()
        # Chunked, no length announced: send a little past the limit and stop, never ending the
        # body. A server that wanted the whole body would never answer; this one says 413.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST " + WEBHOOK_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (65536, b"y" * 65536)
            try:
                for _ in range(17):  # 1 MiB + 64 KiB
                    sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused while we were still sending: fine too, the answer is waiting
            response = b""
            while b"\r\n\r\n" not in response:
                data = sock.recv(65536)
                assert data, "connection closed without an answer"
                response += data
            assert status_of(response) == 413
        assert outbox_ids(s.cfg.outbox) == {}
        assert health(s.url).status == 200

    # The limit is max_body: exactly max_body bytes pass, one more does not.
    with running_service(tmp_path / "small", max_body=4096) as s:
        def sized(message_id, size):
            pad = size - len(json.dumps(flat_message(message_id, text="")).encode())
            return json.dumps(flat_message(message_id, text="p" * pad)).encode()

        exact, over = sized("om_exact", 4096), sized("om_over", 4097)
        assert (len(exact), len(over)) == (4096, 4097)
        assert post(s.url, exact).status == 200
        assert post(s.url, over).status == 413
        assert list(outbox_ids(s.cfg.outbox)) == ["om_exact"]


def test_app_level_413_under_any_wsgi_server(tmp_path):
    """The app's own size checks (JSON 413), for a server that does not enforce max_body itself."""
    cfg = Config(outbox=str(tmp_path / "outbox.db"), max_body=2048)
    with Outbox(cfg.outbox) as box:
        client = falcon.testing.TestClient(create_app(cfg, box))
        r = client.simulate_post(WEBHOOK_PATH, body=b"x" * 4096, content_type="application/json")
        assert r.status_code == 413
        assert r.json == {"ok": False, "error": "body is 4096 bytes, the limit is 2048"}
        # No Content-Length (chunked, under a server that sets wsgi.input_terminated): the read
        # stops one byte past the limit instead of draining an endless body.
        env = falcon.testing.create_environ(WEBHOOK_PATH, method="POST",
                                            headers={"Content-Type": "application/json"})
        env.pop("CONTENT_LENGTH", None)
        env["wsgi.input"] = stream = _Endless()
        env["wsgi.input_terminated"] = True
        start = falcon.testing.StartResponseMock()
        body = b"".join(client.app(env, start))
        assert start.status.startswith("413 ") and b"over the limit of 2048" in body
        assert stream.read_total == 2049


class _Endless:
    """A request body stream that never ends: whoever reads it all never returns."""

    def __init__(self):
        self.read_total = 0

    def read(self, size=-1):
        assert size is not None and size >= 0, "read() without a size"
        self.read_total += size
        return b"z" * size


def test_404_and_405_are_json(tmp_path):
    with running_service(tmp_path) as s:
        r = request(s.url, "GET", "/nope")
        assert r.status == 404 and r.json() == {"ok": False, "error": (
            "no such path: /nope (POST /webhook/feishu-message, GET /healthz, GET /metrics)")}
        for method in ("GET", "PUT", "DELETE"):
            r = request(s.url, method, WEBHOOK_PATH)
            assert r.status == 405 and r.json()["ok"] is False and "POST" in r.headers["allow"], r
            assert f"method {method} is not allowed" in r.json()["error"]
        r = request(s.url, "POST", "/healthz", b"{}")
        assert r.status == 405 and r.headers["content-type"] == "application/json"


def test_other_events_are_acknowledged_counted_and_not_stored(tmp_path):
    bot_added = sample("v2_text.json")
    bot_added["header"]["event_type"] = "im.chat.member.bot.added_v1"
    bot_added["event"] = {"chat_id": "oc_1"}
    v1_other = {"type": "event_callback", "token": "t", "event": {"type": "add_bot", "open_chat_id": "oc_1"}}
    sent = dict(sample("openclaw_message_received.json"), action="sent")
    with running_service(tmp_path) as s:
        for event, expected in ((bot_added, "im.chat.member.bot.added_v1"),
                                (bot_added, "im.chat.member.bot.added_v1"),
                                (v1_other, "add_bot"), (sent, "message:sent")):
            r = post(s.url, event)
            assert r.status == 200 and r.json() == {"ok": True, "ignored": expected}
        assert outbox_ids(s.cfg.outbox) == {}
        samples = scrape(s.url)
        ignored = "outbox_relay_events_ignored_total"
        assert metric(samples, ignored, event_type="im.chat.member.bot.added_v1") == 2
        assert metric(samples, ignored, event_type="add_bot") == 1
        assert metric(samples, ignored, event_type="message:sent") == 1
        assert received(samples, "feishu.v2", "ignored") == 2
        assert received(samples, "openclaw", "ignored") == 1


def test_outbox_full_under_overflow_reject_is_503_with_retry_after(tmp_path):
    with running_service(tmp_path, relay=False, overflow="reject", max_pending=2) as s:
        assert post(s.url, flat_message("om_full_1")).status == 200
        assert post(s.url, flat_message("om_full_2")).status == 200
        r = post(s.url, flat_message("om_full_3"))
        assert r.status == 503 and r.headers["retry-after"] == "30"
        assert "outbox is full" in r.json()["error"]
        # A duplicate is not a new row: it is still acknowledged.
        r = post(s.url, flat_message("om_full_1"))
        assert r.status == 200 and r.json()["duplicate"] is True
        assert sorted(outbox_ids(s.cfg.outbox)) == ["om_full_1", "om_full_2"]


# -- /metrics ------------------------------------------------------------------------------------------


def test_metrics_parse_and_match_what_was_sent(tmp_path):
    with running_service(tmp_path) as s:
        for i in range(3):
            assert post(s.url, flat_message(f"om_m_{i}")).status == 200
        assert post(s.url, flat_message("om_m_0")).json()["duplicate"] is True
        assert post(s.url, sample_bytes("v2_text.json")).status == 200
        assert post(s.url, sample_bytes("v2_post.json")).status == 200
        assert post(s.url, sample_bytes("openclaw_message_received.json")).status == 200
        assert post(s.url, sample_bytes("url_verification.json")).status == 200
        assert post(s.url, b"[]").status == 400
        assert post(s.url, b"{}", content_type="text/plain").status == 415
        wait_until(lambda: set(outbox_ids(s.cfg.outbox).values()) == {"delivered"}, timeout=10,
                   what="all delivered")
        # The relay marks rows delivered inside its step and tells its observers (the metrics)
        # when the step ends: wait for that too, or the scrape can land in between.
        wait_until(lambda: metric(scrape(s.url), "outbox_relay_relay_rows_total", outcome="delivered") == 6,
                   timeout=10, what="the relay's counters to catch up")
        samples = scrape(s.url)

        def count(source, outcome):
            return received(samples, source, outcome)

        assert count("api", "stored") == 3 and count("api", "duplicate") == 1
        assert count("feishu.v2", "stored") == 2 and count("feishu.v2", "duplicate") == 0
        assert count("openclaw", "stored") == 1 and count("feishu.v1", "stored") == 0
        assert count("feishu", "verification") == 1
        assert count("unknown", "invalid") == 1 and count("unknown", "unsupported_media_type") == 1
        assert metric(samples, "outbox_relay_webhook_seconds_count") == 10
        assert metric(samples, "outbox_relay_http_requests_in_flight") == 0
        # Outbox gauges, read from the database at scrape time.
        assert metric(samples, "outbox_relay_outbox_rows", state="delivered") == 6
        assert metric(samples, "outbox_relay_outbox_rows", state="pending") == 0
        assert metric(samples, "outbox_relay_outbox_oldest_pending_age_seconds") == 0
        assert metric(samples, "outbox_relay_outbox_readable") == 1
        assert metric(samples, "outbox_relay_relay_heartbeat_age_seconds") < 60
        # Relay counters, fed by Relay.observers.
        batches = metric(samples, "outbox_relay_relay_batches_total")
        assert 1 <= batches <= 6
        assert metric(samples, "outbox_relay_relay_rows_total", outcome="delivered") == 6
        assert metric(samples, "outbox_relay_target_rows_inserted_total") == 6
        assert metric(samples, "outbox_relay_relay_errors_total") == 0
        assert metric(samples, "outbox_relay_relay_batch_seconds_count") == batches

        # Something pending shows its age.
        s.relay.stop()
        s.service.relay_thread.thread.join(10)
        assert post(s.url, flat_message("om_m_late")).status == 200
        samples = scrape(s.url)
        assert metric(samples, "outbox_relay_outbox_rows", state="pending") == 1
        assert metric(samples, "outbox_relay_outbox_oldest_pending_age_seconds") > 0


def test_metrics_registries_are_per_app(tmp_path):
    """Two apps in one process do not share (or clash over) metrics."""
    with running_service(tmp_path / "a") as a, running_service(tmp_path / "b") as b:
        assert post(a.url, flat_message("om_a")).status == 200
        assert received(scrape(a.url), "api", "stored") == 1
        assert received(scrape(b.url), "api", "stored") == 0


def test_healthz_json(tmp_path):
    with running_service(tmp_path) as s:
        h = wait_until(lambda: (lambda h: h.status == 200 and h)(health(s.url)), timeout=10, what="healthy")
        body = h.json()
        assert body["ok"] is True and body["reasons"] == []
        assert body["checks"]["outbox"]["ok"] and body["checks"]["relay"]["running"]
        assert h.headers["cache-control"] == "no-store"


def test_the_writability_probe_writes_nothing_and_creates_nothing(tmp_path):
    path = str(tmp_path / "outbox.db")
    def probe_writable(path, timeout):
        SqliteFile(path).probe_writable(timeout)

    with pytest.raises(OutboxUnavailable):
        probe_writable(path, 0.1)  # missing: an error, not a new empty outbox
    assert not os.path.exists(path)
    with Outbox(path) as box:
        box.put(flat_message("om_probe"))
        before = os.path.getsize(path), outbox_ids(path)
        probe_writable(path, 0.1)
        assert (os.path.getsize(path), outbox_ids(path)) == before
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            with pytest.raises(OutboxUnavailable, match="locked"):
                probe_writable(path, 0.1)
        finally:
            conn.execute("ROLLBACK")
            conn.close()


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_get_endpoints_need_no_credentials(tmp_path, path):
    with running_service(tmp_path, auth_token="tok", feishu_verification_token=FEISHU_TOKEN) as s:
        assert request(s.url, "GET", path).status in (200, 503)


# -- replays (issue 24, item 10) --------------------------------------------------------------------------


def _archive_ids(tmp_path):
    conn = sqlite3.connect(tmp_path / "archive.db")
    try:
        return {r[0] for r in conn.execute("SELECT message_id FROM feishu_messages")}
    finally:
        conn.close()


def test_a_signed_request_expires_with_the_replay_window(tmp_path):
    body = encrypted(sample("v2_text.json"))
    now = int(time.time())
    with running_service(tmp_path, relay=False, feishu_encrypt_key=FEISHU_KEY) as s:
        for stamp, why in ((str(now - 86_400), "s old"), (str(now - 30 * 86_400), "s old"),
                           ("1", "s old"), (str(now + 86_400), "ahead of this host's clock"),
                           ("notatime", "is not a time in epoch seconds")):
            r = post(s.url, body, signed(body, timestamp=stamp))
            assert r.status == 401 and why in r.json()["error"], (stamp, r.json())
        assert "replay window of 28800 s (feishu_replay_window)" in post(
            s.url, body, signed(body, timestamp=str(now - 86_400))).json()["error"]
        assert outbox_ids(s.cfg.outbox) == {}
        # Six hours old (Feishu's last retry, were it sent as it was first signed) is still taken.
        r = post(s.url, body, signed(body, timestamp=str(now - 6 * 3600 - 300)))
        assert r.status == 200 and r.json()["duplicate"] is False
    with running_service(tmp_path / "short", relay=False, feishu_encrypt_key=FEISHU_KEY,
                         feishu_replay_window=120) as s:
        r = post(s.url, body, signed(body, timestamp=str(now - 600)))
        assert r.status == 401 and "replay window of 120 s" in r.json()["error"]


def test_a_captured_request_replayed_after_its_row_was_deleted_stores_nothing(tmp_path):
    """The key of every signed request committed is kept for the replay window, in the same
    transaction as its message: the same bytes and headers again store nothing, even once the row
    has left the outbox and an operator deleted it from the archive."""
    body = encrypted(sample("v2_text.json"))
    captured = signed(body)
    message_id = "om_5ce6d572455d361153b7cb51da133945"
    with running_service(tmp_path, feishu_encrypt_key=FEISHU_KEY, keep_delivered=0) as s:
        assert post(s.url, body, captured).json() == {"ok": True, "message_id": message_id, "duplicate": False}
        wait_until(lambda: message_id in _archive_ids(tmp_path), timeout=15, what="the message archived")
        wait_until(lambda: message_id not in outbox_ids(s.cfg.outbox), timeout=15, what="pruned from the outbox")
        conn = sqlite3.connect(tmp_path / "archive.db")
        conn.execute("DELETE FROM feishu_messages WHERE message_id = ?", (message_id,))
        conn.commit()
        conn.close()
        r = post(s.url, body, captured)
        assert r.status == 200 and r.json() == {"ok": True, "message_id": message_id, "duplicate": True,
                                                 "replayed": True}
        assert message_id not in outbox_ids(s.cfg.outbox)
        assert received(scrape(s.url), "feishu.v2", "replayed") == 1
        # Feishu's own retry of the same event is signed anew: a duplicate of nothing stored, so stored.
        assert post(s.url, body, signed(body)).json()["duplicate"] is False
        wait_until(lambda: message_id in _archive_ids(tmp_path), timeout=15, what="archived again by the retry")


def test_a_request_refused_with_503_is_taken_when_it_comes_again(tmp_path):
    """The key is committed with the message: a request the outbox could not take (503) is not
    remembered, so Feishu's retry of it, byte for byte the same, is stored."""
    body = encrypted(sample("v2_text.json"))
    headers = signed(body)
    with running_service(tmp_path, relay=False, feishu_encrypt_key=FEISHU_KEY, busy_timeout=0.2) as s:
        with write_lock(s.cfg.outbox):
            assert post(s.url, body, headers).status == 503
        r = post(s.url, body, headers)
        assert r.status == 200 and r.json()["duplicate"] is False and "replayed" not in r.json()
        assert list(outbox_ids(s.cfg.outbox)) == ["om_5ce6d572455d361153b7cb51da133945"]


def test_a_bearer_sender_with_an_encrypted_body_is_not_told_to_send_a_bearer_token(tmp_path):
    """Issue 24, item 16: the hint "(or send Authorization: Bearer …)" is for senders that sent none."""
    body = encrypted(sample("v2_text.json"))
    with running_service(tmp_path, relay=False, feishu_encrypt_key=FEISHU_KEY, auth_token="s3cret-token") as s:
        r = post(s.url, body, {"Authorization": "Bearer s3cret-token"})
        assert r.status == 401 and r.json()["error"].startswith("missing X-Lark-Signature header"), r.json()
        assert "Bearer" not in r.json()["error"]
        r = post(s.url, body)
        assert r.status == 401 and "(or send Authorization: Bearer <auth_token>)" in r.json()["error"]


def test_an_id_with_a_line_break_is_refused(tmp_path):
    """Issue 24, item 11: ids are printable (om_…, oc_…); one with a line break or another control
    character is not an id: 400, nothing stored."""
    with running_service(tmp_path, relay=False) as s:
        for field in ("message_id", "chat_id", "sender_id", "parent_id"):
            forged = dict(flat_message("om_ok"), **{field: "om_x\n2026-12-04 10:00:00,000 CRITICAL outbox_relay: x"})
            r = post(s.url, json.dumps(forged).encode())
            assert r.status == 400 and f"{field} holds a control character" in r.json()["error"], r.json()
        r = post(s.url, json.dumps(flat_message("om_ok", chat_id="oc_a\x1b[2Jb")).encode())
        assert r.status == 400
        assert outbox_ids(s.cfg.outbox) == {}
