"""Audit: every path that could lose an accepted message or put it into the target twice, against
real databases (PostgreSQL from the fixtures, real SQLite files). Each test names the path it pins.
"""

import json
import sqlite3

import psycopg2
import pytest

from outbox_relay.errors import InvalidMessage
from outbox_relay.message import Message, normalize
from outbox_relay.outbox import Outbox
from outbox_relay.sync import Relay
from outbox_relay.targets import open_target

from factories import BASE_MS, flat
from relayutil import pg_query, row_stats
from serverproc import wait_until

NASTY = [
    "back\\slash",
    "\\N",
    "\\\\N",
    "a\\Nb",
    "tab\there",
    "line1\nline2",
    "cr\rlf\r\n",
    "\\.",
    "before\n\\.\nafter",
    "\\.\n",
    "\n\\.",
    "trailing backslash\\",
    "\\t \\n \\r \\b \\f \\v \\x41 \\101",
    "emoji 😀👍🏽 and 𝄞",
    "中文消息，测试一下。",
    "\x08\x0b\x0c\x7f",
    "\u2028\u2029\ufeff",
    "",
    " ",
    "'quoted' \"double\" %s %% $1 ;--",
]


def pg_fetch(url, message_id):
    """The row of message_id, its JSON columns as text; None if there is none."""
    rows = pg_query(url, "SELECT message_id, chat_id, sender_id, msg_type, text, content::text, raw::text,"
                         " mentions::text, extract(epoch from created_at) * 1000"
                         " FROM feishu_messages WHERE message_id = %s", (message_id,))
    return rows[0] if rows else None


# -- COPY escaping: what is accepted is what lands in PostgreSQL -------------------------------------

def test_copy_round_trip_of_backslashes_tabs_newlines_cr_end_marker_and_unicode(tmp_outbox, pg_url):
    target = open_target(pg_url)
    target.init_db(trigram=False)
    payloads = []
    for i, s in enumerate(NASTY):
        payloads.append({
            # Ids are printable (issue 24): a backslash still, and the rest of the string where it prints.
            "message_id": f"om_nasty_{i}\\{i}",
            "chat_id": "oc_" + "".join(ch for ch in s[:20] if ch.isprintable()).strip(),
            "sender_id": "ou_\\N",
            "msg_type": "text",
            "text": s,
            "content": json.dumps({"text": s, "nested": [s, {"k\\\n": s}],
                                   "extra": {"raw\tkey\\": s, "list": [s, 1, 2.5, None, True]}}, ensure_ascii=False),
            "create_time": str(BASE_MS + i),
        })
    with Outbox(tmp_outbox) as outbox:
        outbox.put_many(payloads)
        totals = Relay(outbox, target).drain()
        assert outbox.counts()["dead"] == 0
    target.close()
    assert totals["delivered"] == len(NASTY)
    assert row_stats(pg_url) == (len(NASTY), len(NASTY))
    for p in payloads:
        m = normalize(p)
        row = pg_fetch(pg_url, p["message_id"])
        assert row is not None, p["message_id"]
        mid, chat, sender, msg_type, text, content, raw, mentions, created = row
        assert (mid, chat, sender, msg_type, text) == (m.message_id, m.chat_id, m.sender_id, "text", p["text"])
        assert json.loads(content) == m.content
        assert json.loads(raw) == p
        assert json.loads(mentions) == []
        assert int(created) == int(p["create_time"])


# -- a created_at the target cannot hold must never stall the queue ------------------------------------

@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_create_time_outside_the_calendar_is_refused_at_the_door(stamp):
    """It used to be accepted (a 200 on the webhook), then the relay raised ValueError building the
    row for the target, before every batch, forever: the whole outbox stopped moving."""
    with pytest.raises(InvalidMessage, match="out of range"):
        normalize({"message_id": "om_calendar", "chat_id": "oc_1", "text": "x", "create_time": stamp})
    # The edges themselves are fine.
    first = normalize({"message_id": "a", "chat_id": "oc_1", "create_time": "0001-01-01T00:00:00Z"})
    assert first.created_at == -62135596800000
    assert normalize({"message_id": "b", "chat_id": "oc_1", "create_time": "9999-12-31T23:59:59.999Z"}).created_at


def _store_bad_created_at(outbox_path, message_id, created_at):
    """Rewrite one stored payload the way an earlier release could have accepted it."""
    conn = sqlite3.connect(outbox_path)
    with conn:
        payload = json.loads(conn.execute("SELECT payload FROM outbox WHERE message_id = ?",
                                          (message_id,)).fetchone()[0])
        payload["created_at"] = created_at
        conn.execute("UPDATE outbox SET payload = ? WHERE message_id = ?", (json.dumps(payload), message_id))
    conn.close()


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite", "mysql"])
def test_a_stored_row_the_target_cannot_represent_goes_dead_and_the_rest_still_flows(
        dialect, tmp_outbox, tmp_path, request):
    servers = {"postgresql": "pg_url", "mysql": "maria_url"}
    url = request.getfixturevalue(servers[dialect]) if dialect in servers else f"sqlite:///{tmp_path}/archive.db"
    target = open_target(url)
    target.init_db(trigram=False)
    with Outbox(tmp_outbox) as outbox:
        outbox.put_many([flat(i) for i in range(10)])
        _store_bad_created_at(tmp_outbox, flat(3)["message_id"], -62135600400000)   # year 0
        _store_bad_created_at(tmp_outbox, flat(7)["message_id"], 253402304399000)   # year 10000
        result = Relay(outbox, target).step()
        assert (result.claimed, result.delivered, result.dead) == (10, 8, 2)
        assert {r["message_id"] for r in outbox.rows("dead")} == {flat(3)["message_id"], flat(7)["message_id"]}
        assert "out of range" in outbox.rows("dead")[0]["last_error"]
    target.close()


def test_created_at_reaches_the_target_to_the_millisecond_for_every_accepted_value(tmp_outbox, pg_url):
    """ms / 1000 as a float lost the last millisecond for dates after ~2242 (accepted up to ~5138)."""
    stamps = [0, 1, 999, BASE_MS + 123, 8_968_034_073_564, 39_796_208_010_073, 99_999_999_999_999,
              253_402_300_799_999, -62_135_596_800_000]
    target = open_target(pg_url)
    target.init_db(trigram=False)
    with Outbox(tmp_outbox) as outbox:
        for i, ms in enumerate(stamps):
            outbox.put(Message(message_id=f"om_ms_{i}", source="api", created_at=ms))
        assert Relay(outbox, target).drain()["delivered"] == len(stamps)
    target.close()
    got = dict(pg_query(pg_url, "SELECT message_id, (extract(epoch from created_at) * 1000)::bigint"
                                " FROM feishu_messages"))
    assert got == {f"om_ms_{i}": ms for i, ms in enumerate(stamps)}


# -- delivered means durable in the target -----------------------------------------------------------

def test_a_target_with_synchronous_commit_off_loses_nothing_the_outbox_pruned(tmp_outbox, private_pg):
    """With synchronous_commit = off on the server (or the role, or the database: a common
    throughput setting on RDS), COMMIT returns before the WAL is written. The relay then marks the
    rows delivered and prunes them: a server crash in that window lost them for good. The relay's
    own transactions must be synchronous whatever the server default is."""
    pg = private_pg
    pg.create_database("archive")
    url = pg.url("archive")
    target = open_target(url)
    target.init_db(trigram=False)
    pg.execute("CHECKPOINT")
    # The walwriter flushes async commits every wal_writer_delay: make that window 10 s.
    pg.configure(reload=True, synchronous_commit=False, wal_writer_delay="10s")
    wait_until(lambda: pg.execute("SHOW synchronous_commit", dbname="archive")[0][0] == "off",
               what="synchronous_commit=off applied")
    wait_until(lambda: pg.execute("SHOW wal_writer_delay")[0][0] == "10s", what="wal_writer_delay applied")
    with Outbox(tmp_outbox, keep_delivered=0) as outbox:
        outbox.put_many([flat(i) for i in range(3)])
        totals = Relay(outbox, target).drain()
        target.close()
        assert totals["delivered"] == 3
        assert outbox.counts() == {"pending": 0, "delivered": 0, "parked": 0, "dead": 0}  # pruned
    pg.stop("immediate")  # a crash: WAL still in shared memory is gone
    pg.start()
    assert row_stats(url) == (3, 3), "rows the outbox pruned as delivered are not in the target"


def test_the_embedded_sqlite_target_commits_as_durably_as_the_outbox(tmp_outbox, tmp_path):
    """WAL with synchronous=NORMAL may roll a commit back after a power loss or OS crash, but the
    outbox (synchronous=FULL) has by then marked the rows delivered and pruned them: gone from both.
    Power loss cannot be staged in a test; the setting that decides it is read from the live
    connection the relay writes through."""
    target = open_target(f"sqlite:///{tmp_path}/archive.db")
    target.init_db()
    with Outbox(tmp_outbox) as outbox:
        outbox.put(flat(1))
        assert Relay(outbox, target).drain()["delivered"] == 1
        outbox_sync = outbox.file.conn().execute("PRAGMA synchronous").fetchone()[0]
    target_sync = target.run(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
    journal = target.run(lambda conn: conn.execute("PRAGMA journal_mode").fetchone()[0])
    target.close()
    assert (journal, target_sync) == ("wal", 2) and target_sync >= outbox_sync  # 2 = FULL


# -- a target database that is not UTF8 ---------------------------------------------------------------

@pytest.fixture
def make_db(pg_server):
    from psycopg2 import sql
    made = []

    def make(name, encoding):
        pg_server.drop_database(name)
        pg_server.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING %s LC_COLLATE 'C'"
                                  " LC_CTYPE 'C'").format(sql.Identifier(name)), (encoding,))
        made.append(name)
        return pg_server.url(name)

    yield make
    for name in made:
        pg_server.drop_database(name)


@pytest.mark.parametrize("encoding", ["SQL_ASCII", "LATIN1"])
def test_a_non_utf8_target_database_never_stalls_the_queue(encoding, tmp_outbox, make_db):
    """psycopg2 encoded the COPY stream in the server's encoding: one Chinese message made every batch
    fail with a UnicodeEncodeError classified as transient, so nothing behind it was ever delivered.
    The relay speaks UTF-8; the server stores it (SQL_ASCII) or refuses that one row (LATIN1)."""
    url = make_db(f"t_audit_enc_{encoding.lower()}", encoding)
    target = open_target(url)
    target.init_db(trigram=False)
    with Outbox(tmp_outbox) as outbox:
        outbox.put_many([{"message_id": "om_cjk", "chat_id": "oc_1", "text": "中文 😀"},
                         {"message_id": "om_plain", "chat_id": "oc_1", "text": "plain"}])
        result = Relay(outbox, target).step()
        dead = [r["message_id"] for r in outbox.rows("dead")]
    target.close()
    conn = psycopg2.connect(url, client_encoding="UTF8")
    with conn, conn.cursor() as cur:
        cur.execute("SELECT message_id, text FROM feishu_messages")
        rows = dict(cur.fetchall())
    conn.close()
    if encoding == "SQL_ASCII":
        assert (result.delivered, dead, rows) == (2, [], {"om_cjk": "中文 😀", "om_plain": "plain"})
    else:
        assert (result.delivered, dead, rows) == (1, ["om_cjk"], {"om_plain": "plain"})


# -- paths judged safe, pinned ------------------------------------------------------------------------

def test_a_crash_between_the_target_commit_and_mark_delivered_resends_without_a_duplicate(tmp_outbox, pg_url):
    target = open_target(pg_url)
    target.init_db(trigram=False)
    with Outbox(tmp_outbox) as outbox:
        outbox.put_many([flat(i) for i in range(20)])
        relay = Relay(outbox, target, batch_size=8)
        real = outbox.finish_batch  # where the relay marks what the target committed

        def crash(ids, generation):
            raise SystemExit("killed right after the target committed")
        outbox.finish_batch = crash
        with pytest.raises(SystemExit):
            relay.step()
        assert row_stats(pg_url) == (8, 8) and outbox.counts()["pending"] == 20
        outbox.finish_batch = real
        totals = Relay(outbox, target, batch_size=8).drain()
        assert (totals["delivered"], totals["new"]) == (20, 12)
        assert outbox.counts()["delivered"] == 20
    target.close()
    assert row_stats(pg_url) == (20, 20)


def test_rows_parked_by_another_writer_while_in_flight_end_delivered_exactly_once(tmp_outbox, pg_url):
    target = open_target(pg_url)
    target.init_db(trigram=False)
    with Outbox(tmp_outbox, max_pending=10) as outbox, Outbox(tmp_outbox, max_pending=10) as other:
        outbox.put_many([flat(i) for i in range(10)])
        real = target.write_encoded  # the relay's write of a batch
        state = {}

        def write_then_overflow(rows):
            n = real(rows)
            if not state:  # another process parks the oldest pending: exactly the rows in flight
                state["parked"] = [r.state for r in other.put_many([flat(i) for i in range(10, 20)])]
                state["in_flight"] = [outbox.get(flat(i)["message_id"])["state"] for i in range(10)]
            return n
        target.write_encoded = write_then_overflow
        first = Relay(outbox, target).step()
        assert state["in_flight"] == ["parked"] * 10
        assert first.delivered == 10 and {r["state"] for r in map(outbox.get, (flat(i)["message_id"]
                                                                           for i in range(10)))} == {"delivered"}
        Relay(outbox, target).drain()
        assert outbox.counts() == {"pending": 0, "delivered": 20, "parked": 0, "dead": 0}
    target.close()
    assert row_stats(pg_url) == (20, 20)


def test_a_rejected_row_among_rows_already_in_the_target_isolates_only_that_row(tmp_outbox, pg_url):
    target = open_target(pg_url)
    target.init_db(trigram=False)
    with Outbox(tmp_outbox) as outbox:
        rows = [flat(i) for i in range(9)]
        target.write([(i, normalize(p), 0.0) for i, p in enumerate(rows[:5])])  # an earlier, unmarked send
        pg_query(pg_url, "ALTER TABLE feishu_messages ALTER msg_type TYPE varchar(8)")
        rows.insert(4, {"message_id": "om_long", "chat_id": "oc_1", "text": "too long a type",
                        "msg_type": "interactive"})
        outbox.put_many(rows)
        result = Relay(outbox, target).step()
        assert (result.delivered, result.new, result.dead) == (9, 4, 1)
        assert [r["message_id"] for r in outbox.rows("dead")] == ["om_long"]
    target.close()
    assert row_stats(pg_url) == (9, 9)


def test_a_message_put_again_after_its_row_was_pruned_is_one_target_row_first_version_kept(
        tmp_outbox, pg_url):
    target = open_target(pg_url)
    target.init_db(trigram=False)
    with Outbox(tmp_outbox, keep_delivered=0) as outbox:
        outbox.put(flat(1, text="first"))
        Relay(outbox, target).drain()
        assert outbox.get(flat(1)["message_id"]) is None  # pruned
        again = outbox.put(flat(1, text="second, edited"))
        assert not again.duplicate  # the outbox only remembers what it still holds
        totals = Relay(outbox, target).drain()
        assert (totals["delivered"], totals["new"]) == (1, 0)
    target.close()
    assert pg_query(pg_url, "SELECT count(*), min(text) FROM feishu_messages") == [(1, "first")]
